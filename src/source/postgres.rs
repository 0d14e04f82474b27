//! PostgreSQL queries (`type = "postgres"`): the query is prepared (for its columns and their
//! types), then run as `COPY (query) TO STDOUT (FORMAT binary)` in the same transaction, which
//! holds the prepare's locks so that the COPY sends the columns described. Two threads:
//! - the connection's (`Net`): tokio-postgres on a current-thread runtime, handing the
//!   `CopyData` messages over undecoded, up to [`CHUNK_MESSAGES`] at a time;
//! - the source's (`Job::run`): splits the messages into tuples (`copy`) and decodes each
//!   plan column's bytes into a cell (`cell`, the same binary reading as the database mode's
//!   [`RowDecoder`]), into the feed.
//!
//! So the framing and the decoding overlap the server and the snapshot's threads. Both hand
//! over through bounded channels and tokio-postgres reads the socket only as fast as messages
//! are taken, so a 10M-row result never sits in memory: when the pipeline is slower, the
//! server waits. COPY replaced row-at-a-time reading (`query_raw`, a `Row` per row, protocol
//! and decoding on one thread): docs/BENCHMARKS.md, "COPY (issue 12)".
//!
//! The query goes inside COPY's parentheses as the database mode embeds it
//! (`warehouse::sql::embeddable`: one trailing `;` dropped); the prepare has already refused
//! a second statement with the server's message.
//!
//! Connection:
//! - `url` is a libpq URL (`postgres://user@host:5432/db?sslmode=require`) or key-value string.
//!   The password comes from the URL if it holds one, else from the variable `password_env`
//!   names, else from `PGPASSWORD`. Without a user, `PGUSER`, then `USER`, as libpq does.
//! - Hosts are tried in order (`host=a,b`, `hostaddr`, one port or one per host,
//!   `load_balance_hosts=random`, `target_session_attrs`), each address a name resolves to in
//!   turn, as libpq does; the error lists every attempt. A Unix-socket host
//!   (`host=/run/postgresql`) works, without TLS: PostgreSQL never offers it there, so
//!   `prefer` goes plain and `require` fails.
//! - `sslmode` (rustls; see `db::Tls` for the rule and why):
//!   - `disable`: plain TCP.
//!   - `prefer`, the default when the URL says nothing, as in libpq: TLS when the server offers
//!     it, plain TCP only when it answers that it has none. The certificate is not checked:
//!     the connection is encrypted against eavesdroppers, and the server trusted no more than
//!     over plain TCP (anyone who could forge a certificate could as well answer "no TLS").
//!   - `require`, `verify-ca`, `verify-full`: TLS or no connection, always with verify-full
//!     semantics: the chain checked against the PEM file `sslrootcert=FILE` names (relative to
//!     the working directory, as libpq), else the Mozilla roots (webpki-roots), and the name
//!     against the host (an IP address against the certificate's IP names). Never a fallback.
//!   - `sslrootcert` without one of these three is a config error: it asks for a check that
//!     `prefer` and `disable` would not make. `allow` is not taken.
//! - Bytes received from the server are counted on the socket, below TLS ([`Target::received`]),
//!   for TCP and Unix sockets alike.
//! - `source.timeout` bounds connecting (and each TCP connect, unless `connect_timeout` says
//!   otherwise), and is the session's `statement_timeout`: the query, including the time its
//!   rows take to stream, must finish within it. A server that sends nothing for longer than
//!   that (plus a margin) is given up on.
//!
//! Types, by the result column's SQL type (`[mapping] types` then converts as for any source):
//!
//! | PostgreSQL | value |
//! |---|---|
//! | `bool` | bool |
//! | `int2`, `int4`, `int8`, `oid` | integer |
//! | `float8` | number; NaN and ±Infinity are invalid (the row is a reject) |
//! | `float4` | number, read through its shortest decimal rendering (`0.1`, not 0.10000000149) |
//! | `numeric` | number when an f64 holds it exactly (`42.50` → 42.5, `250.00` → 250), else invalid: round it or cast it to text in the query |
//! | `text`, `varchar`, `char(n)` (blank-padded, as PostgreSQL returns it), `name`, `citext`, enums | string |
//! | `uuid` | string, hyphenated lowercase |
//! | `date` | time: midnight in `[mapping] timezone` |
//! | `timestamp` | time: the wall-clock time read in `[mapping] timezone` (a DST gap is invalid) |
//! | `timestamptz` | time: the instant, whatever the session's time zone |
//! | `json`, `jsonb` | as NDJSON reads it: objects and arrays as they are, scalars by their JSON type |
//! | `text[]`, `varchar[]`, `char(n)[]`, `name[]` | string array (one dimension; a null item is invalid) |
//! | NULL of any type | null |
//! | any other type (`time`, `interval`, `bytea`, `inet`, `money`, other arrays, …) | invalid, naming the type: cast it in the query (`col::text`) |
//!
//! Invariants:
//! - A query error, a lost connection, a timeout or a server that terminates the backend
//!   reaches the pipeline as a structural error carrying the server's message (severity,
//!   message, SQLSTATE), never as the end of the result. The result ends only with the COPY
//!   data's trailer read and its transaction committed; malformed COPY data, or a connection
//!   thread that stops without saying why, is an error naming the rows read before it.
//! - A cell is what row-at-a-time reading of the same value gives (the tests compare the two
//!   over every type this source reads, NULLs included).
//! - The source describes itself as `postgres://user@host:port/db`: never a password.

use super::db::{self, FedSource, Feed, Query, Tls};
use super::sqltypes;
use super::SourceError;
use crate::core::value::{Cell, Value};
use bytes::Bytes;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use chrono_tz::Tz;
use futures_util::{FutureExt, StreamExt};
use rand::seq::SliceRandom;
use std::error::Error as StdError;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_postgres::config::{Host, LoadBalanceHosts, SslMode, TargetSessionAttrs};
use tokio_postgres::error::{DbError, ErrorPosition};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::types::{FromSql, Kind as PgKind, Type};
use tokio_postgres::{Client, Config, NoTls, Row, SimpleQueryMessage};
use tokio_postgres_rustls::MakeRustlsConnect;

mod copy;
mod tls;

/// Opens the query: connects, prepares it and resolves the plan's columns before returning.
pub fn open(q: &Query<'_>) -> Result<FedSource, SourceError> {
    let target = Target::new(q.url, q.password_env, q.timeout)?;
    let what = target.what.clone();
    let job = Job {
        what: what.clone(),
        query: q.query.to_string(),
        columns: q.columns.to_vec(),
        timeout: q.timeout,
        tz: q.timezone,
    };
    FedSource::start(what, q.columns.len(), "batchsync-postgres", move |feed| {
        job.run(feed, target)
    })
}

/// A server to connect to, as the URL and the environment give it: the source's and the
/// database mode's one way in.
pub(crate) struct Target {
    /// `postgres://user@host:port/db`: never a password.
    pub what: String,
    config: Config,
    /// `None` for `sslmode=disable`; else the connector of the mode (`tls::connector`).
    tls: Option<MakeRustlsConnect>,
    timeout: Duration,
    /// Bytes received on the sockets of every connection this target opened.
    received: Arc<AtomicU64>,
}

impl Target {
    /// Reads the URL (libpq's forms), fills the user and password from the environment, and
    /// readies TLS; connects to nothing yet.
    pub fn new(
        url: &str,
        password_env: Option<&str>,
        timeout: Duration,
    ) -> Result<Target, SourceError> {
        let bad_url = |message: String| SourceError::Config {
            what: "source.url".into(),
            message: format!("not a PostgreSQL connection URL: {message}"),
        };
        let options = tls::options(url).map_err(bad_url)?;
        let mut config: Config = options
            .url
            .parse()
            .map_err(|e: tokio_postgres::Error| bad_url(crate::errors::chain(&e)))?;
        if config.get_user().is_none() {
            if let Some(user) = std::env::var("PGUSER")
                .ok()
                .or_else(|| std::env::var("USER").ok())
            {
                config.user(user);
            }
        }
        let what = describe(&config);
        if config.get_password().is_none() {
            if let Some(p) = db::password(&what, password_env, "PGPASSWORD")? {
                config.password(p);
            }
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(timeout);
        }
        if config.get_application_name().is_none() {
            config.application_name("batchsync");
        }
        config.ssl_mode(match options.tls {
            Tls::Off => SslMode::Disable,
            Tls::Opportunistic => SslMode::Prefer,
            Tls::Verified => SslMode::Require,
        });
        let tls = tls::connector(&what, options.tls, options.rootcert.as_deref())?;
        endpoints(&config).map_err(|message| SourceError::Config {
            what: what.clone(),
            message,
        })?;
        Ok(Target {
            what,
            config,
            tls,
            timeout,
            received: Arc::default(),
        })
    }

    /// Connects within the timeout and runs the connection on the current runtime; the
    /// error says why, in the server's words when it gave some. The connection runs over
    /// batchsync's own socket, so the client's `cancel_token` cannot open one by itself:
    /// cancel with `cancel_query_raw` over a new socket, or drop the client.
    pub async fn connect(&self) -> Result<(Client, ConnectionError), SourceError> {
        match tokio::time::timeout(self.timeout, self.connect_any()).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(message)) => Err(SourceError::Io {
                what: self.what.clone(),
                message: format!("cannot connect: {message}"),
            }),
            Err(_) => Err(SourceError::Io {
                what: self.what.clone(),
                message: format!(
                    "cannot connect: no answer within {:?} (source.timeout)",
                    self.timeout
                ),
            }),
        }
    }

    /// Bytes received from the server so far, on the sockets of every connection this
    /// target opened: what crossed the network (TLS records and protocol framing included),
    /// not the rows' decoded size.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Each endpoint, and each address a name resolves to, in turn (libpq's order), until
    /// one connects and suits `target_session_attrs`; else every attempt's error.
    async fn connect_any(&self) -> Result<(Client, ConnectionError), String> {
        let random = self.config.get_load_balance_hosts() == LoadBalanceHosts::Random;
        let mut endpoints = endpoints(&self.config)?;
        if random {
            endpoints.shuffle(&mut rand::thread_rng());
        }
        // (where, why) of each attempt.
        let mut failures: Vec<(String, String)> = Vec::new();
        for endpoint in &endpoints {
            let mut addrs = match &endpoint.addr {
                Addr::Tcp(host) => {
                    let at = || format!("{host}:{}", endpoint.port);
                    match tokio::net::lookup_host((host.as_str(), endpoint.port)).await {
                        Ok(addrs) => {
                            let addrs: Vec<Socket> = addrs.map(Socket::Tcp).collect();
                            if addrs.is_empty() {
                                failures.push((at(), "the name resolves to no address".into()));
                            }
                            addrs
                        }
                        Err(e) => {
                            failures.push((at(), e.to_string()));
                            continue;
                        }
                    }
                }
                #[cfg(unix)]
                Addr::Unix(dir) => vec![Socket::Unix(
                    dir.join(format!(".s.PGSQL.{}", endpoint.port)),
                )],
            };
            if random {
                addrs.shuffle(&mut rand::thread_rng());
            }
            for addr in addrs {
                match self.connect_once(&addr, endpoint.name.as_deref()).await {
                    Ok(c) => return Ok(c),
                    Err(e) => failures.push((addr.to_string(), e)),
                }
            }
        }
        Err(match failures.as_slice() {
            // One attempt: `what` names the host already.
            [(_, why)] => why.clone(),
            _ => failures
                .iter()
                .map(|(at, why)| format!("{at}: {why}"))
                .collect::<Vec<_>>()
                .join("; "),
        })
    }

    async fn connect_once(
        &self,
        addr: &Socket,
        name: Option<&str>,
    ) -> Result<(Client, ConnectionError), String> {
        let wire = Wire::open(addr, &self.config, self.received.clone())
            .await
            .map_err(|e| e.to_string())?;
        let started = match (&self.tls, name) {
            (Some(tls), Some(name)) => {
                let connect = MakeTlsConnect::<Wire>::make_tls_connect(&mut tls.clone(), name)
                    .map_err(|e| format!("{name} cannot be checked against a certificate: {e}"))?;
                start(&self.config, wire, connect).await
            }
            // A Unix socket: `prefer` goes plain, `require` hears "no TLS" and fails.
            _ => start(&self.config, wire, NoTls).await,
        };
        let (client, lost) = started
            .map_err(|e| db::certificate_refusal(&e).unwrap_or_else(|| message(&e, None)))?;
        self.check_session(&client, &lost).await?;
        Ok((client, lost))
    }

    /// `target_session_attrs`: whether the server is the kind asked for.
    async fn check_session(&self, client: &Client, lost: &ConnectionError) -> Result<(), String> {
        let want_writes = match self.config.get_target_session_attrs() {
            TargetSessionAttrs::ReadWrite => true,
            TargetSessionAttrs::ReadOnly => false,
            _ => return Ok(()),
        };
        let answer = client
            .simple_query("SHOW transaction_read_only")
            .await
            .map_err(|e| message(&e, Some(lost)))?;
        let read_only = answer.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).map(|v| v == "on"),
            _ => None,
        });
        match (want_writes, read_only) {
            (true, Some(true)) => {
                Err("the server is read-only (target_session_attrs=read-write)".into())
            }
            (false, Some(false)) => {
                Err("the server accepts writes (target_session_attrs=read-only)".into())
            }
            (_, Some(_)) => Ok(()),
            (_, None) => Err("SHOW transaction_read_only gave no answer".into()),
        }
    }
}

/// One host of the URL, as libpq lists them.
#[derive(Debug, PartialEq)]
struct Endpoint {
    addr: Addr,
    port: u16,
    /// The name the certificate must hold: the host, or the `hostaddr` when no host is
    /// given; none for a Unix socket.
    name: Option<String>,
}

#[derive(Debug, PartialEq)]
enum Addr {
    Tcp(String),
    #[cfg(unix)]
    Unix(std::path::PathBuf),
}

/// The URL's hosts in order, paired with their `hostaddr` and port as libpq pairs them: one
/// port for all, or one per host. The same checks as tokio-postgres's own connect.
fn endpoints(config: &Config) -> Result<Vec<Endpoint>, String> {
    let hosts = config.get_hosts();
    let hostaddrs = config.get_hostaddrs();
    let ports = config.get_ports();
    if hosts.is_empty() && hostaddrs.is_empty() {
        return Err("the URL names no host (host=… or hostaddr=…)".into());
    }
    if !hosts.is_empty() && !hostaddrs.is_empty() && hosts.len() != hostaddrs.len() {
        return Err(format!(
            "{} hosts but {} hostaddrs: give one hostaddr per host",
            hosts.len(),
            hostaddrs.len()
        ));
    }
    let n = hosts.len().max(hostaddrs.len());
    if ports.len() > 1 && ports.len() != n {
        return Err(format!(
            "{n} hosts but {} ports: give one port, or one per host",
            ports.len()
        ));
    }
    Ok((0..n)
        .map(|i| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            let host = hosts.get(i);
            let hostaddr = hostaddrs.get(i);
            let name = match host {
                Some(Host::Tcp(h)) => Some(h.clone()),
                #[cfg(unix)]
                Some(Host::Unix(_)) => None,
                None => hostaddr.map(|a| a.to_string()),
            };
            let addr = match (hostaddr, host) {
                (Some(a), _) => Addr::Tcp(a.to_string()),
                (None, Some(Host::Tcp(h))) => Addr::Tcp(h.clone()),
                #[cfg(unix)]
                (None, Some(Host::Unix(dir))) => Addr::Unix(dir.clone()),
                (None, None) => unreachable!("n counts hosts or hostaddrs"),
            };
            Endpoint { addr, port, name }
        })
        .collect())
}

/// One address to open a socket to.
enum Socket {
    Tcp(SocketAddr),
    #[cfg(unix)]
    Unix(std::path::PathBuf),
}

impl std::fmt::Display for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Socket::Tcp(a) => write!(f, "{a}"),
            #[cfg(unix)]
            Socket::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// The socket of one connection, counting the bytes it receives into the target's total.
/// Below TLS: what it counts is what crossed the network.
struct Wire {
    stream: Stream,
    received: Arc<AtomicU64>,
}

enum Stream {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

impl Wire {
    /// Opens the socket with the URL's socket options, as tokio-postgres would: the connect
    /// timeout, no Nagle delay, TCP keepalives and user timeout.
    async fn open(addr: &Socket, config: &Config, received: Arc<AtomicU64>) -> io::Result<Wire> {
        async fn within<T>(
            limit: Option<&Duration>,
            connect: impl std::future::Future<Output = io::Result<T>>,
        ) -> io::Result<T> {
            match limit {
                Some(limit) => tokio::time::timeout(*limit, connect).await.map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer within {limit:?} (connect_timeout)"),
                    )
                })?,
                None => connect.await,
            }
        }
        let limit = config.get_connect_timeout();
        let stream = match addr {
            Socket::Tcp(a) => {
                let tcp = within(limit, TcpStream::connect(a)).await?;
                tcp.set_nodelay(true)?;
                let sock = socket2::SockRef::from(&tcp);
                #[cfg(target_os = "linux")]
                if let Some(t) = config.get_tcp_user_timeout() {
                    sock.set_tcp_user_timeout(Some(*t))?;
                }
                if config.get_keepalives() {
                    let mut keepalive =
                        socket2::TcpKeepalive::new().with_time(config.get_keepalives_idle());
                    if let Some(interval) = config.get_keepalives_interval() {
                        keepalive = keepalive.with_interval(interval);
                    }
                    if let Some(retries) = config.get_keepalives_retries() {
                        keepalive = keepalive.with_retries(retries);
                    }
                    sock.set_tcp_keepalive(&keepalive)?;
                }
                Stream::Tcp(tcp)
            }
            #[cfg(unix)]
            Socket::Unix(path) => {
                Stream::Unix(within(limit, tokio::net::UnixStream::connect(path)).await?)
            }
        };
        Ok(Wire { stream, received })
    }
}

impl AsyncRead for Wire {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = match &mut this.stream {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(unix)]
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        };
        let read = buf.filled().len() - before;
        this.received.fetch_add(read as u64, Ordering::Relaxed);
        polled
    }
}

impl AsyncWrite for Wire {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(unix)]
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            #[cfg(unix)]
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Tcp(s) => s.is_write_vectored(),
            #[cfg(unix)]
            Stream::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            #[cfg(unix)]
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(unix)]
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// What the driver's thread needs.
struct Job {
    what: String,
    query: String,
    columns: Vec<String>,
    timeout: Duration,
    tz: Tz,
}

/// How to read one plan column out of a row.
struct Column {
    index: usize,
    kind: Kind,
    ty: Type,
    name: String,
}

/// The error the connection task ended with, if it ended with one.
pub(crate) type ConnectionError = Arc<Mutex<Option<String>>>;

impl Job {
    fn query_error(&self, message: String) -> SourceError {
        SourceError::Query {
            what: self.what.clone(),
            message,
        }
    }

    /// The decoding side, on the source's thread: starts the connection's thread, waits for
    /// the result's columns, then decodes the tuples it hands over into the feed.
    fn run(self, mut feed: Feed, target: Target) {
        let (tx, rx) = sync_channel::<Copied>(CHUNKS);
        let net = {
            let what = self.what.clone();
            let query = self.query.clone();
            let wanted = self.columns.clone();
            let timeout = self.timeout;
            std::thread::Builder::new()
                .name("batchsync-pg-net".into())
                .spawn(move || {
                    let failed = match db::runtime(&what) {
                        Ok(rt) => {
                            let net = Net {
                                what,
                                query,
                                wanted,
                                timeout,
                                tx: &tx,
                            };
                            match rt.block_on(net.copy(&target)) {
                                Ok(()) => return,
                                Err(f) => f,
                            }
                        }
                        Err(e) => Failure::Setup(e),
                    };
                    let _ = tx.send(Copied::Failed(failed));
                })
        };
        let net = match net {
            Ok(handle) => handle,
            Err(e) => {
                return feed.fail(SourceError::Io {
                    what: self.what.clone(),
                    message: format!("cannot start the connection's thread: {e}"),
                })
            }
        };
        // The connection's thread ended without saying why: it panicked.
        let stopped = |net: std::thread::JoinHandle<()>, rows: u64| {
            let why = match net.join() {
                Err(panic) => panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default(),
                Ok(()) => String::new(),
            };
            self.query_error(format!(
                "the connection's thread stopped after {rows} rows (a bug): {why}"
            ))
        };
        let (columns, width) = match rx.recv() {
            Ok(Copied::Columns { columns, width }) => (columns, width),
            Ok(Copied::Failed(f)) => return feed.fail(self.failure(f, None)),
            Ok(Copied::Data(_) | Copied::End) | Err(_) => return feed.fail(stopped(net, 0)),
        };
        if feed.ready().is_err() {
            return;
        }
        let mut tuples = copy::Tuples::new(width);
        let mut row = |b: &[u8], fields: &[copy::Field]| {
            for (slot, c) in feed.next().iter_mut().zip(&columns) {
                match &fields[c.index] {
                    // Over the text of the row before, in its buffer.
                    Some(r) if c.kind == Kind::Text => {
                        sqltypes::text_into(&b[r.clone()], c.ty.name(), slot)
                    }
                    Some(r) => *slot = cell(c, &b[r.clone()], self.tz),
                    None => *slot = Cell::Typed(Value::Null),
                }
            }
            feed.push()
        };
        let (started, mut starved) = (Instant::now(), Duration::ZERO);
        loop {
            let wait = Instant::now();
            let next = rx.recv();
            starved += wait.elapsed();
            match next {
                Ok(Copied::Data(messages)) => {
                    for m in &messages {
                        match tuples.feed(m, &mut row) {
                            Ok(()) => {}
                            Err(copy::Stop::Row(db::Gone)) => return,
                            Err(copy::Stop::Malformed(why)) => {
                                let rows = feed.rows();
                                return feed.fail(self.query_error(format!(
                                    "the COPY data cannot be read after {rows} rows: {why}"
                                )));
                            }
                        }
                    }
                }
                Ok(Copied::End) => {
                    if let Err(why) = tuples.finish() {
                        let rows = feed.rows();
                        return feed.fail(self.query_error(format!(
                            "the COPY data cannot be read after {rows} rows: {why}"
                        )));
                    }
                    tracing::debug!(
                        source = %self.what,
                        rows = feed.rows(),
                        decoding_ms = started.elapsed().as_millis() as u64,
                        starved_ms = starved.as_millis() as u64,
                        "query decoded"
                    );
                    return feed.done();
                }
                Ok(Copied::Failed(f)) => {
                    let rows = feed.rows();
                    return feed.fail(self.failure(f, Some(rows)));
                }
                Ok(Copied::Columns { .. }) | Err(_) => {
                    let rows = feed.rows();
                    return feed.fail(stopped(net, rows));
                }
            }
        }
    }

    /// A failure of the connection's side as the pipeline sees it; `rows`: those read before
    /// it, once the result has started.
    fn failure(&self, f: Failure, rows: Option<u64>) -> SourceError {
        let rows = rows.unwrap_or(0);
        match f {
            Failure::Setup(e) => e,
            Failure::Broke(m) => {
                self.query_error(format!("the query failed after {rows} rows: {m}"))
            }
            Failure::Silent(idle) => self.query_error(format!(
                "no answer from the server for {idle:?} after {rows} rows (source.timeout)"
            )),
        }
    }
}

/// `CopyData` messages handed over at a time, at most: enough that the channel costs nothing
/// per row, few enough that the decoding thread starts early.
const CHUNK_MESSAGES: usize = 1024;
/// Chunks that may wait for the decoding thread: when it is slower, the connection's thread
/// blocks, stops reading its socket, and the server waits.
const CHUNKS: usize = 4;

/// From the connection's thread to the decoding thread.
enum Copied {
    /// The query is prepared and its columns resolved: the plan's, and the result's width.
    Columns {
        columns: Vec<Column>,
        width: usize,
    },
    /// `CopyData` messages, in order.
    Data(Vec<Bytes>),
    /// The server's `CopyDone`, the transaction committed.
    End,
    Failed(Failure),
}

/// Why the connection's side stopped.
enum Failure {
    /// Before the result started: the error as it is.
    Setup(SourceError),
    /// The server's (or the connection's) message once the result has started.
    Broke(String),
    /// Nothing from the server for this long.
    Silent(Duration),
}

/// The connection's side, on a thread of its own (a current-thread runtime driving the
/// socket): prepares the query for its columns, then runs it as `COPY (query) TO STDOUT
/// (FORMAT binary)` and hands the `CopyData` messages over as they come, undecoded.
struct Net<'a> {
    what: String,
    query: String,
    wanted: Vec<String>,
    timeout: Duration,
    tx: &'a SyncSender<Copied>,
}

impl Net<'_> {
    fn setup_error(&self, message: String) -> Failure {
        Failure::Setup(SourceError::Query {
            what: self.what.clone(),
            message,
        })
    }

    /// `Ok` once the result is handed over in full or the decoding thread has hung up.
    async fn copy(self, target: &Target) -> Result<(), Failure> {
        let (client, lost) = target.connect().await.map_err(Failure::Setup)?;
        let failed = |e: &tokio_postgres::Error| message(e, Some(&lost));
        // The prepare takes the query's locks and the transaction holds them until the COPY
        // has run: the columns it describes are those the COPY sends (COPY has no description
        // of its own to check them against).
        let setup = format!(
            "SET statement_timeout = {}; BEGIN",
            self.timeout.as_millis().min(i32::MAX as u128)
        );
        client.batch_execute(&setup).await.map_err(|e| {
            self.setup_error(format!("cannot set the statement timeout: {}", failed(&e)))
        })?;
        let statement = client
            .prepare(&self.query)
            .await
            .map_err(|e| self.setup_error(format!("the query failed: {}", failed(&e))))?;
        let names: Vec<String> = statement
            .columns()
            .iter()
            .map(|c| c.name().to_string())
            .collect();
        let at = db::resolve(&self.what, &self.wanted, &names).map_err(Failure::Setup)?;
        let columns: Vec<Column> = at
            .into_iter()
            .map(|i| {
                let ty = statement.columns()[i].type_().clone();
                Column {
                    index: i,
                    kind: kind_of(&ty),
                    ty,
                    name: names[i].clone(),
                }
            })
            .collect();
        // The server took the query as one statement; a `;` that ends it must go to fit it
        // inside COPY's parentheses, and a closing `--` comment must not swallow them.
        let body = crate::warehouse::sql::embeddable(&self.query).map_err(|problem| {
            // The server took one statement: batchsync's reading of the text disagrees, at
            // a quote it reads otherwise (a backslash-escaped one in an E'…' string, say).
            let at = match problem {
                crate::warehouse::sql::QueryProblem::Statements(at) => {
                    format!(" (a `;` at character {at} reads as the end of a statement)")
                }
                crate::warehouse::sql::QueryProblem::Empty => String::new(),
            };
            self.setup_error(format!(
                "source.query cannot be run inside COPY ( … ) TO STDOUT{at}: write a quote \
                 inside a string as '' rather than \\'"
            ))
        })?;
        let send = |m: Copied| self.tx.send(m).is_ok();
        if !send(Copied::Columns {
            columns,
            width: names.len(),
        }) {
            return Ok(());
        }
        let copy = format!("COPY (\n{body}\n) TO STDOUT (FORMAT binary)");
        let stream = client
            .copy_out(&copy)
            .await
            .map_err(|e| self.setup_error(format!("the query failed: {}", failed(&e))))?;
        futures_util::pin_mut!(stream);
        let idle = db::idle_limit(self.timeout);
        let (mut messages, mut waited, mut blocked) = (0u64, Duration::ZERO, Duration::ZERO);
        loop {
            let start = Instant::now();
            let first = match tokio::time::timeout(idle, stream.next()).await {
                Ok(Some(Ok(m))) => m,
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(Failure::Broke(failed(&e))),
                Err(_) => return Err(Failure::Silent(idle)),
            };
            waited += start.elapsed();
            // Whatever else the connection has read already goes along, without waiting.
            let mut chunk = Vec::with_capacity(CHUNK_MESSAGES);
            chunk.push(first);
            let mut ended = false;
            while chunk.len() < CHUNK_MESSAGES {
                match stream.next().now_or_never() {
                    Some(Some(Ok(m))) => chunk.push(m),
                    Some(Some(Err(e))) => {
                        if !send(Copied::Data(chunk)) {
                            return Ok(());
                        }
                        return Err(Failure::Broke(failed(&e)));
                    }
                    Some(None) => {
                        ended = true;
                        break;
                    }
                    None => break,
                }
            }
            messages += chunk.len() as u64;
            let start = Instant::now();
            if !send(Copied::Data(chunk)) {
                return Ok(());
            }
            blocked += start.elapsed();
            if ended {
                break;
            }
        }
        client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| Failure::Broke(failed(&e)))?;
        drop(client);
        tracing::debug!(
            source = %self.what,
            messages,
            bytes_received = target.received(),
            server_wait_ms = waited.as_millis() as u64,
            decoder_wait_ms = blocked.as_millis() as u64,
            "query read"
        );
        send(Copied::End);
        Ok(())
    }
}

/// Starts the protocol over `wire` (TLS as the config's `sslmode` and `tls` decide) and runs
/// the connection on this thread's runtime, keeping how it ended.
async fn start<T>(
    config: &Config,
    wire: Wire,
    tls: T,
) -> Result<(Client, ConnectionError), tokio_postgres::Error>
where
    T: TlsConnect<Wire> + 'static,
    T::Stream: Send + 'static,
{
    let (client, connection) = config.connect_raw(wire, tls).await?;
    let lost: ConnectionError = Arc::default();
    let slot = lost.clone();
    tokio::spawn(async move {
        // Polled by reference, so that the connection, and with it the channels the client's
        // requests wait on, lives until its message is written: a request failing with
        // "connection closed" then finds why (the server's words) beside it.
        let mut connection = std::pin::pin!(connection);
        if let Err(e) = connection.as_mut().await {
            if let Ok(mut slot) = slot.lock() {
                *slot = Some(message(&e, None));
            }
        }
    });
    Ok((client, lost))
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Bool,
    Int2,
    Int4,
    Int8,
    Oid,
    Float4,
    Float8,
    Numeric,
    Text,
    Uuid,
    Date,
    Timestamp,
    Timestamptz,
    Json,
    TextArray,
    Other,
}

fn kind_of(ty: &Type) -> Kind {
    let known = [
        (Type::BOOL, Kind::Bool),
        (Type::INT2, Kind::Int2),
        (Type::INT4, Kind::Int4),
        (Type::INT8, Kind::Int8),
        (Type::OID, Kind::Oid),
        (Type::FLOAT4, Kind::Float4),
        (Type::FLOAT8, Kind::Float8),
        (Type::NUMERIC, Kind::Numeric),
        (Type::TEXT, Kind::Text),
        (Type::VARCHAR, Kind::Text),
        (Type::BPCHAR, Kind::Text),
        (Type::NAME, Kind::Text),
        (Type::UNKNOWN, Kind::Text),
        (Type::UUID, Kind::Uuid),
        (Type::DATE, Kind::Date),
        (Type::TIMESTAMP, Kind::Timestamp),
        (Type::TIMESTAMPTZ, Kind::Timestamptz),
        (Type::JSON, Kind::Json),
        (Type::JSONB, Kind::Json),
        (Type::TEXT_ARRAY, Kind::TextArray),
        (Type::VARCHAR_ARRAY, Kind::TextArray),
        (Type::BPCHAR_ARRAY, Kind::TextArray),
        (Type::NAME_ARRAY, Kind::TextArray),
    ];
    if let Some((_, k)) = known.iter().find(|(t, _)| t == ty) {
        return *k;
    }
    if matches!(ty.kind(), PgKind::Enum(_)) || ty.name() == "citext" {
        return Kind::Text;
    }
    Kind::Other
}

/// A column's bytes as the server sent them (binary format), whatever its type.
struct Raw<'a>(&'a [u8]);

impl<'a> FromSql<'a> for Raw<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Raw<'a>, Box<dyn StdError + Sync + Send>> {
        Ok(Raw(raw))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// Reads the cells of a row's columns as the source does: the database mode's fetch of
/// the rows that become events types them exactly like a local-mode read.
pub(crate) struct RowDecoder {
    columns: Vec<Column>,
    tz: Tz,
}

impl RowDecoder {
    /// `columns`: (index in the row, SQL type, name), in the plan's order.
    pub fn new(columns: Vec<(usize, Type, String)>, tz: Tz) -> RowDecoder {
        let columns = columns
            .into_iter()
            .map(|(index, ty, name)| Column {
                index,
                kind: kind_of(&ty),
                ty,
                name,
            })
            .collect();
        RowDecoder { columns, tz }
    }

    pub fn decode(&self, row: &Row, cells: &mut Vec<Cell>) {
        cells.clear();
        cells.extend(self.columns.iter().map(|c| decode(row, c, self.tz)));
    }
}

fn decode(row: &Row, c: &Column, tz: Tz) -> Cell {
    match row.try_get::<_, Option<Raw<'_>>>(c.index) {
        Ok(Some(Raw(raw))) => cell(c, raw, tz),
        Ok(None) => Cell::Typed(Value::Null),
        Err(e) => Cell::Invalid(format!(
            "{} value cannot be read: {}",
            c.ty.name(),
            crate::errors::chain(&e)
        )),
    }
}

/// One non-null value, by the rules of the module doc.
fn cell(c: &Column, raw: &[u8], tz: Tz) -> Cell {
    fn read<'a, T: FromSql<'a>>(c: &Column, raw: &'a [u8], f: impl FnOnce(T) -> Cell) -> Cell {
        match T::from_sql(&c.ty, raw) {
            Ok(v) => f(v),
            Err(e) => Cell::Invalid(format!("{} value cannot be read: {e}", c.ty.name())),
        }
    }
    let int = |i: i64| Cell::Typed(Value::Int(i));
    match c.kind {
        Kind::Bool => read(c, raw, |b: bool| Cell::Typed(Value::Bool(b))),
        Kind::Int2 => read(c, raw, |i: i16| int(i.into())),
        Kind::Int4 => read(c, raw, |i: i32| int(i.into())),
        Kind::Int8 => read(c, raw, int),
        Kind::Oid => read(c, raw, |i: u32| int(i.into())),
        Kind::Float4 => read(c, raw, sqltypes::float4),
        Kind::Float8 => read(c, raw, sqltypes::float8),
        Kind::Numeric => match numeric_fast(raw) {
            Some(cell) => cell,
            None => match numeric_text(raw) {
                Ok(text) => sqltypes::decimal(&text),
                Err(e) => Cell::Invalid(format!("numeric value cannot be read: {e}")),
            },
        },
        Kind::Text => sqltypes::text(raw, c.ty.name()),
        Kind::Uuid => read(c, raw, |u: uuid::Uuid| {
            Cell::Typed(Value::Text(u.hyphenated().to_string()))
        }),
        Kind::Date => read(c, raw, |d: NaiveDate| sqltypes::date(d, tz)),
        Kind::Timestamp => read(c, raw, |t: NaiveDateTime| sqltypes::naive(t, tz)),
        Kind::Timestamptz => read(c, raw, |t: DateTime<Utc>| {
            Cell::Typed(Value::Time(t.timestamp_micros()))
        }),
        Kind::Json => read(c, raw, sqltypes::json),
        Kind::TextArray => read(c, raw, |items: Vec<Option<String>>| {
            match items.into_iter().collect::<Option<Vec<String>>>() {
                Some(items) => Cell::Typed(Value::StrArray(items)),
                None => Cell::Invalid(format!(
                    "{} holds a null item; a Batch array cannot (array_remove(col, NULL) in the query)",
                    c.ty.name()
                )),
            }
        }),
        Kind::Other => sqltypes::unsupported(c.ty.name(), &format!("{}::text", c.name)),
    }
}

/// The cell `sqltypes::decimal` makes of [`numeric_text`], computed without the text, for the
/// numerics of everyday data; `None` for the others, which take the text path:
/// - no fraction (`dscale` 0), at most 18 significant digits and an i64 holds it: that
///   integer, as `decimal` parses it;
/// - else at most 15 significant digits `M` and a decimal exponent `E` within ±22: `M × 10^E`
///   (or `M / 10^-E`) of two exactly represented f64 is the correctly rounded value, the one
///   parsing the text gives (Clinger's fast path), and 15 digits survive the f64 round trip
///   (`f64::DIGITS`), so `decimal`'s exactness check passes: `Value::number` of it.
///
/// The text costs ~10 allocations and two float formattings a cell; this, none. The tests
/// compare the two on random numerics.
fn numeric_fast(raw: &[u8]) -> Option<Cell> {
    const POW10: [f64; 23] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
        1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
    ];
    let word = |i: usize| u16::from_be_bytes([raw[i], raw[i + 1]]);
    if raw.len() < 8 {
        return None;
    }
    let (ndigits, weight, sign, dscale) = (word(0) as i16, word(2) as i16 as i64, word(4), word(6));
    let negative = match sign {
        0x0000 => false,
        0x4000 => true,
        _ => return None,
    };
    if ndigits < 0 || raw.len() != 8 + 2 * ndigits as usize {
        return None;
    }
    if (0..ndigits as usize).any(|g| word(8 + 2 * g) >= 10_000) {
        return None;
    }
    let group = |g: i64| -> Option<u16> {
        match usize::try_from(g).ok().filter(|&g| g < ndigits as usize) {
            Some(g) => Some(word(8 + 2 * g)),
            None => Some(0),
        }
    };
    // The text's digits in order, as `numeric_text` writes them: the integer part's groups
    // (none when `weight` < 0), then the fraction's, cut at `dscale` digits. `m` holds the
    // digits up to the last non-zero one; `zeros` counts those after it.
    let (mut m, mut digits, mut zeros) = (0u64, 0u32, 0i64);
    let mut take = |d: u16| -> Option<()> {
        if d == 0 {
            if m != 0 {
                zeros += 1;
            }
            return Some(());
        }
        digits += zeros as u32 + 1;
        if digits > 18 {
            return None;
        }
        m = m * 10u64.pow(zeros as u32 + 1) + d as u64;
        zeros = 0;
        Some(())
    };
    let dscale = dscale as i64;
    for g in 0..=weight {
        let d = group(g)?;
        for unit in [1000, 100, 10, 1] {
            take(d / unit % 10)?;
        }
    }
    let mut left = dscale;
    let mut g = weight + 1;
    while left > 0 {
        let d = group(g)?;
        for unit in [1000, 100, 10, 1].into_iter().take(left.min(4) as usize) {
            take(d / unit % 10)?;
        }
        left -= 4;
        g += 1;
    }
    let exp = zeros - dscale;
    if dscale == 0 {
        let scale = 10i128.checked_pow(u32::try_from(exp).ok()?)?;
        let v = i64::try_from((m as i128).checked_mul(scale)?).ok()?;
        return Some(Cell::Typed(Value::Int(if negative { -v } else { v })));
    }
    if digits > 15 {
        return None;
    }
    let x = match usize::try_from(exp) {
        Ok(e) => m as f64 * POW10.get(e)?,
        Err(_) => m as f64 / POW10.get(usize::try_from(-exp).ok()?)?,
    };
    Some(sqltypes::float8(if negative { -x } else { x }))
}

/// The text of a `numeric` in PostgreSQL's binary format: `ndigits`, `weight`, `sign`,
/// `dscale` (i16/u16 BE), then `ndigits` base-10000 digits, the first worth 10000^weight.
fn numeric_text(raw: &[u8]) -> Result<String, String> {
    let word = |i: usize| -> Result<u16, String> {
        raw.get(i..i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| format!("{} bytes is too short", raw.len()))
    };
    let ndigits = word(0)? as i16;
    let weight = word(2)? as i16 as i64;
    let sign = word(4)?;
    let dscale = word(6)? as usize;
    match sign {
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        0x0000 | 0x4000 => {}
        other => return Err(format!("unknown sign {other:#06x}")),
    }
    if ndigits < 0 || raw.len() != 8 + 2 * ndigits as usize {
        return Err(format!("{} digits in {} bytes", ndigits, raw.len()));
    }
    let digits = (0..ndigits as usize)
        .map(|i| word(8 + 2 * i))
        .collect::<Result<Vec<u16>, String>>()?;
    if digits.iter().any(|&d| d >= 10_000) {
        return Err("a digit is out of range".into());
    }
    let digit = |group: i64| -> u16 {
        usize::try_from(group)
            .ok()
            .and_then(|g| digits.get(g).copied())
            .unwrap_or(0)
    };
    let mut s = String::with_capacity(8 + 4 * digits.len() + dscale);
    if sign == 0x4000 {
        s.push('-');
    }
    if weight < 0 {
        s.push('0');
    } else {
        s.push_str(&digit(0).to_string());
        for g in 1..=weight {
            s.push_str(&format!("{:04}", digit(g)));
        }
    }
    if dscale > 0 {
        let mut frac = String::with_capacity(dscale + 4);
        let mut g = weight + 1;
        while frac.len() < dscale {
            frac.push_str(&format!("{:04}", digit(g)));
            g += 1;
        }
        frac.truncate(dscale);
        s.push('.');
        s.push_str(&frac);
    }
    Ok(s)
}

/// The server's message: severity, message, SQLSTATE, position, detail and hint; or the error
/// chain, with how the connection ended when the stream only saw it close.
pub(crate) fn message(e: &tokio_postgres::Error, lost: Option<&ConnectionError>) -> String {
    if let Some(db) = e.as_db_error() {
        return db_message(db);
    }
    let mut m = crate::errors::chain(e);
    let ended = lost.and_then(|l| ended_with(l, e.is_closed()));
    if let Some(ended) = ended {
        if !m.contains(&ended) {
            m.push_str(&format!(" ({ended})"));
        }
    }
    m
}

/// How the connection ended, as its task recorded it. A request can fail with "connection
/// closed" a moment before the task, on the runtime's thread, writes why: for such an error
/// this waits up to [`REASON_WAIT`] for the reason (an error path only; a task that never
/// writes one, a connection that ended cleanly, costs that wait once).
fn ended_with(lost: &ConnectionError, closed: bool) -> Option<String> {
    let read = || lost.lock().ok().and_then(|slot| slot.clone());
    let t0 = std::time::Instant::now();
    loop {
        match read() {
            Some(reason) => return Some(reason),
            None if closed && t0.elapsed() < REASON_WAIT => {
                std::thread::sleep(std::time::Duration::from_millis(2))
            }
            None => return None,
        }
    }
}

/// The longest [`ended_with`] waits for a closed connection's reason.
const REASON_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

fn db_message(db: &DbError) -> String {
    let mut m = format!(
        "{}: {} (SQLSTATE {})",
        db.severity(),
        db.message(),
        db.code().code()
    );
    if let Some(ErrorPosition::Original(p)) = db.position() {
        m.push_str(&format!(", at character {p} of the query"));
    }
    if let Some(d) = db.detail() {
        m.push_str(&format!("; detail: {d}"));
    }
    if let Some(h) = db.hint() {
        m.push_str(&format!("; hint: {h}"));
    }
    m
}

/// `postgres://user@host:port/db`, from the parsed settings: no password, whatever the URL.
fn describe(c: &Config) -> String {
    let ports = c.get_ports();
    let hosts: Vec<String> = c
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = ports
                .get(i)
                .or_else(|| (ports.len() == 1).then(|| &ports[0]))
                .copied()
                .unwrap_or(5432);
            match h {
                Host::Tcp(h) => format!("{h}:{port}"),
                #[cfg(unix)]
                Host::Unix(dir) => format!("{}:{port}", dir.display()),
            }
        })
        .collect();
    let hosts = if hosts.is_empty() {
        "localhost:5432".to_string()
    } else {
        hosts.join(",")
    };
    let user = c.get_user().unwrap_or("");
    let db = c.get_dbname().unwrap_or(user);
    format!("postgres://{user}@{hosts}/{db}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    /// The binary form of a numeric, as the server would send it.
    fn numeric(sign: u16, weight: i16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(digits.len() as i16).to_be_bytes());
        v.extend_from_slice(&weight.to_be_bytes());
        v.extend_from_slice(&sign.to_be_bytes());
        v.extend_from_slice(&dscale.to_be_bytes());
        for d in digits {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    #[rstest]
    #[case(numeric(0, 0, 2, &[42, 5000]), "42.50")]
    #[case(numeric(0x4000, 0, 2, &[7]), "-7.00")]
    #[case(numeric(0, 1, 0, &[1, 2345]), "12345")]
    #[case(numeric(0, 1, 0, &[1]), "10000")]
    #[case(numeric(0, -2, 5, &[1000]), "0.00001")]
    #[case(numeric(0, -1, 1, &[1000]), "0.1")]
    #[case(numeric(0, 0, 0, &[]), "0")]
    #[case(numeric(0, 0, 3, &[]), "0.000")]
    #[case(numeric(0, 4, 3, &[1234, 5678, 9012, 3456, 7890, 1230]), "12345678901234567890.123")]
    #[case(numeric(0xC000, 0, 0, &[]), "NaN")]
    #[case(numeric(0xF000, 0, 0, &[]), "-Infinity")]
    fn numerics_decode_to_their_text(#[case] raw: Vec<u8>, #[case] text: &str) {
        assert_eq!(numeric_text(&raw).unwrap(), text);
    }

    /// The cell the text path makes of a numeric.
    fn numeric_by_text(raw: &[u8]) -> Cell {
        match numeric_text(raw) {
            Ok(text) => sqltypes::decimal(&text),
            Err(e) => Cell::Invalid(format!("numeric value cannot be read: {e}")),
        }
    }

    #[rstest]
    #[case(numeric(0, 0, 2, &[42, 5000]), Some(Value::Float(42.5)))]
    #[case(numeric(0, 0, 2, &[250]), Some(Value::Int(250)))]
    #[case(numeric(0x4000, 0, 0, &[7]), Some(Value::Int(-7)))]
    #[case(numeric(0, -1, 1, &[1000]), Some(Value::Float(0.1)))]
    #[case(numeric(0, 1, 0, &[1]), Some(Value::Int(10000)))]
    #[case(numeric(0, 0, 3, &[]), Some(Value::Int(0)))]
    #[case(numeric(0, 4, 0, &[12, 3450]), Some(Value::Int(123_450_000_000_000_000)))]
    #[case(numeric(0x4000, 4, 0, &[92, 3372, 368, 5477, 5807]), Some(Value::Int(-923_372_036_854_775_807)))]
    // What the text path must decide: 19 digits, past 15 with a fraction, NaN, a malformed one.
    #[case(numeric(0, 4, 0, &[922, 3372, 368, 5477, 5807]), None)]
    #[case(numeric(0, 4, 3, &[1234, 5678, 9012, 3456, 7890, 1230]), None)]
    #[case(numeric(0xC000, 0, 0, &[]), None)]
    #[case(numeric(0, 0, 0, &[10_000]), None)]
    fn everyday_numerics_decode_without_their_text(
        #[case] raw: Vec<u8>,
        #[case] fast: Option<Value>,
    ) {
        assert_eq!(numeric_fast(&raw), fast.map(Cell::Typed));
        assert_eq!(
            cell(&numeric_column(), &raw, chrono_tz::UTC),
            numeric_by_text(&raw)
        );
    }

    fn numeric_column() -> Column {
        Column {
            index: 0,
            kind: Kind::Numeric,
            ty: Type::NUMERIC,
            name: "n".into(),
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(20_000))]
        /// Whatever the fast path decides is what the text path decides, on numerics valid or
        /// not (digits past `dscale`, leading and trailing zero groups, out-of-range digits).
        #[test]
        fn the_fast_numeric_path_agrees_with_the_text(
            negative: bool,
            weight in -8i16..8,
            dscale in 0u16..24,
            digits in proptest::collection::vec(
                proptest::prop_oneof![0u16..10_000, proptest::strategy::Just(0u16), 10_000u16..10_002],
                0..7,
            ),
        ) {
            let raw = numeric(if negative { 0x4000 } else { 0 }, weight, dscale, &digits);
            if let Some(fast) = numeric_fast(&raw) {
                proptest::prop_assert_eq!(fast, numeric_by_text(&raw), "{:?}", numeric_text(&raw));
            }
        }
    }

    #[test]
    fn a_truncated_numeric_is_an_error() {
        let mut raw = numeric(0, 0, 0, &[1, 2]);
        raw.pop();
        assert!(numeric_text(&raw).is_err());
    }

    #[test]
    fn the_description_holds_no_password() {
        let c: Config = "postgres://ada:s3cret@db.example:6543/shop?sslmode=require"
            .parse()
            .unwrap();
        assert_eq!(describe(&c), "postgres://ada@db.example:6543/shop");
        let c: Config = "host=db user=ada password=s3cret dbname=shop"
            .parse()
            .unwrap();
        assert_eq!(describe(&c), "postgres://ada@db:5432/shop");
    }

    fn tcp(host: &str, port: u16, name: Option<&str>) -> Endpoint {
        Endpoint {
            addr: Addr::Tcp(host.into()),
            port,
            name: name.map(String::from),
        }
    }

    #[rstest]
    #[case("postgres://u@db/x", vec![tcp("db", 5432, Some("db"))])]
    #[case(
        "postgres://u@a:1,b/x",
        vec![tcp("a", 1, Some("a")), tcp("b", 5432, Some("b"))]
    )]
    #[case(
        "host=a,b port=6543 user=u",
        vec![tcp("a", 6543, Some("a")), tcp("b", 6543, Some("b"))]
    )]
    #[case(
        "host=a,b port=1,2 user=u",
        vec![tcp("a", 1, Some("a")), tcp("b", 2, Some("b"))]
    )]
    #[case(
        "host=db.example hostaddr=10.0.0.7 user=u",
        vec![tcp("10.0.0.7", 5432, Some("db.example"))]
    )]
    #[case("hostaddr=10.0.0.7 user=u", vec![tcp("10.0.0.7", 5432, Some("10.0.0.7"))])]
    #[case(
        "host=/run/postgresql user=u",
        vec![Endpoint { addr: Addr::Unix("/run/postgresql".into()), port: 5432, name: None }]
    )]
    fn hosts_pair_with_their_address_port_and_certificate_name(
        #[case] url: &str,
        #[case] expected: Vec<Endpoint>,
    ) {
        let c: Config = url.parse().unwrap();
        assert_eq!(endpoints(&c).unwrap(), expected);
    }

    #[rstest]
    #[case("host=a,b port=1,2,3 user=u", "ports")]
    #[case("host=a,b hostaddr=10.0.0.1 user=u", "hostaddr")]
    #[case("user=u", "no host")]
    fn hosts_that_do_not_pair_are_a_config_error(#[case] url: &str, #[case] says: &str) {
        let c: Config = url.parse().unwrap();
        let err = endpoints(&c).unwrap_err();
        assert!(err.contains(says), "{err}");
    }

    /// The PostgreSQL of the database tests (`BATCHSYNC_TEST_PG_URL`, which `.ci/run` sets);
    /// `None`, said on stderr, when it is not set, unless `CI` is (as tests/it/db_sources.rs).
    fn test_server() -> Option<String> {
        use std::io::Write as _;
        const VAR: &str = "BATCHSYNC_TEST_PG_URL";
        let ci = std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"));
        match std::env::var(VAR) {
            Ok(u) if !u.trim().is_empty() => Some(u),
            _ if ci => panic!("{VAR} is not set, and CI is: the database tests must run in CI"),
            _ => {
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED: {VAR} is not set; database tests did not run"
                );
                None
            }
        }
    }

    fn with_sslmode(url: &str, mode: &str) -> String {
        match (url.contains("://"), url.contains('?')) {
            (true, true) => format!("{url}&sslmode={mode}"),
            (true, false) => format!("{url}?sslmode={mode}"),
            (false, _) => format!("{url} sslmode={mode}"),
        }
    }

    #[test]
    fn the_bytes_received_count_at_least_what_a_query_returns_and_not_much_more() {
        let Some(url) = test_server() else { return };
        let rt = db::runtime("test").unwrap();
        const MIB: u64 = 1 << 20;
        for mode in ["disable", "prefer"] {
            let target =
                Target::new(&with_sslmode(&url, mode), None, Duration::from_secs(60)).unwrap();
            assert_eq!(target.received(), 0);
            rt.block_on(async {
                let (client, _) = target.connect().await.unwrap();
                let before = target.received();
                assert!(before > 0, "{mode}: the server's greeting is counted");
                let row = client
                    .query_one("SELECT repeat('x', 1048576)", &[])
                    .await
                    .unwrap();
                assert_eq!(row.get::<_, &str>(0).len() as u64, MIB);
                let got = target.received() - before;
                // The value, plus the protocol's framing and, with TLS, its records' headers.
                assert!(
                    (MIB..MIB + 64 * 1024).contains(&got),
                    "{mode}: {got} bytes received for 1 MiB"
                );
            });
        }
    }

    #[test]
    fn a_host_that_refuses_is_passed_over_for_the_next_and_every_failure_is_told() {
        let Some(url) = test_server() else { return };
        let server: Config = url.parse().unwrap();
        let Some(Host::Tcp(host)) = server.get_hosts().first() else {
            return; // a Unix-socket test server: this test is about TCP hosts.
        };
        let port = server.get_ports().first().copied().unwrap_or(5432);
        let user = server.get_user().unwrap_or("postgres");
        let db = server.get_dbname().unwrap_or(user);
        // Port 1 on loopback: nothing listens there, the connection is refused at once.
        let multi = format!("host=127.0.0.1,{host} port=1,{port} user={user} dbname={db}");
        let rt = db::runtime("test").unwrap();
        let target = Target::new(&multi, None, Duration::from_secs(30)).unwrap();
        rt.block_on(async {
            let (client, _) = target.connect().await.expect("the second host connects");
            client.simple_query("SELECT 1").await.unwrap();
        });
        let dead = format!("host=127.0.0.1,127.0.0.1 port=1,2 user={user} sslmode=disable");
        let target = Target::new(&dead, None, Duration::from_secs(30)).unwrap();
        let err = rt.block_on(target.connect()).map(|_| ()).unwrap_err();
        let said = err.to_string();
        assert!(
            said.contains("127.0.0.1:1: ") && said.contains("127.0.0.1:2: "),
            "{said}"
        );
    }

    /// Every kind batchsync reads, and a few it does not, with edge values: (name, SQL).
    const EVERY_KIND: &[(&str, &str)] = &[
        ("b", "v % 2 = 0"),
        ("i2", "(v * 7)::int2"),
        ("i4", "(v::int8 * -1000003 % 2147483648)::int4"),
        ("i8", "(v::int8 * 4000000000037)"),
        ("o", "(v + 16384)::oid"),
        (
            "f4",
            "(ARRAY['0.1', '-0', '3.4e38', 'NaN'])[1 + v % 4]::float4",
        ),
        (
            "f8",
            "(ARRAY['0.1', '-0', '1e308', 'Infinity'])[1 + v % 4]::float8",
        ),
        (
            "n",
            "(ARRAY[42.50, -7.000, 12345678901234567890.123, 'NaN', 0.00001])[1 + v % 5]::numeric",
        ),
        ("t", "repeat('é' || v::text, v % 4)"),
        ("vc", "('x' || v)::varchar(10)"),
        ("bp", "('ab' || (v % 3))::char(6)"),
        ("nm", "('name' || v)::name"),
        ("u", "md5(v::text)::uuid"),
        ("d", "date '1990-05-17' + v"),
        (
            "ts",
            "timestamp '2026-03-29 02:30:00' + v * interval '1 hour'",
        ),
        (
            "tz",
            "timestamptz '2026-11-20T09:15:00.25Z' + v * interval '1 microsecond'",
        ),
        (
            "j",
            "(ARRAY['{\"a\": [1, 2]}', '\"s\"', 'null', '3.5', '[\"x\"]'])[1 + v % 5]::json",
        ),
        ("jb", "jsonb_build_object('k', v, 'n', NULL)"),
        (
            "ta",
            "CASE WHEN v % 3 = 0 THEN ARRAY['a', NULL] ELSE ARRAY['a', v::text] END",
        ),
        ("va", "ARRAY[v::varchar]"),
        ("iv", "v * interval '1 day'"),
        ("ia", "ARRAY[v]"),
    ];

    /// A query of `rows` rows of [`EVERY_KIND`], every fifth row all NULLs, `tail` after it.
    fn every_kind_query(rows: u32, tail: &str) -> String {
        let cols: Vec<String> = EVERY_KIND
            .iter()
            .map(|(name, sql)| format!("CASE WHEN v % 5 = 4 THEN NULL ELSE {sql} END AS {name}"))
            .collect();
        format!(
            "SELECT v AS id, {} FROM generate_series(0, {}) v{tail}",
            cols.join(", "),
            rows - 1
        )
    }

    fn columns_of_every_kind() -> Vec<String> {
        std::iter::once("id")
            .chain(EVERY_KIND.iter().map(|(n, _)| *n))
            .map(String::from)
            .collect()
    }

    /// The rows the source reads (`open`, over COPY), or its error.
    fn read_source(url: &str, query: &str, columns: &[String]) -> Result<Vec<Vec<Cell>>, String> {
        use crate::source::Source as _;
        let q = Query {
            url,
            query,
            password_env: None,
            timeout: Duration::from_secs(60),
            columns,
            timezone: chrono_tz::Europe::Paris,
        };
        let mut src = open(&q).map_err(|e| e.to_string())?;
        let mut rows = Vec::new();
        let mut cells = Vec::new();
        while src
            .next_row(&mut cells)
            .map_err(|e| e.to_string())?
            .is_some()
        {
            rows.push(cells.clone());
        }
        Ok(rows)
    }

    /// The rows as the database mode's [`RowDecoder`] reads them, row by row.
    fn read_rows(url: &str, query: &str, columns: &[String]) -> Vec<Vec<Cell>> {
        let rt = db::runtime("test").unwrap();
        let target = Target::new(url, None, Duration::from_secs(60)).unwrap();
        rt.block_on(async {
            let (client, _) = target.connect().await.unwrap();
            let statement = client.prepare(query).await.unwrap();
            let plan: Vec<(usize, Type, String)> = columns
                .iter()
                .map(|name| {
                    let i = statement
                        .columns()
                        .iter()
                        .position(|c| c.name() == name)
                        .unwrap();
                    (i, statement.columns()[i].type_().clone(), name.clone())
                })
                .collect();
            let decoder = RowDecoder::new(plan, chrono_tz::Europe::Paris);
            let mut cells = Vec::new();
            client
                .query(&statement, &[])
                .await
                .unwrap()
                .iter()
                .map(|row| {
                    decoder.decode(row, &mut cells);
                    cells.clone()
                })
                .collect()
        })
    }

    #[test]
    fn every_type_reads_over_copy_as_row_by_row_nulls_included() {
        let Some(url) = test_server() else { return };
        let columns = columns_of_every_kind();
        // Reversed, so that the plan's order is not the result's.
        let plan: Vec<String> = columns.iter().rev().cloned().collect();
        let query = every_kind_query(3000, "");
        let copied = read_source(&url, &query, &plan).unwrap();
        assert_eq!(copied.len(), 3000);
        let by_rows = read_rows(&url, &query, &plan);
        for (i, (c, r)) in copied.iter().zip(&by_rows).enumerate() {
            assert_eq!(c, r, "row {i}");
        }
        assert_eq!(copied, by_rows);
        // Each fifth row is NULL in every column but the id (the plan's last).
        let nulls = &copied[4];
        assert!(nulls[..plan.len() - 1]
            .iter()
            .all(|c| *c == Cell::Typed(Value::Null)));
        // The reading is not vacuous: each kind gives values, rejects and names its type.
        let flat = format!("{:?}", copied[..5].to_vec());
        for want in [
            "Float(0.1)",
            "Invalid(\"numeric 12345678901234567890.123",
            "interval",
        ] {
            assert!(flat.contains(want), "{want} in {flat}");
        }
    }

    #[test]
    fn a_query_ending_in_a_semicolon_or_a_comment_reads_over_copy() {
        let Some(url) = test_server() else { return };
        let columns = columns_of_every_kind();
        let plain = read_source(&url, &every_kind_query(7, ""), &columns).unwrap();
        assert_eq!(plain.len(), 7);
        for tail in [
            ";",
            " ; ",
            "; -- done",
            " -- the end",
            "\n/* the end */ ;\n",
        ] {
            let query = every_kind_query(7, tail);
            assert_eq!(
                read_source(&url, &query, &columns).unwrap(),
                plain,
                "{query:?}"
            );
        }
        let two = read_source(&url, &every_kind_query(7, "; SELECT 1"), &columns).unwrap_err();
        assert!(two.contains("multiple commands"), "{two}");
    }

    #[test]
    fn a_query_batchsync_cannot_put_inside_copy_says_what_to_write_instead() {
        let Some(url) = test_server() else { return };
        let columns = vec!["id".to_string()];
        // One statement to the server; a `;` after a quote that batchsync reads as closing.
        let escaped = r"SELECT E'it\'s; fine' AS id";
        let err = read_source(&url, escaped, &columns).unwrap_err();
        assert!(
            err.contains("inside COPY") && err.contains("as ''"),
            "{err}"
        );
        let doubled = "SELECT 'it''s; fine' AS id";
        let rows = read_source(&url, doubled, &columns).unwrap();
        assert_eq!(rows, [[Cell::Typed(Value::Text("it's; fine".into()))]]);
    }

    #[test]
    fn types_map_to_kinds() {
        assert_eq!(kind_of(&Type::INT8), Kind::Int8);
        assert_eq!(kind_of(&Type::BPCHAR), Kind::Text);
        assert_eq!(kind_of(&Type::JSONB), Kind::Json);
        assert_eq!(kind_of(&Type::VARCHAR_ARRAY), Kind::TextArray);
        assert_eq!(kind_of(&Type::INTERVAL), Kind::Other);
        assert_eq!(kind_of(&Type::INT4_ARRAY), Kind::Other);
    }
}
