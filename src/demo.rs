//! `batchsync demo`: the whole job on built-in defaults, with no Batch account. Starts the
//! emulator on a free loopback port, syncs the day-1 fixture, then the day-2 fixture, then
//! runs once more over an unchanged segment, printing what each run sent and what the emulator
//! received.

use crate::config::Settings;
use crate::core::run::{RunStatus, RunSummary};
use crate::emulate::{EmulatorConfig, EmulatorThread, Faults};
use crate::pipeline::{self, RunOptions};
use crate::ship::client::Credentials;
use crate::ship::StopFlag;
use crate::ui::counted;
use anyhow::Context;
use std::path::{Path, PathBuf};

const CONFIG: &str = include_str!("../fixtures/orders.toml");
const DAY1: &str = include_str!("../fixtures/orders_day1.csv");
const DAY2: &str = include_str!("../fixtures/orders_day2.csv");

fn random_key(prefix: &str) -> String {
    use rand::Rng;
    let n: u128 = rand::thread_rng().gen();
    format!("{prefix}-{n:032x}")
}

fn say(summary: &RunSummary, label: &str) {
    println!(
        "{label}: run {} {} — {}: {} added, {} changed, {} removed, {} rejected → {} sent in {}, {} pending ({} ms)",
        summary.run_id.unwrap_or_default(),
        summary.status,
        counted(summary.counts.rows, "row", "rows"),
        summary.counts.added,
        summary.counts.changed,
        summary.counts.removed,
        summary.counts.rejected,
        counted(summary.counts.events_sent, "event", "events"),
        counted(summary.counts.requests, "request", "requests"),
        summary.counts.events_pending,
        summary.duration_ms
    );
}

pub fn run(dir: Option<PathBuf>) -> anyhow::Result<()> {
    let dir = dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("batchsync-demo-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (api_key, project_key) = (random_key("demo-rest"), random_key("demo-project"));
    let creds = Credentials::new(api_key.clone(), project_key.clone());
    let emulator = EmulatorThread::start(EmulatorConfig {
        api_key,
        project_key,
        limits: true,
        faults: Faults::default(),
        record_path: Some(dir.join("received.ndjson")),
        seed: 1,
    })
    .context("cannot start the emulator on loopback")?;
    println!(
        "emulator: a Batch-compatible API on {} (keys generated for this demo)",
        emulator.endpoint()
    );

    let config_path = dir.join("batchsync.toml");
    let config = CONFIG.replace("http://127.0.0.1:8787", &emulator.endpoint());
    std::fs::write(&config_path, config).context("cannot write the demo config")?;
    let data = dir.join("orders.csv");
    let state = dir.join(".batchsync");
    if state.exists() {
        std::fs::remove_dir_all(&state).context("cannot reset the demo state")?;
    }
    let settings = Settings::load(&config_path)?;
    let ui = crate::ui::Ui::silent();
    let stop = StopFlag::default();
    let opts = RunOptions::default();

    let mut seen = 0usize;
    let mut show_received = |label: &str| {
        let got = emulator.received();
        println!(
            "  the emulator received {} new events ({label}):",
            got.len() - seen
        );
        for r in &got[seen..] {
            println!("    {} {}", r.custom_id, r.event);
        }
        seen = got.len();
    };

    std::fs::write(&data, DAY1)?;
    let s1 = pipeline::run(&settings, creds.clone(), &opts, &stop, &ui)?;
    say(&s1, "day 1 (first run, initial = \"send\")");
    show_received("every order of day 1");

    std::fs::write(&data, DAY2)?;
    let s2 = pipeline::run(&settings, creds.clone(), &opts, &stop, &ui)?;
    say(&s2, "day 2 (3 orders added, 2 changed, 1 removed)");
    show_received("only the added orders; changes are ignored with on_change = \"ignore\"");

    let s3 = pipeline::run(&settings, creds, &opts, &stop, &ui)?;
    say(&s3, "day 2 again (unchanged segment)");
    show_received("nothing: an unchanged segment sends nothing");

    println!();
    println!("files: {}", dir.display());
    let exe = std::env::current_exe().unwrap_or_else(|_| "batchsync".into());
    let cmd = command_for(&exe);
    println!("  try: {cmd} status --config {}", config_path.display());
    println!("       {cmd} plan --config {}", config_path.display());
    if cmd != "batchsync" {
        println!("  (`cargo install --path .` puts `batchsync` on your PATH)");
    }
    let bad = [&s1, &s2, &s3]
        .iter()
        .any(|s| s.status != RunStatus::Completed);
    anyhow::ensure!(!bad, "a demo run did not complete");
    Ok(())
}

/// How the user can run batchsync again as it was run now: from a cargo build directory
/// (`cargo run`) `batchsync` is not on the PATH, so the hint names `cargo run`.
fn command_for(exe: &Path) -> String {
    let in_target = exe
        .ancestors()
        .any(|a| a.file_name().is_some_and(|n| n == "target"));
    let on_path = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|p| exe.parent() == Some(p.as_path()))
    });
    if in_target && !on_path {
        let release = exe
            .parent()
            .and_then(|p| p.file_name())
            .is_some_and(|n| n == "release");
        if release {
            "cargo run --release --".into()
        } else {
            "cargo run --".into()
        }
    } else {
        "batchsync".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_names_commands_that_run_as_they_are() {
        assert_eq!(
            command_for(Path::new("/home/u/batchsync/target/release/batchsync")),
            "cargo run --release --"
        );
        assert_eq!(
            command_for(Path::new("/home/u/batchsync/target/debug/batchsync")),
            "cargo run --"
        );
        assert_eq!(command_for(Path::new("/opt/tools/batchsync")), "batchsync");
    }
}
