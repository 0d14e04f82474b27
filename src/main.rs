//! The `batchsync` binary: parse, call, print, exit with a documented code.

use batchsync::cli::Cli;
use clap::Parser;

fn main() {
    let cli = Cli::parse();
    let quiet = cli.quiet;
    let default = if quiet { "warn" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("BATCHSYNC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .compact()
        .init();
    let code = batchsync::commands::dispatch(cli);
    std::process::exit(code);
}
