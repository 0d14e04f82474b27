//! The accept loop, one task per connection, and the routing between the Profile API
//! (`api`) and the emulator's own `/_emulator/*` endpoints (`admin`).
//!
//! Invariants:
//! - A connection's failure (a reset, a client that goes away mid-request, a malformed head)
//!   ends that connection's task only; the accept loop never stops for it.
//! - Requests on one connection are answered in order, one at a time (HTTP/1.1).
//! - On shutdown the listener closes and every connection task is aborted. Recording never
//!   awaits while it holds its lock, so an abort cannot tear a request's record.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use super::exchange::Outcome;
use super::http::{self, Read};
use super::{admin, api, Shared};

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
        let (request, close) = match http::read_request(&mut stream, &mut buf).await {
            Ok(Read::Request { request, close }) => (request, close),
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
        let outcome = match request.path.strip_prefix("/_emulator/") {
            Some(rest) => {
                Outcome::Reply(admin::handle(&shared, &request.method, rest, &request.body))
            }
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
