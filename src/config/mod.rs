//! The TOML config file: parse, defaults, and validation into [`Settings`].
//!
//! Invariants:
//! - Every error names the file, the key and, where the file has it, the line.
//! - Paths in the file are relative to the file.
//! - Mapping rules of Batch that can be checked without data (event and attribute names,
//!   reserved names, attribute count, declared types) are checked here, once, before any run.
//! - No secret is read here: the config names environment variables, `cli` resolves them.

mod duration;

pub use duration::{parse_duration, DurationError, MAX_DURATION};

use crate::core::mapping::{self, ColumnPlan, LatePolicy};
use crate::core::value::Type;
use chrono_tz::Tz;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_PATH: &str = "batchsync.toml";
pub const STARTER: &str = include_str!("../starter.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}. Create one with `batchsync init`")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}{}: `{key}`: {message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Invalid {
        path: PathBuf,
        line: Option<usize>,
        key: String,
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    source: RawSource,
    mapping: RawMapping,
    #[serde(default)]
    sync: RawSync,
    #[serde(default)]
    destination: RawDestination,
    #[serde(default)]
    state: RawState,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    #[serde(rename = "type")]
    kind: SourceKind,
    path: Option<String>,
    url: Option<String>,
    query: Option<String>,
    #[serde(default)]
    primary_key: Vec<String>,
    delimiter: Option<String>,
    password_env: Option<String>,
    timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMapping {
    custom_id: String,
    event: Option<String>,
    event_column: Option<String>,
    time: Option<String>,
    label: Option<String>,
    #[serde(default)]
    attributes: Vec<String>,
    #[serde(default)]
    types: BTreeMap<String, Type>,
    timezone: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSync {
    #[serde(default)]
    initial: Initial,
    #[serde(default)]
    on_change: OnChange,
    #[serde(default)]
    reentry: Reentry,
    #[serde(default)]
    on_bad_row: OnBadRow,
    #[serde(default)]
    late_events: LatePolicy,
    event_window: Option<String>,
    max_added: Option<toml::Value>,
    max_removed: Option<toml::Value>,
    #[serde(default)]
    event_id: bool,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDestination {
    #[serde(rename = "type")]
    kind: Option<String>,
    endpoint: Option<String>,
    api_version: Option<String>,
    api_key_env: Option<String>,
    project_key_env: Option<String>,
    rate: Option<f64>,
    mass_rate: Option<f64>,
    mass_update_from: Option<u64>,
    timeout: Option<String>,
    connect_timeout: Option<String>,
    max_attempts: Option<u32>,
    max_throttled: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawState {
    path: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Csv,
    Ndjson,
    Sqlite,
    Postgres,
    Mysql,
}

/// `[sync] initial` (and `run --initial`): what the first run of a store does.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Initial {
    /// Ship every row of the segment.
    #[default]
    Send,
    /// Only record the segment as the baseline; send nothing.
    Baseline,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnChange {
    #[default]
    Ignore,
    Event,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Reentry {
    #[default]
    Event,
    Ignore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnBadRow {
    #[default]
    Reject,
    Fail,
}

/// A guard on the size of a delta, relative to the baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Guard {
    Off,
    Percent(f64),
    Count(u64),
}

impl Guard {
    /// Whether `n` changes against a baseline of `baseline` rows exceed the guard.
    pub fn exceeded(self, n: u64, baseline: u64) -> bool {
        match self {
            Guard::Off => false,
            Guard::Count(max) => n > max,
            Guard::Percent(p) => (n as f64) > (baseline as f64) * p / 100.0,
        }
    }

    pub fn describe(self) -> String {
        match self {
            Guard::Off => "off".into(),
            Guard::Count(n) => n.to_string(),
            Guard::Percent(p) => format!("{p}%"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SourceSettings {
    pub kind: SourceKind,
    pub path: Option<PathBuf>,
    pub url: Option<String>,
    pub query: Option<String>,
    pub delimiter: u8,
    pub password_env: Option<String>,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct SyncSettings {
    pub initial: Initial,
    pub on_change: OnChange,
    pub reentry: Reentry,
    pub on_bad_row: OnBadRow,
    pub late_events: LatePolicy,
    pub event_window: Duration,
    pub max_added: Guard,
    pub max_removed: Guard,
    pub event_id: bool,
}

#[derive(Debug, Clone)]
pub struct DestinationSettings {
    pub endpoint: String,
    pub api_version: String,
    pub api_key_env: String,
    pub project_key_env: String,
    pub rate: f64,
    pub mass_rate: f64,
    pub mass_update_from: u64,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_attempts: u32,
    pub max_throttled: Duration,
}

/// A validated config.
#[derive(Debug, Clone)]
pub struct Settings {
    pub file: PathBuf,
    pub source: SourceSettings,
    pub plan: ColumnPlan,
    pub timezone: Tz,
    pub sync: SyncSettings,
    pub destination: DestinationSettings,
    pub state_path: PathBuf,
}

impl Settings {
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Settings::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Settings, ConfigError> {
        let raw: Raw = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        Validator { text, path }.validate(raw)
    }
}

struct Validator<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Validator<'_> {
    fn err(&self, table: &str, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line: line_of(self.text, table, key),
            key: format!("{table}.{key}"),
            message: message.into(),
        }
    }

    fn duration(
        &self,
        table: &str,
        key: &str,
        v: Option<&str>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) => parse_duration(s).map_err(|e| self.err(table, key, e.to_string())),
        }
    }

    fn guard(&self, key: &str, v: Option<toml::Value>) -> Result<Guard, ConfigError> {
        let bad = || {
            self.err(
                "sync",
                key,
                "takes a percentage (\"50%\"), a count (1000) or \"off\"",
            )
        };
        match v {
            None => Ok(Guard::Percent(50.0)),
            Some(toml::Value::Integer(n)) if n >= 0 => Ok(Guard::Count(n as u64)),
            Some(toml::Value::String(s)) if s == "off" => Ok(Guard::Off),
            Some(toml::Value::String(s)) => {
                match s.strip_suffix('%').map(|p| p.trim().parse::<f64>()) {
                    Some(Ok(p)) if (0.0..=100_000.0).contains(&p) => Ok(Guard::Percent(p)),
                    _ => s.trim().parse::<u64>().map(Guard::Count).map_err(|_| bad()),
                }
            }
            Some(_) => Err(bad()),
        }
    }

    fn validate(&self, raw: Raw) -> Result<Settings, ConfigError> {
        let dir = self
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let resolve = |p: &str| -> PathBuf {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                dir.join(p)
            }
        };

        let s = &raw.source;
        match s.kind {
            SourceKind::Csv | SourceKind::Ndjson if s.path.is_none() => {
                return Err(self.err("source", "path", "a file source needs `path`"));
            }
            SourceKind::Sqlite if s.path.is_none() => {
                return Err(self.err(
                    "source",
                    "path",
                    "a sqlite source needs `path` (the database file)",
                ));
            }
            SourceKind::Postgres | SourceKind::Mysql if s.url.is_none() => {
                return Err(self.err("source", "url", "a database source needs `url`"));
            }
            _ => {}
        }
        if matches!(
            s.kind,
            SourceKind::Sqlite | SourceKind::Postgres | SourceKind::Mysql
        ) && s.query.is_none()
        {
            return Err(self.err("source", "query", "a database source needs `query`"));
        }
        if matches!(s.kind, SourceKind::Csv | SourceKind::Ndjson)
            && (s.url.is_some() || s.query.is_some())
        {
            return Err(self.err(
                "source",
                "query",
                "file sources take `path`, not `url` or `query`",
            ));
        }
        if let Some(url) = &s.url {
            if url_has_password(url) {
                tracing::warn!(
                    "source.url holds a password in clear; prefer `password_env` or PGPASSWORD"
                );
            }
        }
        let delimiter = match s.delimiter.as_deref() {
            None => b',',
            Some("\\t") | Some("\t") => b'\t',
            Some(d) if d.len() == 1 && d.is_ascii() => d.as_bytes()[0],
            Some(d) => {
                return Err(self.err(
                    "source",
                    "delimiter",
                    format!("{d:?} is not one ASCII character"),
                ))
            }
        };
        if s.delimiter.is_some() && s.kind != SourceKind::Csv {
            return Err(self.err("source", "delimiter", "only CSV sources take a delimiter"));
        }
        let source = SourceSettings {
            kind: s.kind,
            path: s.path.as_deref().map(resolve),
            url: s.url.clone(),
            query: s.query.clone(),
            delimiter,
            password_env: s.password_env.clone(),
            timeout: self.duration(
                "source",
                "timeout",
                s.timeout.as_deref(),
                Duration::from_secs(3600),
            )?,
        };

        let m = &raw.mapping;
        let tz: Tz = match m.timezone.as_deref() {
            None => chrono_tz::UTC,
            Some(t) => t.parse().map_err(|_| {
                self.err(
                    "mapping",
                    "timezone",
                    format!("{t:?} is not an IANA time zone (examples: \"UTC\", \"Europe/Paris\")"),
                )
            })?,
        };
        let spec = mapping::MappingSpec {
            primary_key: s.primary_key.clone(),
            custom_id: m.custom_id.clone(),
            event: m.event.clone(),
            event_column: m.event_column.clone(),
            time: m.time.clone(),
            label: m.label.clone(),
            attributes: m.attributes.clone(),
            types: m.types.clone(),
        };
        let plan = ColumnPlan::new(spec).map_err(|e| {
            let (table, key) = match e.key {
                "primary_key" => ("source", "primary_key"),
                k => ("mapping", k),
            };
            self.err(table, key, e.message)
        })?;

        let y = &raw.sync;
        let sync = SyncSettings {
            initial: y.initial,
            on_change: y.on_change,
            reentry: y.reentry,
            on_bad_row: y.on_bad_row,
            late_events: y.late_events,
            event_window: self.duration(
                "sync",
                "event_window",
                y.event_window.as_deref(),
                Duration::from_secs(24 * 3600),
            )?,
            max_added: self.guard("max_added", y.max_added.clone())?,
            max_removed: self.guard("max_removed", y.max_removed.clone())?,
            event_id: y.event_id,
        };

        let d = &raw.destination;
        if let Some(k) = &d.kind {
            if k != "batch" {
                return Err(self.err(
                    "destination",
                    "type",
                    format!("{k:?} is not a destination; the one destination is \"batch\""),
                ));
            }
        }
        let endpoint = d
            .endpoint
            .clone()
            .unwrap_or_else(|| "https://api.batch.com".into());
        if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
            return Err(self.err(
                "destination",
                "endpoint",
                format!("{endpoint:?} is not an http(s) URL"),
            ));
        }
        let api_version = d.api_version.clone().unwrap_or_else(|| "2.11".into());
        let version_ok = api_version
            .split_once('.')
            .is_some_and(|(a, b)| a.parse::<u32>().is_ok() && b.parse::<u32>().is_ok());
        if !version_ok {
            return Err(self.err(
                "destination",
                "api_version",
                format!("{api_version:?} is not a version like \"2.11\""),
            ));
        }
        let rate = d.rate.unwrap_or(300.0);
        if !(rate.is_finite() && rate > 0.0) {
            return Err(self.err(
                "destination",
                "rate",
                "must be a positive number of updates per second",
            ));
        }
        let mass_rate = d.mass_rate.unwrap_or(10_000.0);
        if !(mass_rate.is_finite() && mass_rate > 0.0) {
            return Err(self.err(
                "destination",
                "mass_rate",
                "must be a positive number of updates per second",
            ));
        }
        let max_attempts = d.max_attempts.unwrap_or(8);
        if max_attempts == 0 {
            return Err(self.err("destination", "max_attempts", "must be at least 1"));
        }
        let mass_update_from = d.mass_update_from.unwrap_or(10_000);
        if mass_update_from == 0 {
            return Err(self.err("destination", "mass_update_from", "must be at least 1"));
        }
        let destination = DestinationSettings {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            api_version,
            api_key_env: d
                .api_key_env
                .clone()
                .unwrap_or_else(|| "BATCH_REST_API_KEY".into()),
            project_key_env: d
                .project_key_env
                .clone()
                .unwrap_or_else(|| "BATCH_PROJECT_KEY".into()),
            rate,
            mass_rate,
            mass_update_from,
            timeout: self.duration(
                "destination",
                "timeout",
                d.timeout.as_deref(),
                Duration::from_secs(30),
            )?,
            connect_timeout: self.duration(
                "destination",
                "connect_timeout",
                d.connect_timeout.as_deref(),
                Duration::from_secs(10),
            )?,
            max_attempts,
            max_throttled: self.duration(
                "destination",
                "max_throttled",
                d.max_throttled.as_deref(),
                Duration::from_secs(600),
            )?,
        };

        let state_path = resolve(raw.state.path.as_deref().unwrap_or(".batchsync/state.db"));
        Ok(Settings {
            file: self.path.to_path_buf(),
            source,
            plan,
            timezone: tz,
            sync,
            destination,
            state_path,
        })
    }
}

fn url_has_password(url: &str) -> bool {
    url.split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

/// The 1-based line of `key` inside `[table]`, found by reading the file as text. Good enough
/// for error messages; `None` when the key is not written in the file (a default was used).
fn line_of(text: &str, table: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix('[').and_then(|r| r.split(']').next()) {
            current = name.trim().to_string();
            continue;
        }
        if current == table {
            if let Some((k, _)) = t.split_once('=') {
                if k.trim() == key {
                    return Some(i + 1);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[source]\ntype = \"csv\"\npath = \"o.csv\"\nprimary_key = [\"id\"]\n\n[mapping]\ncustom_id = \"email\"\nevent = \"order_completed\"\n";

    fn parse(text: &str) -> Result<Settings, ConfigError> {
        Settings::parse(text, Path::new("/cfg/batchsync.toml"))
    }

    #[test]
    fn a_minimal_config_takes_the_documented_defaults() {
        let s = parse(MINIMAL).unwrap();
        assert_eq!(s.source.path.unwrap(), PathBuf::from("/cfg/o.csv"));
        assert_eq!(s.state_path, PathBuf::from("/cfg/.batchsync/state.db"));
        assert_eq!(s.destination.rate, 300.0);
        assert_eq!(s.destination.mass_update_from, 10_000);
        assert_eq!(s.destination.max_attempts, 8);
        assert_eq!(s.sync.max_added, Guard::Percent(50.0));
        assert_eq!(s.sync.initial, Initial::Send);
    }

    #[test]
    fn an_unknown_key_is_an_error_that_names_it_and_its_line() {
        let text = MINIMAL.replace("[mapping]\n", "[mapping]\ncolour = 3\n");
        let msg = parse(&text).unwrap_err().to_string();
        assert!(msg.contains("colour"), "{msg}");
        assert!(msg.contains("line 7"), "{msg}");
    }

    #[test]
    fn an_invalid_event_name_is_an_error_with_its_line() {
        let text = MINIMAL.replace("order_completed", "Order Completed");
        let msg = parse(&text).unwrap_err().to_string();
        assert!(
            msg.contains("mapping.event") && msg.contains("line 8"),
            "{msg}"
        );
        assert!(msg.contains("[a-z0-9_]"), "{msg}");
    }

    #[test]
    fn guards_take_percent_count_or_off() {
        let text = format!("{MINIMAL}\n[sync]\nmax_added = 1000\nmax_removed = \"off\"\n");
        let s = parse(&text).unwrap();
        assert_eq!(s.sync.max_added, Guard::Count(1000));
        assert_eq!(s.sync.max_removed, Guard::Off);
        let bad = format!("{MINIMAL}\n[sync]\nmax_added = \"lots\"\n");
        assert!(parse(&bad)
            .unwrap_err()
            .to_string()
            .contains("sync.max_added"));
    }

    #[test]
    fn an_unknown_timezone_is_named() {
        let text = MINIMAL.replace("[mapping]\n", "[mapping]\ntimezone = \"Mars/Olympus\"\n");
        assert!(parse(&text)
            .unwrap_err()
            .to_string()
            .contains("Mars/Olympus"));
    }

    #[test]
    fn the_starter_config_is_valid() {
        parse(STARTER).unwrap();
    }
}
