//! `batchsync emulate`: a local stand-in for Batch's Profile API, for tests and first runs
//! without a Batch account (shared/BATCH_API.md, "What the emulator must reproduce").
//!
//! What it does, request by request:
//! 1. Routing: `POST /{2.x}/profiles/update` and `POST /{2.x}/profiles/mass-update`; any other
//!    version or path is a 404 `ROUTE_NOT_FOUND`.
//! 2. Authentication: `Authorization: Bearer <api_key>` and `X-Batch-Project: <project_key>`.
//!    A missing or wrong value of either is a 401 `AUTHENTICATION_INVALID` (never 403: the
//!    emulator knows one project, so "unknown project" and "wrong project" are the same
//!    thing). The message says which header is wrong and never echoes a value.
//! 3. Faults ([`Faults`], [`Scripted`]): scripted steps first, then seeded random faults.
//!    Requests refused by routing or authentication consume no step and no random draw.
//! 4. Whole-call rules (400), then the token bucket (429, no `Retry-After`), then the
//!    per-operation rules (202, partial errors by `bulk_index`): `validate`, `bucket`.
//!    Content-based faults sit beside them: a request holding an operation for one of
//!    `Faults::bad_request_custom_ids` is a 400, an operation for one of
//!    `Faults::reject_custom_ids` is dropped as a `PROFILE_REJECTED` partial error (Batch's
//!    reasons a client cannot check beforehand).
//! 5. Recording: every event of every accepted operation becomes a [`Received`], in memory and
//!    optionally as an NDJSON line in `record_path`. There is no deduplication: a replayed
//!    request records its events again. Every accepted operation is also applied to its
//!    profile: its `attributes` are upserted (a `null` deletes one, unnamed ones stay), in bulk
//!    order, under the same lock as its events; a replayed request applies them again, which
//!    leaves the same attributes.
//! 6. Answer, after `latency_ms` (plus a scripted `Delay`). A `DropAfter` waits the latency
//!    too, then closes the connection after recording, without answering; a `DropBefore`
//!    closes at once, before anything is parsed or recorded.
//!
//! Choices where the API is silent or the emulator simplifies:
//! - The event time window is not enforced: the client applies `late_events`, the emulator
//!   accepts any valid RFC 3339 `time`.
//! - Profile attributes are kept in memory only (the record file holds events) and the emulator
//!   keeps no state across restarts. A profile exists once any operation for its custom id is
//!   accepted, as Batch creates a profile on its first update: one that only got events reads
//!   back with no attributes, one never accepted is a 404.
//! - An operation identified by `installation` is accepted and its events are recorded with an
//!   empty `custom_id` (an empty custom id is otherwise invalid, so the two cannot be
//!   confused); its attributes are checked but not kept, having no custom id to read back by.
//! - `/_emulator/*` needs no authentication and sees no faults: `GET received` (NDJSON),
//!   `GET stats`, `GET profiles` (every profile holding attributes), `GET profiles/{custom_id}`
//!   (one profile, the id percent-decoded), `GET`/`POST faults`, `POST script` (a JSON array
//!   of [`Scripted`]).
//! - A body is parsed and checked on its connection's task, not in `spawn_blocking`: a
//!   10,000-operation body takes milliseconds in a release build, which a loopback test tool
//!   can afford, and it keeps the request borrowed instead of copied.
//!
//! Invariant checked by the tests: once no request is in flight,
//! `stats.requests == sum(by_status) + dropped_before + dropped_after`.
//!
//! The modules, imports going one way (from the edge inwards):
//! - `server`: the accept loop and the HTTP/1 connections (hyper); routes to `api` or `admin`,
//!   and closes a connection unanswered when one of them says so.
//! - `api`: the Profile API; `admin`: the `/_emulator/*` endpoints. Both read an
//!   `exchange::Request` and decide an `exchange::Outcome`, with no HTTP library in sight.
//! - `validate`, `bucket`, `faults`, `record`: the rules, the rate limits, the fault draws and
//!   the log of what was accepted, each usable on its own; `profiles`: the attribute state
//!   `record` keeps beside its log.

mod admin;
mod api;
mod bucket;
mod cli;
mod exchange;
mod faults;
mod profiles;
mod record;
mod server;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

pub use cli::{run_cli, EmulateArgs, DEMO_API_KEY, DEMO_PROJECT_KEY};
pub use profiles::Attributes;

use bucket::ProjectLimits;
use faults::FaultState;
use record::Recorder;

/// How an emulator is set up. Its `Debug` output leaves the keys out.
#[derive(Clone)]
pub struct EmulatorConfig {
    /// The REST API key it accepts (`Authorization: Bearer <key>`).
    pub api_key: String,
    /// The project key it accepts (`X-Batch-Project`).
    pub project_key: String,
    /// Token buckets on (true) or off.
    pub limits: bool,
    pub faults: Faults,
    /// Append accepted events as NDJSON here.
    pub record_path: Option<PathBuf>,
    /// Seed of the fault generator: the same seed gives the same faults.
    pub seed: u64,
}

impl std::fmt::Debug for EmulatorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatorConfig")
            .field("api_key", &Secret)
            .field("project_key", &Secret)
            .field("limits", &self.limits)
            .field("faults", &self.faults)
            .field("record_path", &self.record_path)
            .field("seed", &self.seed)
            .finish()
    }
}

/// Stands for a key in `Debug` output.
struct Secret;

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Injected faults: random ones (each a share of API requests between 0 and 1, drawn from
/// the seeded generator) and content-based ones (by custom id, deterministic).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Share answered 500 or 503 (alternating), nothing recorded.
    pub error_rate: f64,
    /// Share answered 429 spuriously, nothing recorded.
    pub throttle_rate: f64,
    /// Seconds put in `Retry-After` on injected 429s (`None`: no header).
    pub retry_after: Option<u64>,
    /// Delay added before answering every API request.
    pub latency_ms: u64,
    /// Share whose connection is closed before processing (nothing recorded).
    pub drop_before_rate: f64,
    /// Share processed and recorded, then the connection closed with no answer.
    pub drop_after_rate: f64,
    /// Operations for these custom ids are dropped with a partial error, as Batch drops an
    /// operation for a reason the client cannot check (a profile it refuses, an event too old).
    pub reject_custom_ids: Vec<String>,
    /// A request holding an operation for one of these custom ids is refused whole with a 400,
    /// as Batch refuses a call over one malformed operation.
    pub bad_request_custom_ids: Vec<String>,
}

/// A forced outcome for the next API request, consumed in FIFO order before random faults.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Scripted {
    /// Process normally.
    Ok,
    /// Answer this status without processing (error body for 4xx/5xx).
    Status {
        status: u16,
        retry_after: Option<u64>,
    },
    /// Close the connection without processing.
    DropBefore,
    /// Process and record, then close the connection without answering.
    DropAfter,
    /// Process normally, answer after this delay.
    Delay { ms: u64 },
}

/// One accepted event.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Received {
    /// The emulator's sequence number of the HTTP request (1-based, API requests only).
    pub request: u64,
    /// `"update"` or `"mass-update"`.
    pub endpoint: String,
    pub bulk_index: usize,
    pub custom_id: String,
    /// The event object exactly as received: name, time, attributes.
    pub event: serde_json::Value,
    /// Unix milliseconds.
    pub received_at_ms: u64,
}

/// Counters over API requests (`/_emulator/*` requests are not counted).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    pub requests: u64,
    /// Answers sent, by status.
    pub by_status: BTreeMap<u16, u64>,
    pub dropped_before: u64,
    pub dropped_after: u64,
    pub operations_accepted: u64,
    pub operations_rejected: u64,
    pub events_accepted: u64,
    /// Accepted operations that carried an `attributes` object (an installation's included,
    /// though only a custom id's profile is kept to read back).
    #[serde(default)]
    pub profile_updates: u64,
}

/// The two Profile API endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Update,
    MassUpdate,
}

impl Endpoint {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Endpoint::Update => "update",
            Endpoint::MassUpdate => "mass-update",
        }
    }

    pub(crate) fn max_operations(self) -> usize {
        match self {
            Endpoint::Update => 200,
            Endpoint::MassUpdate => 10_000,
        }
    }
}

/// State shared by the server tasks and the handles. Deliberately not `Debug`: it holds keys.
pub(crate) struct Shared {
    api_key: String,
    project_key: String,
    limits: Option<Mutex<ProjectLimits>>,
    faults: Mutex<FaultState>,
    recorder: Recorder,
    stats: Mutex<Stats>,
    request_seq: AtomicU64,
}

impl Shared {
    fn new(config: EmulatorConfig) -> std::io::Result<Shared> {
        Ok(Shared {
            recorder: Recorder::open(config.record_path.as_deref())?,
            limits: config
                .limits
                .then(|| Mutex::new(ProjectLimits::new(tokio::time::Instant::now()))),
            faults: Mutex::new(FaultState::new(config.faults, config.seed)),
            stats: Mutex::new(Stats::default()),
            request_seq: AtomicU64::new(0),
            api_key: config.api_key,
            project_key: config.project_key,
        })
    }

    fn received(&self) -> Vec<Received> {
        self.recorder.received()
    }

    fn stats(&self) -> Stats {
        lock(&self.stats).clone()
    }

    fn profile(&self, custom_id: &str) -> Option<Attributes> {
        self.recorder.profile(custom_id)
    }

    fn profiles(&self) -> BTreeMap<String, Attributes> {
        self.recorder.profiles()
    }

    fn set_faults(&self, faults: Faults) {
        lock(&self.faults).set_faults(faults);
    }

    fn script(&self, steps: Vec<Scripted>) {
        lock(&self.faults).script(steps);
    }
}

/// Locks a mutex, going on after a panic in another holder: every critical section leaves
/// the data consistent, so poisoning carries no information here.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running emulator on the current tokio runtime. Dropping it stops the server too.
pub struct Emulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Emulator {
    /// Binds `addr` (port 0 picks a free port) and spawns the server.
    pub async fn start(addr: SocketAddr, config: EmulatorConfig) -> std::io::Result<Emulator> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        Emulator::start_on(listener, config)
    }

    /// Spawns the server on a listener the caller has bound. Must be called on a tokio
    /// runtime, which then runs the server.
    pub fn start_on(
        listener: tokio::net::TcpListener,
        config: EmulatorConfig,
    ) -> std::io::Result<Emulator> {
        let shared = Arc::new(Shared::new(config)?);
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        // A dropped sender stops the server too, so an `Emulator` dropped without
        // `shutdown` leaves nothing listening.
        let shutdown = async {
            let _ = stopped.await;
        };
        let task = tokio::spawn(server::serve(listener, Arc::clone(&shared), shutdown));
        tracing::debug!(%addr, "emulator listening");
        Ok(Emulator {
            addr,
            shared,
            stop,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, the value for the client's `endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every accepted event, in acceptance order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received()
    }

    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// The attributes of the profile `custom_id` (sorted by key), `None` if no operation for
    /// it was ever accepted; a profile that only got events has none.
    pub fn profile(&self, custom_id: &str) -> Option<Attributes> {
        self.shared.profile(custom_id)
    }

    /// Every profile holding at least one attribute, by custom id.
    pub fn profiles(&self) -> BTreeMap<String, Attributes> {
        self.shared.profiles()
    }

    /// Replaces the random faults (the script queue is kept).
    pub fn set_faults(&self, faults: Faults) {
        self.shared.set_faults(faults);
    }

    /// Appends steps to the script queue.
    pub fn script(&self, steps: Vec<Scripted>) {
        self.shared.script(steps);
    }

    /// Stops accepting, closes every connection and waits for the server task.
    pub async fn shutdown(self) {
        let Emulator { stop, task, .. } = self;
        let _ = stop.send(());
        if let Err(e) = task.await {
            tracing::warn!(error = %e, "the emulator task ended abnormally");
        }
    }
}

/// A blocking wrapper for synchronous tests: the emulator runs on its own runtime thread,
/// bound to `127.0.0.1:0`. Dropping it shuts the emulator down and joins the thread.
pub struct EmulatorThread {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EmulatorThread {
    pub fn start(config: EmulatorConfig) -> std::io::Result<EmulatorThread> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("batchsync-emulator".to_owned())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("batchsync-emulator-worker")
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let addr = SocketAddr::from(([127, 0, 0, 1], 0));
                    match Emulator::start(addr, config).await {
                        Ok(emulator) => {
                            let _ =
                                ready_tx.send(Ok((emulator.addr, Arc::clone(&emulator.shared))));
                            let _ = stopped.await;
                            emulator.shutdown().await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
            })?;
        let (addr, shared) = ready_rx
            .recv()
            .map_err(|_| std::io::Error::other("the emulator thread ended before it listened"))??;
        Ok(EmulatorThread {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received()
    }

    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    pub fn profile(&self, custom_id: &str) -> Option<Attributes> {
        self.shared.profile(custom_id)
    }

    pub fn profiles(&self) -> BTreeMap<String, Attributes> {
        self.shared.profiles()
    }

    pub fn set_faults(&self, faults: Faults) {
        self.shared.set_faults(faults);
    }

    pub fn script(&self, steps: Vec<Scripted>) {
        self.shared.script(steps);
    }
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for EmulatorThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatorThread")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for EmulatorThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
