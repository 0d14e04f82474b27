//! The TOML config file: parse, defaults, and validation into [`Settings`].
//!
//! Invariants:
//! - Every error names the file, the key, the key's line (unless the error is that it is
//!   missing) and what the key takes. Lines come from the TOML parser's own spans
//!   (`toml::Spanned`, or toml's error), so dotted keys (`source.path = …`) and inline tables
//!   are located like any other key.
//! - Paths in the file are relative to the file.
//! - A key that the file's `[source] type` does not take is an error, not ignored.
//! - Mapping rules of Batch that can be checked without data (event and attribute names,
//!   reserved names, attribute count, declared types) are checked here, once, before any run.
//! - Every default is a named constant beside the field it fills.
//! - No secret is read here: the config names environment variables, `cli` resolves them.

mod duration;
mod file;
mod source;
#[cfg(test)]
mod tests;

pub use duration::{parse_duration, DurationError, MAX_DURATION};
pub use source::{
    CsvSettings, DatabaseSettings, NdjsonSettings, SourceSettings, SqliteSettings,
    DEFAULT_QUERY_TIMEOUT,
};

use crate::core::mapping::{ColumnPlan, LatePolicy};
use chrono_tz::Tz;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_PATH: &str = "batchsync.toml";
pub const STARTER: &str = include_str!("../starter.toml");

/// A config that cannot be used. Each message names the file and the key, with its line when
/// the file has it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}. Create one with `batchsync init`")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, or not the shape of a config: an unknown or misplaced key, a missing one, a
    /// value of the wrong type. toml's message gives the line and shows it.
    #[error("{path}: {}", source.to_string().trim_end())]
    Syntax {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    /// A key whose value has the right type but cannot be used, or a key missing that
    /// another key needs (then it has no line).
    #[error("{path}{}: `{key}`: {message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Invalid {
        path: PathBuf,
        line: Option<usize>,
        key: String,
        message: String,
    },
    #[error("{path} line {line}: `{key}`: {source}")]
    Duration {
        path: PathBuf,
        line: usize,
        key: String,
        #[source]
        source: Box<DurationError>,
    },
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

/// `[sync] on_change`: whether a changed row is a new event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnChange {
    #[default]
    Ignore,
    Event,
}

/// `[sync] on_remove`: what a row that left the segment does to its profile attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnRemove {
    /// The profile keeps them.
    #[default]
    Keep,
    /// They are sent as null: Batch deletes them.
    Unset,
}

/// `[sync] reentry`: whether a row that left the segment and came back is a new event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reentry {
    #[default]
    Event,
    Ignore,
}

/// `[sync] on_bad_row`: what a row that cannot be read or typed does to the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnBadRow {
    #[default]
    Reject,
    Fail,
}

pub use crate::core::run::Guard;

/// `[sync]`.
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
    /// Guards changed rows when they send something (`on_change = "event"`).
    pub max_changed: Guard,
    /// Guards profile updates of rows already in the baseline.
    pub max_profile_updates: Guard,
    pub event_id: bool,
    pub on_remove: OnRemove,
}

impl SyncSettings {
    /// Batch's own window: older event times are late.
    pub const DEFAULT_EVENT_WINDOW: Duration = Duration::from_secs(24 * 3600);
    pub const DEFAULT_MAX_ADDED: Guard = Guard::Percent(50.0);
    pub const DEFAULT_MAX_REMOVED: Guard = Guard::Percent(50.0);
    pub const DEFAULT_MAX_CHANGED: Guard = Guard::Percent(50.0);
    pub const DEFAULT_MAX_PROFILE_UPDATES: Guard = Guard::Percent(50.0);

    /// The guards a delta is checked against; `max_changed` only when changed rows send
    /// something.
    /// The guards of a run; `backfill`: the run is its sync's first with these profile
    /// attributes, which updates every row's by design.
    pub fn guards(&self, backfill: bool) -> crate::core::run::Guards {
        crate::core::run::Guards {
            max_added: self.max_added,
            max_removed: self.max_removed,
            max_changed: match self.on_change {
                OnChange::Event => self.max_changed,
                OnChange::Ignore => Guard::Off,
            },
            max_profile_updates: if backfill {
                Guard::Off
            } else {
                self.max_profile_updates
            },
        }
    }
}

/// `[destination]`.
#[derive(Debug, Clone)]
pub struct DestinationSettings {
    /// Without a trailing `/`.
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

impl DestinationSettings {
    pub const DEFAULT_ENDPOINT: &'static str = "https://api.batch.com";
    pub const DEFAULT_API_VERSION: &'static str = "2.11";
    pub const DEFAULT_API_KEY_ENV: &'static str = "BATCH_REST_API_KEY";
    pub const DEFAULT_PROJECT_KEY_ENV: &'static str = "BATCH_PROJECT_KEY";
    /// Updates per second on `/profiles/update`.
    pub const DEFAULT_RATE: f64 = 300.0;
    /// Updates per second on `/profiles/mass-update`.
    pub const DEFAULT_MASS_RATE: f64 = 10_000.0;
    pub const DEFAULT_MASS_UPDATE_FROM: u64 = 10_000;
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 8;
    pub const DEFAULT_MAX_THROTTLED: Duration = Duration::from_secs(600);
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
    /// `[state] store = "database"`: the state lives in the source database, not at `state_path`.
    pub warehouse: Option<WarehouseSettings>,
    /// `[state] keep_runs`: the history, run records and closed rejects of older runs are
    /// pruned at each commit (never an open reject's).
    pub keep_runs: u64,
}

/// Where the database mode keeps a sync's tables (WAREHOUSE.md "Tables").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarehouseSettings {
    /// `[state] schema`.
    pub schema: String,
    /// `[state] name`: the tables' prefix.
    pub name: String,
}

impl WarehouseSettings {
    pub const DEFAULT_SCHEMA: &'static str = "batchsync";

    /// `[a-z_][a-z0-9_]{0,39}`: every table name then fits PostgreSQL's 63 bytes.
    pub fn valid_name(name: &str) -> bool {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && name.len() <= 40
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    }
}

impl Settings {
    /// The mapping and the rules a row is checked under, as a short hash: a reject recorded
    /// under other ones is new again (DESIGN.md "Rows that stay rejected"). Covers the whole
    /// `[mapping]`, the time zone and the `[sync]` keys that decide whether a row is rejected
    /// or sent.
    /// The mapping's identity as the sync's store records it. The database mode hashes with its
    /// own SQL recipe (recorded apart), and its stores keep the identity they were set up with.
    pub fn store_identity(&self) -> String {
        match self.warehouse {
            Some(_) => self.plan.identity_for(1),
            None => self.plan.identity(),
        }
    }

    /// Whether a local store that recorded `stored` was written under hash recipe 1 for this
    /// mapping: its next run upgrades it (DESIGN.md "Hash recipe upgrades").
    pub fn upgrades_recipe(&self, stored: Option<&str>) -> bool {
        self.warehouse.is_none()
            && crate::core::encode::HASH_RECIPE != 1
            && stored == Some(self.plan.identity_for(1).as_str())
    }

    pub fn rules_identity(&self) -> String {
        let s = &self.sync;
        let text = format!(
            "{:?}|{}|{:?}|{}|{}|{:?}|{:?}|{:?}",
            self.plan.spec,
            self.timezone.name(),
            s.late_events,
            s.event_window.as_secs(),
            s.event_id,
            s.on_bad_row,
            s.on_change,
            s.reentry
        );
        // Profile attributes join the fingerprint only when mapped, so that stores written
        // before them keep their open rejects.
        let text = if self.plan.has_profile() {
            format!(
                "{text}|profile={}|{:?}",
                self.plan.profile_identity(),
                s.on_remove
            )
        } else {
            text
        };
        crate::core::encode::hex(&blake3::hash(text.as_bytes()).as_bytes()[..12])
    }

    /// `[mapping] timezone`.
    pub const DEFAULT_TIMEZONE: Tz = chrono_tz::UTC;
    /// `[state] path`, relative to the config file.
    pub const DEFAULT_STATE_PATH: &'static str = ".batchsync/state.db";
    /// `[state] keep_runs`.
    pub const DEFAULT_KEEP_RUNS: u64 = 1000;

    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Settings::parse(&text, path)
    }

    /// `text` is the content of the file at `path`, which names it in errors and anchors its
    /// relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Settings, ConfigError> {
        file::read(text, path)
    }
}
