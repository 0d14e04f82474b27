//! Batch's rules for a Profile API body, as the emulator enforces them.
//!
//! This is the stand-in for Batch, so it is written from shared/BATCH_API.md alone and shares
//! no code with the client's own checks: a rule the client forgets is caught here, not
//! mirrored.
//!
//! Two levels, as Batch answers them:
//! - [`parse_body`]: the whole call. A body that is not a JSON array, more operations than the
//!   endpoint allows, or an operation without exactly one identifier rejects the whole request
//!   (400, nothing recorded).
//! - [`check_operation`]: one operation. A failing operation is dropped and reported by its
//!   `bulk_index` in a 202 `SUCCESS_WITH_PARTIAL_ERRORS`; the others are accepted.
//!
//! Invariants and choices:
//! - Pure: no I/O, no clock. Every function is a function of the JSON it is given.
//! - One error per operation: the first rule it breaks, in document order.
//! - The event time window is not enforced: the client applies `late_events`; any valid
//!   RFC 3339 `time` is accepted.
//! - The 20-attribute limit counts an event's own attributes, not the reserved `$label` and
//!   `$tags`: the lenient reading of an [open] point, so the emulator never drops what a
//!   careful client may send.
//! - `null` is not an event attribute value (it deletes attributes on profiles only).
//! - Nested objects (allowed in event attributes) have their keys and values checked with the
//!   same rules, recursively; serde_json's own recursion limit bounds the depth.

use serde_json::{Map, Value};

use super::Endpoint;

/// Longest event or attribute name (inside `date(…)`/`url(…)` for wrapped keys).
pub(crate) const MAX_NAME_CHARS: usize = 30;
pub(crate) const MAX_CUSTOM_ID_CHARS: usize = 512;
pub(crate) const MAX_EVENTS_PER_OPERATION: usize = 15;
pub(crate) const MAX_ATTRIBUTES_PER_EVENT: usize = 20;
pub(crate) const MAX_STRING_CHARS: usize = 300;
pub(crate) const MAX_LABEL_CHARS: usize = 200;
pub(crate) const MAX_TAGS: usize = 10;
pub(crate) const MAX_TAG_CHARS: usize = 64;
pub(crate) const MAX_URL_CHARS: usize = 2048;
pub(crate) const MAX_ARRAY_ITEMS: usize = 25;

/// Why the whole call is rejected (answered 400 `BAD_REQUEST`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadRequest(pub String);

/// Why one operation is dropped (one entry of `errors` in a partial-error answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OperationError {
    pub category: &'static str,
    pub reason: String,
    /// The attribute key as sent, when the error is about one attribute.
    pub attribute: Option<String>,
}

impl OperationError {
    fn new(category: &'static str, reason: String) -> Self {
        OperationError {
            category,
            reason,
            attribute: None,
        }
    }

    fn attribute(key: &str, reason: String) -> Self {
        OperationError {
            category: "INVALID_ATTRIBUTE",
            reason,
            attribute: Some(key.to_owned()),
        }
    }
}

/// Parses a request body and applies the whole-call rules; hands back the operations.
pub(crate) fn parse_body(body: &[u8], endpoint: Endpoint) -> Result<Vec<Value>, BadRequest> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| BadRequest(format!("the body is not valid JSON: {e}")))?;
    let Value::Array(operations) = value else {
        return Err(BadRequest(format!(
            "the body must be a JSON array of operations, not {}",
            kind_of(&value)
        )));
    };
    let max = endpoint.max_operations();
    if operations.len() > max {
        return Err(BadRequest(format!(
            "{} operations in one request; /profiles/{} accepts at most {max}",
            operations.len(),
            endpoint.as_str()
        )));
    }
    for (index, operation) in operations.iter().enumerate() {
        let identifiers = operation.get("identifiers").and_then(Value::as_object);
        let count = identifiers.map_or(0, |ids| {
            usize::from(ids.contains_key("custom_id"))
                + usize::from(ids.contains_key("installation"))
        });
        if count != 1 {
            return Err(BadRequest(format!(
                "the operation at bulk_index {index} must carry exactly one identifier \
                 (identifiers.custom_id or identifiers.installation), it has {count}"
            )));
        }
    }
    Ok(operations)
}

/// Applies the per-operation rules to one operation that passed [`parse_body`].
pub(crate) fn check_operation(operation: &Value) -> Result<(), OperationError> {
    let Some(op) = operation.as_object() else {
        return Err(OperationError::new(
            "INVALID_OPERATION",
            format!("an operation must be an object, not {}", kind_of(operation)),
        ));
    };
    for key in op.keys() {
        if !matches!(key.as_str(), "identifiers" | "events" | "attributes") {
            return Err(OperationError::new(
                "INVALID_OPERATION",
                format!("unknown operation field {key:?}"),
            ));
        }
    }
    check_identifiers(op)?;
    if let Some(attributes) = op.get("attributes") {
        if !attributes.is_object() {
            return Err(OperationError::new(
                "INVALID_OPERATION",
                format!(
                    "profile attributes must be an object, not {}",
                    kind_of(attributes)
                ),
            ));
        }
    }
    let Some(events) = op.get("events") else {
        return Ok(());
    };
    let Some(events) = events.as_array() else {
        return Err(OperationError::new(
            "INVALID_EVENT",
            format!("events must be an array, not {}", kind_of(events)),
        ));
    };
    if events.len() > MAX_EVENTS_PER_OPERATION {
        return Err(OperationError::new(
            "TOO_MANY_EVENTS",
            format!(
                "{} events for one profile; at most {MAX_EVENTS_PER_OPERATION} per operation",
                events.len()
            ),
        ));
    }
    for (index, event) in events.iter().enumerate() {
        check_event(event).map_err(|mut e| {
            e.reason = format!("event {index}: {}", e.reason);
            e
        })?;
    }
    Ok(())
}

fn check_identifiers(op: &Map<String, Value>) -> Result<(), OperationError> {
    let ids = op.get("identifiers").and_then(Value::as_object);
    let custom_id = ids.and_then(|ids| ids.get("custom_id"));
    let installation = ids.and_then(|ids| ids.get("installation"));
    let (name, value, max) = match (custom_id, installation) {
        (Some(v), _) => ("custom_id", v, MAX_CUSTOM_ID_CHARS),
        (None, Some(v)) => ("installation", v, usize::MAX),
        // parse_body has already rejected the call; kept total for direct callers.
        (None, None) => {
            return Err(OperationError::new(
                "INVALID_IDENTIFIER",
                "no custom_id or installation identifier".to_owned(),
            ))
        }
    };
    let Some(id) = value.as_str() else {
        return Err(OperationError::new(
            "INVALID_IDENTIFIER",
            format!("{name} must be a string, not {}", kind_of(value)),
        ));
    };
    if id.is_empty() {
        return Err(OperationError::new(
            "INVALID_IDENTIFIER",
            format!("{name} is empty"),
        ));
    }
    let chars = char_count(id);
    if chars > max {
        return Err(OperationError::new(
            "INVALID_IDENTIFIER",
            format!("{name} is {chars} characters long; at most {max}"),
        ));
    }
    Ok(())
}

fn check_event(event: &Value) -> Result<(), OperationError> {
    let invalid = |reason: String| OperationError::new("INVALID_EVENT", reason);
    let Some(event) = event.as_object() else {
        return Err(invalid(format!(
            "an event must be an object, not {}",
            kind_of(event)
        )));
    };
    for key in event.keys() {
        if !matches!(key.as_str(), "name" | "time" | "attributes") {
            return Err(invalid(format!("unknown event field {key:?}")));
        }
    }
    match event.get("name") {
        None => return Err(invalid("the event has no name".to_owned())),
        Some(Value::String(name)) if is_valid_name(name) => {}
        Some(Value::String(name)) => {
            return Err(invalid(format!(
                "event name {name:?} does not match ^[a-z0-9_]{{1,{MAX_NAME_CHARS}}}$"
            )))
        }
        Some(other) => {
            return Err(invalid(format!(
                "the event name must be a string, not {}",
                kind_of(other)
            )))
        }
    }
    if let Some(time) = event.get("time") {
        match time.as_str() {
            Some(t) if is_rfc3339(t) => {}
            Some(t) => return Err(invalid(format!("time {t:?} is not an RFC 3339 date-time"))),
            None => {
                return Err(invalid(format!(
                    "time must be an RFC 3339 string, not {}",
                    kind_of(time)
                )))
            }
        }
    }
    let Some(attributes) = event.get("attributes") else {
        return Ok(());
    };
    let Some(attributes) = attributes.as_object() else {
        return Err(invalid(format!(
            "attributes must be an object, not {}",
            kind_of(attributes)
        )));
    };
    let own = attributes.keys().filter(|k| !k.starts_with('$')).count();
    if own > MAX_ATTRIBUTES_PER_EVENT {
        return Err(OperationError::new(
            "TOO_MANY_ATTRIBUTES",
            format!("{own} attributes on one event; at most {MAX_ATTRIBUTES_PER_EVENT}"),
        ));
    }
    for (key, value) in attributes {
        check_attribute(key, value, true).map_err(|reason| {
            OperationError::attribute(key, format!("attribute {key:?}: {reason}"))
        })?;
    }
    Ok(())
}

/// Checks one attribute; `top_level` allows the reserved `$label` and `$tags`.
fn check_attribute(key: &str, value: &Value, top_level: bool) -> Result<(), String> {
    match key {
        "$label" if top_level => {
            let label = value
                .as_str()
                .ok_or_else(|| format!("$label must be a string, not {}", kind_of(value)))?;
            check_string(label, MAX_LABEL_CHARS)
        }
        "$tags" if top_level => check_tags(value),
        _ if key.starts_with('$') => Err("only $label and $tags may start with '$'".to_owned()),
        _ => {
            if let Some(name) = wrapped(key, "date") {
                check_name(name)?;
                let date = value
                    .as_str()
                    .ok_or_else(|| format!("a date must be a string, not {}", kind_of(value)))?;
                if is_rfc3339(date) {
                    Ok(())
                } else {
                    Err(format!("{date:?} is not an RFC 3339 date-time"))
                }
            } else if let Some(name) = wrapped(key, "url") {
                check_name(name)?;
                let url = value
                    .as_str()
                    .ok_or_else(|| format!("a URL must be a string, not {}", kind_of(value)))?;
                check_url(url)
            } else {
                check_name(key)?;
                check_value(value)
            }
        }
    }
}

fn check_value(value: &Value) -> Result<(), String> {
    match value {
        Value::Null => {
            Err("null is not an event attribute value; leave the attribute out".to_owned())
        }
        Value::Bool(_) => Ok(()),
        Value::Number(n) => match n.as_f64() {
            Some(f) if !f.is_finite() => Err("numbers must be finite".to_owned()),
            _ => Ok(()),
        },
        Value::String(s) => check_string(s, MAX_STRING_CHARS),
        Value::Array(items) => {
            if items.iter().all(Value::is_string) {
                if items.len() > MAX_ARRAY_ITEMS {
                    return Err(format!(
                        "{} items in a string array; at most {MAX_ARRAY_ITEMS}",
                        items.len()
                    ));
                }
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .try_for_each(|s| check_string(s, MAX_STRING_CHARS))
            } else if items.iter().all(Value::is_object) {
                items.iter().try_for_each(check_value)
            } else {
                Err("an array must hold only strings or only objects".to_owned())
            }
        }
        Value::Object(map) => map
            .iter()
            .try_for_each(|(k, v)| check_attribute(k, v, false).map_err(|e| format!("{k:?}: {e}"))),
    }
}

fn check_tags(value: &Value) -> Result<(), String> {
    let Some(tags) = value.as_array() else {
        return Err(format!(
            "$tags must be an array of strings, not {}",
            kind_of(value)
        ));
    };
    if tags.len() > MAX_TAGS {
        return Err(format!("{} tags; at most {MAX_TAGS}", tags.len()));
    }
    for tag in tags {
        let tag = tag
            .as_str()
            .ok_or_else(|| format!("a tag must be a string, not {}", kind_of(tag)))?;
        check_string(tag, MAX_TAG_CHARS)?;
    }
    Ok(())
}

fn check_string(s: &str, max: usize) -> Result<(), String> {
    if s.is_empty() {
        return Err("strings must not be empty".to_owned());
    }
    let chars = char_count(s);
    if chars > max {
        return Err(format!("string of {chars} characters; at most {max}"));
    }
    Ok(())
}

fn check_url(url: &str) -> Result<(), String> {
    let chars = char_count(url);
    if chars > MAX_URL_CHARS {
        return Err(format!(
            "URL of {chars} characters; at most {MAX_URL_CHARS}"
        ));
    }
    if has_scheme(url) {
        Ok(())
    } else {
        Err("a URL must start with a scheme, as in https://".to_owned())
    }
}

fn check_name(name: &str) -> Result<(), String> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(format!(
            "the name {name:?} does not match ^[a-z0-9_]{{1,{MAX_NAME_CHARS}}}$"
        ))
    }
}

/// `^[a-z0-9_]{1,30}$`, for event and attribute names.
pub(crate) fn is_valid_name(name: &str) -> bool {
    (1..=MAX_NAME_CHARS).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The name inside `wrapper(name)`, if `key` has that shape.
fn wrapped<'k>(key: &'k str, wrapper: &str) -> Option<&'k str> {
    key.strip_prefix(wrapper)?
        .strip_prefix('(')?
        .strip_suffix(')')
}

fn is_rfc3339(s: &str) -> bool {
    chrono::DateTime::parse_from_rfc3339(s).is_ok()
}

/// RFC 3986: `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) ":"` followed by something.
fn has_scheme(url: &str) -> bool {
    let Some((scheme, rest)) = url.split_once(':') else {
        return false;
    };
    let mut bytes = scheme.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        && !rest.is_empty()
}

fn char_count(s: &str) -> usize {
    s.chars().count()
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
