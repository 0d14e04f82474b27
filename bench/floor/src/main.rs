//! `bench-floor FILE`: reads a CSV file, parses each record into a `csv::ByteRecord` and hashes
//! its field bytes (`as_slice()`) with one BLAKE3 call, on one thread. Prints
//! `{"rows":…,"seconds":…}`: the floor the snapshot's targets are ratios to.

use std::time::Instant;

fn main() {
    let path = std::env::args().nth(1).unwrap_or_else(|| {
        eprintln!("usage: bench-floor FILE.csv");
        std::process::exit(2)
    });
    let t = Instant::now();
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(&path)
        .unwrap_or_else(|e| {
            eprintln!("bench-floor: {path}: {e}");
            std::process::exit(1)
        });
    let mut record = csv::ByteRecord::new();
    let (mut rows, mut acc) = (0u64, 0u8);
    while reader.read_byte_record(&mut record).unwrap_or_else(|e| {
        eprintln!("bench-floor: {path}: {e}");
        std::process::exit(1)
    }) {
        acc ^= blake3::hash(record.as_slice()).as_bytes()[0];
        rows += 1;
    }
    let seconds = t.elapsed().as_secs_f64();
    // `acc` keeps the hashing from being optimised away.
    println!("{{\"rows\":{rows},\"seconds\":{seconds:.3},\"check\":{acc}}}");
}
