//! The commands: each turns settings into a call, prints the result (human text, or one JSON
//! value on stdout with `--json`), and returns its exit code.
//!
//! Exit codes (DESIGN.md, `core::run::ExitCode`): 0 completed, nothing pending or rejected;
//! 1 failed (pending kept); 2 usage or config error (nothing sent); 3 completed but this run
//! rejected rows; 75 another run holds the lock.

use crate::cli::{Cli, Command, DemoArgs, PlanArgs, RejectsArgs, RunArgs, ServeArgs, StatusArgs};
use crate::config::Settings;
use crate::core::run::{ExitCode, RunSummary};
use crate::pipeline::{self, RunOptions};
use crate::ship::client::Credentials;
use crate::ship::StopFlag;
use crate::store::Store;
use crate::ui::{counted, Ui};

const EXIT_OK: i32 = ExitCode::Ok as i32;
const EXIT_FAILED: i32 = ExitCode::Failed as i32;
const EXIT_CONFIG: i32 = ExitCode::Config as i32;
const EXIT_REJECTED: i32 = ExitCode::Rejected as i32;

/// Prints an error with its whole chain of causes.
fn error(e: &(dyn std::error::Error + '_)) {
    eprintln!("batchsync: error: {}", crate::errors::chain(e));
}

/// Prints a message of the command's own.
fn say_error(msg: &str) {
    eprintln!("batchsync: error: {msg}");
}

fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).expect("serialisable"));
}

fn load(cli: &Cli) -> Option<Settings> {
    match Settings::load(&cli.config) {
        Ok(s) => Some(s),
        Err(e) => {
            error(&e);
            None
        }
    }
}

pub fn dispatch(cli: Cli) -> i32 {
    let ui = Ui::new(cli.quiet, cli.command.json());
    match &cli.command {
        Command::Init { force } => init(&cli, *force),
        Command::Check(a) => match load(&cli) {
            Some(s) => check(&s, a.json, &ui),
            None => EXIT_CONFIG,
        },
        Command::Setup(a) => match load(&cli) {
            Some(s) => setup(&s, a.json),
            None => EXIT_CONFIG,
        },
        Command::Plan(a) => match load(&cli) {
            Some(s) => plan(&s, a, &ui),
            None => EXIT_CONFIG,
        },
        Command::Run(a) => run(&cli, a, &ui),
        Command::Status(a) => match load(&cli) {
            Some(s) => status(&s, a),
            None => EXIT_CONFIG,
        },
        Command::Rejects(a) => match load(&cli) {
            Some(s) => rejects(&s, a),
            None => EXIT_CONFIG,
        },
        Command::Explain(a) => match load(&cli) {
            Some(s) => crate::explain::command(&s, a),
            None => EXIT_CONFIG,
        },
        Command::Emulate(a) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime");
            match rt.block_on(crate::emulate::run_cli(a.clone())) {
                Ok(()) => EXIT_OK,
                Err(e) => {
                    say_error(&format!("{e:#}"));
                    EXIT_CONFIG
                }
            }
        }
        Command::Demo(a) => demo(a),
        Command::Serve(a) => match load(&cli) {
            Some(s) => serve(s, a, &ui),
            None => EXIT_CONFIG,
        },
    }
}

fn init(cli: &Cli, force: bool) -> i32 {
    if cli.config.exists() && !force {
        say_error(&format!(
            "{} exists; pass --force to overwrite it",
            cli.config.display()
        ));
        return EXIT_CONFIG;
    }
    match std::fs::write(&cli.config, crate::config::STARTER) {
        Ok(()) => {
            eprintln!(
                "wrote {}: edit [source] and [mapping], then `batchsync check`",
                cli.config.display()
            );
            EXIT_OK
        }
        Err(e) => {
            say_error(&format!("cannot write {}: {e}", cli.config.display()));
            EXIT_CONFIG
        }
    }
}

fn setup(settings: &Settings, json: bool) -> i32 {
    if settings.warehouse.is_none() {
        say_error(&format!(
            "{}: `setup` creates the tables of [state] store = \"database\"; this sync keeps its state in {} (created by its first run)",
            settings.file.display(),
            settings.state_path.display()
        ));
        return EXIT_CONFIG;
    }
    match crate::warehouse::setup(settings) {
        Ok(r) => {
            if json {
                print_json(&r);
            } else {
                eprintln!("setup in {}:", r.database);
                for c in &r.created {
                    eprintln!("  created {c}");
                }
                for e in &r.existing {
                    eprintln!("  already there: {e}");
                }
                if r.created.is_empty() {
                    eprintln!("nothing to do: every table is in place");
                }
            }
            EXIT_OK
        }
        Err(e) => {
            error(&e);
            EXIT_FAILED
        }
    }
}

/// The database mode's part of `check`: the sync's tables and the grants, read only.
fn check_database(settings: &Settings) -> Result<String, pipeline::RunError> {
    let db = crate::warehouse::Db::connect(settings)?;
    crate::warehouse::verify(&db, true)?;
    Ok(format!(
        "database mode: the tables {} are set up, with the grants a run needs",
        db.tables.describe()
    ))
}

fn check(settings: &Settings, json: bool, ui: &Ui) -> i32 {
    let state = match settings.warehouse {
        Some(_) => match check_database(settings) {
            Ok(s) => s,
            Err(e) => {
                error(&e);
                return e.exit_code().code();
            }
        },
        None => format!("local store {}", settings.state_path.display()),
    };
    let keys_present = Credentials::from_env(&settings.destination).map_err(|e| e.to_string());
    match pipeline::check(settings, ui) {
        Ok(mut c) => {
            c.credentials = match &keys_present {
                Ok(_) => "both key variables are set".into(),
                Err(e) => e.clone(),
            };
            c.state = state;
            if json {
                print_json(&c);
            } else {
                eprintln!("config {}: ok", settings.file.display());
                eprintln!(
                    "source: {} rows read, {} would be rejected",
                    c.rows, c.rejected
                );
                if !c.rejects_sample.is_empty() {
                    eprint!("{}", sample_table(&c.rejects_sample));
                }
                eprintln!("keys: {}", c.credentials);
                eprintln!("state: {}", c.state);
            }
            if c.rejected > 0 {
                EXIT_REJECTED
            } else if keys_present.is_err() {
                EXIT_CONFIG
            } else {
                EXIT_OK
            }
        }
        Err(e) => {
            error(&e);
            e.exit_code().code()
        }
    }
}

fn plan(settings: &Settings, a: &PlanArgs, ui: &Ui) -> i32 {
    let opts = RunOptions {
        force: a.force,
        retry_rejects: a.retry_rejects,
        initial: a.initial,
        ..RunOptions::default()
    };
    match pipeline::plan(settings, &opts, ui) {
        Ok(p) => {
            if a.json {
                print_json(&p);
            } else {
                eprintln!(
                    "plan: {} rows; {} added, {} changed, {} removed, {} unchanged, {} rejected, {} still rejected",
                    p.rows, p.added, p.changed, p.removed, p.unchanged, p.rejected, p.still_rejected
                );
                eprintln!(
                    "a run now would send {} events ({} new via /profiles/{}, {} pending from earlier runs)",
                    p.events, p.new_events, p.endpoint, p.pending_events
                );
                if p.profile_updates > 0 {
                    let backfill = if p.profile_backfill {
                        " (a backfill: the sync's first run with these profile attributes sets them on every present row)"
                    } else {
                        ""
                    };
                    eprintln!(
                        "and {} profile attribute updates{backfill}",
                        p.profile_updates
                    );
                }
                if let Some(g) = &p.guard {
                    eprintln!("guard: {g}");
                }
                for s in p.sample.iter().chain(&p.profile_sample) {
                    eprintln!("  {s}");
                }
            }
            EXIT_OK
        }
        Err(e) => {
            error(&e);
            e.exit_code().code()
        }
    }
}

fn human_summary(s: &RunSummary) {
    eprintln!(
        "run {}: {} — {}; {} added, {} changed, {} removed, {} rejected; {} sent in {} ({}), {} pending ({}); {} ms",
        s.run_id.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
        s.status,
        counted(s.counts.rows, "row", "rows"),
        s.counts.added,
        s.counts.changed,
        s.counts.removed,
        s.counts.rejected,
        counted(s.counts.events_sent, "event", "events"),
        counted(s.counts.requests, "request", "requests"),
        counted(s.counts.retries, "retry", "retries"),
        s.counts.events_pending,
        counted(s.counts.requests_pending, "request", "requests"),
        s.duration_ms
    );
    if s.counts.profile_updates > 0 {
        eprintln!(
            "{} operations carried profile attributes",
            s.counts.profile_updates
        );
    }
    if s.counts.rehashed > 0 {
        eprintln!(
            "{} rows' stored hashes were rewritten under hash recipe {} (the store's upgrade; nothing was sent for it)",
            s.counts.rehashed,
            crate::core::encode::HASH_RECIPE
        );
    }
    if let Some(r) = &s.sent_nothing_reason {
        eprintln!("nothing sent: {r}");
    }
    if s.counts.still_rejected > 0 {
        eprintln!(
            "{} rows are still rejected, unchanged since their last reject: not sent again (`batchsync rejects`; `run --retry-rejects` tries them once more)",
            s.counts.still_rejected
        );
    }
    if s.counts.rejected > 0 {
        eprintln!("see the rejected rows with `batchsync rejects`");
    }
}

/// Installs SIGINT/SIGTERM handlers that raise the stop flag.
fn stop_on_signals() -> StopFlag {
    let stop = StopFlag::default();
    let s = stop.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("signal runtime");
        rt.block_on(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            eprintln!(
                "batchsync: stopping: finishing the request in flight, keeping the rest pending"
            );
            s.raise();
        });
    });
    stop
}

fn run(cli: &Cli, a: &RunArgs, ui: &Ui) -> i32 {
    let Some(settings) = load(cli) else {
        return EXIT_CONFIG;
    };
    let failed = |msg: String, code: i32| {
        say_error(&msg);
        if a.json {
            print_json(&RunSummary::failed(msg));
        }
        code
    };
    let creds = match Credentials::from_env(&settings.destination) {
        Ok(c) => c,
        Err(e) => return failed(e.to_string(), EXIT_CONFIG),
    };
    let opts = RunOptions {
        force: a.force,
        retry_rejects: a.retry_rejects,
        initial: a.initial,
        max_requests: a.max_requests,
        max_duration: a.max_duration,
        progress: !cli.quiet,
        tally: None,
    };
    let stop = stop_on_signals();
    match pipeline::run(&settings, creds, &opts, &stop, ui) {
        Ok(summary) => {
            if let Some(e) = &summary.error {
                say_error(e);
            }
            if a.json {
                print_json(&summary);
            } else {
                human_summary(&summary);
            }
            summary.status.exit_code().code()
        }
        Err(f) => {
            error(&f.error);
            if a.json {
                print_json(&f.summary);
            } else if f.summary.counts.requests > 0 {
                human_summary(&f.summary);
            }
            f.error.exit_code().code()
        }
    }
}

fn status(settings: &Settings, a: &StatusArgs) -> i32 {
    let status = match pipeline::status::status(settings, a.runs) {
        Ok(Some(s)) => s,
        Ok(None) => {
            if a.json {
                print_json(&pipeline::status::Status::default().to_json());
            } else {
                eprintln!(
                    "no runs yet: the state store {} does not exist",
                    settings.state_path.display()
                );
            }
            return EXIT_OK;
        }
        Err(e) => {
            error(&e);
            return e.exit_code().code();
        }
    };
    if a.json {
        print_json(&status.to_json());
        return EXIT_OK;
    }
    println!(
        "baseline: {}; pending: {}, {}",
        counted(status.baseline_rows, "row", "rows"),
        counted(status.pending.requests, "request", "requests"),
        counted(status.pending.events, "event", "events")
    );
    if crate::ui::stdout_is_terminal() && status.runs.len() > 1 {
        // Oldest to newest, left to right.
        let series =
            |f: fn(&RunSummary) -> u64| -> Vec<u64> { status.runs.iter().rev().map(f).collect() };
        println!(
            "last {} runs, oldest first: events sent {}  rejected {}",
            status.runs.len(),
            crate::ui::sparkline(&series(|r| r.counts.events_sent)),
            crate::ui::sparkline(&series(|r| r.counts.rejected))
        );
    }
    // A column for profile updates only when some run sent them.
    let profiles = status.runs.iter().any(|r| r.counts.profile_updates > 0);
    let profile_cell = |v: &str| {
        if profiles {
            format!(" {v:>8}")
        } else {
            String::new()
        }
    };
    println!(
        "{:>5}  {:<24}  {:<11} {:>9} {:>7} {:>7} {:>7} {:>8} {:>8} {:>8}{}",
        "run",
        "started",
        "status",
        "rows",
        "added",
        "changed",
        "removed",
        "rejected",
        "sent",
        "pending",
        profile_cell("profiles")
    );
    for r in &status.runs {
        println!(
            "{:>5}  {:<24}  {:<11} {:>9} {:>7} {:>7} {:>7} {:>8} {:>8} {:>8}{}",
            r.run_id.unwrap_or_default(),
            r.started_at,
            r.status,
            r.counts.rows,
            r.counts.added,
            r.counts.changed,
            r.counts.removed,
            r.counts.rejected,
            r.counts.events_sent,
            r.counts.events_pending,
            profile_cell(&r.counts.profile_updates.to_string())
        );
        if let Some(e) = &r.error {
            println!("       {e}");
        }
    }
    EXIT_OK
}

fn rejects(settings: &Settings, a: &RejectsArgs) -> i32 {
    let all = a.all || a.run.is_some();
    let list = if settings.warehouse.is_some() {
        match pipeline::database::open(settings) {
            Ok(s) if all => s.rejects(a.run, a.limit),
            Ok(s) => s.open_reject_list(a.limit),
            Err(e) => {
                error(&e);
                return e.exit_code().code();
            }
        }
    } else {
        match Store::open_read(&settings.state_path) {
            Ok(Some(s)) if all => s.rejects(a.run, a.limit),
            Ok(Some(s)) => s.open_reject_list(a.limit),
            Ok(None) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    };
    match list {
        Ok(list) => {
            if a.json {
                print_json(&list);
            } else if list.is_empty() {
                eprintln!(
                    "{}",
                    if all {
                        "no rejects"
                    } else {
                        "no rows are rejected now (`rejects --all` shows the history)"
                    }
                );
            } else {
                print!("{}", reject_table(&list, all));
            }
            EXIT_OK
        }
        Err(e) => {
            error(&e);
            EXIT_FAILED
        }
    }
}

/// The rejects as an aligned table: open ones with the runs that first and last found them,
/// the history with the run that recorded each.
fn reject_table(list: &[crate::store::RejectRecord], all: bool) -> String {
    let dash = || "-".to_string();
    let mut rows: Vec<Vec<String>> = vec![if all {
        ["run", "key", "line", "column", "rule", "source", "reason"]
            .map(String::from)
            .to_vec()
    } else {
        [
            "key",
            "first run",
            "last run",
            "line",
            "column",
            "rule",
            "source",
            "reason",
        ]
        .map(String::from)
        .to_vec()
    }];
    for r in list {
        let key = r.key.clone().unwrap_or_else(dash);
        let line = r.line.map_or_else(dash, |l| l.to_string());
        let column = r.column.clone().unwrap_or_else(dash);
        rows.push(if all {
            vec![
                r.run_id.to_string(),
                key,
                line,
                column,
                r.rule.clone(),
                r.source.clone(),
                r.reason.clone(),
            ]
        } else {
            vec![
                key,
                r.first_run_id.map_or_else(dash, |i| i.to_string()),
                r.run_id.to_string(),
                line,
                column,
                r.rule.clone(),
                r.source.clone(),
                r.reason.clone(),
            ]
        });
    }
    aligned(&rows)
}

/// `check`'s and `plan`'s sample of rejects (JSON objects with key, line, column, rule,
/// reason) as the same table.
fn sample_table(sample: &[serde_json::Value]) -> String {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut rows: Vec<Vec<String>> = vec![["key", "line", "column", "rule", "reason"]
        .map(String::from)
        .to_vec()];
    for r in sample {
        rows.push(
            ["key", "line", "column", "rule", "reason"]
                .iter()
                .map(|f| text(&r[*f]))
                .collect(),
        );
    }
    aligned(&rows)
}

/// Rows of cells as columns padded to their widest cell; the last column is not padded.
pub(crate) fn aligned(rows: &[Vec<String>]) -> String {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == cols {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn serve(settings: Settings, a: &ServeArgs, ui: &Ui) -> i32 {
    let opts = crate::serve::ServeOptions {
        every: a.every,
        listen: a.listen,
        allow_remote: a.allow_remote,
    };
    match crate::serve::serve(settings, &opts, &stop_on_signals(), ui) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            error(&e);
            e.exit_code().code()
        }
    }
}

fn demo(a: &DemoArgs) -> i32 {
    match crate::demo::run(a.dir.clone()) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            say_error(&format!("{e:#}"));
            EXIT_FAILED
        }
    }
}
