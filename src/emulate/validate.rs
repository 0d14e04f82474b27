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
//! - Profile `attributes` (the operation's own, not an event's) follow the same name, wrapper
//!   and value rules, except that `null` is allowed (it deletes the attribute) and objects and
//!   arrays of anything but strings are not. Their only `$` names are the native attributes
//!   ([`NATIVE_PROFILE_ATTRIBUTES`]), each string-valued in its own format or `null`. No limit
//!   on the number of attributes per profile update is enforced: BATCH_API.md states none.
//! - The native formats are checked by shape, not against code lists: `$language` is two
//!   lowercase letters, `$region` two uppercase ones, `$email_address` a plausible address.
//!   `$timezone` alone is checked against a real list, the tz database chrono-tz ships.

use std::str::FromStr;

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
pub(crate) const MAX_EMAIL_CHARS: usize = 256;
/// E.164 allows at most 15 digits after the `+`.
pub(crate) const MAX_PHONE_DIGITS: usize = 15;

/// The `$` attributes a profile may carry (`check_native` holds their formats).
pub(crate) const NATIVE_PROFILE_ATTRIBUTES: [&str; 7] = [
    "$email_address",
    "$email_marketing",
    "$sms_marketing",
    "$phone_number",
    "$language",
    "$region",
    "$timezone",
];

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
        let Some(attributes) = attributes.as_object() else {
            return Err(OperationError::new(
                "INVALID_OPERATION",
                format!(
                    "profile attributes must be an object, not {}",
                    kind_of(attributes)
                ),
            ));
        };
        for (key, value) in attributes {
            check_profile_attribute(key, value).map_err(|reason| {
                OperationError::attribute(key, format!("profile attribute {key:?}: {reason}"))
            })?;
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
            let (kind, name) = split_key(key);
            check_name(name)?;
            match kind {
                KeyKind::Date => check_date(value),
                KeyKind::Url => check_url_value(value),
                KeyKind::Plain => check_value(value),
            }
        }
    }
}

/// Checks one profile attribute: a native `$` one, or a custom one whose value may be `null`
/// (which deletes it) but not an object, nor an array of anything but strings.
fn check_profile_attribute(key: &str, value: &Value) -> Result<(), String> {
    if key.starts_with('$') {
        return check_native(key, value);
    }
    let (kind, name) = split_key(key);
    check_name(name)?;
    match (kind, value) {
        (_, Value::Null) => Ok(()),
        (KeyKind::Date, _) => check_date(value),
        (KeyKind::Url, _) => check_url_value(value),
        (KeyKind::Plain, Value::Object(_)) => {
            Err("objects are allowed in event attributes only".to_owned())
        }
        (KeyKind::Plain, Value::Array(items)) if !items.iter().all(Value::is_string) => Err(
            "a profile attribute array must hold only strings; objects are allowed in event \
             attributes only"
                .to_owned(),
        ),
        (KeyKind::Plain, _) => check_value(value),
    }
}

/// The native profile attributes, each `null` (deletes it) or a value of its own format.
fn check_native(key: &str, value: &Value) -> Result<(), String> {
    let format: fn(&str) -> Result<(), String> = match key {
        "$email_address" => check_email,
        "$email_marketing" | "$sms_marketing" => check_subscription,
        "$phone_number" => check_phone_number,
        "$language" => check_language,
        "$region" => check_region,
        "$timezone" => check_timezone,
        _ => {
            return Err(format!(
                "not a native profile attribute; only {} may start with '$'",
                NATIVE_PROFILE_ATTRIBUTES.join(", ")
            ))
        }
    };
    match value {
        Value::Null => Ok(()),
        Value::String(s) => format(s),
        other => Err(format!(
            "{key} must be a string or null, not {}",
            kind_of(other)
        )),
    }
}

/// One `@`, a non-empty local part, a domain with a `.` not at either end, no whitespace: a
/// plausibility check, not RFC 5322.
fn check_email(email: &str) -> Result<(), String> {
    let chars = char_count(email);
    if chars > MAX_EMAIL_CHARS {
        return Err(format!(
            "an email address of {chars} characters; at most {MAX_EMAIL_CHARS}"
        ));
    }
    if email.chars().any(char::is_whitespace) {
        return Err("an email address holds no whitespace".to_owned());
    }
    let plausible = match email.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        }
        None => false,
    };
    if plausible {
        Ok(())
    } else {
        Err(format!(
            "{email:?} is not an email address (local@domain.tld, one '@')"
        ))
    }
}

fn check_subscription(state: &str) -> Result<(), String> {
    if matches!(state, "subscribed" | "unsubscribed") {
        Ok(())
    } else {
        Err(format!(
            "{state:?} is not a subscription state: \"subscribed\" or \"unsubscribed\""
        ))
    }
}

/// E.164: `+`, then 2 to 15 digits, the first not 0.
fn check_phone_number(phone: &str) -> Result<(), String> {
    let e164 = phone.strip_prefix('+').is_some_and(|digits| {
        (2..=MAX_PHONE_DIGITS).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0')
    });
    if e164 {
        Ok(())
    } else {
        Err(format!(
            "{phone:?} is not an E.164 phone number ('+', then 2 to {MAX_PHONE_DIGITS} digits, \
             the first not 0)"
        ))
    }
}

/// ISO 639-1 by its shape: two lowercase ASCII letters (the emulator keeps no code list).
fn check_language(language: &str) -> Result<(), String> {
    if language.len() == 2 && language.bytes().all(|b| b.is_ascii_lowercase()) {
        Ok(())
    } else {
        Err(format!(
            "{language:?} is not an ISO 639-1 language code (two lowercase letters, as in \"fr\")"
        ))
    }
}

/// ISO 3166-1 alpha-2 by its shape: two uppercase ASCII letters.
fn check_region(region: &str) -> Result<(), String> {
    if region.len() == 2 && region.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(format!(
            "{region:?} is not an ISO 3166-1 alpha-2 region code (two uppercase letters, as in \
             \"FR\")"
        ))
    }
}

/// An IANA zone name as the tz database spells it (case matters, as in `Europe/Paris`).
fn check_timezone(zone: &str) -> Result<(), String> {
    match chrono_tz::Tz::from_str(zone) {
        Ok(_) => Ok(()),
        Err(_) => Err(format!(
            "{zone:?} is not an IANA time zone name (as in \"Europe/Paris\")"
        )),
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

fn check_date(value: &Value) -> Result<(), String> {
    let date = value
        .as_str()
        .ok_or_else(|| format!("a date must be a string, not {}", kind_of(value)))?;
    if is_rfc3339(date) {
        Ok(())
    } else {
        Err(format!("{date:?} is not an RFC 3339 date-time"))
    }
}

fn check_url_value(value: &Value) -> Result<(), String> {
    let url = value
        .as_str()
        .ok_or_else(|| format!("a URL must be a string, not {}", kind_of(value)))?;
    check_url(url)
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

/// The type a key declares by its wrapper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    /// `date(name)`: an RFC 3339 string.
    Date,
    /// `url(name)`: a URL with a scheme.
    Url,
    /// A bare name: the value's JSON type is its type.
    Plain,
}

/// A key's declared type and the name its 30-character rule applies to.
fn split_key(key: &str) -> (KeyKind, &str) {
    if let Some(name) = wrapped(key, "date") {
        (KeyKind::Date, name)
    } else if let Some(name) = wrapped(key, "url") {
        (KeyKind::Url, name)
    } else {
        (KeyKind::Plain, key)
    }
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
