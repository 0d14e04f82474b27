//! The run lock: one writer per state store.
//!
//! Invariants:
//! - An exclusive lock on `<state>.lock` (std's `File::try_lock`, `flock` on Unix), taken
//!   before anything else and held until the process exits. The kernel drops it when the holder dies, however it dies, so a lock left
//!   by a killed run is taken over by the next one with no manual step.
//! - The file says who holds it (pid and start time), for the message of the run that waits.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another batchsync run holds the lock on {path} ({holder}); this run changed nothing. Wait for it to finish")]
    Held { path: PathBuf, holder: String },
    #[error("cannot open the lock file {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// How many times a run tries again, 20 ms apart, when the lock is taken.
const PROBE_RETRIES: u32 = 5;

pub struct RunLock {
    _file: File,
    pub path: PathBuf,
}

pub fn lock_path(state: &Path) -> PathBuf {
    let mut name = state
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".lock");
    state.with_file_name(name)
}

impl RunLock {
    pub fn acquire(state: &Path) -> Result<RunLock, LockError> {
        let path = lock_path(state);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        // A `status` probing the lock holds it shared for an instant: a few short tries keep
        // that probe from turning a scheduled run away. A run holds it for its whole length.
        let mut tries = 0;
        let taken = loop {
            match file.try_lock() {
                Err(TryLockError::WouldBlock) if tries < PROBE_RETRIES => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other,
            }
        };
        match taken {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(LockError::Held {
                    path: path.clone(),
                    holder: if holder.is_empty() {
                        "holder unknown".into()
                    } else {
                        holder.to_string()
                    },
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        write!(
            file,
            "pid {} since {}",
            std::process::id(),
            crate::store::now_rfc3339()
        )
        .map_err(io)?;
        file.flush().map_err(io)?;
        Ok(RunLock { _file: file, path })
    }
}

/// Whether a live process holds the run lock of this store, without creating the lock file:
/// `status` uses it to tell a run in progress from one whose process died. The probe holds the
/// lock shared for an instant, which a starting run waits out (`PROBE_RETRIES`).
pub fn is_held(state: &Path) -> Result<bool, LockError> {
    let path = lock_path(state);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(source) => return Err(LockError::Io { path, source }),
    };
    match file.try_lock_shared() {
        Ok(()) => Ok(false),
        Err(TryLockError::WouldBlock) => Ok(true),
        Err(TryLockError::Error(source)) => Err(LockError::Io { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_store_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.db");
        let _held = RunLock::acquire(&state).unwrap();
        let err = RunLock::acquire(&state).err().unwrap().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
    }

    #[test]
    fn a_released_lock_is_taken_again() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.db");
        drop(RunLock::acquire(&state).unwrap());
        RunLock::acquire(&state).unwrap();
    }

    #[test]
    fn the_probe_tells_a_held_lock_from_a_free_one_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.db");
        assert!(!is_held(&state).unwrap());
        assert!(!lock_path(&state).exists(), "probing creates no lock file");
        let held = RunLock::acquire(&state).unwrap();
        assert!(is_held(&state).unwrap());
        drop(held);
        assert!(!is_held(&state).unwrap());
        RunLock::acquire(&state).unwrap();
    }
}
