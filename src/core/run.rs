//! A run's outcome, modelled once: its counts, its status, its summary, and the pure decisions
//! over them (the status a run ends in, the exit code a command returns, the size guards).
//!
//! Invariants:
//! - [`Counts`] is the only type that counts rows, events and requests: the diff fills its delta
//!   fields, shipping fills its own and is added in with `+=`, and the store keeps the
//!   [`RunSummary`] that carries it as it is (`run --json` and `status --json` print the same
//!   fields).
//! - A run's final status is [`status`] of its counts and of how shipping ended, and a command's
//!   exit code is [`RunStatus::exit_code`] or [`ExitCode`] of its error: nowhere else.
//! - Pure: no I/O, no clock.

use std::fmt;
use std::ops::AddAssign;

/// Where a run is, as the store records it and `--json` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Its commit transaction is open: never seen outside that transaction.
    Committing,
    /// Shipping requests: committed ones, or those of earlier runs it resumed.
    Shipping,
    /// Committed with nothing to ship, not closed yet.
    Committed,
    /// Done: nothing pending and no new reject (or stopped by its own limits).
    Completed,
    /// Done, but it rejected new rows.
    Partial,
    /// Stopped with events pending for a reason other than its own limits, or before its commit.
    Failed,
    /// Left `shipping` or `committed` by a process that died; its requests stay pending.
    Interrupted,
}

impl RunStatus {
    pub const ALL: [RunStatus; 7] = [
        RunStatus::Committing,
        RunStatus::Shipping,
        RunStatus::Committed,
        RunStatus::Completed,
        RunStatus::Partial,
        RunStatus::Failed,
        RunStatus::Interrupted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Committing => "committing",
            RunStatus::Shipping => "shipping",
            RunStatus::Committed => "committed",
            RunStatus::Completed => "completed",
            RunStatus::Partial => "partial",
            RunStatus::Failed => "failed",
            RunStatus::Interrupted => "interrupted",
        }
    }

    pub fn parse(s: &str) -> Option<RunStatus> {
        RunStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// The statuses a process that is still running leaves behind if it dies.
    pub fn is_open(self) -> bool {
        matches!(self, RunStatus::Shipping | RunStatus::Committed)
    }

    /// The exit code of a run that ended in this status (DESIGN.md "Exit codes").
    pub fn exit_code(self) -> ExitCode {
        match self {
            RunStatus::Failed | RunStatus::Interrupted => ExitCode::Failed,
            RunStatus::Partial => ExitCode::Rejected,
            _ => ExitCode::Ok,
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The documented exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// Completed: nothing pending and no new reject, or stopped by its own limits.
    Ok = 0,
    /// Failed: whatever was committed stays pending for the next run.
    Failed = 1,
    /// A usage or config error (a missing key variable included): nothing was sent.
    Config = 2,
    /// Completed, but this run rejected new rows.
    Rejected = 3,
    /// Another run holds the lock.
    Locked = 75,
}

impl ExitCode {
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// Everything a run counts. The diff fills the delta's fields; shipping counts its own and is
/// added in (`+=`); `events_pending` is read from the outbox when the run closes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    /// Rows the source yielded.
    pub rows: u64,
    pub added: u64,
    /// Of `added`, keys that had left the segment and came back.
    pub reentered: u64,
    pub changed: u64,
    pub removed: u64,
    pub unchanged: u64,
    /// Rows rejected by this run: locally, or dropped by Batch while it shipped.
    pub rejected: u64,
    /// Rows whose key and hash are those of their open reject, under the same mapping and
    /// rules: not added, not sent, not counted by the guards nor in `rejected` (DESIGN.md
    /// "Rows that stay rejected").
    #[serde(default)]
    pub still_rejected: u64,
    /// Events this run's commit put in the outbox.
    pub events: u64,
    /// Operations this run's commit put in the outbox that carry profile attributes (with
    /// the row's event or alone): DESIGN.md "Profile attributes".
    #[serde(default)]
    pub profile_updates: u64,
    /// Rows whose baseline entry (or open reject) this run rewrote with its hash under a new
    /// recipe, sending nothing for it (DESIGN.md "Hash recipe upgrades"); counted in
    /// `unchanged` (or `still_rejected`) too.
    #[serde(default)]
    pub rehashed: u64,
    /// Of `profile_updates`, those of rows the baseline held present (their attributes
    /// changed): what `max_profile_updates` guards. Not kept: the run's guard reads it.
    #[serde(skip)]
    pub profile_changed: u64,
    /// Events whose delivery this run recorded.
    pub events_sent: u64,
    pub events_pending: u64,
    /// Requests still pending when the run ended (profile updates alone carry no events:
    /// `events_pending` does not count them).
    #[serde(default)]
    pub requests_pending: u64,
    /// HTTP requests sent, retries included.
    pub requests: u64,
    pub retries: u64,
    /// Requests of earlier runs that this run found pending and shipped first.
    pub resumed_requests: u64,
}

impl AddAssign for Counts {
    fn add_assign(&mut self, o: Counts) {
        self.rows += o.rows;
        self.added += o.added;
        self.reentered += o.reentered;
        self.changed += o.changed;
        self.removed += o.removed;
        self.unchanged += o.unchanged;
        self.rejected += o.rejected;
        self.still_rejected += o.still_rejected;
        self.events += o.events;
        self.profile_updates += o.profile_updates;
        self.profile_changed += o.profile_changed;
        self.rehashed += o.rehashed;
        self.events_sent += o.events_sent;
        self.events_pending += o.events_pending;
        self.requests_pending += o.requests_pending;
        self.requests += o.requests;
        self.retries += o.retries;
        self.resumed_requests += o.resumed_requests;
    }
}

/// One run as `run --json` prints it and the store keeps it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunSummary {
    pub run_id: Option<i64>,
    pub status: RunStatus,
    #[serde(flatten)]
    pub counts: Counts,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub duration_ms: u64,
    /// Why a run that read rows sent nothing, when that is by design (`initial = "baseline"`).
    pub sent_nothing_reason: Option<String>,
    pub error: Option<String>,
}

impl RunSummary {
    pub fn new(started_at: impl Into<String>) -> RunSummary {
        RunSummary {
            run_id: None,
            status: RunStatus::Committing,
            counts: Counts::default(),
            started_at: started_at.into(),
            finished_at: None,
            duration_ms: 0,
            sent_nothing_reason: None,
            error: None,
        }
    }

    /// A run that failed before it could record anything (no config, no lock, no store).
    pub fn failed(error: impl Into<String>) -> RunSummary {
        RunSummary {
            status: RunStatus::Failed,
            error: Some(error.into()),
            ..RunSummary::new("")
        }
    }
}

/// How shipping ended, as far as the run's status is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShipEnd {
    /// The outbox is empty (or nothing was tried).
    Drained,
    /// The run's own `--max-requests`/`--max-duration`: not a failure.
    Limit,
    /// Batch, the network or a signal stopped it with events pending.
    Halted,
}

/// The status a run that reached its end closes with.
pub fn status(counts: &Counts, end: ShipEnd) -> RunStatus {
    match end {
        ShipEnd::Halted => RunStatus::Failed,
        ShipEnd::Drained | ShipEnd::Limit if counts.rejected > 0 => RunStatus::Partial,
        ShipEnd::Drained | ShipEnd::Limit => RunStatus::Completed,
    }
}

/// A guard on the size of a delta, relative to the baseline (`max_added`, `max_removed`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Guard {
    Off,
    Percent(f64),
    Count(u64),
}

impl Guard {
    /// Below this many changes a percentage never trips: `max_added = "50%"` must not block a
    /// new user's 10-row test file (DESIGN.md "Rows that stay rejected", guards).
    pub const PERCENT_FLOOR: u64 = 100;

    /// Whether `n` changes against a baseline of `baseline` rows exceed the guard. A count is
    /// exact; a percentage trips only when `n` is also above [`Guard::PERCENT_FLOOR`].
    pub fn exceeded(self, n: u64, baseline: u64) -> bool {
        match self {
            Guard::Off => false,
            Guard::Count(max) => n > max,
            Guard::Percent(p) => {
                n > Self::PERCENT_FLOOR && (n as f64) > (baseline as f64) * p / 100.0
            }
        }
    }

    pub fn describe(self) -> String {
        match self {
            Guard::Off => "off".into(),
            Guard::Count(n) => n.to_string(),
            Guard::Percent(p) => format!("{p}%"),
        }
    }
}

/// The guards of a sync.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Guards {
    pub max_added: Guard,
    pub max_removed: Guard,
    /// Off when changed rows send nothing (`on_change = "ignore"`).
    pub max_changed: Guard,
    /// Profile updates of rows already in the baseline; off without profile attributes and on
    /// a backfill (which updates every row by design).
    pub max_profile_updates: Guard,
}

/// A delta the guards refuse, with what tripped them.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "the delta is larger than the guards allow against a baseline of {baseline} rows: {}. Nothing was committed and nothing new was sent. \
     If the segment really changed this much, run again with --force; else check the source (a truncated file or a broken query)",
    .problems.join(", ")
)]
pub struct GuardTripped {
    pub baseline: u64,
    pub problems: Vec<String>,
}

/// Whether the guards let a delta through. The first run has no baseline to compare with, and
/// `--force` is the user saying the change is real.
pub fn check_guards(
    guards: Guards,
    counts: &Counts,
    baseline: u64,
    first_run: bool,
    force: bool,
) -> Result<(), GuardTripped> {
    if first_run || force {
        return Ok(());
    }
    let mut problems = Vec::new();
    if guards.max_added.exceeded(counts.added, baseline) {
        problems.push(format!(
            "{} rows added (max_added = {})",
            counts.added,
            guards.max_added.describe()
        ));
    }
    if guards.max_removed.exceeded(counts.removed, baseline) {
        problems.push(format!(
            "{} rows removed (max_removed = {})",
            counts.removed,
            guards.max_removed.describe()
        ));
    }
    if guards.max_changed.exceeded(counts.changed, baseline) {
        problems.push(format!(
            "{} rows changed (max_changed = {})",
            counts.changed,
            guards.max_changed.describe()
        ));
    }
    if guards
        .max_profile_updates
        .exceeded(counts.profile_changed, baseline)
    {
        problems.push(format!(
            "{} rows' profile attributes changed (max_profile_updates = {})",
            counts.profile_changed,
            guards.max_profile_updates.describe()
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(GuardTripped { baseline, problems })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn counts(rejected: u64) -> Counts {
        Counts {
            rejected,
            ..Counts::default()
        }
    }

    #[rstest]
    #[case::clean(0, ShipEnd::Drained, RunStatus::Completed, 0)]
    #[case::rejects(2, ShipEnd::Drained, RunStatus::Partial, 3)]
    #[case::own_limit(0, ShipEnd::Limit, RunStatus::Completed, 0)]
    #[case::own_limit_with_rejects(1, ShipEnd::Limit, RunStatus::Partial, 3)]
    #[case::halted(0, ShipEnd::Halted, RunStatus::Failed, 1)]
    #[case::halted_with_rejects(5, ShipEnd::Halted, RunStatus::Failed, 1)]
    fn a_run_closes_with_the_status_its_counts_and_shipping_give(
        #[case] rejected: u64,
        #[case] end: ShipEnd,
        #[case] expected: RunStatus,
        #[case] exit: i32,
    ) {
        let st = status(&counts(rejected), end);
        assert_eq!(st, expected);
        assert_eq!(st.exit_code().code(), exit);
    }

    #[test]
    fn every_status_reads_back_from_its_name() {
        for st in RunStatus::ALL {
            assert_eq!(RunStatus::parse(st.as_str()), Some(st));
            assert_eq!(
                serde_json::to_value(st).unwrap(),
                serde_json::Value::String(st.as_str().into())
            );
        }
        assert_eq!(RunStatus::parse("shiping"), None);
    }

    #[test]
    fn shipping_counts_add_into_the_run_counts() {
        let mut c = Counts {
            rows: 10,
            added: 3,
            rejected: 1,
            events: 2,
            ..Counts::default()
        };
        c += Counts {
            requests: 4,
            retries: 1,
            events_sent: 2,
            rejected: 1,
            ..Counts::default()
        };
        assert_eq!(
            c,
            Counts {
                rows: 10,
                added: 3,
                rejected: 2,
                events: 2,
                requests: 4,
                retries: 1,
                events_sent: 2,
                ..Counts::default()
            }
        );
    }

    #[test]
    fn the_summary_prints_its_counts_at_the_top_level() {
        let s = RunSummary::failed("boom");
        let v = serde_json::to_value(&s).unwrap();
        for k in [
            "run_id",
            "status",
            "rows",
            "added",
            "changed",
            "removed",
            "rejected",
            "events_sent",
            "events_pending",
            "requests",
            "retries",
            "duration_ms",
        ] {
            assert!(v.get(k).is_some(), "{k} missing from {v}");
        }
        assert_eq!(v["status"], "failed");
        assert_eq!(v["error"], "boom");
    }

    fn guards(added: Guard, removed: Guard) -> Guards {
        Guards {
            max_added: added,
            max_removed: removed,
            max_changed: Guard::Percent(50.0),
            max_profile_updates: Guard::Percent(50.0),
        }
    }

    #[test]
    fn profile_updates_of_present_rows_are_guarded() {
        let c = |profile_changed| Counts {
            profile_updates: 400,
            profile_changed,
            ..Counts::default()
        };
        let g = guards(Guard::Off, Guard::Off);
        let err = check_guards(g, &c(101), 150, false, false).unwrap_err();
        assert!(
            err.to_string()
                .contains("101 rows' profile attributes changed (max_profile_updates = 50%)"),
            "{err}"
        );
        check_guards(g, &c(75), 150, false, false).unwrap();
        let off = Guards {
            max_profile_updates: Guard::Off,
            ..g
        };
        check_guards(off, &c(150), 150, false, false).unwrap();
    }

    #[rstest]
    #[case::under(Guard::Percent(50.0), (50, 0, 0), 200, false, false, true)]
    #[case::over_percent(Guard::Percent(50.0), (101, 0, 0), 200, false, false, false)]
    #[case::small_deltas_never_trip_a_percentage(Guard::Percent(50.0), (100, 0, 0), 10, false, false, true)]
    #[case::over_count(Guard::Count(5), (6, 0, 0), 1000, false, false, false)]
    #[case::exact_count(Guard::Count(5), (5, 0, 0), 1000, false, false, true)]
    #[case::a_count_is_exact_even_when_small(Guard::Count(1), (2, 0, 0), 1000, false, false, false)]
    #[case::off(Guard::Off, (1000, 0, 0), 1, false, false, true)]
    #[case::first_run(Guard::Count(0), (100, 0, 0), 0, true, false, true)]
    #[case::forced(Guard::Count(0), (100, 0, 0), 10, false, true, true)]
    #[case::removals(Guard::Off, (0, 101, 0), 150, false, false, false)]
    #[case::small_removals(Guard::Off, (0, 6, 0), 10, false, false, true)]
    #[case::changes(Guard::Off, (0, 0, 101), 150, false, false, false)]
    fn the_guards_refuse_a_delta_larger_than_they_allow(
        #[case] max_added: Guard,
        #[case] (added, removed, changed): (u64, u64, u64),
        #[case] baseline: u64,
        #[case] first_run: bool,
        #[case] force: bool,
        #[case] passes: bool,
    ) {
        let c = Counts {
            added,
            removed,
            changed,
            ..Counts::default()
        };
        let got = check_guards(
            guards(max_added, Guard::Percent(50.0)),
            &c,
            baseline,
            first_run,
            force,
        );
        assert_eq!(got.is_ok(), passes, "{got:?}");
        if let Err(e) = got {
            let msg = e.to_string();
            assert!(msg.contains("--force"), "{msg}");
            assert!(
                msg.contains(&format!("baseline of {baseline} rows")),
                "{msg}"
            );
        }
    }
}
