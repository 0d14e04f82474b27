//! Command-line arguments: clap definitions, turned into validated settings in one place.

use crate::config::Initial;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "batchsync",
    version,
    about = "Incremental, checkpointed sync of a segment's new rows to Batch as events"
)]
pub struct Cli {
    /// The config file.
    #[arg(long, global = true, default_value = crate::config::DEFAULT_PATH)]
    pub config: PathBuf,
    /// No progress bars or progress lines on stderr.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write a commented starter config.
    Init {
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Validate the config, the source and the mapping; sends nothing, writes nothing.
    Check(JsonFlag),
    /// Database mode: create (or migrate) the sync's tables in the source database.
    Setup(JsonFlag),
    /// Compute the delta and the events a run would send; commits and sends nothing.
    Plan(PlanArgs),
    /// One whole run: resume, snapshot, diff, commit, ship.
    Run(RunArgs),
    /// Last runs, pending requests, reject counts.
    Status(StatusArgs),
    /// The rejected rows with their reasons.
    Rejects(RejectsArgs),
    /// One row's history: each run that added, changed, removed or rejected it, the event
    /// built, the request and Batch's answer.
    Explain(ExplainArgs),
    /// A local Batch-compatible API on loopback, for tests and trials.
    Emulate(crate::emulate::EmulateArgs),
    /// Sync the bundled fixtures to a local emulator: the whole job, no Batch account needed.
    Demo(DemoArgs),
    /// Run the sync on a schedule in one process, serving /metrics, /healthz and /status.
    Serve(ServeArgs),
}

impl Command {
    /// Whether the command prints `--json`: then no progress bar is drawn, even on a terminal
    /// (the JSON is for a program; log lines still go to stderr).
    pub fn json(&self) -> bool {
        match self {
            Command::Check(a) | Command::Setup(a) => a.json,
            Command::Plan(a) => a.json,
            Command::Run(a) => a.json,
            Command::Status(a) => a.json,
            Command::Rejects(a) => a.json,
            _ => false,
        }
    }
}

#[derive(Args, Debug)]
pub struct JsonFlag {
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    #[arg(long)]
    pub json: bool,
    /// As `run --initial`.
    #[arg(long, value_enum)]
    pub initial: Option<Initial>,
    /// As `run --force`.
    #[arg(long)]
    pub force: bool,
    /// As `run --retry-rejects`.
    #[arg(long)]
    pub retry_rejects: bool,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[arg(long)]
    pub json: bool,
    /// Ship a delta larger than max_added / max_removed / max_changed allow.
    #[arg(long)]
    pub force: bool,
    /// Try every row still rejected again once, as if it were new.
    #[arg(long)]
    pub retry_rejects: bool,
    /// Override [sync] initial for this run (only the first run of a store uses it).
    #[arg(long, value_enum)]
    pub initial: Option<Initial>,
    /// Stop shipping after this many HTTP requests (pending kept for the next run).
    #[arg(long)]
    pub max_requests: Option<u64>,
    /// Stop shipping after this long, e.g. "10m" (pending kept for the next run).
    #[arg(long, value_parser = crate::config::parse_duration)]
    pub max_duration: Option<std::time::Duration>,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[arg(long)]
    pub json: bool,
    /// How many runs to show.
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
}

#[derive(Args, Debug)]
pub struct RejectsArgs {
    #[arg(long)]
    pub json: bool,
    /// Every reject as it was recorded, not only the rows rejected now.
    #[arg(long)]
    pub all: bool,
    /// Only this run's rejects (implies --all).
    #[arg(long)]
    pub run: Option<i64>,
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// How often to run, e.g. "15m" (a run longer than that delays the next one).
    #[arg(long, value_parser = crate::serve::parse_interval)]
    pub every: std::time::Duration,
    /// Where to serve the endpoints; port 0 takes a free one (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub listen: std::net::SocketAddr,
    /// Allow a --listen address beyond loopback: the endpoints have no authentication.
    #[arg(long)]
    pub allow_remote: bool,
}

#[derive(Args, Debug)]
pub struct ExplainArgs {
    #[arg(long)]
    pub json: bool,
    /// The row's primary key: `col=value` for each key column, the value alone for a
    /// one-column key, or a JSON object of the key columns (as `--json` outputs print keys);
    /// without a primary key, the row hash.
    #[arg(required = true, num_args = 1.., allow_hyphen_values = true, value_name = "KEY")]
    pub key: Vec<String>,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Where to write the demo's config, data and state (default: a new temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn run_args(argv: &[&str]) -> RunArgs {
        let cli = Cli::try_parse_from([&["batchsync", "run"], argv].concat()).unwrap();
        match cli.command {
            Command::Run(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn run_takes_the_config_words_for_initial() {
        assert_eq!(run_args(&[]).initial, None);
        assert_eq!(
            run_args(&["--initial", "baseline"]).initial,
            Some(Initial::Baseline)
        );
        assert_eq!(
            run_args(&["--initial", "send"]).initial,
            Some(Initial::Send)
        );
        assert!(Cli::try_parse_from(["batchsync", "run", "--initial", "later"]).is_err());
    }

    #[test]
    fn max_duration_takes_the_config_durations() {
        let d = |s: &str| run_args(&["--max-duration", s]).max_duration;
        assert_eq!(d("1h 30m"), Some(Duration::from_secs(5400)));
        assert_eq!(d("90"), Some(Duration::from_secs(90)));
        let e = Cli::try_parse_from(["batchsync", "run", "--max-duration", "soon"]).unwrap_err();
        assert!(e.to_string().contains("not a duration"), "{e}");
    }
}
