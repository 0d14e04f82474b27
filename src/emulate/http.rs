//! Just enough HTTP/1.1 for the Profile API: requests with a `Content-Length` body, keep-alive,
//! responses with a `Content-Length`.
//!
//! Hand-rolled on purpose: the emulator must be able to close a connection at any point
//! (before or after processing) to inject faults, which a full server framework hides.
//!
//! Invariants:
//! - A request is handed on only once its head and its whole body have arrived; a client that
//!   disconnects before that is simply forgotten.
//! - A malformed head, a chunked body or an oversized body is answered (400, 411, 413) and the
//!   connection is then closed, since the rest of the stream cannot be framed.
//! - Bytes after the body (a pipelined request) stay in the connection's buffer for the next
//!   read.

use std::io;
use std::time::SystemTime;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::exchange::{Request, Response};

/// Largest request head accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Largest body accepted. The client keeps under 5 MB; this leaves room for experiments.
pub(crate) const MAX_BODY_BYTES: usize = 20 * 1024 * 1024;
const MAX_HEADERS: usize = 64;

/// The result of reading from a connection.
#[derive(Debug)]
pub(crate) enum Read {
    /// A whole request, and whether the client asked to close the connection after it.
    Request { request: Request, close: bool },
    /// The peer closed the connection (between requests or in the middle of one).
    Closed,
    /// The stream cannot be framed: answer this, then close.
    Refuse(Response),
}

/// Reads the next request, keeping unread bytes in `buf` between calls.
pub(crate) async fn read_request<S>(stream: &mut S, buf: &mut Vec<u8>) -> io::Result<Read>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let head = loop {
        if !buf.is_empty() {
            match parse_head(buf) {
                Ok(Some(head)) => break head,
                Ok(None) if buf.len() > MAX_HEAD_BYTES => {
                    return Ok(Read::Refuse(Response::error(
                        431,
                        "BAD_REQUEST",
                        "the request head is too large",
                    )))
                }
                Ok(None) => {}
                Err(refusal) => return Ok(Read::Refuse(refusal)),
            }
        }
        buf.reserve(16 * 1024);
        if stream.read_buf(buf).await? == 0 {
            return Ok(Read::Closed);
        }
    };

    let end = head.len + head.content_length;
    if buf.len() < end {
        if head.expect_continue {
            stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        buf.reserve(end - buf.len());
        while buf.len() < end {
            if stream.read_buf(buf).await? == 0 {
                return Ok(Read::Closed);
            }
        }
    }
    let rest = buf.split_off(end);
    let mut raw = std::mem::replace(buf, rest);
    let body = raw.split_off(head.len);
    Ok(Read::Request {
        request: Request {
            method: head.method,
            path: head.path,
            content_type: head.content_type,
            authorization: head.authorization,
            project: head.project,
            body,
        },
        close: head.close,
    })
}

/// The parts of a request head the emulator uses.
struct Head {
    len: usize,
    method: String,
    path: String,
    content_length: usize,
    content_type: Option<String>,
    authorization: Option<String>,
    project: Option<String>,
    close: bool,
    expect_continue: bool,
}

/// `Ok(None)` while the head is incomplete.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, Response> {
    let bad = |message: &str| Response::error(400, "BAD_REQUEST", message);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(bad(&format!("malformed HTTP request: {e}"))),
    };
    let method = request.method.unwrap_or_default().to_owned();
    let target = request.path.unwrap_or_default();
    let path = target.split('?').next().unwrap_or_default().to_owned();
    let http10 = request.version == Some(0);
    let mut head = Head {
        len,
        method,
        path,
        content_length: 0,
        content_type: None,
        authorization: None,
        project: None,
        close: http10,
        expect_continue: false,
    };
    for header in request.headers.iter() {
        let value = || String::from_utf8_lossy(header.value).trim().to_owned();
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            head.content_length = value()
                .parse()
                .map_err(|_| bad("Content-Length is not a number"))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Response::error(
                411,
                "BAD_REQUEST",
                "chunked bodies are not supported: send a Content-Length",
            ));
        } else if name.eq_ignore_ascii_case("content-type") {
            head.content_type = Some(value());
        } else if name.eq_ignore_ascii_case("authorization") {
            head.authorization = Some(value());
        } else if name.eq_ignore_ascii_case("x-batch-project") {
            head.project = Some(value());
        } else if name.eq_ignore_ascii_case("connection") {
            let v = value();
            let has = |token: &str| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token));
            if has("close") {
                head.close = true;
            } else if http10 && has("keep-alive") {
                head.close = false;
            }
        } else if name.eq_ignore_ascii_case("expect") {
            head.expect_continue = value().eq_ignore_ascii_case("100-continue");
        }
    }
    if head.content_length > MAX_BODY_BYTES {
        return Err(Response::error(
            413,
            "BAD_REQUEST",
            &format!("the body is larger than {MAX_BODY_BYTES} bytes"),
        ));
    }
    Ok(Some(head))
}

/// Writes one response; `close` adds `Connection: close` (the caller then drops the stream).
pub(crate) async fn write_response<S>(
    stream: &mut S,
    response: &Response,
    close: bool,
) -> io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nDate: {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        response.status,
        reason(response.status),
        httpdate::fmt_http_date(SystemTime::now()),
        response.content_type,
        response.body.len(),
    );
    if let Some(seconds) = response.retry_after {
        head.push_str(&format!("Retry-After: {seconds}\r\n"));
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&response.body);
    stream.write_all(&bytes).await?;
    stream.flush().await
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all(input: &[u8]) -> Vec<Read> {
        let (mut client, mut server) = tokio::io::duplex(1 << 20);
        client.write_all(input).await.unwrap();
        drop(client);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        loop {
            match read_request(&mut server, &mut buf).await.unwrap() {
                Read::Closed => return out,
                refused @ Read::Refuse(_) => {
                    // The server closes after a refusal: the rest cannot be framed.
                    out.push(refused);
                    return out;
                }
                read => out.push(read),
            }
        }
    }

    #[tokio::test]
    async fn two_pipelined_requests_are_read_one_after_the_other() {
        let input = b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /b?x=1 HTTP/1.1\r\nConnection: close\r\n\r\n";
        let reads = read_all(input).await;
        let [Read::Request {
            request: a,
            close: a_close,
        }, Read::Request {
            request: b,
            close: b_close,
        }] = &reads[..]
        else {
            panic!("{reads:?}")
        };
        assert_eq!(
            (a.path.as_str(), &a.body[..], *a_close),
            ("/a", &b"abc"[..], false)
        );
        assert_eq!(
            (b.method.as_str(), b.path.as_str(), *b_close),
            ("GET", "/b", true)
        );
    }

    #[tokio::test]
    async fn a_body_cut_short_reads_as_a_closed_connection() {
        let reads = read_all(b"POST /a HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc").await;
        assert!(reads.is_empty(), "{reads:?}");
    }

    #[tokio::test]
    async fn a_malformed_head_is_refused_with_400() {
        let reads = read_all(b"NOT HTTP\r\n\r\n").await;
        let [Read::Refuse(response)] = &reads[..] else {
            panic!("{reads:?}")
        };
        assert_eq!(response.status, 400);
    }

    #[tokio::test]
    async fn a_chunked_body_is_refused_with_411() {
        let reads =
            read_all(b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").await;
        let [Read::Refuse(response)] = &reads[..] else {
            panic!("{reads:?}")
        };
        assert_eq!(response.status, 411);
    }

    #[tokio::test]
    async fn an_http_1_0_request_closes_unless_asked_to_keep_alive() {
        let reads =
            read_all(b"GET /a HTTP/1.0\r\n\r\nGET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .await;
        let [Read::Request { close: a, .. }, Read::Request { close: b, .. }] = &reads[..] else {
            panic!("{reads:?}")
        };
        assert!(*a);
        assert!(!*b);
    }
}
