//! `batchsync emulate`: flags → a validated emulator setup, then serve until Ctrl-C/SIGTERM.
//!
//! - Loopback only: the emulator speaks plain HTTP and may run with public demo keys, so a
//!   non-loopback `--host` is refused.
//! - The accepted keys come from the environment variables the flags name (the same ones the
//!   client reads); when one is unset, the public demo key is accepted instead and stderr says
//!   so. A key read from the environment is never printed.
//! - stdout carries exactly one line, `{"endpoint":"http://127.0.0.1:PORT"}`, once listening,
//!   so a script can start the emulator on port 0 and read where it went.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::{bail, Context};

use super::{Emulator, EmulatorConfig, Faults};

/// The REST API key accepted when the key variable is unset.
pub const DEMO_API_KEY: &str = "demo-api-key";
/// The project key accepted when the project variable is unset.
pub const DEMO_PROJECT_KEY: &str = "demo-project-key";

/// Serve a local Batch-compatible Profile API on loopback.
#[derive(clap::Args, Debug, Clone)]
pub struct EmulateArgs {
    /// Port to listen on (0 picks a free one; the chosen endpoint is printed on stdout).
    #[arg(long, default_value_t = 8787)]
    pub port: u16,
    /// Address to listen on: a loopback address only (127.0.0.1, ::1, localhost).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Environment variable holding the REST API key to accept.
    #[arg(long, value_name = "VAR", default_value = "BATCH_REST_API_KEY")]
    pub api_key_env: String,
    /// Environment variable holding the project key to accept.
    #[arg(long, value_name = "VAR", default_value = "BATCH_PROJECT_KEY")]
    pub project_key_env: String,
    /// Turn Batch's rate limits (token buckets) off.
    #[arg(long)]
    pub no_limits: bool,
    /// Append every accepted event to this NDJSON file.
    #[arg(long, value_name = "PATH")]
    pub record: Option<PathBuf>,
    /// Seed of the fault generator: the same seed gives the same faults.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Share of requests answered 500 or 503, between 0 and 1.
    #[arg(long, value_name = "SHARE", default_value_t = 0.0, value_parser = parse_share)]
    pub error_rate: f64,
    /// Share of requests answered 429, between 0 and 1.
    #[arg(long, value_name = "SHARE", default_value_t = 0.0, value_parser = parse_share)]
    pub throttle_rate: f64,
    /// Seconds sent in Retry-After on injected 429s (default: no header).
    #[arg(long, value_name = "SECONDS")]
    pub retry_after: Option<u64>,
    /// Milliseconds added before every answer.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub latency_ms: u64,
    /// Share of requests whose connection is closed before processing.
    #[arg(long, value_name = "SHARE", default_value_t = 0.0, value_parser = parse_share)]
    pub drop_before_rate: f64,
    /// Share of requests processed and recorded, then closed without an answer.
    #[arg(long, value_name = "SHARE", default_value_t = 0.0, value_parser = parse_share)]
    pub drop_after_rate: f64,
    /// Drop every operation for this custom id with a partial error (repeatable, or comma-separated).
    #[arg(long = "reject-custom-id", value_name = "ID", value_delimiter = ',')]
    pub reject_custom_ids: Vec<String>,
    /// Refuse with a 400 every request holding an operation for this custom id (repeatable).
    #[arg(
        long = "bad-request-custom-id",
        value_name = "ID",
        value_delimiter = ','
    )]
    pub bad_request_custom_ids: Vec<String>,
}

/// Starts the emulator, prints its endpoint as one JSON line and serves until Ctrl-C/SIGTERM.
pub async fn run_cli(args: EmulateArgs) -> anyhow::Result<()> {
    let setup = setup(&args, |name| std::env::var(name).ok())?;
    for notice in &setup.notices {
        eprintln!("batchsync emulate: {notice}");
    }
    let limits = setup.config.limits;
    let emulator = Emulator::start(setup.addr, setup.config)
        .await
        .with_context(|| format!("cannot start the emulator on {}", setup.addr))?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(
            stdout,
            "{}",
            serde_json::json!({ "endpoint": emulator.endpoint() })
        )?;
        stdout.flush()?;
    }
    eprintln!(
        "batchsync emulate: serving {} (rate limits {}); Ctrl-C to stop",
        emulator.endpoint(),
        if limits { "on" } else { "off" }
    );
    wait_for_stop_signal().await?;
    emulator.shutdown().await;
    Ok(())
}

/// The validated setup of one `emulate` invocation.
#[derive(Debug)]
struct Setup {
    addr: SocketAddr,
    config: EmulatorConfig,
    /// Lines for stderr; never a key's value.
    notices: Vec<String>,
}

fn setup(args: &EmulateArgs, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Setup> {
    let ip = loopback_ip(&args.host)?;
    let faults = Faults {
        error_rate: args.error_rate,
        throttle_rate: args.throttle_rate,
        retry_after: args.retry_after,
        latency_ms: args.latency_ms,
        drop_before_rate: args.drop_before_rate,
        drop_after_rate: args.drop_after_rate,
        reject_custom_ids: args.reject_custom_ids.clone(),
        bad_request_custom_ids: args.bad_request_custom_ids.clone(),
    };
    faults.check().map_err(anyhow::Error::msg)?;
    let mut notices = Vec::new();
    let mut key = |var: &str, what: &str, demo: &str| match env(var).filter(|v| !v.is_empty()) {
        Some(value) => {
            notices.push(format!("accepting the {what} from ${var}"));
            value
        }
        None => {
            notices.push(format!(
                "${var} is not set: accepting the demo {what} \"{demo}\""
            ));
            demo.to_owned()
        }
    };
    let api_key = key(&args.api_key_env, "REST API key", DEMO_API_KEY);
    let project_key = key(&args.project_key_env, "project key", DEMO_PROJECT_KEY);
    Ok(Setup {
        addr: SocketAddr::new(ip, args.port),
        config: EmulatorConfig {
            api_key,
            project_key,
            limits: !args.no_limits,
            faults,
            record_path: args.record.clone(),
            seed: args.seed,
        },
        notices,
    })
}

fn loopback_ip(host: &str) -> anyhow::Result<IpAddr> {
    let ip = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        bare.parse::<IpAddr>().with_context(|| {
            format!("--host {host:?} is not an IP address; use 127.0.0.1, ::1 or localhost")
        })?
    };
    if !ip.is_loopback() {
        bail!(
            "refusing to listen on {ip}: the emulator speaks plain HTTP and may accept public \
             demo keys, so it serves loopback only; use --host 127.0.0.1 or --host ::1"
        );
    }
    Ok(ip)
}

fn parse_share(value: &str) -> Result<f64, String> {
    let share: f64 = value
        .parse()
        .map_err(|_| format!("{value:?} is not a number"))?;
    if (0.0..=1.0).contains(&share) {
        Ok(share)
    } else {
        Err(format!("{value} is not a share between 0 and 1"))
    }
}

async fn wait_for_stop_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result.context("cannot listen for Ctrl-C")?,
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("cannot listen for Ctrl-C")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use rstest::rstest;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: EmulateArgs,
    }

    fn parse(argv: &[&str]) -> Result<EmulateArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("emulate").chain(argv.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn defaults_serve_port_8787_on_loopback_with_limits_and_no_faults() {
        let setup = setup(&parse(&[]).unwrap(), |_| None).unwrap();
        assert_eq!(setup.addr, "127.0.0.1:8787".parse().unwrap());
        assert!(setup.config.limits);
        assert_eq!(setup.config.faults.error_rate, 0.0);
        assert_eq!(setup.config.faults.retry_after, None);
    }

    #[test]
    fn unset_key_variables_fall_back_to_the_demo_keys_and_say_so() {
        let setup = setup(&parse(&[]).unwrap(), |_| None).unwrap();
        assert_eq!(setup.config.api_key, DEMO_API_KEY);
        assert_eq!(setup.config.project_key, DEMO_PROJECT_KEY);
        assert!(setup.notices[0].contains("$BATCH_REST_API_KEY is not set"));
        assert!(setup.notices[1].contains("$BATCH_PROJECT_KEY is not set"));
    }

    #[test]
    fn keys_come_from_the_named_variables_and_are_never_in_the_notices() {
        let args = parse(&["--api-key-env", "MY_KEY", "--project-key-env", "MY_PROJECT"]).unwrap();
        let env = |name: &str| match name {
            "MY_KEY" => Some("s3cret-api".to_owned()),
            "MY_PROJECT" => Some("s3cret-project".to_owned()),
            _ => None,
        };
        let setup = setup(&args, env).unwrap();
        assert_eq!(setup.config.api_key, "s3cret-api");
        assert_eq!(setup.config.project_key, "s3cret-project");
        let shown = format!("{:?} {:?}", setup.notices, setup.config);
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("$MY_KEY"), "{shown}");
    }

    #[rstest]
    #[case("127.0.0.1", true)]
    #[case("127.0.0.2", true)]
    #[case("::1", true)]
    #[case("[::1]", true)]
    #[case("localhost", true)]
    #[case("0.0.0.0", false)]
    #[case("192.168.1.10", false)]
    #[case("::", false)]
    #[case("example.com", false)]
    fn only_loopback_hosts_are_accepted(#[case] host: &str, #[case] accepted: bool) {
        let args = parse(&["--host", host]).unwrap();
        let result = setup(&args, |_| None);
        assert_eq!(result.is_ok(), accepted, "{result:?}");
    }

    #[test]
    fn fault_flags_fill_the_faults() {
        let args = parse(&[
            "--error-rate",
            "0.1",
            "--throttle-rate",
            "0.2",
            "--retry-after",
            "3",
            "--latency-ms",
            "50",
            "--drop-before-rate",
            "0.05",
            "--drop-after-rate",
            "0.01",
            "--no-limits",
            "--seed",
            "9",
            "--port",
            "0",
            "--record",
            "out.ndjson",
            "--reject-custom-id",
            "ada",
            "--reject-custom-id",
            "bob,cy",
            "--bad-request-custom-id",
            "eve",
        ])
        .unwrap();
        let config = setup(&args, |_| None).unwrap().config;
        let f = &config.faults;
        assert_eq!(
            (f.error_rate, f.throttle_rate, f.retry_after, f.latency_ms),
            (0.1, 0.2, Some(3), 50)
        );
        assert_eq!((f.drop_before_rate, f.drop_after_rate), (0.05, 0.01));
        assert_eq!(f.reject_custom_ids, ["ada", "bob", "cy"]);
        assert_eq!(f.bad_request_custom_ids, ["eve"]);
        assert!(!config.limits);
        assert_eq!(config.seed, 9);
        assert_eq!(config.record_path, Some(PathBuf::from("out.ndjson")));
    }

    #[rstest]
    #[case("1.5")]
    #[case("-0.1")]
    #[case("NaN")]
    #[case("lots")]
    fn a_rate_outside_zero_to_one_is_a_usage_error(#[case] rate: &str) {
        assert!(parse(&["--error-rate", rate]).is_err());
    }
}
