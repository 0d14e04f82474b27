//! bench-gen: a deterministic segment for the benchmark, and its evolution.
//!
//! ```text
//! bench-gen --rows N [--seed S] [--format csv|ndjson] [--evolved]
//!           [--added 0.02] [--changed 0.01] [--removed 0.01] --out PATH
//! ```
//!
//! - Every value of row `id` is a pure function of `(seed, id)`: the same arguments give the
//!   same bytes, on any machine. Ids run from 1 to N.
//! - Rows come out in a seeded pseudo-random order (a Feistel permutation), as a query without
//!   `ORDER BY` would give them: the tool must sort; an already sorted file would flatter it.
//! - `--evolved` writes the next version of the same segment: `removed` of the ids gone,
//!   `changed` of them with a new score, plan and bio, and `round(N × added)` new ids after N,
//!   all in a new order. Which ids are removed or changed is decided per id by the seed, so the
//!   shares are close to, not exactly, the fractions asked; the exact counts are printed.
//! - stdout: one JSON line, `{"rows":…,"added":…,"changed":…,"removed":…,"bytes":…}`.
//!
//! Columns: id, email, first_name, last_name, country, plan, signed_up_at (RFC 3339, UTC),
//! score (a float with two decimals), active (bool), bio (40 characters; one in ten holds a
//! comma, so the CSV quotes it).

use std::io::{BufWriter, Write};
use std::process::ExitCode;

const FIRST: &[&str] = &[
    "Ada", "Alan", "Grace", "Linus", "Ken", "Dennis", "Barbara", "Edsger", "Donald", "Frances",
    "John", "Margaret", "Niklaus", "Radia", "Tim", "Vint", "Bjarne", "Guido", "James", "Larry",
    "Anders", "Brian", "Rob", "Robin", "Sophie", "Hedy", "Karen", "Leslie", "Shafi", "Silvio",
    "Tony", "Yukihiro",
];
const LAST: &[&str] = &[
    "Lovelace",
    "Turing",
    "Hopper",
    "Torvalds",
    "Thompson",
    "Ritchie",
    "Liskov",
    "Dijkstra",
    "Knuth",
    "Allen",
    "McCarthy",
    "Hamilton",
    "Wirth",
    "Perlman",
    "Lee",
    "Cerf",
    "Stroustrup",
    "Rossum",
    "Gosling",
    "Wall",
    "Hejlsberg",
    "Kernighan",
    "Pike",
    "Milner",
    "Wilson",
    "Lamarr",
    "Jones",
    "Lamport",
    "Goldwasser",
    "Micali",
    "Hoare",
    "Matsumoto",
];
const COUNTRIES: &[&str] = &[
    "FR", "DE", "US", "GB", "ES", "IT", "NL", "BE", "CH", "SE", "NO", "DK", "PL", "PT", "IE", "CA",
    "BR", "JP", "IN", "AU",
];
const PLANS: &[&str] = &["free", "starter", "pro", "team", "enterprise"];
const WORDS: &[&str] = &[
    "loves",
    "data",
    "pipelines",
    "and",
    "coffee",
    "writes",
    "rust",
    "on",
    "weekends",
    "ships",
    "small",
    "tools",
    "reads",
    "papers",
    "about",
    "databases",
    "runs",
    "marathons",
    "in",
    "the",
    "rain",
    "plays",
    "chess",
    "badly",
    "bakes",
    "bread",
];

/// 2020-01-01T00:00:00Z.
const EPOCH_2020: i64 = 1_577_836_800;
const FIVE_YEARS: u64 = 5 * 365 * 86_400;

struct Args {
    rows: u64,
    seed: u64,
    ndjson: bool,
    evolved: bool,
    added: f64,
    changed: f64,
    removed: f64,
    out: String,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        rows: 1_000_000,
        seed: 42,
        ndjson: false,
        evolved: false,
        added: 0.02,
        changed: 0.01,
        removed: 0.01,
        out: String::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let num = |s: String| s.replace('_', "").parse::<f64>().map_err(|e| e.to_string());
        match flag.as_str() {
            "--rows" => a.rows = num(val()?)? as u64,
            "--seed" => a.seed = num(val()?)? as u64,
            "--format" => {
                a.ndjson = match val()?.as_str() {
                    "csv" => false,
                    "ndjson" => true,
                    other => return Err(format!("--format {other}: csv or ndjson")),
                }
            }
            "--evolved" => a.evolved = true,
            "--added" => a.added = num(val()?)?,
            "--changed" => a.changed = num(val()?)?,
            "--removed" => a.removed = num(val()?)?,
            "--out" => a.out = val()?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.out.is_empty() {
        return Err("--out PATH is required".into());
    }
    if a.changed + a.removed > 1.0 || [a.added, a.changed, a.removed].iter().any(|f| *f < 0.0) {
        return Err("fractions must be ≥ 0 and changed + removed ≤ 1".into());
    }
    Ok(a)
}

/// SplitMix64's finaliser: a good 64-bit mix, enough for benchmark data.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn draw(seed: u64, id: u64, salt: u64) -> u64 {
    mix(mix(seed ^ salt.wrapping_mul(0xa076_1d64_78bd_642f)) ^ id)
}

/// A seeded permutation of `0..n`: a balanced Feistel network over the next even power of two,
/// walking cycles until the value falls inside `0..n`.
struct Permutation {
    n: u64,
    half_bits: u32,
    keys: [u64; 4],
}

impl Permutation {
    fn new(n: u64, seed: u64) -> Permutation {
        let bits = (64 - n.max(2).saturating_sub(1).leading_zeros()).max(2);
        let half_bits = bits.div_ceil(2);
        let keys = [1, 2, 3, 4].map(|i| draw(seed, i, 0x7065_726d));
        Permutation { n, half_bits, keys }
    }

    fn round(&self, x: u64) -> u64 {
        let mask = (1u64 << self.half_bits) - 1;
        let (mut l, mut r) = (x >> self.half_bits, x & mask);
        for k in self.keys {
            let f = mix(r ^ k) & mask;
            (l, r) = (r, l ^ f);
        }
        (l << self.half_bits) | r
    }

    fn at(&self, i: u64) -> u64 {
        let mut x = self.round(i);
        while x >= self.n {
            x = self.round(x);
        }
        x
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Fate {
    Kept,
    Changed,
    Removed,
}

fn fate(a: &Args, id: u64) -> Fate {
    if !a.evolved || id > a.rows {
        return Fate::Kept;
    }
    let r = (draw(a.seed, id, 0x66617465) % 1_000_000) as f64 / 1_000_000.0;
    if r < a.removed {
        Fate::Removed
    } else if r < a.removed + a.changed {
        Fate::Changed
    } else {
        Fate::Kept
    }
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + (m <= 2) as i64, m, d)
}

struct Row {
    id: u64,
    first: &'static str,
    last: &'static str,
    country: &'static str,
    plan: &'static str,
    signed_up: String,
    score_cents: u64,
    active: bool,
    bio: String,
}

fn bio(seed: u64, id: u64, salt: u64) -> String {
    let mut h = draw(seed, id, salt);
    let comma = h % 10 == 0;
    let mut s = String::with_capacity(48);
    let mut w = 0;
    while s.len() < 40 {
        if !s.is_empty() {
            s.push_str(if comma && w == 2 { ", " } else { " " });
        }
        s.push_str(WORDS[(h % WORDS.len() as u64) as usize]);
        h = mix(h);
        w += 1;
    }
    s.truncate(40);
    s
}

fn row(a: &Args, id: u64, fate: Fate) -> Row {
    let s = a.seed;
    let pick = |list: &'static [&'static str], salt| {
        list[(draw(s, id, salt) % list.len() as u64) as usize]
    };
    let t = EPOCH_2020 + (draw(s, id, 5) % FIVE_YEARS) as i64;
    let (y, mo, d) = civil(t.div_euclid(86_400));
    let sec = t.rem_euclid(86_400);
    let signed_up = format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        sec / 3600,
        sec / 60 % 60,
        sec % 60
    );
    let mut r = Row {
        id,
        first: pick(FIRST, 1),
        last: pick(LAST, 2),
        country: pick(COUNTRIES, 3),
        plan: pick(PLANS, 4),
        signed_up,
        score_cents: draw(s, id, 6) % 100_000,
        active: draw(s, id, 7) % 4 != 0,
        bio: bio(s, id, 8),
    };
    if fate == Fate::Changed {
        // A new score always differs from the old one; plan and bio change most of the time.
        r.score_cents += 1 + draw(s, id, 9) % 500;
        r.plan = pick(PLANS, 10);
        r.bio = bio(s, id, 11);
    }
    r
}

fn write_csv(line: &mut Vec<u8>, r: &Row) {
    let bio = if r.bio.contains(',') {
        format!("\"{}\"", r.bio)
    } else {
        r.bio.clone()
    };
    let _ = writeln!(
        line,
        "{},{}.{}.{}@example.com,{},{},{},{},{},{}.{:02},{},{}",
        r.id,
        r.first.to_ascii_lowercase(),
        r.last.to_ascii_lowercase(),
        r.id,
        r.first,
        r.last,
        r.country,
        r.plan,
        r.signed_up,
        r.score_cents / 100,
        r.score_cents % 100,
        r.active,
        bio
    );
}

fn write_ndjson(line: &mut Vec<u8>, r: &Row) {
    // No value holds a quote, a backslash or a control character: no escaping needed.
    let _ = writeln!(
        line,
        "{{\"id\":{},\"email\":\"{}.{}.{}@example.com\",\"first_name\":\"{}\",\"last_name\":\"{}\",\"country\":\"{}\",\"plan\":\"{}\",\"signed_up_at\":\"{}\",\"score\":{}.{:02},\"active\":{},\"bio\":\"{}\"}}",
        r.id,
        r.first.to_ascii_lowercase(),
        r.last.to_ascii_lowercase(),
        r.id,
        r.first,
        r.last,
        r.country,
        r.plan,
        r.signed_up,
        r.score_cents / 100,
        r.score_cents % 100,
        r.active,
        r.bio
    );
}

fn main() -> ExitCode {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench-gen: {e}");
            return ExitCode::from(2);
        }
    };
    let added = if a.evolved {
        (a.rows as f64 * a.added).round() as u64
    } else {
        0
    };
    let domain = a.rows + added;
    // A different order per version: a query gives no stable order either.
    let perm = Permutation::new(domain, a.seed ^ if a.evolved { 0xe7 } else { 0 });
    let file = match std::fs::File::create(&a.out) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("bench-gen: cannot create {}: {e}", a.out);
            return ExitCode::from(1);
        }
    };
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let mut line = Vec::with_capacity(512);
    let (mut rows, mut changed, mut removed, mut bytes) = (0u64, 0u64, 0u64, 0u64);
    if !a.ndjson {
        line.extend_from_slice(
            b"id,email,first_name,last_name,country,plan,signed_up_at,score,active,bio\n",
        );
    }
    for i in 0..domain {
        let id = perm.at(i) + 1;
        let f = fate(&a, id);
        match f {
            Fate::Removed => {
                removed += 1;
                continue;
            }
            Fate::Changed => changed += 1,
            Fate::Kept => {}
        }
        let r = row(&a, id, f);
        if a.ndjson {
            write_ndjson(&mut line, &r);
        } else {
            write_csv(&mut line, &r);
        }
        rows += 1;
        bytes += line.len() as u64;
        if let Err(e) = w.write_all(&line) {
            eprintln!("bench-gen: write {}: {e}", a.out);
            return ExitCode::from(1);
        }
        line.clear();
    }
    if let Err(e) = w.flush() {
        eprintln!("bench-gen: write {}: {e}", a.out);
        return ExitCode::from(1);
    }
    println!(
        "{{\"rows\":{rows},\"added\":{added},\"changed\":{changed},\"removed\":{removed},\"bytes\":{bytes}}}"
    );
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_permutation_visits_every_index_once() {
        for n in [1, 2, 3, 17, 1000, 4097] {
            let p = Permutation::new(n, 9);
            let mut seen = vec![false; n as usize];
            for i in 0..n {
                let x = p.at(i) as usize;
                assert!(!seen[x]);
                seen[x] = true;
            }
        }
    }

    #[test]
    fn civil_dates_match_known_days() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(18_262), (2020, 1, 1));
        assert_eq!(civil(19_417), (2023, 3, 1));
    }
}
