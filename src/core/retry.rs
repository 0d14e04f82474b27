//! What to do with an answer from Batch, and how long to wait before trying again.
//!
//! Invariants:
//! - `classify` is a pure function of the answer: the send loop only performs what it says.
//! - Backoff is capped exponential with full jitter: a delay is uniform in `[0, min(cap,
//!   base·2^attempt)]`; randomness is an argument, so bounds are testable.
//! - A 429 is never charged to a request's retry budget: it is flow control, not failure.

use std::time::{Duration, SystemTime};

/// One operation Batch dropped from an otherwise accepted request.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct PartialError {
    #[serde(default)]
    pub category: String,
    pub bulk_index: usize,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub attribute: Option<String>,
}

/// What happened to one HTTP attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Http {
        status: u16,
        body: String,
        retry_after: Option<Duration>,
    },
    Timeout,
    /// Refused, reset, closed before an answer.
    Connection(String),
}

/// Why a run must stop at once, keeping everything pending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    Auth { status: u16, message: String },
    NotFound { message: String },
}

#[derive(Debug, Clone, PartialEq)]
pub enum RetryAction {
    /// All accepted, but for the listed operations.
    Delivered {
        dropped: Vec<PartialError>,
    },
    /// Try the same request again; `throttled` for 429 (does not use the retry budget).
    Retry {
        throttled: bool,
        after: Option<Duration>,
        reason: String,
    },
    /// A 400 on a request of several operations: split it to find the bad ones.
    Split {
        message: String,
    },
    /// A 400 on one operation: Batch will never take it; its rows become rejects.
    Refused {
        message: String,
    },
    Stop(Stop),
}

fn error_message(body: &str) -> String {
    #[derive(serde::Deserialize)]
    struct E {
        error_code: Option<String>,
        error_message: Option<String>,
    }
    match serde_json::from_str::<E>(body) {
        Ok(E {
            error_code,
            error_message,
        }) if error_code.is_some() || error_message.is_some() => {
            format!(
                "{}: {}",
                error_code.unwrap_or_default(),
                error_message.unwrap_or_default()
            )
        }
        _ => {
            let t: String = body.chars().take(200).collect();
            if t.trim().is_empty() {
                "(empty body)".into()
            } else {
                t
            }
        }
    }
}

pub fn classify(answer: &Answer, operations: usize) -> RetryAction {
    match answer {
        Answer::Timeout => RetryAction::Retry {
            throttled: false,
            after: None,
            reason: "timeout".into(),
        },
        Answer::Connection(e) => RetryAction::Retry {
            throttled: false,
            after: None,
            reason: format!("connection: {e}"),
        },
        Answer::Http {
            status,
            body,
            retry_after,
        } => match status {
            200..=299 => {
                #[derive(serde::Deserialize)]
                struct Ok202 {
                    code: Option<String>,
                    #[serde(default)]
                    errors: Vec<PartialError>,
                }
                match serde_json::from_str::<Ok202>(body) {
                    Ok(b)
                        if b.code.as_deref() == Some("SUCCESS_WITH_PARTIAL_ERRORS")
                            || !b.errors.is_empty() =>
                    {
                        RetryAction::Delivered { dropped: b.errors }
                    }
                    // A success with an unexpected body is still a success: Batch took it.
                    _ => RetryAction::Delivered {
                        dropped: Vec::new(),
                    },
                }
            }
            429 => RetryAction::Retry {
                throttled: true,
                after: *retry_after,
                reason: "429 rate limited".into(),
            },
            400 | 413 | 422 if operations > 1 => RetryAction::Split {
                message: error_message(body),
            },
            400 | 413 | 422 => RetryAction::Refused {
                message: error_message(body),
            },
            401 | 403 => RetryAction::Stop(Stop::Auth {
                status: *status,
                message: error_message(body),
            }),
            404 => RetryAction::Stop(Stop::NotFound {
                message: error_message(body),
            }),
            408 | 500..=599 => RetryAction::Retry {
                throttled: false,
                after: *retry_after,
                reason: format!("HTTP {status}"),
            },
            // Other 4xx: not retryable as is, and not about one operation: stop and keep pending.
            _ => RetryAction::Stop(Stop::NotFound {
                message: format!("HTTP {status}: {}", error_message(body)),
            }),
        },
    }
}

/// Full-jitter capped exponential backoff; `unit` is uniform in [0, 1).
pub fn backoff(attempt: u32, base: Duration, cap: Duration, unit: f64) -> Duration {
    let exp = base.saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX));
    let ceiling = exp.min(cap);
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

/// `Retry-After` as delay-seconds or an HTTP date; garbage and past dates give `None`/zero.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs.min(3600)));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(Duration::from_secs(3600)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rstest::rstest;

    fn http(status: u16, body: &str) -> Answer {
        Answer::Http {
            status,
            body: body.into(),
            retry_after: None,
        }
    }

    #[rstest]
    #[case(http(202, r#"{"code":"SUCCESS"}"#), 3, "delivered")]
    #[case(http(202, r#"{"code":"SUCCESS_WITH_PARTIAL_ERRORS","errors":[{"category":"x","bulk_index":1,"reason":"r"}]}"#), 3, "partial")]
    #[case(http(202, "not json"), 3, "delivered")]
    #[case(
        http(400, r#"{"error_code":"BAD_REQUEST","error_message":"m"}"#),
        3,
        "split"
    )]
    #[case(http(400, "{}"), 1, "refused")]
    #[case(http(401, ""), 3, "stop")]
    #[case(http(403, ""), 3, "stop")]
    #[case(http(404, ""), 3, "stop")]
    #[case(http(429, ""), 3, "throttled")]
    #[case(http(500, ""), 3, "retry")]
    #[case(http(503, ""), 3, "retry")]
    #[case(http(504, ""), 3, "retry")]
    #[case(Answer::Timeout, 3, "retry")]
    #[case(Answer::Connection("reset".into()), 3, "retry")]
    fn answers_are_classified(#[case] answer: Answer, #[case] ops: usize, #[case] expected: &str) {
        let got = match classify(&answer, ops) {
            RetryAction::Delivered { dropped } if dropped.is_empty() => "delivered",
            RetryAction::Delivered { .. } => "partial",
            RetryAction::Retry {
                throttled: true, ..
            } => "throttled",
            RetryAction::Retry { .. } => "retry",
            RetryAction::Split { .. } => "split",
            RetryAction::Refused { .. } => "refused",
            RetryAction::Stop(_) => "stop",
        };
        assert_eq!(got, expected);
    }

    #[test]
    fn partial_errors_keep_batch_reason_and_index() {
        let a = http(
            202,
            r#"{"code":"SUCCESS_WITH_PARTIAL_ERRORS","errors":[{"category":"INVALID","bulk_index":2,"reason":"bad name","attribute":"Foo"}]}"#,
        );
        match classify(&a, 3) {
            RetryAction::Delivered { dropped } => {
                assert_eq!(dropped[0].bulk_index, 2);
                assert_eq!(dropped[0].reason, "bad name");
                assert_eq!(dropped[0].attribute.as_deref(), Some("Foo"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[rstest]
    #[case("5", Some(5))]
    #[case(" 0 ", Some(0))]
    #[case("Wed, 21 Oct 2015 07:28:10 GMT", Some(10))]
    #[case("Wed, 21 Oct 2015 07:27:00 GMT", Some(0))]
    #[case("soon", None)]
    #[case("-3", None)]
    #[case("", None)]
    fn retry_after_reads_seconds_and_http_dates(#[case] v: &str, #[case] secs: Option<u64>) {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(parse_retry_after(v, now), secs.map(Duration::from_secs));
    }

    proptest! {
        #[test]
        fn backoff_stays_within_its_exponential_ceiling_and_cap(attempt in 0u32..100, unit in 0.0f64..1.0, base_ms in 1u64..2000, cap_ms in 1u64..120_000) {
            let base = Duration::from_millis(base_ms);
            let cap = Duration::from_millis(cap_ms);
            let d = backoff(attempt, base, cap, unit);
            prop_assert!(d <= cap);
            let ceiling = base.saturating_mul(2u32.saturating_pow(attempt.min(31)));
            prop_assert!(d <= ceiling);
        }
    }
}
