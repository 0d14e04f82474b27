//! What the emulator accepted: an in-memory log and, optionally, an NDJSON file.
//!
//! Invariants:
//! - One lock per request: a request's events are appended together, so the log holds them in
//!   acceptance order and never interleaves two requests.
//! - The file is written (unbuffered: the lines reach the OS before the answer is sent) before
//!   the events join the in-memory log; when the write fails the request records nothing (the
//!   server answers 500), so the file and the memory never disagree about an answered request.
//! - Nothing awaits while the lock is held, so an aborted connection task cannot leave half a
//!   request in the file.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::Mutex;

use super::{lock, Received};

#[derive(Debug)]
pub(crate) struct Recorder {
    inner: Mutex<Log>,
    /// Whether `inner.file` is set: lets a request serialise its lines before taking the lock.
    writes_file: bool,
}

#[derive(Debug)]
struct Log {
    received: Vec<Received>,
    file: Option<File>,
}

impl Recorder {
    /// Opens the NDJSON file for appending (created when missing).
    pub(crate) fn open(path: Option<&Path>) -> io::Result<Recorder> {
        let file = match path {
            Some(path) => {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| {
                        io::Error::new(
                            e.kind(),
                            format!("cannot open the record file {}: {e}", path.display()),
                        )
                    })?;
                Some(file)
            }
            None => None,
        };
        Ok(Recorder {
            writes_file: file.is_some(),
            inner: Mutex::new(Log {
                received: Vec::new(),
                file,
            }),
        })
    }

    /// Appends one request's accepted events.
    pub(crate) fn record(&self, events: Vec<Received>) -> io::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let lines = self.writes_file.then(|| to_ndjson(&events));
        let mut log = lock(&self.inner);
        if let (Some(file), Some(lines)) = (log.file.as_mut(), lines) {
            // One unbuffered write per request; on failure, cut the partial lines back off.
            let before = file.metadata()?.len();
            if let Err(e) = file.write_all(&lines) {
                let _ = file.set_len(before);
                return Err(e);
            }
        }
        log.received.extend(events);
        Ok(())
    }

    pub(crate) fn received(&self) -> Vec<Received> {
        lock(&self.inner).received.clone()
    }

    /// Every accepted event as NDJSON, without cloning the log.
    pub(crate) fn received_ndjson(&self) -> Vec<u8> {
        to_ndjson(&lock(&self.inner).received)
    }
}

fn to_ndjson(events: &[Received]) -> Vec<u8> {
    let mut out = Vec::with_capacity(events.len() * 256);
    for event in events {
        // Serialising plain data into a Vec cannot fail.
        serde_json::to_writer(&mut out, event).expect("a Received serialises to JSON");
        out.push(b'\n');
    }
    out
}
