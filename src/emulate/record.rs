//! What the emulator accepted: an in-memory log of events and, optionally, an NDJSON file of
//! them; and the profiles those operations created or updated (`profiles`).
//!
//! Invariants:
//! - One lock per request: a request's events are appended and its profile updates applied
//!   together, so the log holds events in acceptance order, never interleaves two requests,
//!   and the profiles' attributes reflect the requests in that same order.
//! - The file is written (unbuffered: the lines reach the OS before the answer is sent) before
//!   the events join the in-memory log and before any profile changes; when the write fails the
//!   request records nothing and changes no profile (the server answers 500), so the file and
//!   the memory never disagree about an answered request.
//! - The file holds events only: profile attributes are state to read back
//!   (`GET /_emulator/profiles`), not a log.
//! - Nothing awaits while the lock is held, so an aborted connection task cannot leave half a
//!   request in the file.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::Mutex;

use super::profiles::{Attributes, ProfileUpdate, Profiles};
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
    profiles: Profiles,
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
                profiles: Profiles::default(),
                file,
            }),
        })
    }

    /// Appends one request's accepted events and applies its accepted operations to their
    /// profiles, in bulk order.
    pub(crate) fn record(
        &self,
        events: Vec<Received>,
        updates: Vec<ProfileUpdate>,
    ) -> io::Result<()> {
        if events.is_empty() && updates.is_empty() {
            return Ok(());
        }
        let lines = (self.writes_file && !events.is_empty()).then(|| to_ndjson(&events));
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
        for update in updates {
            log.profiles.apply(update);
        }
        Ok(())
    }

    /// One profile's attributes, `None` if no operation for it was accepted.
    pub(crate) fn profile(&self, custom_id: &str) -> Option<Attributes> {
        lock(&self.inner).profiles.get(custom_id).cloned()
    }

    /// Every profile holding at least one attribute, by custom id.
    pub(crate) fn profiles(&self) -> BTreeMap<String, Attributes> {
        lock(&self.inner).profiles.with_attributes()
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
