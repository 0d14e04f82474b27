//! One request and what becomes of it, as the emulator's handlers see them: plain data, not
//! HTTP (the body stays in the `Bytes` it was read into, so it is not copied).
//!
//! - `server` alone speaks HTTP (through hyper): it turns what arrives into a [`Request`] and
//!   an [`Outcome`] back into an answer on the wire or a closed connection. `api` and `admin`
//!   read a [`Request`] and decide an [`Outcome`] and know nothing of `server`: the imports go
//!   one way, `server` → `api` and `admin` → `exchange`.
//! - A [`Request`] exists only once its whole body has arrived.

use hyper::body::Bytes;

/// One request, head and body, reduced to what the handlers read.
#[derive(Debug)]
pub(crate) struct Request {
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    pub content_type: Option<String>,
    pub authorization: Option<String>,
    /// `X-Batch-Project`.
    pub project: Option<String>,
    pub body: Bytes,
}

/// One answer; always sent with a `Content-Length`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub retry_after: Option<u64>,
}

impl Response {
    pub(crate) fn json(status: u16, body: &serde_json::Value) -> Response {
        Response {
            status,
            content_type: "application/json",
            body: serde_json::to_vec(body).expect("a JSON value serialises"),
            retry_after: None,
        }
    }

    /// The `{"error_code","error_message"}` shape Batch uses for 4xx and 5xx answers.
    pub(crate) fn error(status: u16, code: &str, message: &str) -> Response {
        Response::json(
            status,
            &serde_json::json!({ "error_code": code, "error_message": message }),
        )
    }
}

/// What the server does once a request has been handled.
#[derive(Debug)]
pub(crate) enum Outcome {
    Reply(Response),
    /// Close the connection without answering (an injected fault).
    Drop,
}
