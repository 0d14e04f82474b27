//! The accept loop of batchsync's two HTTP servers (the emulator and `serve`'s endpoints):
//! each connection on a task of its own, until a shutdown future completes.
//!
//! Invariants:
//! - An accept error (out of file descriptors and the like) is logged and backed off from,
//!   never spun on, and never ends the loop.
//! - On shutdown the listener closes first, then the connections still open are ended.

use std::future::Future;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Serves connections accepted on `listener` with `connection` until `shutdown` completes;
/// `what` names the server in log lines.
pub(crate) async fn accept_until<F, Fut>(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    what: &'static str,
    connection: F,
) where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::pin!(shutdown);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    connections.spawn(connection(stream));
                }
                Err(e) => {
                    tracing::warn!(error = %e, server = what, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = joined {
                    if e.is_panic() {
                        tracing::error!(error = %e, server = what, "a connection task panicked");
                    }
                }
            }
        }
    }
    drop(listener);
    connections.shutdown().await;
}
