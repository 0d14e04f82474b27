//! `batchsync serve --every 15m [--listen 127.0.0.1:9464]` (DESIGN.md "serve"): the sync run
//! on a schedule in one long-lived process, with `/metrics`, `/healthz` and `/status` on HTTP.
//!
//! The parts, decisions apart from I/O:
//! - `schedule`: when the next run is due, and the liveness rule (pure);
//! - `metrics`: the registry and its Prometheus text (pure);
//! - `http`: the endpoints, on hyper as the emulator serves;
//! - this file: the scheduler loop, which runs each tick through `pipeline::run` exactly as
//!   `batchsync run` does, on the calling thread, and the wiring.
//!
//! Invariants:
//! - Runs never overlap: one thread runs them, one after the other. The run lock is taken per
//!   run (inside `pipeline::run`), so `batchsync run` by hand works between two ticks; a tick
//!   that finds the lock taken is counted `locked` and the next is tried at its time.
//! - A failed run (a source error, Batch unreachable, a guard, even a panic) ends nothing: it
//!   is logged, counted, and the next run is tried at the next tick.
//! - The stop flag (SIGTERM, SIGINT) ends a wait at once, and a run in progress where
//!   `batchsync run` would stop (between requests, with the request in flight answered and
//!   recorded, or before the commit); then `serve` returns and the process exits 0.
//! - The endpoints never wait for a run: the scheduler holds the shared state's lock only to
//!   record a tick, never across a run or a store read.
//! - Loopback only unless `--allow-remote`: the endpoints have no authentication.
//! - Credentials are read from the environment for every run, as `run` does; a missing key
//!   variable at start is a config error (exit 2) rather than a process that fails every tick.
//! - stdout holds one line, `listening on http://ADDR`, once the socket is bound (with port
//!   0, the port the system chose); everything else goes to stderr.

mod http;
pub mod metrics;
pub mod schedule;

use crate::config::Settings;
use crate::core::run::ExitCode;
use crate::pipeline::{self, RunOptions};
use crate::ship::client::{Credentials, CredentialsError};
use crate::ship::{AnswerTally, StopFlag};
use crate::ui::Ui;
use metrics::{Metrics, StoreFigures, Tick};
use schedule::{Health, Schedule};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

pub use schedule::parse_interval;

/// How many runs of the store are searched at start for the last success.
const LAST_SUCCESS_SEARCH: usize = 1000;

/// `serve`'s settings from the command line.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub every: Duration,
    pub listen: SocketAddr,
    /// Allow a `listen` address other than loopback.
    pub allow_remote: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("--listen {addr} is not a loopback address, and /metrics, /healthz and /status have no authentication; pass --allow-remote to serve them beyond this machine (a Kubernetes probe or a Prometheus on another host), on a network you trust")]
    NotLoopback { addr: SocketAddr },
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error("cannot listen on {addr} (another process on that port? choose one with --listen)")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
}

impl ServeError {
    /// Usage and config problems are exit 2, as for every command; the rest exit 1.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            ServeError::NotLoopback { .. } | ServeError::Credentials(_) => ExitCode::Config,
            ServeError::Bind { .. } | ServeError::Runtime(_) => ExitCode::Failed,
        }
    }
}

/// Whether `serve` may listen on `addr`: loopback, or anything with `--allow-remote`.
pub fn check_listen(addr: SocketAddr, allow_remote: bool) -> Result<(), ServeError> {
    if allow_remote || addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(ServeError::NotLoopback { addr })
    }
}

/// What the scheduler and the endpoints share.
struct Shared {
    settings: Arc<Settings>,
    /// Every run's shipping counts its answers here; `/metrics` reads it live.
    tally: AnswerTally,
    state: Mutex<State>,
}

struct State {
    metrics: Metrics,
    schedule: Schedule,
    running: bool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state whole: a panic elsewhere tells nothing.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn metrics(&self) -> String {
        let answers = self.tally.counts();
        self.state().metrics.render(&answers)
    }

    fn health(&self, now: Instant) -> Health {
        let st = self.state();
        schedule::health(now, st.running, st.schedule.next(), st.schedule.interval())
    }
}

/// Runs the sync every `opts.every` until `stop` is raised, serving the endpoints meanwhile.
/// Returns once the run in progress, if any, has recorded its last answer.
pub fn serve(
    settings: Settings,
    opts: &ServeOptions,
    stop: &StopFlag,
    ui: &Ui,
) -> Result<(), ServeError> {
    check_listen(opts.listen, opts.allow_remote)?;
    Credentials::from_env(&settings.destination)?;
    // One worker for the endpoints; the runs build their own runtimes on this thread.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("batchsync-serve-http")
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    let bind = |addr| -> std::io::Result<_> {
        let listener = rt.block_on(tokio::net::TcpListener::bind(addr))?;
        let bound = listener.local_addr()?;
        Ok((listener, bound))
    };
    let (listener, addr) = bind(opts.listen).map_err(|source| ServeError::Bind {
        addr: opts.listen,
        source,
    })?;
    let shared = Arc::new(Shared {
        settings: Arc::new(settings),
        tally: AnswerTally::default(),
        state: Mutex::new(State {
            metrics: Metrics::default(),
            schedule: Schedule::new(opts.every, Instant::now()),
            running: false,
        }),
    });
    let (stop_http, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(http::serve(listener, Arc::clone(&shared), async {
        let _ = stopped.await;
    }));
    announce(addr);
    tracing::info!(%addr, every = %humantime::format_duration(opts.every), "serving /metrics, /healthz and /status; the first run starts now");

    // Before the first run: a restart shows the last success the store knows, not "never".
    let reading = read_store(&shared.settings, true);
    shared.state().take(reading);
    schedule_runs(&rt, &shared, stop, ui);

    let _ = stop_http.send(());
    if let Err(e) = rt.block_on(server) {
        tracing::warn!(error = %e, "the HTTP server ended abnormally");
    }
    tracing::info!("stopped");
    Ok(())
}

/// The one line on stdout.
fn announce(addr: SocketAddr) {
    let mut out = std::io::stdout().lock();
    // A closed stdout must not stop the service: the address is in the log line too.
    let _ = writeln!(out, "listening on http://{addr}");
    let _ = out.flush();
}

/// What the store says, for the gauges: read at start and after every run.
struct StoreReading {
    figures: StoreFigures,
    /// The last success among the store's runs, when asked for.
    last_success: Option<Option<f64>>,
}

/// Reads the gauges' figures, and the last success when `want_last_success`; a store that
/// does not exist yet has nothing pending, nothing rejected and no success. An error is
/// logged, and the metrics keep what they had (unknown at start).
fn read_store(settings: &Settings, want_last_success: bool) -> Option<StoreReading> {
    let read = || -> Result<StoreReading, pipeline::RunError> {
        let Some(reader) = pipeline::status::Reader::open(settings)? else {
            return Ok(StoreReading {
                figures: StoreFigures {
                    events_pending: 0,
                    rejects_open: 0,
                },
                last_success: want_last_success.then_some(None),
            });
        };
        let last_success = match want_last_success {
            true => Some(metrics::last_success(&reader.runs(LAST_SUCCESS_SEARCH)?)),
            false => None,
        };
        Ok(StoreReading {
            figures: StoreFigures {
                events_pending: reader.pending()?.events,
                rejects_open: reader.rejects_open()?,
            },
            last_success,
        })
    };
    match read() {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(error = %crate::errors::chain(&e), "cannot read the state store; the gauges keep their values");
            None
        }
    }
}

impl State {
    /// Takes what the store said into the metrics.
    fn take(&mut self, reading: Option<StoreReading>) {
        let Some(r) = reading else { return };
        self.metrics.set_store(r.figures);
        if let Some(at) = r.last_success {
            self.metrics.set_last_success(at);
        }
    }
}

/// The scheduler: wait for the next tick (or the stop), run, record; until stopped.
fn schedule_runs(rt: &tokio::runtime::Runtime, shared: &Shared, stop: &StopFlag, ui: &Ui) {
    loop {
        let due = shared.state().schedule.next();
        if !wait(rt, stop, due) {
            return;
        }
        shared.state().running = true;
        let dropped_before = shared.tally.counts().rows_dropped;
        let started = Instant::now();
        let ran = run_once(&shared.settings, &shared.tally, stop, ui);
        let tick = match &ran {
            Some(result) => {
                let dropped = shared.tally.counts().rows_dropped - dropped_before;
                Tick::of(result, dropped, started.elapsed())
            }
            None => Tick::failed(started.elapsed()),
        };
        // Until the store could be read once, the last success is asked of it after every
        // run: a store unreachable at start must not hide it for the process's whole life.
        let want_last_success = !shared.state().metrics.knows_last_success();
        let reading = read_store(&shared.settings, want_last_success);
        let mut st = shared.state();
        st.metrics.record(&tick);
        st.take(reading);
        st.schedule.ran(Instant::now());
        st.running = false;
        drop(st);
        if stop.is_raised() {
            return;
        }
    }
}

/// Sleeps until `due`; `false` when the stop flag was raised first.
fn wait(rt: &tokio::runtime::Runtime, stop: &StopFlag, due: Instant) -> bool {
    if stop.is_raised() {
        return false;
    }
    rt.block_on(async {
        tokio::select! {
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(due)) => true,
            () = stop.raised() => false,
        }
    })
}

type RunResult = Result<crate::core::run::RunSummary, Box<pipeline::RunFailed>>;

/// One run, as `batchsync run` makes it, logged; `None` when it could not start (no keys) or
/// panicked: caught, so that the next tick tries again.
fn run_once(
    settings: &Settings,
    tally: &AnswerTally,
    stop: &StopFlag,
    ui: &Ui,
) -> Option<RunResult> {
    let creds = match Credentials::from_env(&settings.destination) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "run not started; the next is tried at the next tick");
            return None;
        }
    };
    let opts = RunOptions {
        tally: Some(tally.clone()),
        ..RunOptions::default()
    };
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pipeline::run(settings, creds, &opts, stop, ui)
    }));
    match ran {
        Ok(result) => {
            log_run(&result);
            Some(result)
        }
        Err(_) => {
            tracing::error!("the run panicked (a bug: please report it with the log above); counted as failed, the next is tried at the next tick");
            None
        }
    }
}

fn log_run(result: &RunResult) {
    match result {
        Ok(s) => match &s.error {
            None => tracing::info!(
                run_id = s.run_id.unwrap_or_default(),
                status = %s.status,
                rows = s.counts.rows,
                added = s.counts.added,
                rejected = s.counts.rejected,
                events_sent = s.counts.events_sent,
                events_pending = s.counts.events_pending,
                duration_ms = s.duration_ms,
                "run finished"
            ),
            Some(e) => tracing::warn!(
                run_id = s.run_id.unwrap_or_default(),
                status = %s.status,
                events_sent = s.counts.events_sent,
                events_pending = s.counts.events_pending,
                error = %e,
                "run stopped with events pending; the next run is tried at the next tick"
            ),
        },
        Err(f) => tracing::warn!(
            run_id = f.summary.run_id.unwrap_or_default(),
            events_sent = f.summary.counts.events_sent,
            error = %crate::errors::chain(&f.error),
            "run failed; the next is tried at the next tick"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::loopback_v4("127.0.0.1:9464", false, true)]
    #[case::loopback_v4_other("127.0.0.2:0", false, true)]
    #[case::loopback_v6("[::1]:9464", false, true)]
    #[case::any_v4("0.0.0.0:9464", false, false)]
    #[case::any_v6("[::]:9464", false, false)]
    #[case::a_lan_address("192.168.1.20:9464", false, false)]
    #[case::any_allowed("0.0.0.0:9464", true, true)]
    fn listening_beyond_loopback_needs_allow_remote(
        #[case] addr: &str,
        #[case] allow_remote: bool,
        #[case] ok: bool,
    ) {
        let got = check_listen(addr.parse().unwrap(), allow_remote);
        assert_eq!(got.is_ok(), ok, "{got:?}");
        if let Err(e) = got {
            assert!(e.to_string().contains("--allow-remote"), "{e}");
            assert_eq!(e.exit_code(), ExitCode::Config);
        }
    }
}
