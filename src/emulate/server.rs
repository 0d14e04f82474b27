//! The accept loop, one task per connection, and the routing between the Profile API
//! (`api`) and the emulator's own `/_emulator/*` endpoints.
//!
//! Invariants:
//! - A connection's failure (a reset, a client that goes away mid-request, a malformed head)
//!   ends that connection's task only; the accept loop never stops for it.
//! - Requests on one connection are answered in order, one at a time (HTTP/1.1).
//! - On shutdown the listener closes and every connection task is aborted. Recording never
//!   awaits while it holds its lock, so an abort cannot tear a request's record.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use super::http::{self, Read, Response};
use super::{api, lock, Faults, Scripted, Shared};

/// What the server does once a request has been handled.
pub(crate) enum Outcome {
    Reply(Response),
    /// Close the connection without answering.
    Drop,
}

/// Serves until `stop` fires or its sender is dropped.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    connections.spawn(serve_connection(stream, Arc::clone(&shared)));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "emulator cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = joined {
                    if e.is_panic() {
                        tracing::error!(error = %e, "an emulator connection task panicked");
                    }
                }
            }
        }
    }
    drop(listener);
    connections.shutdown().await;
}

async fn serve_connection(mut stream: TcpStream, shared: Arc<Shared>) {
    // Answers are small and written in one piece; do not let Nagle hold them back.
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    loop {
        let request = match http::read_request(&mut stream, &mut buf).await {
            Ok(Read::Request(request)) => request,
            Ok(Read::Closed) => return,
            Ok(Read::Refuse(response)) => {
                tracing::debug!(status = response.status, "emulator refused a request head");
                let _ = http::write_response(&mut stream, &response, true).await;
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "emulator connection failed while reading");
                return;
            }
        };
        let close = request.close;
        let outcome = match request.path.strip_prefix("/_emulator/") {
            Some(rest) => Outcome::Reply(admin(&shared, &request.method, rest, request.body())),
            None => api::handle(&shared, &request).await,
        };
        match outcome {
            Outcome::Reply(response) => {
                if let Err(e) = http::write_response(&mut stream, &response, close).await {
                    tracing::debug!(error = %e, "emulator connection failed while writing");
                    return;
                }
                if close {
                    return;
                }
            }
            Outcome::Drop => return,
        }
    }
}

/// The emulator's own endpoints: no authentication, no faults, not counted in the stats.
fn admin(shared: &Shared, method: &str, path: &str, body: &[u8]) -> Response {
    match (method, path) {
        ("GET", "received") => Response {
            status: 200,
            content_type: "application/x-ndjson",
            body: shared.recorder.received_ndjson(),
            retry_after: None,
        },
        ("GET", "stats") => Response::json(200, &json!(shared.stats())),
        ("GET", "faults") => Response::json(200, &json!(lock(&shared.faults).faults())),
        ("POST", "faults") => match serde_json::from_slice::<Faults>(body) {
            Ok(faults) => match faults.check() {
                Ok(()) => {
                    let answer = json!(faults);
                    shared.set_faults(faults);
                    Response::json(200, &answer)
                }
                Err(message) => Response::error(400, "BAD_REQUEST", &message),
            },
            Err(e) => Response::error(400, "BAD_REQUEST", &format!("not a Faults object: {e}")),
        },
        ("POST", "script") => match serde_json::from_slice::<Vec<Scripted>>(body) {
            Ok(steps) => {
                let queued = steps.len();
                shared.script(steps);
                Response::json(200, &json!({ "queued": queued }))
            }
            Err(e) => Response::error(
                400,
                "BAD_REQUEST",
                &format!("not a JSON array of scripted steps: {e}"),
            ),
        },
        (_, "received" | "stats" | "faults" | "script") => Response::error(
            405,
            "METHOD_NOT_ALLOWED",
            &format!("{method} is not allowed on /_emulator/{path}"),
        ),
        _ => Response::error(
            404,
            "ROUTE_NOT_FOUND",
            "unknown emulator endpoint; try GET /_emulator/received or /_emulator/stats",
        ),
    }
}
