//! The mapping: which columns a sync uses, in which role, and how a row becomes a Batch event.
//!
//! Invariants:
//! - `ColumnPlan::columns` is sorted by name bytes: it is the hash order of the row encoding, so
//!   the order a source yields columns in never changes a hash.
//! - Every rule of shared/BATCH_API.md that can be checked without sending is checked either here
//!   at config time (names, counts, declared types) or in [`build_event`] per row; a row that
//!   breaks one becomes a [`Reject`] naming the column and the rule, never a request.
//! - Pure: the clock is an argument.

use super::value::{format_time, json_of, Type, Value};
use std::collections::BTreeMap;

pub const MAX_CUSTOM_ID: usize = 512;
pub const MAX_LABEL: usize = 200;
pub const MAX_STRING: usize = 300;
pub const MAX_URL: usize = 2048;
pub const MAX_ARRAY: usize = 25;
pub const MAX_ATTRIBUTES: usize = 20;
pub const WARN_ATTRIBUTES: usize = 15;
/// Clock skew tolerated before an event counts as "in the future".
pub const FUTURE_SKEW_MICROS: i64 = 5 * 60 * 1_000_000;

/// The mapping as written in the config.
#[derive(Debug, Clone, Default)]
pub struct MappingSpec {
    pub primary_key: Vec<String>,
    pub custom_id: String,
    pub event: Option<String>,
    pub event_column: Option<String>,
    pub time: Option<String>,
    pub label: Option<String>,
    pub attributes: Vec<String>,
    pub types: BTreeMap<String, Type>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EventName {
    Constant(String),
    Column(usize),
    /// A sync of profile attributes alone: no row sends an event.
    None,
}

/// The columns a sync uses and their roles, as indices into `columns`.
#[derive(Debug, Clone)]
pub struct ColumnPlan {
    pub spec: MappingSpec,
    pub columns: Vec<String>,
    pub types: Vec<Option<Type>>,
    pub key: Vec<usize>,
    pub custom_id: usize,
    pub event: EventName,
    pub time: Option<usize>,
    pub label: Option<usize>,
    pub attributes: Vec<usize>,
    /// Columns `0..hashed` are the event's: the row hash covers them. Profile attributes'
    /// columns that the event does not use follow them, in name order, outside the row hash.
    pub hashed: usize,
    /// The profile attributes (`[mapping] profile_attributes`), sorted by attribute name: the
    /// order of the profile hash's input.
    pub profile: Vec<ProfileAttr>,
}

/// One profile attribute: the name it has on the Batch profile and its column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileAttr {
    pub name: String,
    pub column: usize,
    pub native: Option<Native>,
}

/// Batch's native profile attributes, each with its own value rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Native {
    EmailAddress,
    EmailMarketing,
    PhoneNumber,
    SmsMarketing,
    Language,
    Region,
    Timezone,
}

impl Native {
    pub const ALL: [(&'static str, Native); 7] = [
        ("$email_address", Native::EmailAddress),
        ("$email_marketing", Native::EmailMarketing),
        ("$phone_number", Native::PhoneNumber),
        ("$sms_marketing", Native::SmsMarketing),
        ("$language", Native::Language),
        ("$region", Native::Region),
        ("$timezone", Native::Timezone),
    ];

    pub fn of(name: &str) -> Option<Native> {
        Native::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, v)| v)
    }

    /// The rule a value must follow, as a reject's reason tells it.
    pub fn rule(self) -> &'static str {
        match self {
            Native::EmailAddress => {
                "an email address (one @, a domain with a dot, no spaces, at most 256 characters)"
            }
            Native::EmailMarketing | Native::SmsMarketing => "\"subscribed\" or \"unsubscribed\"",
            Native::PhoneNumber => {
                "a phone number in E.164 form (+ then 2 to 15 digits, the first not 0)"
            }
            Native::Language => "an ISO 639-1 language code (2 lowercase letters, e.g. \"fr\")",
            Native::Region => {
                "an ISO 3166-1 alpha-2 region code (2 uppercase letters, e.g. \"FR\")"
            }
            Native::Timezone => "an IANA time zone name (e.g. \"Europe/Paris\")",
        }
    }

    /// Whether a (non-null) text value follows the rule.
    pub fn accepts(self, s: &str) -> bool {
        match self {
            Native::EmailAddress => valid_email(s),
            Native::EmailMarketing | Native::SmsMarketing => {
                matches!(s, "subscribed" | "unsubscribed")
            }
            Native::PhoneNumber => {
                let digits = s.strip_prefix('+').unwrap_or("");
                (2..=15).contains(&digits.len())
                    && digits.bytes().all(|b| b.is_ascii_digit())
                    && !digits.starts_with('0')
            }
            Native::Language => s.len() == 2 && s.bytes().all(|b| b.is_ascii_lowercase()),
            Native::Region => s.len() == 2 && s.bytes().all(|b| b.is_ascii_uppercase()),
            Native::Timezone => s.parse::<chrono_tz::Tz>().is_ok(),
        }
    }
}

fn valid_email(s: &str) -> bool {
    if s.chars().count() > 256 || s.chars().any(char::is_whitespace) {
        return false;
    }
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        }
        None => false,
    }
}

/// A config-time mapping error: the key of the config it concerns and what is wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecError {
    pub key: &'static str,
    pub message: String,
}

fn spec_err(key: &'static str, message: impl Into<String>) -> SpecError {
    SpecError {
        key,
        message: message.into(),
    }
}

/// Batch's rule for event and attribute names.
pub fn valid_name(name: &str) -> bool {
    (1..=30).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

const NAME_RULE: &str = "must match ^[a-z0-9_]{1,30}$ (Batch's rule for names)";

impl ColumnPlan {
    pub fn new(spec: MappingSpec) -> Result<ColumnPlan, SpecError> {
        ColumnPlan::with_profile(spec, Vec::new())
    }

    /// The plan with profile attributes: `(attribute name, column)` pairs, as configured.
    pub fn with_profile(
        spec: MappingSpec,
        profile: Vec<(String, String)>,
    ) -> Result<ColumnPlan, SpecError> {
        if spec.custom_id.trim().is_empty() {
            return Err(spec_err("custom_id", "names no column"));
        }
        match (&spec.event, &spec.event_column) {
            (Some(_), Some(_)) => {
                return Err(spec_err(
                    "event_column",
                    "set either `event` (a constant name) or `event_column`, not both",
                ))
            }
            (None, None) if profile.is_empty() => {
                return Err(spec_err(
                    "event",
                    "set `event` (a constant event name) or `event_column`, or map `profile_attributes` alone",
                ))
            }
            (None, None) => {
                let event_keys = [
                    ("time", spec.time.is_some()),
                    ("label", spec.label.is_some()),
                    ("attributes", !spec.attributes.is_empty()),
                ];
                if let Some((key, _)) = event_keys.iter().find(|(_, set)| *set) {
                    return Err(spec_err(
                        key,
                        "belongs to an event: set `event` (or `event_column`), or remove it for a sync of profile attributes alone",
                    ));
                }
            }
            (Some(e), None) if !valid_name(e) => {
                return Err(spec_err("event", format!("{e:?} {NAME_RULE}")));
            }
            _ => {}
        }
        let mut seen_pk = std::collections::BTreeSet::new();
        for k in &spec.primary_key {
            if k.is_empty() || !seen_pk.insert(k) {
                return Err(spec_err(
                    "primary_key",
                    format!("{k:?} is empty or listed twice"),
                ));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for a in &spec.attributes {
            if a.starts_with('$') {
                return Err(spec_err("attributes", format!("{a:?}: names starting with `$` are reserved by Batch; map the label with `label`")));
            }
            if !valid_name(a) {
                return Err(spec_err("attributes", format!("{a:?} {NAME_RULE}")));
            }
            if !seen.insert(a) {
                return Err(spec_err("attributes", format!("{a:?} is listed twice")));
            }
        }
        if spec.attributes.len() > MAX_ATTRIBUTES {
            return Err(spec_err(
                "attributes",
                format!(
                    "{} attributes; Batch takes at most {MAX_ATTRIBUTES} per event",
                    spec.attributes.len()
                ),
            ));
        }
        if spec.attributes.len() > WARN_ATTRIBUTES {
            tracing::warn!(
                count = spec.attributes.len(),
                "more than {WARN_ATTRIBUTES} attributes per event: older Batch APIs take 15"
            );
        }

        let mut used: Vec<String> = spec.primary_key.clone();
        used.push(spec.custom_id.clone());
        used.extend(spec.event_column.iter().cloned());
        used.extend(spec.time.iter().cloned());
        used.extend(spec.label.iter().cloned());
        used.extend(spec.attributes.iter().cloned());
        used.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        used.dedup();
        let hashed = used.len();
        check_profile(&spec, &profile)?;
        let mut profile_only: Vec<String> = profile
            .iter()
            .map(|(_, c)| c.clone())
            .filter(|c| !used.contains(c))
            .collect();
        profile_only.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        profile_only.dedup();
        used.extend(profile_only);

        for (col, ty) in &spec.types {
            if !used.contains(col) {
                return Err(spec_err(
                    "types",
                    format!("column {col:?} has a type but the mapping does not use it"),
                ));
            }
            let role_conflict = |role: &str, allowed: &[Type]| {
                (!allowed.contains(ty)).then(|| {
                    spec_err(
                        "types",
                        format!("column {col:?} is the {role}; it cannot be {ty}"),
                    )
                })
            };
            let conflict = if Some(col) == spec.time.as_ref() {
                role_conflict("event time", &[Type::Date])
            } else if Some(col) == spec.label.as_ref() || Some(col) == spec.event_column.as_ref() {
                role_conflict("label or event name", &[Type::String])
            } else if *col == spec.custom_id {
                role_conflict("custom id", &[Type::String, Type::Integer, Type::Number])
            } else if let Some((name, _)) = profile
                .iter()
                .find(|(n, c)| c == col && Native::of(n).is_some())
            {
                role_conflict(&format!("native profile attribute {name}"), &[Type::String])
            } else {
                None
            };
            if let Some(e) = conflict {
                return Err(e);
            }
        }

        let idx = |name: &String| used.iter().position(|c| c == name).expect("used column");
        let types = used
            .iter()
            .map(|c| {
                spec.types
                    .get(c)
                    .copied()
                    .or_else(|| (Some(c) == spec.time.as_ref()).then_some(Type::Date))
            })
            .collect();
        Ok(ColumnPlan {
            key: spec.primary_key.iter().map(idx).collect(),
            custom_id: idx(&spec.custom_id),
            event: match (&spec.event, &spec.event_column) {
                (Some(e), _) => EventName::Constant(e.clone()),
                (None, Some(c)) => EventName::Column(idx(c)),
                (None, None) => EventName::None,
            },
            time: spec.time.as_ref().map(idx),
            label: spec.label.as_ref().map(idx),
            attributes: spec.attributes.iter().map(idx).collect(),
            hashed,
            profile: {
                let mut p: Vec<ProfileAttr> = profile
                    .iter()
                    .map(|(name, column)| ProfileAttr {
                        name: name.clone(),
                        column: idx(column),
                        native: Native::of(name),
                    })
                    .collect();
                p.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
                p
            },
            types,
            columns: used,
            spec,
        })
    }

    pub fn has_profile(&self) -> bool {
        !self.profile.is_empty()
    }

    /// Whether every profile attribute's column is also one of the event's, which the row hash
    /// covers: a row whose row hash is unchanged then has unchanged profile attributes too.
    pub fn profile_in_row_hash(&self) -> bool {
        self.profile.iter().all(|a| a.column < self.hashed)
    }

    /// Whether rows become events (a sync of profile attributes alone has none).
    pub fn has_event(&self) -> bool {
        self.event != EventName::None
    }

    /// A fingerprint of the profile attributes (names, columns, types): what a profile hash
    /// was computed under. Empty without profile attributes.
    pub fn profile_identity(&self) -> String {
        self.profile
            .iter()
            .map(|a| match self.types[a.column] {
                Some(t) => format!("{}={}:{t}", a.name, self.columns[a.column]),
                None => format!("{}={}", a.name, self.columns[a.column]),
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn has_key(&self) -> bool {
        !self.key.is_empty()
    }

    pub fn key_names(&self) -> &[String] {
        &self.spec.primary_key
    }

    /// A fingerprint of what decides row keys and hashes; a store written under another one
    /// cannot be diffed against without re-firing every row (but for the recipe: a store of
    /// recipe 1 is upgraded, DESIGN.md "Hash recipe upgrades").
    pub fn identity(&self) -> String {
        self.identity_for(super::encode::HASH_RECIPE)
    }

    /// [`ColumnPlan::identity`] under another hash recipe.
    pub fn identity_for(&self, recipe: u32) -> String {
        let types: Vec<String> = self.columns[..self.hashed]
            .iter()
            .zip(&self.types)
            .map(|(c, t)| match t {
                Some(t) => format!("{c}:{t}"),
                None => c.clone(),
            })
            .collect();
        format!(
            "recipe={};key={};columns={}",
            recipe,
            self.spec.primary_key.join(","),
            types.join(",")
        )
    }
}

/// The rules of `[mapping] profile_attributes`: one row per profile (the primary key is the
/// custom id), Batch's names or its native attributes, each name once.
fn check_profile(spec: &MappingSpec, profile: &[(String, String)]) -> Result<(), SpecError> {
    if profile.is_empty() {
        return Ok(());
    }
    let key = "profile_attributes";
    if spec.primary_key != [spec.custom_id.clone()] {
        return Err(spec_err(
            key,
            format!(
                "profile attributes need one row per profile: [source] primary_key must be [{:?}], the custom_id column (it is {:?})",
                spec.custom_id, spec.primary_key
            ),
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (name, column) in profile {
        if column.is_empty() {
            return Err(spec_err(key, format!("{name:?} names no column")));
        }
        if name.starts_with('$') {
            if Native::of(name).is_none() {
                let natives: Vec<&str> = Native::ALL.iter().map(|(n, _)| *n).collect();
                return Err(spec_err(
                    key,
                    format!(
                        "{name:?} is not one of Batch's native profile attributes ({})",
                        natives.join(", ")
                    ),
                ));
            }
        } else if !valid_name(name) {
            return Err(spec_err(key, format!("{name:?} {NAME_RULE}")));
        }
        if !seen.insert(name) {
            return Err(spec_err(key, format!("{name:?} is listed twice")));
        }
        if *column == spec.custom_id {
            return Err(spec_err(
                key,
                format!("{name:?}: the custom_id column identifies the profile; it is not an attribute of it"),
            ));
        }
    }
    Ok(())
}

/// What the mapping does with times outside Batch's window: `[sync] late_events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LatePolicy {
    #[default]
    Reject,
    SendWithoutTime,
    Send,
}

#[derive(Debug, Clone, Copy)]
pub struct EventRules {
    pub late: LatePolicy,
    /// How far back Batch accepts event times, in microseconds.
    pub window_micros: i64,
    pub now_micros: i64,
    pub event_id: bool,
}

/// An event ready for the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub custom_id: String,
    /// `{"name", "time"?, "attributes"?}` exactly as sent.
    pub body: serde_json::Value,
}

/// Why a row cannot become an event, or cannot be read.
#[derive(Debug, Clone, PartialEq)]
pub struct Reject {
    pub column: Option<String>,
    pub rule: &'static str,
    pub reason: String,
}

impl Reject {
    pub fn new(column: Option<&str>, rule: &'static str, reason: impl Into<String>) -> Reject {
        Reject {
            column: column.map(str::to_string),
            rule,
            reason: reason.into(),
        }
    }
}

fn has_scheme(url: &str) -> bool {
    match url.split_once(':') {
        Some((scheme, rest)) => {
            !rest.is_empty()
                && scheme
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        }
        None => false,
    }
}

/// One non-null attribute value as Batch takes it: its key (`date(name)`, `url(name)` for those
/// types) and JSON value, or the rule it breaks.
/// `column` is the one a reject names.
fn attribute(name: &str, column: &str, v: &Value) -> Result<(String, serde_json::Value), Reject> {
    let col = Some(column);
    Ok(match v {
        Value::Text(s) => {
            let n = s.chars().count();
            if n == 0 {
                return Err(Reject::new(
                    col,
                    "string_empty",
                    "Batch does not take empty strings; make it null to leave the attribute out",
                ));
            }
            if n > MAX_STRING {
                return Err(Reject::new(
                    col,
                    "string_too_long",
                    format!("{n} characters; Batch takes at most {MAX_STRING}"),
                ));
            }
            (name.to_string(), serde_json::Value::String(s.clone()))
        }
        Value::Time(t) => (format!("date({name})"), format_time(*t).into()),
        Value::Url(u) => {
            if u.chars().count() > MAX_URL || !has_scheme(u) {
                return Err(Reject::new(
                    col,
                    "url",
                    format!("a URL must have a scheme and at most {MAX_URL} characters"),
                ));
            }
            (format!("url({name})"), u.clone().into())
        }
        Value::StrArray(items) => {
            if items.len() > MAX_ARRAY {
                return Err(Reject::new(
                    col,
                    "array_too_long",
                    format!("{} items; Batch takes at most {MAX_ARRAY}", items.len()),
                ));
            }
            if let Some(bad) = items
                .iter()
                .find(|s| s.is_empty() || s.chars().count() > MAX_STRING)
            {
                return Err(Reject::new(
                    col,
                    "array_item",
                    format!("item {bad:?} is empty or longer than {MAX_STRING} characters"),
                ));
            }
            (name.to_string(), json_of(v))
        }
        v => (name.to_string(), json_of(v)),
    })
}

/// The row's custom id, as the profile's identifier, or the rule it breaks.
fn custom_id_of(plan: &ColumnPlan, row: &[Value]) -> Result<String, Reject> {
    let col = |i: usize| Some(plan.columns[i].as_str());
    let custom_id = match row[plan.custom_id].as_text() {
        Some(s) if !s.trim().is_empty() => s,
        Some(_) | None if !matches!(row[plan.custom_id], Value::Null | Value::Text(_)) => {
            return Err(Reject::new(
                col(plan.custom_id),
                "custom_id_type",
                "the custom id must be a string or an integer",
            ))
        }
        _ => {
            return Err(Reject::new(
                col(plan.custom_id),
                "custom_id_empty",
                "the custom id is empty",
            ))
        }
    };
    if custom_id.chars().count() > MAX_CUSTOM_ID {
        return Err(Reject::new(
            col(plan.custom_id),
            "custom_id_too_long",
            format!("the custom id is longer than {MAX_CUSTOM_ID} characters"),
        ));
    }

    Ok(custom_id)
}

/// A row's profile attributes as an operation's `attributes` object: every profile attribute,
/// typed like an event attribute (`date(renews_on)` for a time), and a null value as null under
/// the bare name (Batch deletes the attribute: the profile mirrors the segment); or the rule a
/// value breaks.
pub fn build_profile(plan: &ColumnPlan, row: &[Value]) -> Result<Profile, Reject> {
    let custom_id = custom_id_of(plan, row)?;
    let mut attributes = serde_json::Map::new();
    for a in &plan.profile {
        let column = plan.columns[a.column].as_str();
        let v = &row[a.column];
        if matches!(v, Value::Null) {
            attributes.insert(a.name.clone(), serde_json::Value::Null);
            continue;
        }
        if let Some(native) = a.native {
            match v {
                Value::Text(s) if native.accepts(s) => {
                    attributes.insert(a.name.clone(), s.clone().into());
                }
                other => {
                    return Err(Reject::new(
                        Some(column),
                        "profile_native",
                        format!(
                            "{} must be {}, found {}",
                            a.name,
                            native.rule(),
                            super::value::render(other)
                        ),
                    ))
                }
            }
            continue;
        }
        if matches!(v, Value::Json(_)) {
            return Err(Reject::new(
                Some(column),
                "profile_object",
                format!(
                    "profile attribute {}: objects and arrays of objects are allowed in event attributes only",
                    a.name
                ),
            ));
        }
        let (key, value) = attribute(&a.name, column, v)?;
        attributes.insert(key, value);
    }
    Ok(Profile {
        custom_id,
        attributes: serde_json::Value::Object(attributes),
    })
}

/// The profile update of a row that left the segment under `on_remove = "unset"`: every
/// profile attribute null. `custom_id` comes from the row key (the key is the custom id).
pub fn unset_profile(plan: &ColumnPlan, custom_id: String) -> Profile {
    let attributes = plan
        .profile
        .iter()
        .map(|a| (a.name.clone(), serde_json::Value::Null))
        .collect();
    Profile {
        custom_id,
        attributes: serde_json::Value::Object(attributes),
    }
}

/// What one row sends in its operation: its event, its profile attributes, or both.
#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    pub custom_id: String,
    pub event: Option<serde_json::Value>,
    /// The operation's `attributes` object.
    pub attributes: Option<serde_json::Value>,
}

impl Operation {
    pub fn new(event: Option<Event>, profile: Option<Profile>) -> Option<Operation> {
        let custom_id = match (&event, &profile) {
            (Some(e), _) => e.custom_id.clone(),
            (None, Some(p)) => p.custom_id.clone(),
            (None, None) => return None,
        };
        Some(Operation {
            custom_id,
            event: event.map(|e| e.body),
            attributes: profile.map(|p| p.attributes),
        })
    }

    /// The operation as Batch takes it (for `plan`'s sample).
    pub fn to_json(&self) -> serde_json::Value {
        let mut op = serde_json::Map::new();
        op.insert(
            "identifiers".into(),
            serde_json::json!({ "custom_id": self.custom_id }),
        );
        if let Some(a) = &self.attributes {
            op.insert("attributes".into(), a.clone());
        }
        if let Some(e) = &self.event {
            op.insert("events".into(), serde_json::Value::Array(vec![e.clone()]));
        }
        serde_json::Value::Object(op)
    }
}

/// A profile update ready for the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub custom_id: String,
    /// The operation's `attributes` object, exactly as sent.
    pub attributes: serde_json::Value,
}

/// Turns a row (values in `plan.columns` order) into an event, or says which rule it breaks.
/// `event_id` is the deterministic id put in the `event_id` attribute when the rules ask for it.
pub fn build_event(
    plan: &ColumnPlan,
    row: &[Value],
    rules: &EventRules,
    event_id: &str,
) -> Result<Event, Reject> {
    let col = |i: usize| Some(plan.columns[i].as_str());

    let custom_id = custom_id_of(plan, row)?;

    let name =
        match &plan.event {
            EventName::Constant(n) => n.clone(),
            EventName::None => return Err(Reject::new(
                None,
                "no_event",
                "the mapping has no event (a bug: a sync of profile attributes alone builds none)",
            )),
            EventName::Column(i) => match &row[*i] {
                Value::Text(n) if valid_name(n) => n.clone(),
                other => {
                    return Err(Reject::new(
                        col(*i),
                        "event_name",
                        format!(
                            "{:?} is not a valid event name: {NAME_RULE}",
                            super::value::render(other)
                        ),
                    ))
                }
            },
        };

    let mut event = serde_json::Map::new();
    event.insert("name".into(), name.into());

    if let Some(i) = plan.time {
        match row[i] {
            Value::Null => {}
            Value::Time(t) => {
                let too_old = t < rules.now_micros - rules.window_micros;
                let future = t > rules.now_micros + FUTURE_SKEW_MICROS;
                match (too_old || future, rules.late) {
                    (false, _) | (true, LatePolicy::Send) => {
                        event.insert("time".into(), format_time(t).into());
                    }
                    (true, LatePolicy::SendWithoutTime) => {}
                    (true, LatePolicy::Reject) => {
                        let what = if future {
                            "is in the future"
                        } else {
                            "is older than Batch's event window"
                        };
                        return Err(Reject::new(
                            col(i),
                            "time_window",
                            format!("time {} {what}; set [sync] late_events = \"send_without_time\" or \"send\" to ship it anyway", format_time(t)),
                        ));
                    }
                }
            }
            ref other => {
                return Err(Reject::new(
                    col(i),
                    "time_type",
                    format!("{} is not a time", super::value::render(other)),
                ))
            }
        }
    }

    let mut attributes = serde_json::Map::new();
    if let Some(i) = plan.label {
        match &row[i] {
            Value::Null => {}
            Value::Text(l) if l.is_empty() => {}
            Value::Text(l) if l.chars().count() <= MAX_LABEL => {
                attributes.insert("$label".into(), l.clone().into());
            }
            Value::Text(_) => {
                return Err(Reject::new(
                    col(i),
                    "label_too_long",
                    format!("the label is longer than {MAX_LABEL} characters"),
                ))
            }
            other => {
                return Err(Reject::new(
                    col(i),
                    "label_type",
                    format!(
                        "the label must be a string, found {}",
                        super::value::render(other)
                    ),
                ))
            }
        }
    }
    for &i in &plan.attributes {
        if matches!(row[i], Value::Null) {
            continue;
        }
        let (key, value) = attribute(&plan.columns[i], &plan.columns[i], &row[i])?;
        attributes.insert(key, value);
    }
    if rules.event_id {
        attributes.insert("event_id".into(), event_id.into());
    }
    if attributes.len() > MAX_ATTRIBUTES + 1 {
        return Err(Reject::new(
            None,
            "too_many_attributes",
            format!(
                "{} attributes; Batch takes at most {MAX_ATTRIBUTES}",
                attributes.len()
            ),
        ));
    }
    if !attributes.is_empty() {
        event.insert("attributes".into(), serde_json::Value::Object(attributes));
    }
    Ok(Event {
        custom_id,
        body: serde_json::Value::Object(event),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn plan() -> ColumnPlan {
        ColumnPlan::new(MappingSpec {
            primary_key: vec!["order_id".into()],
            custom_id: "email".into(),
            event: Some("order_completed".into()),
            time: Some("ordered_at".into()),
            label: Some("campaign".into()),
            attributes: vec![
                "amount".into(),
                "delivered_on".into(),
                "receipt".into(),
                "note".into(),
            ],
            types: [
                ("delivered_on".to_string(), Type::Date),
                ("receipt".to_string(), Type::Url),
            ]
            .into(),
            ..Default::default()
        })
        .unwrap()
    }

    const NOW: i64 = 1_800_000_000_000_000;

    fn rules(late: LatePolicy) -> EventRules {
        EventRules {
            late,
            window_micros: 24 * 3600 * 1_000_000,
            now_micros: NOW,
            event_id: false,
        }
    }

    /// A row in plan order: amount, campaign, delivered_on, email, note, order_id, ordered_at, receipt.
    fn row(email: Value, time: Value, note: Value) -> Vec<Value> {
        let p = plan();
        let mut r = vec![Value::Null; p.columns.len()];
        let set = |r: &mut Vec<Value>, c: &str, v: Value| {
            let i = p.columns.iter().position(|x| x == c).unwrap();
            r[i] = v;
        };
        set(&mut r, "amount", Value::Float(42.5));
        set(&mut r, "campaign", Value::Text("spring".into()));
        set(&mut r, "delivered_on", Value::Time(NOW));
        set(&mut r, "email", email);
        set(&mut r, "note", note);
        set(&mut r, "order_id", Value::Int(1));
        set(&mut r, "ordered_at", time);
        set(
            &mut r,
            "receipt",
            Value::Url("https://shop.test/r/1".into()),
        );
        r
    }

    #[test]
    fn columns_are_sorted_and_roles_point_at_them() {
        let p = plan();
        let mut sorted = p.columns.clone();
        sorted.sort();
        assert_eq!(p.columns, sorted);
        assert_eq!(p.columns[p.custom_id], "email");
        assert_eq!(p.types[p.time.unwrap()], Some(Type::Date));
    }

    #[test]
    fn a_valid_row_becomes_the_documented_event_shape() {
        let r = row(
            Value::Text("a@x.test".into()),
            Value::Time(NOW - 1_000_000),
            Value::Null,
        );
        let e = build_event(&plan(), &r, &rules(LatePolicy::Reject), "id").unwrap();
        assert_eq!(e.custom_id, "a@x.test");
        assert_eq!(
            e.body,
            serde_json::json!({
                "name": "order_completed",
                "time": format_time(NOW - 1_000_000),
                "attributes": {
                    "$label": "spring",
                    "amount": 42.5,
                    "date(delivered_on)": format_time(NOW),
                    "url(receipt)": "https://shop.test/r/1"
                }
            })
        );
    }

    #[rstest]
    #[case(
        Value::Null,
        Value::Null,
        Value::Null,
        "custom_id_empty",
        Some("email")
    )]
    #[case(Value::Text(" ".into()), Value::Null, Value::Null, "custom_id_empty", Some("email"))]
    #[case(Value::Text("x".repeat(513)), Value::Null, Value::Null, "custom_id_too_long", Some("email"))]
    #[case(Value::Text("a".into()), Value::Time(NOW - 2 * 24 * 3600 * 1_000_000), Value::Null, "time_window", Some("ordered_at"))]
    #[case(Value::Text("a".into()), Value::Time(NOW + 3600 * 1_000_000), Value::Null, "time_window", Some("ordered_at"))]
    #[case(Value::Text("a".into()), Value::Null, Value::Text(String::new()), "string_empty", Some("note"))]
    #[case(Value::Text("a".into()), Value::Null, Value::Text("n".repeat(301)), "string_too_long", Some("note"))]
    #[case(Value::Text("a".into()), Value::Null, Value::StrArray(vec!["t".into(); 26]), "array_too_long", Some("note"))]
    fn rows_that_break_a_batch_rule_are_rejected_with_column_and_rule(
        #[case] email: Value,
        #[case] time: Value,
        #[case] note: Value,
        #[case] rule: &str,
        #[case] column: Option<&str>,
    ) {
        let r = row(email, time, note);
        let rej = build_event(&plan(), &r, &rules(LatePolicy::Reject), "id").unwrap_err();
        assert_eq!(rej.rule, rule);
        assert_eq!(rej.column.as_deref(), column);
    }

    #[test]
    fn late_events_can_be_sent_without_time_or_as_they_are() {
        let old = NOW - 3 * 24 * 3600 * 1_000_000;
        let r = row(Value::Text("a".into()), Value::Time(old), Value::Null);
        let e = build_event(&plan(), &r, &rules(LatePolicy::SendWithoutTime), "id").unwrap();
        assert!(e.body.get("time").is_none());
        let e = build_event(&plan(), &r, &rules(LatePolicy::Send), "id").unwrap();
        assert_eq!(e.body["time"], format_time(old));
    }

    #[rstest]
    #[case("order_completed", true)]
    #[case("a", true)]
    #[case("", false)]
    #[case("Order", false)]
    #[case("order-completed", false)]
    #[case("abcdefghijabcdefghijabcdefghij", true)]
    #[case("abcdefghijabcdefghijabcdefghijk", false)]
    fn names_follow_batch_rules(#[case] name: &str, #[case] ok: bool) {
        assert_eq!(valid_name(name), ok);
    }

    #[test]
    fn config_time_checks_name_the_key() {
        let bad = |spec: MappingSpec| ColumnPlan::new(spec).unwrap_err().key;
        let base = MappingSpec {
            custom_id: "email".into(),
            event: Some("e".into()),
            ..Default::default()
        };
        assert_eq!(
            bad(MappingSpec {
                attributes: vec!["$tags".into()],
                ..base.clone()
            }),
            "attributes"
        );
        assert_eq!(
            bad(MappingSpec {
                attributes: vec!["Amount".into()],
                ..base.clone()
            }),
            "attributes"
        );
        assert_eq!(
            bad(MappingSpec {
                attributes: (0..21).map(|i| format!("a{i}")).collect(),
                ..base.clone()
            }),
            "attributes"
        );
        assert_eq!(
            bad(MappingSpec {
                types: [("nope".to_string(), Type::Bool)].into(),
                ..base.clone()
            }),
            "types"
        );
        assert_eq!(
            bad(MappingSpec {
                event_column: Some("kind".into()),
                ..base.clone()
            }),
            "event_column"
        );
        assert_eq!(
            bad(MappingSpec {
                event: Some("Bad".into()),
                ..base
            }),
            "event"
        );
    }

    fn profiled() -> ColumnPlan {
        ColumnPlan::with_profile(
            MappingSpec {
                primary_key: vec!["email".into()],
                custom_id: "email".into(),
                event: Some("signed_up".into()),
                types: [
                    ("renews_on".to_string(), Type::Date),
                    ("extra".to_string(), Type::Json),
                ]
                .into(),
                ..Default::default()
            },
            vec![
                ("$region".into(), "country".into()),
                ("plan".into(), "plan".into()),
                ("renews_on".into(), "renews_on".into()),
                ("extra".into(), "extra".into()),
            ],
        )
        .unwrap()
    }

    /// A row of `profiled()` in plan order: email, country, extra, plan, renews_on.
    fn profile_row(country: Value, plan: Value, extra: Value) -> Vec<Value> {
        let p = profiled();
        let mut r = vec![Value::Null; p.columns.len()];
        for (c, v) in [
            ("email", Value::Text("a@x.io".into())),
            ("country", country),
            ("plan", plan),
            ("renews_on", Value::Time(NOW)),
            ("extra", extra),
        ] {
            r[p.columns.iter().position(|x| x == c).unwrap()] = v;
        }
        r
    }

    #[test]
    fn a_profile_update_holds_every_attribute_a_null_as_null() {
        let p = build_profile(
            &profiled(),
            &profile_row(Value::Text("FR".into()), Value::Null, Value::Null),
        )
        .unwrap();
        assert_eq!(p.custom_id, "a@x.io");
        assert_eq!(
            p.attributes,
            serde_json::json!({
                "$region": "FR",
                "plan": null,
                "extra": null,
                "date(renews_on)": format_time(NOW),
            })
        );
        let unset = unset_profile(&profiled(), "a@x.io".into());
        assert_eq!(
            unset.attributes,
            serde_json::json!({ "$region": null, "plan": null, "renews_on": null, "extra": null })
        );
    }

    #[rstest]
    #[case::native_rule(Value::Text("france".into()), Value::Null, "country", "profile_native")]
    #[case::native_not_text(Value::Int(33), Value::Null, "country", "profile_native")]
    #[case::object(Value::Null, Value::Json(serde_json::json!({"a": 1})), "extra", "profile_object")]
    fn a_bad_profile_value_is_a_reject_naming_its_column_and_rule(
        #[case] country: Value,
        #[case] extra: Value,
        #[case] column: &str,
        #[case] rule: &str,
    ) {
        let e = build_profile(
            &profiled(),
            &profile_row(country, Value::Text("pro".into()), extra),
        )
        .unwrap_err();
        assert_eq!((e.column.as_deref(), e.rule), (Some(column), rule), "{e:?}");
    }

    #[rstest]
    #[case(Native::EmailAddress, "a.b@x.io", true)]
    #[case(Native::EmailAddress, "a b@x.io", false)]
    #[case(Native::EmailAddress, "a@x", false)]
    #[case(Native::EmailAddress, "a@@x.io", false)]
    #[case(Native::EmailMarketing, "subscribed", true)]
    #[case(Native::SmsMarketing, "yes", false)]
    #[case(Native::PhoneNumber, "+33612345678", true)]
    #[case(Native::PhoneNumber, "0612345678", false)]
    #[case(Native::PhoneNumber, "+0612", false)]
    #[case(Native::Language, "fr", true)]
    #[case(Native::Language, "FR", false)]
    #[case(Native::Region, "FR", true)]
    #[case(Native::Region, "FRA", false)]
    #[case(Native::Timezone, "Europe/Paris", true)]
    #[case(Native::Timezone, "Mars/Olympus", false)]
    fn native_attributes_follow_batchs_value_rules(
        #[case] native: Native,
        #[case] value: &str,
        #[case] ok: bool,
    ) {
        assert_eq!(native.accepts(value), ok, "{native:?} {value:?}");
    }
}
