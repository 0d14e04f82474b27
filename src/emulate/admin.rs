//! The emulator's own endpoints under `/_emulator/`: read back what was accepted (events and
//! profiles), the stats, and set faults or a script while a test runs.
//!
//! - No authentication, no faults, not counted in the stats: they observe the Profile API
//!   without being part of it.
//! - Answers are JSON (`received` is NDJSON); a body that does not parse is a 400 naming
//!   what was expected, and nothing changes.
//! - `GET profiles/{custom_id}`: 200 `{"custom_id":…,"attributes":{…}}` (keys sorted) for any
//!   profile an accepted operation named, attributes or not; 404 `PROFILE_NOT_FOUND` for one
//!   never accepted. The id is percent-decoded (`%XX`, UTF-8; `+` stays a plus, as in any
//!   path); a malformed escape is a 400. `GET profiles`: `{custom_id: {attributes}}` for every
//!   profile holding at least one attribute, sorted by custom id.

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
        ("GET", "profiles") => Response::json(200, &json!(shared.profiles())),
        ("GET", _) if path.starts_with("profiles/") => {
            let encoded = &path["profiles/".len()..];
            match percent_decode(encoded) {
                Some(custom_id) => profile(shared, &custom_id),
                None => Response::error(
                    400,
                    "BAD_REQUEST",
                    "the custom id in the path is not valid percent-encoded UTF-8; \
                     encode it byte by byte as %XX",
                ),
            }
        }
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
        (_, "received" | "stats" | "faults" | "script" | "profiles") => Response::error(
            405,
            "METHOD_NOT_ALLOWED",
            &format!("{method} is not allowed on /_emulator/{path}"),
        ),
        _ if path.starts_with("profiles/") => Response::error(
            405,
            "METHOD_NOT_ALLOWED",
            &format!("{method} is not allowed on /_emulator/{path}"),
        ),
        _ => Response::error(
            404,
            "ROUTE_NOT_FOUND",
            "unknown emulator endpoint; try GET /_emulator/received, /_emulator/stats, \
             /_emulator/profiles or /_emulator/profiles/{custom_id}",
        ),
    }
}

/// One profile's answer: its attributes, or a 404 if no operation for it was accepted.
fn profile(shared: &Shared, custom_id: &str) -> Response {
    match shared.profile(custom_id) {
        Some(attributes) => Response::json(
            200,
            &json!({ "custom_id": custom_id, "attributes": attributes }),
        ),
        None => Response::error(
            404,
            "PROFILE_NOT_FOUND",
            &format!(
                "the emulator accepted no operation for custom_id {custom_id:?}; \
                 GET /_emulator/profiles lists the profiles holding attributes"
            ),
        ),
    }
}

/// Decodes `%XX` escapes (RFC 3986) into UTF-8; `None` for a truncated or non-hex escape or
/// bytes that are not UTF-8. Written by hand: `percent-encoding` is only a transitive
/// dependency here, and a dozen lines do not justify a direct one for a test endpoint.
fn percent_decode(encoded: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(encoded.len());
    let mut rest = encoded.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        if byte == b'%' {
            let hex = tail.get(..2)?;
            // from_str_radix alone would take a sign: "%+f".
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            let hex = std::str::from_utf8(hex).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(byte);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rstest::rstest;
    use serde_json::Value;

    use super::*;
    use crate::emulate::EmulatorConfig;

    #[rstest]
    #[case::plain("u1", Some("u1"))]
    #[case::space_and_slash("user%201%2Fb", Some("user 1/b"))]
    #[case::utf8("caf%C3%A9", Some("café"))]
    #[case::lower_hex("caf%c3%a9", Some("café"))]
    #[case::plus_stays("a+b", Some("a+b"))]
    #[case::percent_itself("100%25", Some("100%"))]
    #[case::truncated("a%2", None)]
    #[case::not_hex("a%zz", None)]
    #[case::signed("a%+f", None)]
    #[case::not_utf8("a%C3", None)]
    fn custom_ids_in_the_path_are_percent_decoded(
        #[case] encoded: &str,
        #[case] decoded: Option<&str>,
    ) {
        assert_eq!(percent_decode(encoded).as_deref(), decoded);
    }

    fn shared() -> Arc<Shared> {
        let config = EmulatorConfig {
            api_key: "key".to_owned(),
            project_key: "project".to_owned(),
            limits: false,
            faults: Faults::default(),
            record_path: None,
            seed: 1,
        };
        Arc::new(Shared::new(config).unwrap())
    }

    fn body(response: &Response) -> Value {
        serde_json::from_slice(&response.body).unwrap()
    }

    #[test]
    fn an_unknown_profile_is_a_404_with_a_json_error() {
        let response = handle(&shared(), "GET", "profiles/nobody", b"");
        assert_eq!(response.status, 404);
        assert_eq!(body(&response)["error_code"], "PROFILE_NOT_FOUND");
    }

    #[rstest]
    #[case::one_profile("POST", "profiles/u1", 405)]
    #[case::the_list("DELETE", "profiles", 405)]
    #[case::bad_escape("GET", "profiles/%zz", 400)]
    #[case::unknown("GET", "profile/u1", 404)]
    fn the_profile_endpoints_refuse_what_they_do_not_serve(
        #[case] method: &str,
        #[case] path: &str,
        #[case] status: u16,
    ) {
        assert_eq!(handle(&shared(), method, path, b"").status, status);
    }

    #[test]
    fn the_unknown_endpoint_hint_names_the_profile_endpoints() {
        let response = handle(&shared(), "GET", "nothing", b"");
        let message = body(&response)["error_message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            message.contains("/_emulator/profiles/{custom_id}"),
            "{message}"
        );
    }
}
