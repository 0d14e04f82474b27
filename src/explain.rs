//! `batchsync explain KEY`: one row's history from the state store (DESIGN.md "explain").
//!
//! The KEY argument is read against the primary key (`core::history::parse_key`) into the keys
//! the store may hold: the local store's key bytes, encoded as the snapshot encodes them, or
//! the database mode's key text. Each is looked up; the one the store knows is shown. A plain
//! value that two stored rows could both be (the text `"17"` and the number `17` of a typed
//! source) is refused with both, to be given again as JSON.
//!
//! Read only: no lock is taken and nothing is written.

use crate::cli::ExplainArgs;
use crate::config::Settings;
use crate::core::encode::display_key;
use crate::core::history::{local_keys, parse_key, text_keys, KeyArg};
use crate::core::run::ExitCode;
use crate::state::{key_json, Explained};
use crate::store::Store;

/// Why `explain` has nothing to show, with its exit code.
#[derive(Debug)]
struct Failed {
    message: String,
    code: ExitCode,
}

impl Failed {
    fn new(code: ExitCode, message: impl Into<String>) -> Failed {
        Failed {
            message: message.into(),
            code,
        }
    }
}

/// Prints the history and returns the exit code: 0, 1 for a key the store does not know, 2 for
/// an argument that names no key.
pub fn command(settings: &Settings, a: &ExplainArgs) -> i32 {
    match explain(settings, &a.key) {
        Ok(e) => {
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json(&e)).expect("serialisable")
                );
            } else {
                print!("{}", human(&e));
            }
            ExitCode::Ok.code()
        }
        Err(f) => {
            eprintln!("batchsync: error: {}", f.message);
            f.code.code()
        }
    }
}

fn explain(settings: &Settings, args: &[String]) -> Result<Explained, Failed> {
    let plan = &settings.plan;
    let names = plan.key_names();
    let arg =
        parse_key(args, names).map_err(|e| Failed::new(ExitCode::Config, format!("KEY: {e}")))?;
    let store_error =
        |e: &dyn std::error::Error| Failed::new(ExitCode::Failed, crate::errors::chain(e));
    let (mut found, what) = if settings.warehouse.is_some() {
        let store = crate::pipeline::database::open(settings).map_err(|e| {
            let code = e.exit_code();
            Failed::new(code, crate::errors::chain(&e))
        })?;
        let keys = text_keys(&arg, names)
            .map_err(|e| Failed::new(ExitCode::Config, format!("KEY: {e}")))?;
        let mut found = Vec::new();
        for k in keys {
            let e = store.explain(&k).map_err(|e| store_error(&e))?;
            if e.known() {
                found.push(e);
            }
        }
        (found, store.db.tables.describe())
    } else {
        let what = settings.state_path.display().to_string();
        let Some(store) = Store::open_read(&settings.state_path).map_err(|e| store_error(&e))?
        else {
            return Err(Failed::new(
                ExitCode::Failed,
                format!("no row with key {} in {what}: the state store does not exist yet (no run has committed)", shown(&arg, args)),
            ));
        };
        let types: Vec<_> = plan.key.iter().map(|&i| plan.types[i]).collect();
        let keys = local_keys(&arg, &types, names, settings.timezone)
            .map_err(|e| Failed::new(ExitCode::Config, format!("KEY: {e}")))?;
        let mut found = Vec::new();
        for k in keys {
            let display = display_key(&k, names);
            let e = store.explain(&k, &display).map_err(|e| store_error(&e))?;
            if e.known() {
                found.push(e);
            }
        }
        (found, what)
    };
    match found.len() {
        0 => Err(Failed::new(
            ExitCode::Failed,
            format!(
                "no row with key {} in {what}: no run recorded it, and the baseline does not hold it (`batchsync rejects` lists the rows rejected now)",
                shown(&arg, args)
            ),
        )),
        1 => Ok(found.remove(0)),
        _ => Err(Failed::new(
            ExitCode::Config,
            format!(
                "the key matches {} rows: {}; give it as JSON to choose one (e.g. '{}')",
                found.len(),
                found.iter().map(|e| e.key.as_str()).collect::<Vec<_>>().join(" and "),
                found[0].key
            ),
        )),
    }
}

/// The key as the user gave it, for messages.
fn shown(arg: &KeyArg, args: &[String]) -> String {
    match arg {
        KeyArg::Hash(h) => crate::core::encode::hex(h),
        KeyArg::Columns(_) => args.join(" "),
    }
}

/// `{"key": {…}, "history": [...], "baseline": {"hash", "present"} | null}`.
fn json(e: &Explained) -> serde_json::Value {
    serde_json::json!({
        "key": key_json(&e.key),
        "history": e.lines,
        "baseline": e.baseline.as_ref().map(|(hash, present)| serde_json::json!({ "hash": hash, "present": present })),
    })
}

/// The history as an aligned table, then each event built, then the baseline's entry.
fn human(e: &Explained) -> String {
    let dash = || "-".to_string();
    let mut rows: Vec<Vec<String>> =
        vec![["run", "at", "kind", "hash", "request", "answer", "reason"]
            .map(String::from)
            .to_vec()];
    for l in &e.lines {
        rows.push(vec![
            l.run_id.to_string(),
            l.at.clone().unwrap_or_else(dash),
            l.kind.to_string(),
            l.hash
                .as_deref()
                .map_or_else(dash, |h| h.chars().take(12).collect()),
            l.request.clone().unwrap_or_else(dash),
            l.answer.map_or_else(dash, |a| a.as_str().to_string()),
            l.reason.clone().unwrap_or_else(dash),
        ]);
    }
    let mut out = format!("row {}\n", e.key);
    if e.lines.is_empty() {
        out.push_str("no history: the row has been in the baseline since a run that recorded the segment without sending (or its runs were pruned, [state] keep_runs)\n");
    } else {
        out.push_str(&crate::commands::aligned(&rows));
    }
    for l in &e.lines {
        if let Some(event) = &l.event {
            out.push_str(&format!("event of run {}: {event}\n", l.run_id));
        }
        if let Some(attributes) = &l.attributes {
            out.push_str(&format!(
                "profile attributes of run {}: {attributes}\n",
                l.run_id
            ));
        }
    }
    out.push_str(&match &e.baseline {
        Some((hash, true)) => format!("baseline now: present, hash {hash}\n"),
        Some((hash, false)) => {
            format!("baseline now: removed (a tombstone with its last hash {hash})\n")
        }
        None => {
            "baseline now: not there (the row was never committed to it, or Batch dropped it)\n"
                .to_string()
        }
    });
    out
}
