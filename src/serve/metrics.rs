//! `serve`'s metrics (DESIGN.md "serve") and their Prometheus text rendering; pure: no clock,
//! no I/O. What a run did arrives as a [`Tick`], what the store says as [`Metrics::set_store`],
//! shipping's answers as the [`AnswerCounts`] of the process's tally; [`Metrics::render`] is
//! a function of those.
//!
//! Invariants:
//! - Every family has its `# HELP` and `# TYPE` lines, once, before its samples; counters end
//!   in `_total`; label values are escaped (`\\`, `\"`, `\n`); samples of a family are in a
//!   fixed order, so two renderings of the same values are the same text.
//! - `_total` counters count this process's ticks since it started: they only grow, and a
//!   restart sets them back to zero (Prometheus' `rate` and `increase` expect exactly that).
//!   Every status and both reject sources are shown from the start, at zero.
//! - `batchsync_rejects_open` and `batchsync_events_pending` are what the store said after the
//!   last run (or at start), not counts of this process; they have no sample until the store
//!   could be read once.
//! - `batchsync_last_success_timestamp_seconds` is the `finished_at` of the last run that
//!   ended `completed` or `partial` (it delivered what it committed; `partial` only rejected
//!   rows), read from the store at start so that a restart does not look like a sync that
//!   never succeeded; 0 when the store holds no such run; no sample until the store could be
//!   read or a run succeeded. It never goes back in time.
//! - The duration histogram's buckets are cumulative, `+Inf` equals `_count`.

use crate::core::run::{RunStatus, RunSummary};
use crate::lock::LockError;
use crate::pipeline::{RunError, RunFailed};
use crate::ship::AnswerCounts;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

/// Upper bounds (seconds) of the run duration histogram: from a delta of a few rows to an
/// hour-long backfill.
pub const DURATION_BUCKETS: [f64; 13] = [
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// The `status` label of a tick skipped because another process held the sync's lock: no run
/// took place, so the store has no record of it.
pub const LOCKED: &str = "locked";

/// The `status` labels shown from the start: the statuses a run of this process ends in, and
/// [`LOCKED`].
const STATUSES: [&str; 4] = ["completed", "partial", "failed", LOCKED];

/// What one tick did, as the metrics count it.
#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    /// A run's final status, or [`LOCKED`].
    pub status: &'static str,
    pub events_sent: u64,
    /// Operations carrying profile attributes that the run committed.
    pub profile_updates: u64,
    /// Rows the run rejected itself (its `rejected` less the rows Batch dropped meanwhile).
    pub rejected_local: u64,
    pub took: Duration,
    /// Unix seconds of the run's `finished_at`, when it succeeded.
    pub succeeded_at: Option<f64>,
}

impl Tick {
    /// The tick of a run that ended as `result`, during which Batch dropped `dropped_by_batch`
    /// rows (the tally's count: those are in the run's `rejected` too).
    pub fn of(
        result: &Result<RunSummary, Box<RunFailed>>,
        dropped_by_batch: u64,
        took: Duration,
    ) -> Tick {
        let summary = match result {
            Ok(s) => s,
            Err(f) if matches!(f.error, RunError::Locked(LockError::Held { .. })) => {
                return Tick {
                    status: LOCKED,
                    ..Tick::failed(took)
                }
            }
            Err(f) => &f.summary,
        };
        Tick {
            status: summary.status.as_str(),
            events_sent: summary.counts.events_sent,
            profile_updates: summary.counts.profile_updates,
            rejected_local: summary.counts.rejected.saturating_sub(dropped_by_batch),
            took,
            succeeded_at: succeeded_at(summary),
        }
    }

    /// A tick whose run never started or never returned (no keys, a panic): a failure that
    /// counted nothing.
    pub fn failed(took: Duration) -> Tick {
        Tick {
            status: RunStatus::Failed.as_str(),
            events_sent: 0,
            profile_updates: 0,
            rejected_local: 0,
            took,
            succeeded_at: None,
        }
    }
}

/// When `run` finished, in Unix seconds, if it succeeded (`completed` or `partial`).
fn succeeded_at(run: &RunSummary) -> Option<f64> {
    if !matches!(run.status, RunStatus::Completed | RunStatus::Partial) {
        return None;
    }
    let at = chrono::DateTime::parse_from_rfc3339(run.finished_at.as_deref()?).ok()?;
    Some(at.timestamp_millis() as f64 / 1000.0)
}

/// The last success among `runs` (newest first, as the store lists them), in Unix seconds.
pub fn last_success(runs: &[RunSummary]) -> Option<f64> {
    runs.iter().find_map(succeeded_at)
}

/// Everything `/metrics` shows but the answers, which the tally keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    runs: BTreeMap<&'static str, u64>,
    events_sent: u64,
    profile_updates: u64,
    rejected_local: u64,
    rejects_open: Option<u64>,
    events_pending: Option<u64>,
    last_success: Option<f64>,
    /// Observations per bucket (not cumulative), the last one `+Inf`.
    buckets: [u64; DURATION_BUCKETS.len() + 1],
    duration_sum: f64,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            runs: STATUSES.iter().map(|s| (*s, 0)).collect(),
            events_sent: 0,
            profile_updates: 0,
            rejected_local: 0,
            rejects_open: None,
            events_pending: None,
            last_success: None,
            buckets: [0; DURATION_BUCKETS.len() + 1],
            duration_sum: 0.0,
        }
    }
}

/// What the store said: the gauges' values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreFigures {
    pub events_pending: u64,
    pub rejects_open: u64,
}

impl Metrics {
    /// The last success the store knows of (`None`: it has none, shown as 0); a later one
    /// already recorded from a tick is kept.
    pub fn set_last_success(&mut self, at: Option<f64>) {
        let at = at.unwrap_or(0.0);
        self.last_success = Some(self.last_success.map_or(at, |l| l.max(at)));
    }

    /// Whether the last success is known: read from the store, or recorded from a tick.
    pub fn knows_last_success(&self) -> bool {
        self.last_success.is_some()
    }

    pub fn set_store(&mut self, figures: StoreFigures) {
        self.events_pending = Some(figures.events_pending);
        self.rejects_open = Some(figures.rejects_open);
    }

    pub fn record(&mut self, tick: &Tick) {
        *self.runs.entry(tick.status).or_default() += 1;
        self.events_sent += tick.events_sent;
        self.profile_updates += tick.profile_updates;
        self.rejected_local += tick.rejected_local;
        if let Some(at) = tick.succeeded_at {
            self.last_success = Some(self.last_success.map_or(at, |l| l.max(at)));
        }
        let secs = tick.took.as_secs_f64();
        let bucket = DURATION_BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(DURATION_BUCKETS.len());
        self.buckets[bucket] += 1;
        self.duration_sum += secs;
    }

    /// The Prometheus text exposition (format 0.0.4) of these metrics and of `answers`.
    pub fn render(&self, answers: &AnswerCounts) -> String {
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, String)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (series, value) in samples {
                let _ = writeln!(out, "{series} {value}");
            }
        };
        let one = |name: &str, value: String| vec![(name.to_string(), value)];

        let name = "batchsync_runs_total";
        let samples: Vec<_> = self
            .runs
            .iter()
            .map(|(status, n)| (series(name, &[("status", status)]), n.to_string()))
            .collect();
        family(
            name,
            "counter",
            "Runs started by this process, by the status they ended in (locked: another process held the sync's lock, no run took place).",
            &samples,
        );
        family(
            "batchsync_events_sent_total",
            "counter",
            "Events whose delivery to Batch this process's runs recorded.",
            &one("batchsync_events_sent_total", self.events_sent.to_string()),
        );
        family(
            "batchsync_profile_updates_total",
            "counter",
            "Operations carrying profile attributes that this process's runs committed to the outbox.",
            &one(
                "batchsync_profile_updates_total",
                self.profile_updates.to_string(),
            ),
        );
        let name = "batchsync_rows_rejected_total";
        family(
            name,
            "counter",
            "Rows this process's runs rejected: by the mapping's checks before sending (local), or dropped or refused by Batch (batch).",
            &[
                (
                    series(name, &[("source", "local")]),
                    self.rejected_local.to_string(),
                ),
                (
                    series(name, &[("source", "batch")]),
                    answers.rows_dropped.to_string(),
                ),
            ],
        );
        let gauge =
            |v: Option<u64>, name: &str| v.map(|v| one(name, v.to_string())).unwrap_or_default();
        family(
            "batchsync_rejects_open",
            "gauge",
            "Rows rejected now (the lines of `batchsync rejects`), as the state store said after the last run.",
            &gauge(self.rejects_open, "batchsync_rejects_open"),
        );
        family(
            "batchsync_events_pending",
            "gauge",
            "Events committed but not yet delivered, as the state store said after the last run.",
            &gauge(self.events_pending, "batchsync_events_pending"),
        );
        let name = "batchsync_last_success_timestamp_seconds";
        family(
            name,
            "gauge",
            "Unix time at which the last completed or partial run finished (0: none in the state store).",
            &self
                .last_success
                .map(|at| one(name, float(at)))
                .unwrap_or_default(),
        );
        let name = "batchsync_run_duration_seconds";
        let mut samples = Vec::new();
        let mut cumulative = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            cumulative += n;
            let le = DURATION_BUCKETS
                .get(i)
                .map_or("+Inf".to_string(), |b| float(*b));
            samples.push((
                series(&format!("{name}_bucket"), &[("le", &le)]),
                cumulative.to_string(),
            ));
        }
        samples.push((format!("{name}_sum"), float(self.duration_sum)));
        samples.push((format!("{name}_count"), cumulative.to_string()));
        family(
            name,
            "histogram",
            "How long this process's runs took, from taking the lock to the last recorded answer.",
            &samples,
        );
        let name = "batchsync_requests_total";
        let samples: Vec<_> = answers
            .requests
            .iter()
            .map(|((endpoint, code), n)| {
                (
                    series(name, &[("endpoint", endpoint), ("code", code)]),
                    n.to_string(),
                )
            })
            .collect();
        family(
            name,
            "counter",
            "HTTP requests this process's runs sent to Batch, retries included, by endpoint and answer: its HTTP status, or timeout or connection when none came.",
            &samples,
        );
        out
    }
}

/// `name{label="value",…}`, or `name` without labels.
fn series(name: &str, labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return name.to_string();
    }
    let labels: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{name}{{{}}}", labels.join(","))
}

/// A label value as the text format writes it.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A float as Prometheus reads it (`Inf` and `NaN` cannot occur here: durations and times).
fn float(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else if v.is_nan() {
        "NaN".into()
    } else if v > 0.0 {
        "+Inf".into()
    } else {
        "-Inf".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::run::Counts;
    use rstest::rstest;

    /// One sample of the text format: name, labels in order, value.
    type Sample = (String, Vec<(String, String)>, f64);

    /// A strict reader of the text format (independent of the writer): `# HELP`/`# TYPE`
    /// before each family's samples, every other line `name{labels} value`.
    fn parse(text: &str) -> (Vec<Sample>, BTreeMap<String, String>) {
        let mut samples = Vec::new();
        let mut types = BTreeMap::new();
        let mut helped = std::collections::BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP has a text");
                assert!(!help.is_empty());
                assert!(helped.insert(name.to_string()), "two HELP for {name}");
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(helped.contains(name), "TYPE before HELP: {line}");
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                assert!(types.insert(name.to_string(), kind.to_string()).is_none());
                continue;
            }
            assert!(!line.starts_with('#'), "{line}");
            let (series, value) = line.rsplit_once(' ').expect("a value");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("value of {line}")),
            };
            let (name, labels) = match series.split_once('{') {
                None => (series.to_string(), Vec::new()),
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').expect("labels close");
                    (name.to_string(), parse_labels(body))
                }
            };
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "{name}"
            );
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
                })
                .unwrap_or(&name);
            assert!(types.contains_key(family), "sample before its TYPE: {line}");
            samples.push((name, labels, value));
        }
        (samples, types)
    }

    fn parse_labels(body: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut chars = body.chars().peekable();
        while chars.peek().is_some() {
            let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
            assert_eq!(chars.next(), Some('"'));
            let mut value = String::new();
            loop {
                match chars.next().expect("value closes") {
                    '"' => break,
                    '\\' => match chars.next() {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        other => panic!("bad escape {other:?}"),
                    },
                    c => value.push(c),
                }
            }
            out.push((key, value));
            match chars.next() {
                None => break,
                Some(',') => {}
                Some(c) => panic!("unexpected {c}"),
            }
        }
        out
    }

    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && l.len() == labels.len()
                    && l.iter().zip(labels).all(|(a, b)| a.0 == b.0 && a.1 == b.1)
            })
            .map(|s| s.2)
    }

    fn summary(status: RunStatus, sent: u64, rejected: u64, finished: &str) -> RunSummary {
        RunSummary {
            run_id: Some(1),
            status,
            counts: Counts {
                events_sent: sent,
                profile_updates: sent / 2,
                rejected,
                ..Counts::default()
            },
            finished_at: Some(finished.to_string()),
            ..RunSummary::new("2026-01-01T00:00:00.000Z")
        }
    }

    #[test]
    fn a_fresh_process_shows_every_family_with_zero_counts_and_no_store_figures_yet() {
        let (samples, types) = parse(&Metrics::default().render(&AnswerCounts::default()));
        assert_eq!(types.len(), 9, "{types:?}");
        for status in STATUSES {
            assert_eq!(
                value(&samples, "batchsync_runs_total", &[("status", status)]),
                Some(0.0)
            );
        }
        assert_eq!(value(&samples, "batchsync_events_pending", &[]), None);
        assert_eq!(
            value(&samples, "batchsync_last_success_timestamp_seconds", &[]),
            None
        );
        assert_eq!(
            value(
                &samples,
                "batchsync_run_duration_seconds_bucket",
                &[("le", "+Inf")]
            ),
            Some(0.0)
        );
    }

    #[test]
    fn ticks_add_up_and_render_as_parseable_text() {
        let mut m = Metrics::default();
        m.set_last_success(None);
        let ok = Ok(summary(
            RunStatus::Completed,
            7,
            2,
            "2026-03-01T10:00:00.250Z",
        ));
        m.record(&Tick::of(&ok, 1, Duration::from_millis(300)));
        let failed = Err(Box::new(RunFailed {
            error: RunError::Interrupted,
            summary: summary(RunStatus::Failed, 3, 0, "2026-03-01T11:00:00Z"),
        }));
        m.record(&Tick::of(&failed, 0, Duration::from_secs(7200)));
        m.set_store(StoreFigures {
            events_pending: 4,
            rejects_open: 2,
        });
        let mut answers = AnswerCounts {
            rows_dropped: 1,
            ..AnswerCounts::default()
        };
        answers.requests.insert(("update", "202".to_string()), 5);
        answers
            .requests
            .insert(("update", "connection".to_string()), 2);
        let (s, types) = parse(&m.render(&answers));
        let v = |name, labels: &[(&str, &str)]| value(&s, name, labels);
        assert_eq!(
            v("batchsync_runs_total", &[("status", "completed")]),
            Some(1.0)
        );
        assert_eq!(
            v("batchsync_runs_total", &[("status", "failed")]),
            Some(1.0)
        );
        assert_eq!(
            v("batchsync_runs_total", &[("status", "partial")]),
            Some(0.0)
        );
        assert_eq!(v("batchsync_events_sent_total", &[]), Some(10.0));
        assert_eq!(v("batchsync_profile_updates_total", &[]), Some(4.0));
        assert_eq!(
            v("batchsync_rows_rejected_total", &[("source", "local")]),
            Some(1.0)
        );
        assert_eq!(
            v("batchsync_rows_rejected_total", &[("source", "batch")]),
            Some(1.0)
        );
        assert_eq!(v("batchsync_rejects_open", &[]), Some(2.0));
        assert_eq!(v("batchsync_events_pending", &[]), Some(4.0));
        assert_eq!(
            v("batchsync_last_success_timestamp_seconds", &[]),
            Some(1772359200.25)
        );
        assert_eq!(
            v(
                "batchsync_requests_total",
                &[("endpoint", "update"), ("code", "connection")]
            ),
            Some(2.0)
        );
        assert_eq!(
            v("batchsync_run_duration_seconds_bucket", &[("le", "0.5")]),
            Some(1.0)
        );
        assert_eq!(
            v("batchsync_run_duration_seconds_bucket", &[("le", "3600")]),
            Some(1.0)
        );
        assert_eq!(
            v("batchsync_run_duration_seconds_bucket", &[("le", "+Inf")]),
            Some(2.0)
        );
        assert_eq!(v("batchsync_run_duration_seconds_count", &[]), Some(2.0));
        assert_eq!(v("batchsync_run_duration_seconds_sum", &[]), Some(7200.3));
        for (name, kind) in &types {
            assert_eq!(name.ends_with("_total"), kind == "counter", "{name}");
        }
        // Cumulative buckets never decrease.
        let buckets: Vec<f64> = s
            .iter()
            .filter(|x| x.0 == "batchsync_run_duration_seconds_bucket")
            .map(|x| x.2)
            .collect();
        assert_eq!(buckets.len(), DURATION_BUCKETS.len() + 1);
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut answers = AnswerCounts::default();
        answers
            .requests
            .insert(("update", "a\"b\\c\nd".to_string()), 1);
        let text = Metrics::default().render(&answers);
        assert!(
            text.contains(r#"batchsync_requests_total{endpoint="update",code="a\"b\\c\nd"} 1"#),
            "{text}"
        );
        let (s, _) = parse(&text);
        assert_eq!(
            value(
                &s,
                "batchsync_requests_total",
                &[("endpoint", "update"), ("code", "a\"b\\c\nd")]
            ),
            Some(1.0)
        );
    }

    #[rstest]
    #[case::completed(RunStatus::Completed, Some(1772359200.0))]
    #[case::partial(RunStatus::Partial, Some(1772359200.0))]
    #[case::failed(RunStatus::Failed, None)]
    #[case::interrupted(RunStatus::Interrupted, None)]
    fn a_run_succeeded_when_it_completed_or_only_rejected_rows(
        #[case] status: RunStatus,
        #[case] at: Option<f64>,
    ) {
        let run = summary(status, 0, 0, "2026-03-01T10:00:00Z");
        assert_eq!(succeeded_at(&run), at);
    }

    #[test]
    fn the_last_success_is_the_newest_successful_run_and_a_restart_keeps_it() {
        let runs = [
            summary(RunStatus::Failed, 0, 0, "2026-03-01T12:00:00Z"),
            summary(RunStatus::Partial, 0, 0, "2026-03-01T11:00:00Z"),
            summary(RunStatus::Completed, 0, 0, "2026-03-01T10:00:00Z"),
        ];
        assert_eq!(last_success(&runs), Some(1772362800.0));
        assert_eq!(last_success(&runs[..1]), None);
        let mut m = Metrics::default();
        m.set_last_success(last_success(&runs));
        // A failed tick leaves it as the store had it.
        m.record(&Tick::failed(Duration::from_secs(1)));
        let (s, _) = parse(&m.render(&AnswerCounts::default()));
        assert_eq!(
            value(&s, "batchsync_last_success_timestamp_seconds", &[]),
            Some(1772362800.0)
        );
    }

    #[test]
    fn a_store_read_late_never_moves_the_last_success_back() {
        let mut m = Metrics::default();
        assert!(!m.knows_last_success());
        let ok = Ok(summary(RunStatus::Completed, 0, 0, "2026-03-01T11:00:00Z"));
        m.record(&Tick::of(&ok, 0, Duration::from_secs(1)));
        assert!(m.knows_last_success());
        m.set_last_success(Some(1772359200.0));
        m.set_last_success(None);
        let (s, _) = parse(&m.render(&AnswerCounts::default()));
        assert_eq!(
            value(&s, "batchsync_last_success_timestamp_seconds", &[]),
            Some(1772362800.0)
        );
    }

    #[test]
    fn a_tick_refused_by_the_lock_counts_as_locked_and_nothing_else() {
        let held = Err(Box::new(RunFailed {
            error: RunError::Locked(LockError::Held {
                path: "state.db.lock".into(),
                holder: "pid 1".into(),
            }),
            summary: RunSummary::failed("locked"),
        }));
        let tick = Tick::of(&held, 0, Duration::from_millis(5));
        assert_eq!(tick.status, LOCKED);
        assert_eq!((tick.events_sent, tick.succeeded_at), (0, None));
    }
}
