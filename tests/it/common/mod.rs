//! Test support: a fresh directory with a config, the real `batchsync` binary run in it, and
//! the emulator on loopback as the tests' Batch.
#![allow(dead_code)]

pub mod crash_support;
pub mod db;

use batchsync::emulate::{EmulatorConfig, EmulatorThread, Faults, Received};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const API_KEY: &str = "test-rest-key-5f2c1e9a7b";
pub const PROJECT_KEY: &str = "test-project-key-c0ffee42";

pub fn emulator() -> EmulatorThread {
    emulator_with(true, Faults::default())
}

pub fn emulator_with(limits: bool, faults: Faults) -> EmulatorThread {
    EmulatorThread::start(EmulatorConfig {
        api_key: API_KEY.into(),
        project_key: PROJECT_KEY.into(),
        limits,
        faults,
        record_path: None,
        seed: 7,
    })
    .expect("emulator starts")
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// A fresh directory holding a config, its data and its state.
pub struct Dir {
    pub tmp: tempfile::TempDir,
}

impl Dir {
    pub fn new() -> Dir {
        Dir {
            tmp: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }

    pub fn write(&self, name: &str, content: impl AsRef<[u8]>) {
        std::fs::write(self.join(name), content).expect("write");
    }

    pub fn copy_fixture(&self, fixture_name: &str, as_name: &str) {
        std::fs::copy(fixture(fixture_name), self.join(as_name)).expect("copy fixture");
    }

    /// The fixture config pointing at `endpoint`, with `extra` TOML lines appended to the
    /// sections named in them (simple text replacement of whole sections is done by callers).
    pub fn orders_config(&self, endpoint: &str) {
        let cfg = std::fs::read_to_string(fixture("orders.toml"))
            .unwrap()
            .replace("http://127.0.0.1:8787", endpoint);
        self.write("batchsync.toml", cfg);
    }

    pub fn edit_config(&self, from: &str, to: &str) {
        let p = self.join("batchsync.toml");
        let cfg = std::fs::read_to_string(&p).unwrap();
        assert!(cfg.contains(from), "config has no {from:?}");
        std::fs::write(p, cfg.replacen(from, to, 1)).unwrap();
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_batchsync"));
        c.current_dir(self.path())
            .args(args)
            .env("BATCH_REST_API_KEY", API_KEY)
            .env("BATCH_PROJECT_KEY", PROJECT_KEY)
            .env_remove("BATCHSYNC_CRASH_AT")
            .env("BATCHSYNC_LOG", "info");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("batchsync runs")
    }

    /// `run --json`, returning the exit code and the parsed summary.
    pub fn sync(&self) -> (i32, serde_json::Value) {
        self.sync_with(&[])
    }

    pub fn sync_with(&self, extra: &[&str]) -> (i32, serde_json::Value) {
        let mut args = vec!["run", "--json", "--quiet"];
        args.extend_from_slice(extra);
        json_of(self.run(&args))
    }

    pub fn state(&self) -> PathBuf {
        self.join(".batchsync/state.db")
    }
}

/// The baseline of a state store in key order: (key, hash, present), tombstones included;
/// empty when there is no store yet.
pub fn baseline(state: &Path) -> Vec<(Vec<u8>, Vec<u8>, bool)> {
    match batchsync::store::Store::open_read(state).expect("the state store opens") {
        None => Vec::new(),
        Some(s) => s
            .baseline_iter()
            .map(|r| {
                let b = r.expect("the baseline reads");
                (b.key, b.hash.0.to_vec(), b.present)
            })
            .collect(),
    }
}

/// Exit code and the one JSON value on stdout.
pub fn json_of(out: Output) -> (i32, serde_json::Value) {
    let code = out.status.code().unwrap_or(-1);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON value ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, v)
}

/// Accepted events as (custom_id, amount-or-whole-event) for comparisons.
pub fn custom_ids(received: &[Received]) -> Vec<String> {
    let mut v: Vec<String> = received.iter().map(|r| r.custom_id.clone()).collect();
    v.sort();
    v
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts the named counts of a run or plan summary all at once, showing the whole summary
/// when they differ.
pub fn assert_counts(summary: &serde_json::Value, want: &[(&str, u64)]) {
    let got: Vec<(&str, Option<u64>)> = want
        .iter()
        .map(|(k, _)| (*k, summary[*k].as_u64()))
        .collect();
    let want: Vec<(&str, Option<u64>)> = want.iter().map(|(k, v)| (*k, Some(*v))).collect();
    assert_eq!(got, want, "{summary}");
}
