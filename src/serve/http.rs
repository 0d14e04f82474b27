//! `serve`'s HTTP edge, the emulator's way (`emulate::server`): hyper's HTTP/1 on tokio, one
//! task per connection, three read-only endpoints.
//!
//! - `GET /metrics`: the Prometheus text format (`metrics`).
//! - `GET /healthz`: 200 `ok`, or 503 naming how overdue the next run is (`schedule::health`).
//! - `GET /status`: `status --json`'s object, read from the store on a blocking thread (the
//!   local mode reads the whole baseline to count it; the database mode connects); 503 with
//!   `{"error": …}` when the store cannot be read.
//!
//! Invariants:
//! - Nothing here writes, takes the run lock or waits for a run: answers come from the
//!   shared state under a short lock, or from a read of the store.
//! - A connection's failure ends that connection's task only; the accept loop goes on.
//! - `HEAD` is answered as `GET` without the body; another method is a 405 naming `GET,
//!   HEAD`; another path a 404.
//! - On shutdown the listener closes and open connections are dropped.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::schedule::Health;
use super::Shared;

type HttpResponse = hyper::Response<Full<Bytes>>;

/// The runs `/status` lists, as `status` does by default.
const STATUS_RUNS: usize = 10;

/// A client that has not sent a whole request head by then is dropped.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves connections accepted on `listener` until `shutdown` completes.
pub(super) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()>,
) {
    crate::accept::accept_until(listener, shutdown, "metrics", |stream| {
        let shared = Arc::clone(&shared);
        async move {
            let service = service_fn(move |request| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(respond(&shared, request).await) }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "a metrics connection ended with an error");
            }
        }
    })
    .await;
}

async fn respond(shared: &Arc<Shared>, request: hyper::Request<Incoming>) -> HttpResponse {
    let path = request.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/status") {
        return text(
            StatusCode::NOT_FOUND,
            "not found: batchsync serves /metrics, /healthz and /status\n".into(),
        );
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{path} answers GET and HEAD\n"),
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path {
        "/metrics" => {
            let mut r = text(StatusCode::OK, shared.metrics());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/healthz" => match shared.health(Instant::now()) {
            Health::Alive => text(StatusCode::OK, "ok\n".into()),
            Health::Overdue(late) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the scheduler is stuck: no run in progress, and the next was due {}s ago\n",
                    late.as_secs()
                ),
            ),
        },
        _ => status(shared).await,
    }
}

/// `/status`: the store read on a blocking thread (the database mode's store is not `Send`,
/// so it lives and dies there).
async fn status(shared: &Arc<Shared>) -> HttpResponse {
    let settings = Arc::clone(&shared.settings);
    let read = tokio::task::spawn_blocking(move || {
        crate::pipeline::status::status(&settings, STATUS_RUNS)
            .map(|s| s.unwrap_or_default().to_json())
            .map_err(|e| crate::errors::chain(&e))
    })
    .await
    .unwrap_or_else(|e| Err(format!("the status read ended abnormally: {e}")));
    match read {
        Ok(v) => json(StatusCode::OK, &v),
        Err(e) => {
            tracing::warn!(error = %e, "/status: cannot read the state store");
            json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({ "error": e }),
            )
        }
    }
}

fn text(status: StatusCode, body: String) -> HttpResponse {
    let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(status: StatusCode, v: &serde_json::Value) -> HttpResponse {
    let mut body = serde_json::to_string_pretty(v).expect("serialisable");
    body.push('\n');
    let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
