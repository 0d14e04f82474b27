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
    /// Compute the delta and the events a run would send; commits and sends nothing.
    Plan(PlanArgs),
    /// One whole run: resume, snapshot, diff, commit, ship.
    Run(RunArgs),
    /// Last runs, pending requests, reject counts.
    Status(StatusArgs),
    /// The rejected rows with their reasons.
    Rejects(RejectsArgs),
    /// A local Batch-compatible API on loopback, for tests and trials.
    Emulate(crate::emulate::EmulateArgs),
    /// Sync the bundled fixtures to a local emulator: the whole job, no Batch account needed.
    Demo(DemoArgs),
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
    pub initial: Option<InitialArg>,
    /// As `run --force`.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[arg(long)]
    pub json: bool,
    /// Ship a delta larger than max_added / max_removed allow.
    #[arg(long)]
    pub force: bool,
    /// Override [sync] initial for this run (only the first run of a store uses it).
    #[arg(long, value_enum)]
    pub initial: Option<InitialArg>,
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
    /// Only this run's rejects.
    #[arg(long)]
    pub run: Option<i64>,
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Where to write the demo's config, data and state (default: a new temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum InitialArg {
    Send,
    Baseline,
}

impl From<InitialArg> for Initial {
    fn from(a: InitialArg) -> Initial {
        match a {
            InitialArg::Send => Initial::Send,
            InitialArg::Baseline => Initial::Baseline,
        }
    }
}
