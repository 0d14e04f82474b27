//! The emulator's own endpoints under `/_emulator/`: read back what was accepted, the stats,
//! and set faults or a script while a test runs.
//!
//! - No authentication, no faults, not counted in the stats: they observe the Profile API
//!   without being part of it.
//! - Answers are JSON (`received` is NDJSON); a body that does not parse is a 400 naming
//!   what was expected, and nothing changes.

use serde_json::json;

use super::exchange::Response;
use super::{lock, Faults, Scripted, Shared};

/// Answers `method` on `/_emulator/{path}`.
pub(crate) fn handle(shared: &Shared, method: &str, path: &str, body: &[u8]) -> Response {
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
