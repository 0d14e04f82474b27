//! Shipping: send the outbox in order, paced, retried, and record each answer.
//!
//! Invariants:
//! - One lane, one request in flight: a resumed run re-sends at most that one request (the
//!   bounded-duplicates guarantee), and a 429 or `Retry-After` pauses the whole lane.
//! - Each answer is recorded in its own transaction before the next request goes out; no
//!   transaction is open while a request is in flight.
//! - 429s never use a request's retry budget (`max_attempts` counts 5xx, timeouts, resets);
//!   they stop the run only after `max_throttled` without any delivery.
//! - 401/403/404 stop at once with everything still pending.
//! - Crash points: `before_send`, `after_send` (answered, not recorded), `after_record`.
//! - An [`AnswerTally`], when given, sees every attempt's answer and every row Batch dropped,
//!   as they are recorded: the one hook `serve` reads for its metrics; shipping decides
//!   nothing by it.

pub mod client;

use crate::core::pack::split_request;
use crate::core::retry::{backoff, classify, Answer, RetryAction, Stop};
use crate::core::run::{Counts, ShipEnd};
use crate::state::Outbox;
use client::Client;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct ShipOptions {
    /// Updates (operations) per second on `/profiles/update`.
    pub rate: f64,
    /// Updates per second on `/profiles/mass-update`.
    pub mass_rate: f64,
    pub max_attempts: u32,
    pub max_throttled: Duration,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// Stop (pending kept) after this many requests; for spreading a backfill over runs.
    pub max_requests: Option<u64>,
    pub deadline: Option<Instant>,
    /// Counts answers and dropped rows for an observer (`serve`'s metrics).
    pub tally: Option<AnswerTally>,
}

/// What an [`AnswerTally`] has counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnswerCounts {
    /// Attempts by (endpoint, code): `update` or `mass-update`; the HTTP status, or
    /// `timeout` or `connection` when no answer came.
    pub requests: BTreeMap<(&'static str, String), u64>,
    /// Rows whose operations Batch dropped or refused, as recorded (rejects of source `batch`).
    pub rows_dropped: u64,
}

/// A shared counter of shipping's answers, cheap to clone; every clone counts into the same
/// [`AnswerCounts`].
#[derive(Debug, Clone, Default)]
pub struct AnswerTally(Arc<Mutex<AnswerCounts>>);

impl AnswerTally {
    /// What has been counted so far.
    pub fn counts(&self) -> AnswerCounts {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn answer(&self, endpoint: crate::core::pack::Endpoint, answer: &Answer) {
        let code = match answer {
            Answer::Http { status, .. } => status.to_string(),
            Answer::Timeout => "timeout".to_string(),
            Answer::Connection(_) => "connection".to_string(),
        };
        let mut c = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *c.requests.entry((endpoint.as_str(), code)).or_default() += 1;
    }

    fn dropped(&self, rows: u64) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .rows_dropped += rows;
    }
}

/// Why shipping stopped before the outbox was empty.
#[derive(Debug, Clone, PartialEq)]
pub enum Halt {
    Auth {
        status: u16,
        message: String,
    },
    NotFound {
        message: String,
    },
    RetriesExhausted {
        request: String,
        attempts: u32,
        last: String,
    },
    Throttled {
        waited: Duration,
    },
    Interrupted,
    /// `--max-requests` or `--max-duration` reached: not a failure.
    Limit,
}

impl Halt {
    /// What this halt means for the run's status.
    pub fn end(&self) -> ShipEnd {
        match self {
            Halt::Limit => ShipEnd::Limit,
            _ => ShipEnd::Halted,
        }
    }
}

/// What one shipping pass did: its counts (`requests`, `retries`, `events_sent`, and the rows
/// Batch dropped in `rejected`), added into the run's, and why it stopped early, if it did.
#[derive(Debug, Clone, Default)]
pub struct ShipReport {
    pub counts: Counts,
    pub halt: Option<Halt>,
}

impl ShipReport {
    pub fn end(&self) -> ShipEnd {
        self.halt.as_ref().map_or(ShipEnd::Drained, Halt::end)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// A token bucket: one token per operation, refilled at `rate`, holding a second's worth
/// (or one request, whichever is more).
struct Pacer {
    rate: f64,
    tokens: f64,
    at: Instant,
    paused_until: Option<Instant>,
}

impl Pacer {
    fn new(rate: f64) -> Pacer {
        Pacer {
            rate,
            tokens: rate,
            at: Instant::now(),
            paused_until: None,
        }
    }

    fn pause_until(&mut self, until: Instant) {
        self.paused_until = Some(self.paused_until.map_or(until, |p| p.max(until)));
    }

    async fn take(&mut self, n: usize) {
        if let Some(until) = self.paused_until.take() {
            tokio::time::sleep_until(until).await;
        }
        let n = n as f64;
        let cap = self.rate.max(n);
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(cap);
        self.at = now;
        if self.tokens < n {
            let wait = Duration::from_secs_f64((n - self.tokens) / self.rate);
            tokio::time::sleep(wait).await;
            self.tokens = n;
            self.at = Instant::now();
        }
        self.tokens -= n;
    }
}

/// A shared stop flag set by SIGINT/SIGTERM.
#[derive(Clone, Default)]
pub struct StopFlag(Arc<(AtomicBool, tokio::sync::Notify)>);

impl StopFlag {
    pub fn raise(&self) {
        self.0 .0.store(true, Ordering::SeqCst);
        self.0 .1.notify_waiters();
    }

    pub fn is_raised(&self) -> bool {
        self.0 .0.load(Ordering::SeqCst)
    }

    pub async fn raised(&self) {
        loop {
            let notified = self.0 .1.notified();
            if self.is_raised() {
                return;
            }
            notified.await;
        }
    }
}

/// How far shipping got, for progress display.
pub trait Progress {
    fn shipped(&mut self, events: u64, requests: u64);
}

impl Progress for () {
    fn shipped(&mut self, _: u64, _: u64) {}
}

/// Sends every pending request in order until the outbox is empty or a halt.
pub async fn ship<O: Outbox + ?Sized>(
    store: &O,
    client: &Client,
    opts: &ShipOptions,
    run_id: i64,
    stop: &StopFlag,
    progress: &mut dyn Progress,
) -> Result<ShipReport, ShipError> {
    let mut report = ShipReport::default();
    let counts = &mut report.counts;
    let mut update_pacer = Pacer::new(opts.rate);
    let mut mass_pacer = Pacer::new(opts.mass_rate);
    let mut last_progress = Instant::now();
    let mut after: Option<String> = None;
    let mut throttles = 0u32;
    let mut sent_requests = 0u64;

    'requests: while let Some(req) = store.next_pending(after.as_deref())? {
        let mut transient = 0u32;
        let mut attempt = 0u32;
        loop {
            if stop.is_raised() {
                report.halt = Some(Halt::Interrupted);
                break 'requests;
            }
            if opts.max_requests.is_some_and(|m| sent_requests >= m)
                || opts.deadline.is_some_and(|d| Instant::now() >= d)
            {
                report.halt = Some(Halt::Limit);
                break 'requests;
            }
            let pacer = match req.endpoint {
                crate::core::pack::Endpoint::Update => &mut update_pacer,
                crate::core::pack::Endpoint::MassUpdate => &mut mass_pacer,
            };
            tokio::select! {
                _ = pacer.take(req.operations) => {}
                _ = stop.raised() => { report.halt = Some(Halt::Interrupted); break 'requests; }
            }
            crate::crash::point("before_send");
            counts.requests += 1;
            sent_requests += 1;
            if attempt > 0 {
                counts.retries += 1;
            }
            attempt += 1;
            let send = client.send(req.endpoint, req.body.clone());
            tokio::pin!(send);
            let answer = tokio::select! {
                a = &mut send => a,
                _ = stop.raised() => {
                    // Give the request in flight a moment to land, so its answer can be recorded.
                    match tokio::time::timeout(Duration::from_secs(3), &mut send).await {
                        Ok(a) => a,
                        Err(_) => { report.halt = Some(Halt::Interrupted); break 'requests; }
                    }
                }
            };
            crate::crash::point("after_send");
            if let Some(t) = &opts.tally {
                t.answer(req.endpoint, &answer);
            }
            let action = classify(&answer, req.operations);
            let dropped_rows = |n: u64| {
                if let Some(t) = &opts.tally {
                    t.dropped(n);
                }
                n
            };
            let delay = match action {
                RetryAction::Delivered { dropped } => {
                    let (delivered, rejected) = store.record_delivered(&req, &dropped, run_id)?;
                    crate::crash::point("after_record");
                    counts.events_sent += delivered;
                    counts.rejected += dropped_rows(rejected);
                    last_progress = Instant::now();
                    throttles = 0;
                    progress.shipped(counts.events_sent, counts.requests);
                    after = Some(req.id.clone());
                    continue 'requests;
                }
                RetryAction::Refused { message } => {
                    tracing::warn!(request = %req.id, %message, "Batch refused a one-operation request: its rows are rejected");
                    counts.rejected += dropped_rows(store.record_refused(&req, &message, run_id)?);
                    after = Some(req.id.clone());
                    continue 'requests;
                }
                RetryAction::Split { message } => {
                    let manifest = store.manifest(&req.id)?;
                    match split_request(&String::from_utf8_lossy(&req.body), &manifest) {
                        Some(halves) => {
                            tracing::info!(request = %req.id, operations = req.operations, %message, "HTTP 400: splitting the request to isolate the bad operations");
                            store.record_split(&req, halves, &message)?;
                            // The halves sort right after the parent: continue from it.
                            after = Some(req.id.clone());
                            continue 'requests;
                        }
                        None => {
                            counts.rejected +=
                                dropped_rows(store.record_refused(&req, &message, run_id)?);
                            after = Some(req.id.clone());
                            continue 'requests;
                        }
                    }
                }
                RetryAction::Stop(Stop::Auth { status, message }) => {
                    report.halt = Some(Halt::Auth { status, message });
                    break 'requests;
                }
                RetryAction::Stop(Stop::NotFound { message }) => {
                    report.halt = Some(Halt::NotFound { message });
                    break 'requests;
                }
                RetryAction::Retry {
                    throttled: true,
                    after: retry_after,
                    ..
                } => {
                    let waited = last_progress.elapsed();
                    if waited >= opts.max_throttled {
                        report.halt = Some(Halt::Throttled { waited });
                        break 'requests;
                    }
                    throttles = throttles.saturating_add(1);
                    retry_after.unwrap_or_else(|| {
                        backoff(
                            throttles,
                            opts.backoff_base,
                            opts.backoff_cap,
                            rand::random::<f64>(),
                        )
                    })
                }
                RetryAction::Retry {
                    throttled: false,
                    after: retry_after,
                    reason,
                } => {
                    transient += 1;
                    store.record_attempt(&req.id, &reason)?;
                    tracing::info!(request = %req.id, attempt = transient, %reason, "transient failure, will retry");
                    if transient >= opts.max_attempts {
                        report.halt = Some(Halt::RetriesExhausted {
                            request: req.id.clone(),
                            attempts: transient,
                            last: reason,
                        });
                        break 'requests;
                    }
                    retry_after.unwrap_or_else(|| {
                        backoff(
                            transient,
                            opts.backoff_base,
                            opts.backoff_cap,
                            rand::random::<f64>(),
                        )
                    })
                }
            };
            // The whole lane waits: both pacers pause, so no other request overtakes the wait.
            let until = Instant::now() + delay;
            update_pacer.pause_until(until);
            mass_pacer.pause_until(until);
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_pacer_holds_the_configured_rate() {
        let mut p = Pacer::new(300.0);
        let start = Instant::now();
        for _ in 0..10 {
            p.take(200).await;
        }
        // 2,000 operations at 300/s with a 300-token start: (2000 - 300) / 300 s.
        let took = start.elapsed().as_secs_f64();
        assert!((took - 1700.0 / 300.0).abs() < 0.01, "{took}");
    }

    #[test]
    fn the_tally_counts_answers_by_endpoint_and_code_and_the_rows_batch_dropped() {
        use crate::core::pack::Endpoint;
        let tally = AnswerTally::default();
        let http = |status| Answer::Http {
            status,
            body: String::new(),
            retry_after: None,
        };
        tally.answer(Endpoint::Update, &http(202));
        tally.answer(Endpoint::Update, &http(202));
        tally.clone().answer(Endpoint::MassUpdate, &http(429));
        tally.answer(Endpoint::Update, &Answer::Timeout);
        tally.answer(Endpoint::Update, &Answer::Connection("refused".into()));
        tally.dropped(3);
        let c = tally.counts();
        let want: BTreeMap<(&str, String), u64> = [
            (("mass-update", "429".to_string()), 1),
            (("update", "202".to_string()), 2),
            (("update", "connection".to_string()), 1),
            (("update", "timeout".to_string()), 1),
        ]
        .into();
        assert_eq!(c.requests, want);
        assert_eq!(c.rows_dropped, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_delays_the_next_take() {
        let mut p = Pacer::new(1000.0);
        let start = Instant::now();
        p.pause_until(start + Duration::from_secs(5));
        p.take(1).await;
        assert!(start.elapsed() >= Duration::from_secs(5));
    }
}
