//! The Profile API itself: route, authenticate, apply faults, check, rate-limit, record,
//! answer.
//!
//! Invariants:
//! - Every API request gets the next sequence number and counts in `stats.requests`; once it
//!   ends it counts exactly once more, in `by_status`, `dropped_before` or `dropped_after`.
//! - Nothing is recorded unless the request reaches the per-operation rules; then exactly the
//!   events of the operations that passed are recorded, and exactly those operations are
//!   applied to their profiles (attributes upserted in bulk order), all under one lock. A
//!   `DropAfter` has processed its request, so it has recorded and applied it too.
//! - A 400, a 429 or an injected error takes no tokens, records nothing and changes no profile.
//! - No key value ever appears in an answer or a log line.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::exchange::{Outcome, Request, Response};
use super::faults::Action;
use super::profiles::ProfileUpdate;
use super::validate::{self, BadRequest};
use super::{lock, Endpoint, Received, Shared};

pub(crate) async fn handle(shared: &Shared, request: &Request) -> Outcome {
    let seq = shared.request_seq.fetch_add(1, Ordering::Relaxed) + 1;
    lock(&shared.stats).requests += 1;

    let (action, response) = match admit(shared, request) {
        Err(refusal) => (
            Action::Process {
                delay: Duration::ZERO,
            },
            refusal,
        ),
        Ok(endpoint) => {
            let action = lock(&shared.faults).decide();
            let response = match action {
                Action::DropBefore => {
                    lock(&shared.stats).dropped_before += 1;
                    tracing::debug!(
                        request = seq,
                        "emulator dropped a connection before processing"
                    );
                    return Outcome::Drop;
                }
                Action::Answer {
                    status,
                    retry_after,
                } => Response {
                    retry_after,
                    ..injected(status)
                },
                Action::Process { .. } | Action::DropAfter => {
                    process(shared, endpoint, request, seq)
                }
            };
            (action, response)
        }
    };

    let latency = lock(&shared.faults).latency();
    let delay = match action {
        Action::Process { delay } => latency + delay,
        _ => latency,
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if action == Action::DropAfter {
        lock(&shared.stats).dropped_after += 1;
        tracing::debug!(
            request = seq,
            "emulator dropped a connection after processing"
        );
        return Outcome::Drop;
    }
    *lock(&shared.stats)
        .by_status
        .entry(response.status)
        .or_default() += 1;
    tracing::debug!(request = seq, status = response.status, "emulator answered");
    Outcome::Reply(response)
}

/// Routing and authentication: the endpoint, or the answer that refuses the request.
fn admit(shared: &Shared, request: &Request) -> Result<Endpoint, Response> {
    let endpoint = route(&request.path).ok_or_else(|| {
        Response::error(
            404,
            "ROUTE_NOT_FOUND",
            "no such route; the Profile API serves POST /2.<minor>/profiles/update and \
             /2.<minor>/profiles/mass-update",
        )
    })?;
    if request.method != "POST" {
        return Err(Response::error(
            405,
            "METHOD_NOT_ALLOWED",
            "the Profile API accepts only POST",
        ));
    }
    let unauthorized = |message: &str| Response::error(401, "AUTHENTICATION_INVALID", message);
    let bearer = request.authorization.as_deref().and_then(|value| {
        let (scheme, key) = value.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
    });
    match bearer {
        None => {
            return Err(unauthorized(
                "missing REST API key: send Authorization: Bearer <REST API key>",
            ))
        }
        Some(key) if key != shared.api_key => {
            return Err(unauthorized(
                "the REST API key in Authorization: Bearer is not valid",
            ))
        }
        Some(_) => {}
    }
    match request.project.as_deref() {
        None => Err(unauthorized(
            "missing project key: send X-Batch-Project: <project key>",
        )),
        Some(project) if project != shared.project_key => Err(unauthorized(
            "the project key in X-Batch-Project is not valid for this REST API key",
        )),
        Some(_) => Ok(endpoint),
    }
}

/// `/{2.<digits>}/profiles/{update|mass-update}`.
fn route(path: &str) -> Option<Endpoint> {
    let mut segments = path.strip_prefix('/')?.split('/');
    let version = segments.next()?;
    let minor = version.strip_prefix("2.")?;
    if minor.is_empty() || !minor.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if segments.next()? != "profiles" {
        return None;
    }
    let endpoint = match segments.next()? {
        "update" => Endpoint::Update,
        "mass-update" => Endpoint::MassUpdate,
        _ => return None,
    };
    segments.next().is_none().then_some(endpoint)
}

/// Checks, rate-limits and records one authenticated request.
fn process(shared: &Shared, endpoint: Endpoint, request: &Request, seq: u64) -> Response {
    let json_body = request.content_type.as_deref().is_some_and(|ct| {
        ct.split(';')
            .next()
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
    });
    if !json_body {
        return Response::error(
            400,
            "BAD_REQUEST",
            "the body must be sent with Content-Type: application/json",
        );
    }
    let operations = match validate::parse_body(&request.body, endpoint) {
        Ok(operations) => operations,
        Err(BadRequest(message)) => return Response::error(400, "BAD_REQUEST", &message),
    };
    // Content-based faults (Faults::{bad_request,reject}_custom_ids), usually empty.
    let (bad_request_ids, reject_ids) = {
        let state = lock(&shared.faults);
        let f = state.faults();
        (
            f.bad_request_custom_ids.clone(),
            f.reject_custom_ids.clone(),
        )
    };
    let listed = |ids: &[String], op: &Value| {
        !ids.is_empty() && custom_id(op).is_some_and(|id| ids.iter().any(|listed| listed == id))
    };
    if let Some(index) = operations
        .iter()
        .position(|op| listed(&bad_request_ids, op))
    {
        return Response::error(
            400,
            "BAD_REQUEST",
            &format!(
                "the operation at bulk_index {index} is refused (injected: bad_request_custom_ids)"
            ),
        );
    }
    if let Some(limits) = &shared.limits {
        let now = tokio::time::Instant::now();
        if !lock(limits).try_take(endpoint, operations.len(), now) {
            // Batch documents no Retry-After on its own 429s, so none is sent here.
            return Response::error(
                429,
                "TOO_MANY_REQUESTS",
                &format!(
                    "rate limit of /profiles/{} reached; wait a few seconds before retrying",
                    endpoint.as_str()
                ),
            );
        }
    }

    let received_at_ms = unix_millis();
    let mut errors = Vec::new();
    let mut accepted = Vec::new();
    let mut operations_accepted = 0;
    let mut updates = Vec::new();
    let mut profile_updates = 0;
    for (bulk_index, operation) in operations.into_iter().enumerate() {
        if listed(&reject_ids, &operation) {
            errors.push(json!({
                "category": "PROFILE_REJECTED",
                "bulk_index": bulk_index,
                "reason": "the profile refuses events (injected: reject_custom_ids)",
            }));
            continue;
        }
        if let Err(e) = validate::check_operation(&operation) {
            let mut error = json!({
                "category": e.category,
                "bulk_index": bulk_index,
                "reason": e.reason,
            });
            if let Some(attribute) = e.attribute {
                error["attribute"] = Value::String(attribute);
            }
            errors.push(error);
            continue;
        }
        operations_accepted += 1;
        let id = custom_id(&operation).map(str::to_owned);
        let Value::Object(mut operation) = operation else {
            unreachable!("check_operation accepts objects only")
        };
        let attributes = match operation.remove("attributes") {
            Some(Value::Object(attributes)) => Some(attributes),
            None => None,
            Some(_) => unreachable!("check_operation accepts attributes objects only"),
        };
        profile_updates += u64::from(attributes.is_some());
        // An operation identified by `installation` has no custom id to read its profile back
        // by: its attributes are checked and counted, not kept.
        if let Some(custom_id) = &id {
            updates.push(ProfileUpdate {
                custom_id: custom_id.clone(),
                attributes,
            });
        }
        // ... and its events are recorded with an empty custom id.
        let custom_id = id.unwrap_or_default();
        let Some(Value::Array(events)) = operation.remove("events") else {
            continue;
        };
        accepted.extend(events.into_iter().map(|event| Received {
            request: seq,
            endpoint: endpoint.as_str().to_owned(),
            bulk_index,
            custom_id: custom_id.clone(),
            event,
            received_at_ms,
        }));
    }

    let events_accepted = accepted.len() as u64;
    if let Err(e) = shared.recorder.record(accepted, updates) {
        tracing::error!(request = seq, error = %e, "emulator cannot write its record file");
        return Response::error(
            500,
            "SERVER_ERROR",
            "the emulator could not write its record file; nothing was recorded or applied",
        );
    }
    {
        let mut stats = lock(&shared.stats);
        stats.operations_accepted += operations_accepted;
        stats.operations_rejected += errors.len() as u64;
        stats.events_accepted += events_accepted;
        stats.profile_updates += profile_updates;
    }
    if errors.is_empty() {
        Response::json(202, &json!({ "code": "SUCCESS" }))
    } else {
        Response::json(
            202,
            &json!({ "code": "SUCCESS_WITH_PARTIAL_ERRORS", "errors": errors }),
        )
    }
}

fn custom_id(operation: &Value) -> Option<&str> {
    operation.get("identifiers")?.get("custom_id")?.as_str()
}

/// The answer to an injected or scripted status, without processing.
fn injected(status: u16) -> Response {
    let code = match status {
        200..=299 => return Response::json(status, &json!({ "code": "SUCCESS" })),
        400 => "BAD_REQUEST",
        401 | 403 => "AUTHENTICATION_INVALID",
        404 => "ROUTE_NOT_FOUND",
        429 => "TOO_MANY_REQUESTS",
        503 => "SERVICE_UNAVAILABLE",
        _ => "SERVER_ERROR",
    };
    Response::error(
        status,
        code,
        &format!("fault injected by the emulator: {status}"),
    )
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case("/2.11/profiles/update", Some(Endpoint::Update))]
    #[case("/2.4/profiles/mass-update", Some(Endpoint::MassUpdate))]
    #[case("/2.0/profiles/update", Some(Endpoint::Update))]
    #[case("/3.0/profiles/update", None)]
    #[case("/2./profiles/update", None)]
    #[case("/2.1a/profiles/update", None)]
    #[case("/v2.11/profiles/update", None)]
    #[case("/2.11/profiles/delete", None)]
    #[case("/2.11/profiles/update/", None)]
    #[case("/2.11/profiles", None)]
    #[case("/", None)]
    fn routes_accept_any_2_x_version_and_the_two_endpoints(
        #[case] path: &str,
        #[case] expected: Option<Endpoint>,
    ) {
        assert_eq!(route(path), expected);
    }
}
