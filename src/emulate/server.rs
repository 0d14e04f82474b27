//! The emulator's HTTP edge: the accept loop, one hyper HTTP/1 connection per task, the
//! translation between hyper's types and `exchange`'s, and the routing between the Profile
//! API (`api`) and the emulator's own `/_emulator/*` endpoints (`admin`).
//!
//! Invariants:
//! - A connection's failure (a reset, a client that goes away mid-request, a malformed head)
//!   ends that connection's task only; the accept loop never stops for it.
//! - Requests on one connection are answered in order, one at a time (HTTP/1.1): hyper reads
//!   a pipelined request only once the one before it is answered.
//! - A handler sees a request only once its whole body has arrived. A body over
//!   [`MAX_BODY_BYTES`] is answered 413 and the connection closed without reaching a handler,
//!   so it is not counted in the stats.
//! - An [`Outcome::Drop`] closes the connection without a byte of answer: the connection's
//!   task owns hyper's connection future and drops it, which closes the socket, while the
//!   service future that asked for it never completes, so hyper has nothing to write.
//! - Once a handler has started it runs to its end, as Batch would go on processing a request
//!   whose client gave up: the connection allows half-closes, so hyper does not watch for the
//!   client's end of stream while a request is in flight and never cancels a handler midway.
//!   That keeps `stats.requests == sum(by_status) + dropped_before + dropped_after`.
//! - hyper answers what cannot be framed itself, then closes: a malformed head is a 400 (with
//!   an empty body), a head over [`MAX_HEAD_BYTES`] a 431. Chunked bodies are read like
//!   others.
//! - On shutdown the listener closes and every connection task is aborted. Recording never
//!   awaits while it holds its lock, so an abort cannot tear a request's record.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use super::exchange::{Outcome, Request, Response};
use super::{admin, api, Shared};

/// Largest request head accepted (answered 431 above).
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Largest body accepted. The client keeps under 5 MB; this leaves room for experiments.
pub(crate) const MAX_BODY_BYTES: usize = 20 * 1024 * 1024;

type HttpResponse = hyper::Response<Full<Bytes>>;

/// Serves connections accepted on `listener` until `shutdown` completes.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()>,
) {
    crate::accept::accept_until(listener, shutdown, "emulator", |stream| {
        // Answers are small and written in one piece; do not let Nagle hold them.
        let _ = stream.set_nodelay(true);
        serve_connection(stream, Arc::clone(&shared))
    })
    .await;
}

/// Serves one connection until the client closes it, it fails, or a handler asks to hang up.
async fn serve_connection<S>(stream: S, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let hang_up = Arc::new(Notify::new());
    let service = {
        let hang_up = Arc::clone(&hang_up);
        service_fn(move |request| {
            let shared = Arc::clone(&shared);
            let hang_up = Arc::clone(&hang_up);
            async move {
                match respond(&shared, request).await {
                    Some(response) => Ok::<_, Infallible>(response),
                    None => {
                        hang_up.notify_one();
                        // Never answer: the connection is dropped below before hyper could.
                        std::future::pending().await
                    }
                }
            }
        })
    };
    let connection = http1::Builder::new()
        // The same header spelling as Batch's own answers; some raw-socket tests read it.
        .title_case_headers(true)
        .half_close(true)
        .max_header_size(MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        result = connection => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "emulator connection ended with an error");
            }
        }
        // Dropping the connection future closes the socket with the request unanswered.
        () = hang_up.notified() => {}
    }
}

/// The answer to one request, or `None` to close the connection without one.
async fn respond(shared: &Shared, request: hyper::Request<Incoming>) -> Option<HttpResponse> {
    let request = match receive(request).await {
        Ok(request) => request,
        Err(Unreadable::TooLarge) => {
            let refusal = Response::error(
                413,
                "BAD_REQUEST",
                &format!("the body is larger than {MAX_BODY_BYTES} bytes"),
            );
            // The rest of the body is not read, so the connection cannot carry another request.
            let mut response = to_http(refusal);
            let close = HeaderValue::from_static("close");
            response.headers_mut().insert(header::CONNECTION, close);
            return Some(response);
        }
        Err(Unreadable::Broken(e)) => {
            tracing::debug!(error = %e, "emulator connection failed while reading a body");
            return None;
        }
    };
    let outcome = match request.path.strip_prefix("/_emulator/") {
        Some(rest) => Outcome::Reply(admin::handle(shared, &request.method, rest, &request.body)),
        None => api::handle(shared, &request).await,
    };
    match outcome {
        Outcome::Reply(response) => Some(to_http(response)),
        Outcome::Drop => None,
    }
}

/// Why a request never reaches a handler.
enum Unreadable {
    /// The body is over [`MAX_BODY_BYTES`], by its `Content-Length` or once read.
    TooLarge,
    /// The body could not be read: the client went away, or sent a malformed chunk.
    Broken(Box<dyn std::error::Error + Send + Sync>),
}

/// Reads the whole body and keeps the parts of the head the handlers use.
async fn receive(request: hyper::Request<Incoming>) -> Result<Request, Unreadable> {
    let (head, body) = request.into_parts();
    // A declared length over the limit is refused before a byte of it is read (and before
    // hyper sends a `100 Continue`, which it does only once the body is polled).
    if body.size_hint().lower() > MAX_BODY_BYTES as u64 {
        return Err(Unreadable::TooLarge);
    }
    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => return Err(Unreadable::TooLarge),
        Err(e) => return Err(Unreadable::Broken(e)),
    };
    let value = |name| {
        let value: &HeaderValue = head.headers.get(name)?;
        Some(String::from_utf8_lossy(value.as_bytes()).trim().to_owned())
    };
    Ok(Request {
        method: head.method.as_str().to_owned(),
        path: head.uri.path().to_owned(),
        content_type: value(header::CONTENT_TYPE),
        authorization: value(header::AUTHORIZATION),
        project: value(header::HeaderName::from_static("x-batch-project")),
        body,
    })
}

/// hyper's form of an answer; hyper adds `Date`, `Content-Length` and, when the connection
/// is to close, `Connection: close`.
fn to_http(response: Response) -> HttpResponse {
    let status = StatusCode::from_u16(response.status).unwrap_or_else(|_| {
        // Only a scripted status can be out of range; answer what a broken server would.
        tracing::warn!(
            status = response.status,
            "not an HTTP status; answering 500"
        );
        StatusCode::INTERNAL_SERVER_ERROR
    });
    let mut http = hyper::Response::new(Full::new(Bytes::from(response.body)));
    *http.status_mut() = status;
    let headers = http.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(response.content_type),
    );
    if let Some(seconds) = response.retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    http
}

#[cfg(test)]
mod tests {
    use rstest::rstest;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::emulate::{EmulatorConfig, Faults, Scripted};
    use std::time::Duration;

    fn shared(faults: Faults) -> Arc<Shared> {
        let config = EmulatorConfig {
            api_key: "key".to_owned(),
            project_key: "project".to_owned(),
            limits: false,
            faults,
            record_path: None,
            seed: 1,
        };
        Arc::new(Shared::new(config).unwrap())
    }

    /// One API request carrying one operation of one event.
    fn update(connection: &str) -> String {
        let body = r#"[{"identifiers":{"custom_id":"ada"},"events":[{"name":"signed_up"}]}]"#;
        format!(
            "POST /2.11/profiles/update HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer key\r\n\
             X-Batch-Project: project\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: {connection}\r\n\r\n{body}",
            body.len()
        )
    }

    /// Serves one in-memory connection, writes `bytes` (ignoring a server that stops reading)
    /// and returns everything the server wrote until it closed the connection.
    async fn exchange(shared: &Arc<Shared>, bytes: Vec<u8>) -> String {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let served = tokio::spawn(serve_connection(server, Arc::clone(shared)));
        let (mut reader, mut writer) = tokio::io::split(client);
        let writing = tokio::spawn(async move {
            let _ = writer.write_all(&bytes).await;
            writer
        });
        let mut out = Vec::new();
        let read = reader.read_to_end(&mut out);
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("the server closes the connection")
            .unwrap();
        served.await.unwrap();
        drop(writing.await.unwrap());
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order_and_close_when_asked() {
        let shared = shared(Faults::default());
        let requests = format!("{}{}", update("keep-alive"), update("close"));
        let answer = exchange(&shared, requests.into_bytes()).await;
        assert_eq!(
            answer.matches("HTTP/1.1 202 Accepted").count(),
            2,
            "{answer}"
        );
        assert_eq!(answer.matches("Connection: close").count(), 1, "{answer}");
        let received = shared.received();
        let requests: Vec<u64> = received.iter().map(|r| r.request).collect();
        assert_eq!(requests, [1, 2]);
    }

    #[tokio::test]
    async fn an_http_1_0_request_is_answered_then_the_connection_closed() {
        let shared = shared(Faults::default());
        let request = b"GET /_emulator/stats HTTP/1.0\r\n\r\nGET /_emulator/stats HTTP/1.0\r\n\r\n";
        let answer = exchange(&shared, request.to_vec()).await;
        assert_eq!(answer.matches(" 200 OK").count(), 1, "{answer}");
    }

    #[rstest]
    #[case::before(Scripted::DropBefore, 0)]
    #[case::after(Scripted::DropAfter, 1)]
    #[tokio::test]
    async fn a_drop_fault_closes_the_connection_without_a_byte_of_answer(
        #[case] step: Scripted,
        #[case] recorded: usize,
    ) {
        let shared = shared(Faults::default());
        shared.script(vec![step]);
        let requests = format!("{}{}", update("keep-alive"), update("close"));
        let answer = exchange(&shared, requests.into_bytes()).await;
        assert_eq!(answer, "");
        let stats = shared.stats();
        // The pipelined second request went down with the connection, unread.
        assert_eq!(stats.requests, 1, "{stats:?}");
        assert_eq!(stats.dropped_before + stats.dropped_after, 1, "{stats:?}");
        assert_eq!(shared.received().len(), recorded);
    }

    #[tokio::test]
    async fn a_handler_runs_to_its_end_when_the_client_goes_away_meanwhile() {
        let shared = shared(Faults {
            latency_ms: 100,
            ..Faults::default()
        });
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let served = tokio::spawn(serve_connection(server, Arc::clone(&shared)));
        client
            .write_all(update("keep-alive").as_bytes())
            .await
            .unwrap();
        // Wait until the request is in flight, then hang up during the latency.
        while shared.stats().requests == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(client);
        tokio::time::timeout(Duration::from_secs(5), served)
            .await
            .unwrap()
            .unwrap();
        let stats = shared.stats();
        assert_eq!(stats.by_status.get(&202), Some(&1), "{stats:?}");
        assert_eq!(shared.received().len(), 1);
    }

    #[tokio::test]
    async fn a_declared_body_over_the_limit_is_refused_unread_and_uncounted() {
        let shared = shared(Faults::default());
        let head = format!(
            "POST /2.11/profiles/mass-update HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\
             Content-Length: {}\r\n\r\n",
            MAX_BODY_BYTES + 1
        );
        let answer = exchange(&shared, head.into_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
        assert!(answer.contains("Connection: close"), "{answer}");
        assert!(!answer.contains("100 Continue"), "{answer}");
        assert_eq!(shared.stats().requests, 0);
    }

    /// `body` in chunks of at most `chunk` bytes, then the last chunk.
    fn chunked(path: &str, body: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
             Connection: close\r\n\r\n"
        )
        .into_bytes();
        for piece in body.chunks(chunk) {
            out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            out.extend_from_slice(piece);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }

    #[tokio::test]
    async fn a_chunked_body_is_read_whole() {
        let shared = shared(Faults::default());
        let script = br#"[{"kind":"ok"},{"kind":"drop_after"}]"#;
        let answer = exchange(&shared, chunked("/_emulator/script", script, 7)).await;
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(answer.ends_with(r#"{"queued":2}"#), "{answer}");
    }

    #[tokio::test]
    async fn a_chunked_body_that_grows_over_the_limit_is_refused() {
        let shared = shared(Faults::default());
        let body = vec![b' '; MAX_BODY_BYTES + 1];
        let request = chunked("/2.11/profiles/mass-update", &body, 1 << 20);
        let answer = exchange(&shared, request).await;
        assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
        assert_eq!(shared.stats().requests, 0);
    }

    #[tokio::test]
    async fn a_head_over_64_kib_is_refused_with_431() {
        let shared = shared(Faults::default());
        let head = format!(
            "GET /_emulator/stats HTTP/1.1\r\nHost: x\r\nX-Padding: {}\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES)
        );
        let answer = exchange(&shared, head.into_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    }

    #[tokio::test]
    async fn shutdown_stops_accepting_and_closes_open_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async {
            let _ = stopped.await;
        };
        let server = tokio::spawn(serve(listener, shared(Faults::default()), shutdown));
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET /_emulator/stats HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut first = [0; 12];
        idle.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"HTTP/1.1 200");

        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
        let mut rest = Vec::new();
        // Whatever was left of the answer, then the end of the stream.
        tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
