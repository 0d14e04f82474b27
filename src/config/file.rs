//! Reading the file: serde checks its shape (which keys, which types, which words), then
//! [`Reader`] checks the values and fills the defaults.
//!
//! `[source]` is read in two passes over the text. The first reads the whole file, and of
//! `[source]` only `type` and `primary_key`; the second reads `[source]` again as the table of
//! that `type`, which refuses (`deny_unknown_fields`) any key that kind does not take.
//! serde's `#[serde(tag = "type")]` would read it in one pass, but an internally tagged enum
//! buffers the table before choosing its variant, and the buffer has lost every position: a
//! misplaced key would be reported at the `[source]` header, and not at all for dotted keys.
//! Two passes over a file of a few dozen lines cost nothing and keep every key's line.

use super::source::{
    CsvSettings, DatabaseSettings, NdjsonSettings, SourceSettings, SqliteSettings,
    DEFAULT_QUERY_TIMEOUT,
};
use super::{
    parse_duration, ConfigError, DestinationSettings, Guard, Initial, OnBadRow, OnChange, OnRemove,
    Reentry, Settings, SyncSettings, WarehouseSettings,
};
use crate::core::mapping::{ColumnPlan, LatePolicy, MappingSpec};
use crate::core::value::Type;
use chrono_tz::Tz;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// The whole file; `[source]` only as far as every kind shares it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    source: SourceHead,
    mapping: MappingTable,
    #[serde(default)]
    sync: SyncTable,
    #[serde(default)]
    destination: DestinationTable,
    #[serde(default)]
    state: StateTable,
}

#[derive(Deserialize)]
struct SourceHead {
    #[serde(rename = "type")]
    kind: SourceKind,
    primary_key: Option<Spanned<Vec<String>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum SourceKind {
    Csv,
    Ndjson,
    Sqlite,
    Postgres,
    Mysql,
}

/// The second pass: `[source]` as the table of one kind; the other tables were read by [`File`].
#[derive(Deserialize)]
struct SourceOnly<T> {
    source: T,
}

// Each kind's table names `type` and `primary_key` only to accept them: the first pass read them.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CsvTable {
    #[serde(rename = "type")]
    _kind: IgnoredAny,
    #[serde(rename = "primary_key", default)]
    _primary_key: IgnoredAny,
    path: String,
    delimiter: Option<Spanned<String>>,
    #[serde(default = "yes")]
    require_final_newline: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NdjsonTable {
    #[serde(rename = "type")]
    _kind: IgnoredAny,
    #[serde(rename = "primary_key", default)]
    _primary_key: IgnoredAny,
    path: String,
    #[serde(default = "yes")]
    require_final_newline: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SqliteTable {
    #[serde(rename = "type")]
    _kind: IgnoredAny,
    #[serde(rename = "primary_key", default)]
    _primary_key: IgnoredAny,
    path: String,
    query: String,
    timeout: Option<Spanned<String>>,
}

/// PostgreSQL and MySQL.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DatabaseTable {
    #[serde(rename = "type")]
    _kind: IgnoredAny,
    #[serde(rename = "primary_key", default)]
    _primary_key: IgnoredAny,
    url: String,
    query: String,
    password_env: Option<String>,
    timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingTable {
    custom_id: Spanned<String>,
    event: Option<Spanned<String>>,
    event_column: Option<Spanned<String>>,
    time: Option<Spanned<String>>,
    label: Option<Spanned<String>>,
    attributes: Option<Spanned<Vec<String>>>,
    profile_attributes: Option<Spanned<ProfileAttributes>>,
    /// Keys spanned, not the table: toml cannot span a table written with dotted keys
    /// (`mapping.types.amount = …`).
    #[serde(default)]
    types: BTreeMap<Spanned<String>, Type>,
    timezone: Option<Spanned<String>>,
}

/// `[mapping] profile_attributes`: columns set under their own names, or a table of
/// attribute name to column.
#[derive(Deserialize)]
#[serde(untagged)]
enum ProfileAttributes {
    Columns(Vec<String>),
    Named(BTreeMap<String, String>),
}

impl ProfileAttributes {
    fn pairs(&self) -> Vec<(String, String)> {
        match self {
            ProfileAttributes::Columns(c) => c.iter().map(|c| (c.clone(), c.clone())).collect(),
            ProfileAttributes::Named(m) => m.iter().map(|(n, c)| (n.clone(), c.clone())).collect(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SyncTable {
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
    event_window: Option<Spanned<String>>,
    max_added: Option<Spanned<toml::Value>>,
    max_removed: Option<Spanned<toml::Value>>,
    max_changed: Option<Spanned<toml::Value>>,
    max_profile_updates: Option<Spanned<toml::Value>>,
    #[serde(default)]
    event_id: bool,
    #[serde(default)]
    on_remove: OnRemove,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DestinationTable {
    /// The one destination; the key exists so that a config says what it targets.
    #[serde(rename = "type")]
    _kind: Option<DestinationKind>,
    endpoint: Option<Spanned<String>>,
    api_version: Option<Spanned<String>>,
    api_key_env: Option<String>,
    project_key_env: Option<String>,
    rate: Option<Spanned<f64>>,
    mass_rate: Option<Spanned<f64>>,
    mass_update_from: Option<Spanned<u64>>,
    timeout: Option<Spanned<String>>,
    connect_timeout: Option<Spanned<String>>,
    max_attempts: Option<Spanned<u32>>,
    max_throttled: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum DestinationKind {
    Batch,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StateTable {
    path: Option<Spanned<String>>,
    store: Option<Spanned<StoreKind>>,
    schema: Option<Spanned<String>>,
    name: Option<Spanned<String>>,
    keep_runs: Option<Spanned<u64>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum StoreKind {
    Local,
    Database,
}

/// Reads `text`, the content of the config file at `path`.
pub(super) fn read(text: &str, path: &Path) -> Result<Settings, ConfigError> {
    let reader = Reader { text, path };
    let file: File = reader.deserialize()?;
    reader.settings(file)
}

struct Reader<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Reader<'_> {
    fn deserialize<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        toml::from_str(self.text).map_err(|source| ConfigError::Syntax {
            path: self.path.to_path_buf(),
            source,
        })
    }

    /// `[source]` as the table of its kind (the second pass).
    fn source_table<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        self.deserialize::<SourceOnly<T>>().map(|s| s.source)
    }

    /// The 1-based line where `span` starts.
    fn line(&self, span: &Range<usize>) -> usize {
        let start = span.start.min(self.text.len());
        self.text.as_bytes()[..start]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn invalid(&self, key: &str, span: &Range<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line: Some(self.line(span)),
            key: key.into(),
            message: message.into(),
        }
    }

    fn duration(
        &self,
        key: &str,
        value: Option<&Spanned<String>>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let Some(value) = value else {
            return Ok(default);
        };
        parse_duration(value.get_ref()).map_err(|source| ConfigError::Duration {
            path: self.path.to_path_buf(),
            line: self.line(&value.span()),
            key: key.into(),
            source: Box::new(source),
        })
    }

    /// A number of updates per second.
    fn rate(
        &self,
        key: &str,
        value: Option<&Spanned<f64>>,
        default: f64,
    ) -> Result<f64, ConfigError> {
        let Some(value) = value else {
            return Ok(default);
        };
        let rate = *value.get_ref();
        if rate.is_finite() && rate > 0.0 {
            Ok(rate)
        } else {
            Err(self.invalid(
                key,
                &value.span(),
                "must be a positive number of updates per second",
            ))
        }
    }

    /// A count that must be at least 1.
    fn at_least_one<N: Copy + PartialEq + From<u8>>(
        &self,
        key: &str,
        value: Option<&Spanned<N>>,
        default: N,
    ) -> Result<N, ConfigError> {
        match value {
            None => Ok(default),
            Some(v) if *v.get_ref() == N::from(0) => {
                Err(self.invalid(key, &v.span(), "must be at least 1"))
            }
            Some(v) => Ok(*v.get_ref()),
        }
    }

    fn guard(
        &self,
        key: &str,
        value: Option<&Spanned<toml::Value>>,
        default: Guard,
    ) -> Result<Guard, ConfigError> {
        let Some(value) = value else {
            return Ok(default);
        };
        let bad = || {
            self.invalid(
                key,
                &value.span(),
                "takes a percentage (\"50%\"), a count (1000) or \"off\"",
            )
        };
        match value.get_ref() {
            toml::Value::Integer(n) => u64::try_from(*n).map(Guard::Count).map_err(|_| bad()),
            toml::Value::String(s) if s == "off" => Ok(Guard::Off),
            toml::Value::String(s) => match s.strip_suffix('%').map(|p| p.trim().parse::<f64>()) {
                Some(Ok(p)) if (0.0..=100_000.0).contains(&p) => Ok(Guard::Percent(p)),
                _ => s.trim().parse::<u64>().map(Guard::Count).map_err(|_| bad()),
            },
            _ => Err(bad()),
        }
    }

    /// `path` as written, resolved against the config file's folder.
    fn resolve(&self, path: &str) -> PathBuf {
        let p = Path::new(path);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.path.parent().unwrap_or(Path::new("")).join(p)
        }
    }

    fn source(&self, kind: SourceKind) -> Result<SourceSettings, ConfigError> {
        Ok(match kind {
            SourceKind::Csv => {
                let t: CsvTable = self.source_table()?;
                SourceSettings::Csv(CsvSettings {
                    path: self.resolve(&t.path),
                    delimiter: self.delimiter(t.delimiter.as_ref())?,
                    require_final_newline: t.require_final_newline,
                })
            }
            SourceKind::Ndjson => {
                let t: NdjsonTable = self.source_table()?;
                SourceSettings::Ndjson(NdjsonSettings {
                    path: self.resolve(&t.path),
                    require_final_newline: t.require_final_newline,
                })
            }
            SourceKind::Sqlite => {
                let t: SqliteTable = self.source_table()?;
                SourceSettings::Sqlite(SqliteSettings {
                    path: self.resolve(&t.path),
                    query: t.query,
                    timeout: self.duration(
                        "source.timeout",
                        t.timeout.as_ref(),
                        DEFAULT_QUERY_TIMEOUT,
                    )?,
                })
            }
            SourceKind::Postgres | SourceKind::Mysql => {
                let t: DatabaseTable = self.source_table()?;
                if url_has_password(&t.url) {
                    let variable = if kind == SourceKind::Postgres {
                        "PGPASSWORD"
                    } else {
                        "MYSQL_PWD"
                    };
                    tracing::warn!(
                        "source.url holds a password in clear; prefer `password_env` or {variable}"
                    );
                }
                let db = DatabaseSettings {
                    timeout: self.duration(
                        "source.timeout",
                        t.timeout.as_ref(),
                        DEFAULT_QUERY_TIMEOUT,
                    )?,
                    url: t.url,
                    query: t.query,
                    password_env: t.password_env,
                };
                if kind == SourceKind::Postgres {
                    SourceSettings::Postgres(db)
                } else {
                    SourceSettings::Mysql(db)
                }
            }
        })
    }

    fn delimiter(&self, value: Option<&Spanned<String>>) -> Result<u8, ConfigError> {
        let Some(value) = value else {
            return Ok(CsvSettings::DEFAULT_DELIMITER);
        };
        match value.get_ref().as_str() {
            "\\t" | "\t" => Ok(b'\t'),
            d if d.len() == 1 && d.is_ascii() => Ok(d.as_bytes()[0]),
            d => Err(self.invalid(
                "source.delimiter",
                &value.span(),
                format!("{d:?} is not one ASCII character; write e.g. \",\", \";\" or \"\\t\""),
            )),
        }
    }

    fn plan(&self, s: &SourceHead, m: &MappingTable) -> Result<ColumnPlan, ConfigError> {
        let spec = MappingSpec {
            primary_key: s
                .primary_key
                .as_ref()
                .map(|k| k.get_ref().clone())
                .unwrap_or_default(),
            custom_id: m.custom_id.get_ref().clone(),
            event: m.event.as_ref().map(|e| e.get_ref().clone()),
            event_column: m.event_column.as_ref().map(|e| e.get_ref().clone()),
            time: m.time.as_ref().map(|t| t.get_ref().clone()),
            label: m.label.as_ref().map(|l| l.get_ref().clone()),
            attributes: m
                .attributes
                .as_ref()
                .map(|a| a.get_ref().clone())
                .unwrap_or_default(),
            types: m
                .types
                .iter()
                .map(|(column, ty)| (column.get_ref().clone(), *ty))
                .collect(),
        };
        let profile = m
            .profile_attributes
            .as_ref()
            .map(|p| p.get_ref().pairs())
            .unwrap_or_default();
        ColumnPlan::with_profile(spec, profile).map_err(|e| {
            let (table, span) = match e.key {
                "primary_key" => ("source", s.primary_key.as_ref().map(Spanned::span)),
                "custom_id" => ("mapping", Some(m.custom_id.span())),
                "event" => ("mapping", m.event.as_ref().map(Spanned::span)),
                "event_column" => ("mapping", m.event_column.as_ref().map(Spanned::span)),
                "attributes" => ("mapping", m.attributes.as_ref().map(Spanned::span)),
                "time" => ("mapping", m.time.as_ref().map(Spanned::span)),
                "label" => ("mapping", m.label.as_ref().map(Spanned::span)),
                "profile_attributes" => {
                    ("mapping", m.profile_attributes.as_ref().map(Spanned::span))
                }
                // The table's first line: the message names the column.
                "types" => (
                    "mapping",
                    m.types.keys().map(Spanned::span).min_by_key(|s| s.start),
                ),
                _ => ("mapping", None),
            };
            ConfigError::Invalid {
                path: self.path.to_path_buf(),
                // None when the error is that the key is missing.
                line: span.map(|span| self.line(&span)),
                key: format!("{table}.{}", e.key),
                message: e.message,
            }
        })
    }

    fn timezone(&self, value: Option<&Spanned<String>>) -> Result<Tz, ConfigError> {
        let Some(value) = value else {
            return Ok(Settings::DEFAULT_TIMEZONE);
        };
        let name = value.get_ref();
        name.parse().map_err(|_| {
            self.invalid(
                "mapping.timezone",
                &value.span(),
                format!(
                    "{name:?} is not an IANA time zone; write e.g. \"UTC\" or \"Europe/Paris\""
                ),
            )
        })
    }

    fn sync(&self, t: &SyncTable) -> Result<SyncSettings, ConfigError> {
        Ok(SyncSettings {
            initial: t.initial,
            on_change: t.on_change,
            reentry: t.reentry,
            on_bad_row: t.on_bad_row,
            late_events: t.late_events,
            event_window: self.duration(
                "sync.event_window",
                t.event_window.as_ref(),
                SyncSettings::DEFAULT_EVENT_WINDOW,
            )?,
            max_added: self.guard(
                "sync.max_added",
                t.max_added.as_ref(),
                SyncSettings::DEFAULT_MAX_ADDED,
            )?,
            max_removed: self.guard(
                "sync.max_removed",
                t.max_removed.as_ref(),
                SyncSettings::DEFAULT_MAX_REMOVED,
            )?,
            max_changed: self.guard(
                "sync.max_changed",
                t.max_changed.as_ref(),
                SyncSettings::DEFAULT_MAX_CHANGED,
            )?,
            max_profile_updates: self.guard(
                "sync.max_profile_updates",
                t.max_profile_updates.as_ref(),
                SyncSettings::DEFAULT_MAX_PROFILE_UPDATES,
            )?,
            event_id: t.event_id,
            on_remove: t.on_remove,
        })
    }

    fn destination(&self, t: &DestinationTable) -> Result<DestinationSettings, ConfigError> {
        type D = DestinationSettings;
        let endpoint = match &t.endpoint {
            None => D::DEFAULT_ENDPOINT.to_string(),
            Some(e) => {
                let url = e.get_ref();
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    return Err(self.invalid(
                        "destination.endpoint",
                        &e.span(),
                        format!(
                            "{url:?} is not an http(s) URL; write e.g. {:?}",
                            D::DEFAULT_ENDPOINT
                        ),
                    ));
                }
                url.trim_end_matches('/').to_string()
            }
        };
        let api_version = match &t.api_version {
            None => D::DEFAULT_API_VERSION.to_string(),
            Some(v) => {
                let version = v.get_ref();
                let ok = version
                    .split_once('.')
                    .is_some_and(|(a, b)| a.parse::<u32>().is_ok() && b.parse::<u32>().is_ok());
                if !ok {
                    return Err(self.invalid(
                        "destination.api_version",
                        &v.span(),
                        format!(
                            "{version:?} is not a version; write it like {:?}",
                            D::DEFAULT_API_VERSION
                        ),
                    ));
                }
                version.clone()
            }
        };
        Ok(DestinationSettings {
            endpoint,
            api_version,
            api_key_env: t
                .api_key_env
                .clone()
                .unwrap_or_else(|| D::DEFAULT_API_KEY_ENV.into()),
            project_key_env: t
                .project_key_env
                .clone()
                .unwrap_or_else(|| D::DEFAULT_PROJECT_KEY_ENV.into()),
            rate: self.rate("destination.rate", t.rate.as_ref(), D::DEFAULT_RATE)?,
            mass_rate: self.rate(
                "destination.mass_rate",
                t.mass_rate.as_ref(),
                D::DEFAULT_MASS_RATE,
            )?,
            mass_update_from: self.at_least_one(
                "destination.mass_update_from",
                t.mass_update_from.as_ref(),
                D::DEFAULT_MASS_UPDATE_FROM,
            )?,
            timeout: self.duration(
                "destination.timeout",
                t.timeout.as_ref(),
                D::DEFAULT_TIMEOUT,
            )?,
            connect_timeout: self.duration(
                "destination.connect_timeout",
                t.connect_timeout.as_ref(),
                D::DEFAULT_CONNECT_TIMEOUT,
            )?,
            max_attempts: self.at_least_one(
                "destination.max_attempts",
                t.max_attempts.as_ref(),
                D::DEFAULT_MAX_ATTEMPTS,
            )?,
            max_throttled: self.duration(
                "destination.max_throttled",
                t.max_throttled.as_ref(),
                D::DEFAULT_MAX_THROTTLED,
            )?,
        })
    }

    fn settings(&self, file: File) -> Result<Settings, ConfigError> {
        let source = self.source(file.source.kind)?;
        let timezone = self.timezone(file.mapping.timezone.as_ref())?;
        let plan = self.plan(&file.source, &file.mapping)?;
        let warehouse = self.warehouse(&file.state, &file.source)?;
        if let (Some(_), Some(p)) = (&warehouse, &file.mapping.profile_attributes) {
            return Err(self.invalid(
                "mapping.profile_attributes",
                &p.span(),
                "is not available with [state] store = \"database\" yet (its SQL diff keeps one hash a row); use store = \"local\" for a sync with profile attributes",
            ));
        }
        Ok(Settings {
            file: self.path.to_path_buf(),
            source,
            plan,
            timezone,
            sync: self.sync(&file.sync)?,
            destination: self.destination(&file.destination)?,
            state_path: self.resolve(
                file.state
                    .path
                    .as_ref()
                    .map_or(Settings::DEFAULT_STATE_PATH, |p| p.get_ref()),
            ),
            warehouse,
            keep_runs: self.at_least_one(
                "state.keep_runs",
                file.state.keep_runs.as_ref(),
                Settings::DEFAULT_KEEP_RUNS,
            )?,
        })
    }

    /// `[state] store = "database"`: where in the source database the sync's state lives.
    fn warehouse(
        &self,
        t: &StateTable,
        source: &SourceHead,
    ) -> Result<Option<WarehouseSettings>, ConfigError> {
        let database = t
            .store
            .as_ref()
            .filter(|s| *s.get_ref() == StoreKind::Database);
        let Some(store) = database else {
            for (key, value) in [("state.schema", &t.schema), ("state.name", &t.name)] {
                if let Some(v) = value {
                    return Err(self.invalid(
                        key,
                        &v.span(),
                        "is a key of the database mode; add [state] store = \"database\", or remove it",
                    ));
                }
            }
            return Ok(None);
        };
        if source.kind != SourceKind::Postgres {
            return Err(self.invalid(
                "state.store",
                &store.span(),
                format!(
                    "\"database\" keeps the sync's state in its source database, and is built for type = \"postgres\" (this source is {}); use store = \"local\"",
                    format!("{:?}", source.kind).to_lowercase()
                ),
            ));
        }
        if source
            .primary_key
            .as_ref()
            .is_none_or(|k| k.get_ref().is_empty())
        {
            return Err(self.invalid(
                "state.store",
                &store.span(),
                "\"database\" needs [source] primary_key: the diff runs in SQL by key",
            ));
        }
        if let Some(p) = &t.path {
            return Err(self.invalid(
                "state.path",
                &p.span(),
                "is the local store's file; store = \"database\" keeps no local state: remove it",
            ));
        }
        let Some(name) = &t.name else {
            return Err(self.invalid(
                "state.name",
                &store.span(),
                "is required with store = \"database\": it names the sync's tables (<name>_runs, <name>_baseline, …)",
            ));
        };
        if !WarehouseSettings::valid_name(name.get_ref()) {
            return Err(self.invalid(
                "state.name",
                &name.span(),
                format!(
                    "{:?} is not a table-name prefix: lowercase letters, digits and _, starting with a letter or _, at most 40 characters",
                    name.get_ref()
                ),
            ));
        }
        let schema = match &t.schema {
            None => WarehouseSettings::DEFAULT_SCHEMA.to_string(),
            Some(s)
                if s.get_ref().is_empty()
                    || s.get_ref().len() > 63
                    || s.get_ref().contains('\0') =>
            {
                return Err(self.invalid(
                    "state.schema",
                    &s.span(),
                    "must be a PostgreSQL schema name: 1 to 63 bytes",
                ))
            }
            Some(s) => s.get_ref().clone(),
        };
        Ok(Some(WarehouseSettings {
            schema,
            name: name.get_ref().clone(),
        }))
    }
}

fn url_has_password(url: &str) -> bool {
    url.split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}
