use super::*;
use crate::core::value::Type;
use rstest::rstest;

const MINIMAL: &str = "[source]\ntype = \"csv\"\npath = \"o.csv\"\nprimary_key = [\"id\"]\n\n[mapping]\ncustom_id = \"email\"\nevent = \"order_completed\"\n";

/// A minimal `[mapping]`, for configs that vary the source.
const MAPPING: &str = "\n[mapping]\ncustom_id = \"email\"\nevent = \"order_completed\"\n";

fn parse(text: &str) -> Result<Settings, ConfigError> {
    Settings::parse(text, Path::new("/cfg/batchsync.toml"))
}

fn error(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("parsed, but should not have:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_minimal_config_takes_the_documented_defaults() {
    let s = parse(MINIMAL).unwrap();
    assert_eq!(
        s.source,
        SourceSettings::Csv(CsvSettings {
            path: PathBuf::from("/cfg/o.csv"),
            delimiter: b',',
            require_final_newline: true,
        })
    );
    assert_eq!(s.state_path, PathBuf::from("/cfg/.batchsync/state.db"));
    assert_eq!(s.timezone, chrono_tz::UTC);
    assert_eq!(s.sync.initial, Initial::Send);
    assert_eq!(s.sync.on_change, OnChange::Ignore);
    assert_eq!(s.sync.reentry, Reentry::Event);
    assert_eq!(s.sync.on_bad_row, OnBadRow::Reject);
    assert_eq!(s.sync.late_events, LatePolicy::Reject);
    assert_eq!(s.sync.event_window, Duration::from_secs(24 * 3600));
    assert_eq!(s.sync.max_added, Guard::Percent(50.0));
    assert_eq!(s.sync.max_removed, Guard::Percent(50.0));
    assert!(!s.sync.event_id);
    let d = &s.destination;
    assert_eq!(d.endpoint, "https://api.batch.com");
    assert_eq!(d.api_version, "2.11");
    assert_eq!(d.api_key_env, "BATCH_REST_API_KEY");
    assert_eq!(d.project_key_env, "BATCH_PROJECT_KEY");
    assert_eq!(d.rate, 300.0);
    assert_eq!(d.mass_rate, 10_000.0);
    assert_eq!(d.mass_update_from, 10_000);
    assert_eq!(d.timeout, Duration::from_secs(30));
    assert_eq!(d.connect_timeout, Duration::from_secs(10));
    assert_eq!(d.max_attempts, 8);
    assert_eq!(d.max_throttled, Duration::from_secs(600));
    assert_eq!(s.keep_runs, 1000);
}

#[test]
fn every_key_written_is_read_as_written() {
    let text = r#"
[source]
type = "csv"
path = "/data/orders.tsv"
delimiter = "\t"
require_final_newline = false
primary_key = ["order_id"]

[mapping]
custom_id = "customer_email"
event = "order_completed"
time = "ordered_at"
label = "campaign"
attributes = ["amount", "currency", "gift"]
types = { amount = "number", gift = "bool" }
timezone = "Europe/Paris"

[sync]
initial = "baseline"
on_change = "event"
reentry = "ignore"
on_bad_row = "fail"
late_events = "send_without_time"
event_window = "48h"
max_added = "10%"
max_removed = 500
event_id = true

[destination]
type = "batch"
endpoint = "http://127.0.0.1:8787/"
api_version = "2.12"
api_key_env = "MY_KEY"
project_key_env = "MY_PROJECT"
rate = 12.5
mass_rate = 2000
mass_update_from = 50
timeout = "1m"
connect_timeout = "2s"
max_attempts = 3
max_throttled = "1h 30m"

[state]
path = "state/s.db"
keep_runs = 20
"#;
    let s = parse(text).unwrap();
    assert_eq!(
        s.source,
        SourceSettings::Csv(CsvSettings {
            path: PathBuf::from("/data/orders.tsv"),
            delimiter: b'\t',
            require_final_newline: false,
        })
    );
    assert_eq!(s.plan.spec.primary_key, ["order_id"]);
    assert_eq!(s.plan.spec.time.as_deref(), Some("ordered_at"));
    assert_eq!(s.plan.spec.label.as_deref(), Some("campaign"));
    assert_eq!(s.plan.spec.attributes, ["amount", "currency", "gift"]);
    assert_eq!(s.plan.spec.types.get("gift"), Some(&Type::Bool));
    assert_eq!(s.timezone, chrono_tz::Europe::Paris);
    assert_eq!(s.sync.initial, Initial::Baseline);
    assert_eq!(s.sync.on_change, OnChange::Event);
    assert_eq!(s.sync.reentry, Reentry::Ignore);
    assert_eq!(s.sync.on_bad_row, OnBadRow::Fail);
    assert_eq!(s.sync.late_events, LatePolicy::SendWithoutTime);
    assert_eq!(s.sync.event_window, Duration::from_secs(48 * 3600));
    assert_eq!(s.sync.max_added, Guard::Percent(10.0));
    assert_eq!(s.sync.max_removed, Guard::Count(500));
    assert!(s.sync.event_id);
    let d = &s.destination;
    assert_eq!(d.endpoint, "http://127.0.0.1:8787");
    assert_eq!(d.api_version, "2.12");
    assert_eq!(d.api_key_env, "MY_KEY");
    assert_eq!(d.project_key_env, "MY_PROJECT");
    assert_eq!(d.rate, 12.5);
    assert_eq!(d.mass_rate, 2000.0);
    assert_eq!(d.mass_update_from, 50);
    assert_eq!(d.timeout, Duration::from_secs(60));
    assert_eq!(d.connect_timeout, Duration::from_secs(2));
    assert_eq!(d.max_attempts, 3);
    assert_eq!(d.max_throttled, Duration::from_secs(5400));
    assert_eq!(s.state_path, PathBuf::from("/cfg/state/s.db"));
    assert_eq!(s.keep_runs, 20);
}

#[test]
fn each_source_kind_reads_its_own_keys() {
    let ndjson = parse(&format!(
        "[source]\ntype = \"ndjson\"\npath = \"o.ndjson\"\n{MAPPING}"
    ));
    assert_eq!(
        ndjson.unwrap().source,
        SourceSettings::Ndjson(NdjsonSettings {
            path: PathBuf::from("/cfg/o.ndjson"),
            require_final_newline: true,
        })
    );
    let sqlite = parse(&format!(
        "[source]\ntype = \"sqlite\"\npath = \"shop.db\"\nquery = \"SELECT 1\"\n{MAPPING}"
    ));
    assert_eq!(
        sqlite.unwrap().source,
        SourceSettings::Sqlite(SqliteSettings {
            path: PathBuf::from("/cfg/shop.db"),
            query: "SELECT 1".into(),
            timeout: DEFAULT_QUERY_TIMEOUT,
        })
    );
    let db = DatabaseSettings {
        url: "postgres://u@h/d".into(),
        query: "SELECT 1".into(),
        password_env: Some("PW".into()),
        timeout: Duration::from_secs(5),
    };
    let source = "url = \"postgres://u@h/d\"\nquery = \"SELECT 1\"\npassword_env = \"PW\"\ntimeout = \"5s\"\n";
    let postgres = parse(&format!("[source]\ntype = \"postgres\"\n{source}{MAPPING}"));
    assert_eq!(
        postgres.unwrap().source,
        SourceSettings::Postgres(db.clone())
    );
    let mysql = parse(&format!("[source]\ntype = \"mysql\"\n{source}{MAPPING}"));
    assert_eq!(mysql.unwrap().source, SourceSettings::Mysql(db));
}

#[rstest]
#[case::query_on_csv("type = \"csv\"\npath = \"o.csv\"\nquery = \"SELECT 1\"", "query", 4)]
#[case::url_on_ndjson(
    "type = \"ndjson\"\nurl = \"postgres://h/d\"\npath = \"o.ndjson\"",
    "url",
    3
)]
#[case::timeout_on_csv("type = \"csv\"\npath = \"o.csv\"\ntimeout = \"1s\"", "timeout", 4)]
#[case::delimiter_on_ndjson(
    "type = \"ndjson\"\npath = \"o.ndjson\"\ndelimiter = \";\"",
    "delimiter",
    4
)]
#[case::url_on_sqlite(
    "type = \"sqlite\"\npath = \"s.db\"\nquery = \"q\"\nurl = \"x\"",
    "url",
    5
)]
#[case::password_env_on_sqlite(
    "type = \"sqlite\"\npath = \"s.db\"\nquery = \"q\"\npassword_env = \"PW\"",
    "password_env",
    5
)]
#[case::path_on_postgres(
    "type = \"postgres\"\nurl = \"postgres://h/d\"\nquery = \"q\"\npath = \"x\"",
    "path",
    5
)]
#[case::delimiter_on_mysql(
    "type = \"mysql\"\ndelimiter = \",\"\nurl = \"mysql://h/d\"\nquery = \"q\"",
    "delimiter",
    3
)]
fn a_key_the_source_kind_does_not_take_is_refused_at_its_line(
    #[case] source: &str,
    #[case] key: &str,
    #[case] line: usize,
) {
    let msg = error(&format!("[source]\n{source}\n{MAPPING}"));
    assert!(msg.contains(&format!("unknown field `{key}`")), "{msg}");
    assert!(msg.contains(&format!("line {line},")), "{msg}");
    assert!(msg.starts_with("/cfg/batchsync.toml: "), "{msg}");
}

#[rstest]
#[case::csv_without_path("type = \"csv\"", "path")]
#[case::sqlite_without_query("type = \"sqlite\"\npath = \"s.db\"", "query")]
#[case::postgres_without_url("type = \"postgres\"\nquery = \"q\"", "url")]
#[case::source_without_type("path = \"o.csv\"", "type")]
fn a_key_the_source_kind_needs_is_named_when_missing(#[case] source: &str, #[case] key: &str) {
    let msg = error(&format!("[source]\n{source}\n{MAPPING}"));
    assert!(msg.contains(&format!("missing field `{key}`")), "{msg}");
    assert!(msg.contains("line 1,"), "{msg}");
}

#[test]
fn an_unknown_source_type_is_named_with_its_line_and_the_kinds() {
    let msg = error(&MINIMAL.replace("\"csv\"", "\"excel\""));
    assert!(msg.contains("line 2,") && msg.contains("`excel`"), "{msg}");
    assert!(msg.contains("`ndjson`") && msg.contains("`mysql`"), "{msg}");
}

#[test]
fn an_unknown_key_is_an_error_that_names_it_and_its_line() {
    let text = MINIMAL.replace("[mapping]\n", "[mapping]\ncolour = 3\n");
    let msg = error(&text);
    assert!(msg.contains("colour"), "{msg}");
    assert!(msg.contains("line 7"), "{msg}");
}

#[test]
fn an_invalid_event_name_is_an_error_with_its_line() {
    let text = MINIMAL.replace("order_completed", "Order Completed");
    let msg = error(&text);
    assert!(
        msg.contains("mapping.event") && msg.contains("line 8"),
        "{msg}"
    );
    assert!(msg.contains("[a-z0-9_]"), "{msg}");
}

#[test]
fn a_missing_event_is_named() {
    let msg = error(&MINIMAL.replace("event = \"order_completed\"\n", ""));
    assert!(
        msg.contains("batchsync.toml: `mapping.event`: ") && msg.contains("event_column"),
        "{msg}"
    );
}

#[test]
fn a_primary_key_listed_twice_is_named_in_source_with_its_line() {
    let text = MINIMAL.replace("[\"id\"]", "[\"id\", \"id\"]");
    let msg = error(&text);
    assert!(msg.contains("line 4: `source.primary_key`"), "{msg}");
}

#[test]
fn dotted_keys_are_located_on_their_own_line() {
    let text = "source.type = \"csv\"\nsource.path = \"o.csv\"\nsource.delimiter = \"ab\"\n\nmapping.custom_id = \"email\"\nmapping.event = \"order_completed\"\n";
    let msg = error(text);
    assert!(
        msg.contains("line 3: `source.delimiter`") && msg.contains("\"ab\""),
        "{msg}"
    );

    let misplaced = "source.type = \"csv\"\nsource.path = \"o.csv\"\nsource.query = \"q\"\n\nmapping.custom_id = \"email\"\nmapping.event = \"order_completed\"\n";
    let msg = error(misplaced);
    assert!(
        msg.contains("line 3,") && msg.contains("unknown field `query`"),
        "{msg}"
    );

    let event = "source.type = \"csv\"\nsource.path = \"o.csv\"\n\nmapping.custom_id = \"email\"\nmapping.event = \"Order Completed\"\n";
    assert!(error(event).contains("line 5: `mapping.event`"));
}

#[test]
fn keys_in_inline_tables_are_located_on_their_line() {
    let text = format!(
        "# sources\n\nsource = {{ type = \"csv\", path = \"o.csv\", delimiter = \";;\" }}\n{MAPPING}"
    );
    assert!(error(&text).contains("line 3: `source.delimiter`"));

    let text = "source = { type = \"csv\", path = \"o.csv\" }\n\nmapping = { custom_id = \"email\", event = \"Order Completed\" }\n";
    assert!(error(text).contains("line 3: `mapping.event`"));

    let text = "source = { type = \"csv\", path = \"o.csv\" }\n\n[mapping]\ncustom_id = \"email\"\nevent = \"e\"\n\n[sync]\nmax_added = \"lots\"\n";
    assert!(error(text).contains("line 8: `sync.max_added`"));
}

#[test]
fn guards_take_percent_count_or_off() {
    let text = format!("{MINIMAL}\n[sync]\nmax_added = 1000\nmax_removed = \"off\"\n");
    let s = parse(&text).unwrap();
    assert_eq!(s.sync.max_added, Guard::Count(1000));
    assert_eq!(s.sync.max_removed, Guard::Off);
    let s = parse(&format!(
        "{MINIMAL}\n[sync]\nmax_added = \"25 %\"\nmax_removed = \"7\"\n"
    ))
    .unwrap();
    assert_eq!(s.sync.max_added, Guard::Percent(25.0));
    assert_eq!(s.sync.max_removed, Guard::Count(7));
    for bad in ["\"lots\"", "-1", "1.5", "\"-3%\""] {
        let msg = error(&format!("{MINIMAL}\n[sync]\nmax_added = {bad}\n"));
        assert!(msg.contains("line 11: `sync.max_added`"), "{bad}: {msg}");
        assert!(msg.contains("\"off\""), "{msg}");
    }
}

#[test]
fn an_unknown_timezone_is_named_with_its_line() {
    let text = MINIMAL.replace("[mapping]\n", "[mapping]\ntimezone = \"Mars/Olympus\"\n");
    let msg = error(&text);
    assert!(
        msg.contains("line 7: `mapping.timezone`") && msg.contains("Mars/Olympus"),
        "{msg}"
    );
}

#[rstest]
#[case::source_timeout("[source]\ntype = \"sqlite\"\npath = \"s.db\"\nquery = \"q\"\ntimeout = \"{}\"\n[mapping]\ncustom_id = \"e\"\nevent = \"e\"\n", "source.timeout", 5)]
#[case::event_window("[sync]\nevent_window = \"{}\"\n", "sync.event_window", 11)]
#[case::timeout("[destination]\ntimeout = \"{}\"\n", "destination.timeout", 11)]
#[case::connect_timeout(
    "[destination]\nconnect_timeout = \"{}\"\n",
    "destination.connect_timeout",
    11
)]
#[case::max_throttled(
    "[destination]\n\nmax_throttled = \"{}\"\n",
    "destination.max_throttled",
    12
)]
fn a_bad_duration_is_an_error_naming_its_key_and_line(
    #[case] template: &str,
    #[case] key: &str,
    #[case] line: usize,
) {
    let config = |duration: &str| {
        let table = template.replace("{}", duration);
        if table.starts_with("[source]") {
            table
        } else {
            format!("{MINIMAL}\n{table}")
        }
    };
    let expected = format!("line {line}: `{key}`: ");
    // Before humantime, this one panicked converting the seconds.
    let msg = error(&config("100000000000000000000"));
    assert!(
        msg.contains(&expected) && msg.contains("longer than 100 years"),
        "{msg}"
    );
    let msg = error(&config("99999999999999999999999d"));
    assert!(
        msg.contains(&expected) && msg.contains("not a duration"),
        "{msg}"
    );
    let msg = error(&config("soon"));
    assert!(msg.contains(&expected) && msg.contains("\"30s\""), "{msg}");
    assert!(parse(&config("1h 30m")).is_ok());
    assert!(parse(&config("90")).is_ok());
}

#[rstest]
#[case::rate("rate = 0", "destination.rate", "positive")]
#[case::mass_rate("mass_rate = -1.5", "destination.mass_rate", "positive")]
#[case::max_attempts("max_attempts = 0", "destination.max_attempts", "at least 1")]
#[case::mass_update_from("mass_update_from = 0", "destination.mass_update_from", "at least 1")]
#[case::endpoint("endpoint = \"api.batch.com\"", "destination.endpoint", "http(s) URL")]
#[case::api_version("api_version = \"two\"", "destination.api_version", "\"2.11\"")]
fn a_bad_destination_value_is_named_with_its_line(
    #[case] line: &str,
    #[case] key: &str,
    #[case] says: &str,
) {
    let msg = error(&format!("{MINIMAL}\n[destination]\n{line}\n"));
    assert!(msg.contains(&format!("line 11: `{key}`: ")), "{msg}");
    assert!(msg.contains(says), "{msg}");
}

#[rstest]
#[case::zero("keep_runs = 0", "at least 1")]
#[case::negative("keep_runs = -5", "")]
#[case::not_a_number("keep_runs = \"all\"", "")]
fn a_bad_keep_runs_is_named_with_its_line(#[case] line: &str, #[case] says: &str) {
    let msg = error(&format!("{MINIMAL}\n[state]\n{line}\n"));
    assert!(msg.contains("line 11"), "{msg}");
    assert!(msg.contains("keep_runs"), "{msg}");
    assert!(msg.contains(says), "{msg}");
}

#[test]
fn the_one_destination_is_batch() {
    let msg = error(&format!("{MINIMAL}\n[destination]\ntype = \"sendgrid\"\n"));
    assert!(
        msg.contains("line 11,") && msg.contains("`sendgrid`") && msg.contains("`batch`"),
        "{msg}"
    );
}

#[test]
fn a_delimiter_is_one_ascii_character() {
    let with = |d: &str| {
        parse(&MINIMAL.replace(
            "path = \"o.csv\"\n",
            &format!("path = \"o.csv\"\ndelimiter = {d}\n"),
        ))
    };
    let delimiter = |s: Settings| match s.source {
        SourceSettings::Csv(c) => c.delimiter,
        other => panic!("{other:?}"),
    };
    assert_eq!(delimiter(with("\";\"").unwrap()), b';');
    assert_eq!(delimiter(with("'\\t'").unwrap()), b'\t');
    assert_eq!(delimiter(with("\"\\t\"").unwrap()), b'\t');
    let msg = with("\"é\"").unwrap_err().to_string();
    assert!(msg.contains("line 4: `source.delimiter`"), "{msg}");
}

#[test]
fn the_starter_config_is_valid() {
    parse(STARTER).unwrap();
}

#[test]
fn the_fixture_config_is_valid() {
    let s = parse(include_str!("../../fixtures/orders.toml")).unwrap();
    assert_eq!(s.sync.late_events, LatePolicy::Send);
    assert_eq!(s.destination.endpoint, "http://127.0.0.1:8787");
}

#[test]
fn tables_may_be_written_as_headers_dotted_keys_or_inline() {
    let header = "[source]\ntype = \"csv\"\npath = \"o.csv\"\nprimary_key = [\"id\"]\n\n[mapping]\ncustom_id = \"email\"\nevent = \"e\"\nattributes = [\"amount\"]\n\n[mapping.types]\namount = \"number\"\n";
    let dotted = "source.type = \"csv\"\nsource.path = \"o.csv\"\nsource.primary_key = [\"id\"]\nmapping.custom_id = \"email\"\nmapping.event = \"e\"\nmapping.attributes = [\"amount\"]\nmapping.types.amount = \"number\"\nsync.max_added = 10\ndestination.rate = 5\n";
    let inline = "source = { type = \"csv\", path = \"o.csv\", primary_key = [\"id\"] }\nmapping = { custom_id = \"email\", event = \"e\", attributes = [\"amount\"], types = { amount = \"number\" } }\n";
    for text in [header, dotted, inline] {
        let s = parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(s.plan.spec.primary_key, ["id"]);
        assert_eq!(s.plan.spec.types.get("amount"), Some(&Type::Number));
    }
    let msg = error(&header.replace(
        "amount = \"number\"",
        "amount = \"number\"\ncurrency = \"string\"",
    ));
    assert!(
        msg.contains("line 12: `mapping.types`") && msg.contains("currency"),
        "{msg}"
    );
    let msg = error(&dotted.replace("[\"amount\"]", "[\"$amount\"]"));
    assert!(msg.contains("line 6: `mapping.attributes`"), "{msg}");
}

const PG_SOURCE: &str = "[source]\ntype = \"postgres\"\nurl = \"postgres://u@h/db\"\nquery = \"SELECT 1\"\nprimary_key = [\"id\"]\n";

#[test]
fn the_database_mode_reads_its_schema_and_name() {
    let s = parse(&format!(
        "{PG_SOURCE}{MAPPING}\n[state]\nstore = \"database\"\nname = \"orders\"\n"
    ))
    .unwrap();
    assert_eq!(
        s.warehouse,
        Some(WarehouseSettings {
            schema: "batchsync".into(),
            name: "orders".into()
        })
    );
    let s = parse(&format!("{PG_SOURCE}{MAPPING}\n[state]\nstore = \"database\"\nschema = \"we\\\"ird; x\"\nname = \"_o2\"\n")).unwrap();
    assert_eq!(s.warehouse.unwrap().schema, "we\"ird; x");
    let s = parse(&format!(
        "{PG_SOURCE}{MAPPING}\n[state]\nstore = \"local\"\n"
    ))
    .unwrap();
    assert_eq!(s.warehouse, None);
    assert_eq!(parse(MINIMAL).unwrap().warehouse, None);
}

#[rstest]
#[case::file_source(
    "[source]\ntype = \"csv\"\npath = \"o.csv\"\nprimary_key = [\"id\"]\n",
    "store = \"database\"\nname = \"o\"",
    "line 11: `state.store`: \"database\" keeps the sync's state in its source database, and is built for type = \"postgres\" (this source is csv)"
)]
#[case::mysql_source(
    "[source]\ntype = \"mysql\"\nurl = \"mysql://u@h/db\"\nquery = \"SELECT 1\"\nprimary_key = [\"id\"]\n",
    "store = \"database\"\nname = \"o\"",
    "(this source is mysql)"
)]
#[case::no_primary_key(
    "[source]\ntype = \"postgres\"\nurl = \"postgres://u@h/db\"\nquery = \"SELECT 1\"\n",
    "store = \"database\"\nname = \"o\"",
    "needs [source] primary_key"
)]
#[case::no_name(
    PG_SOURCE,
    "store = \"database\"",
    "`state.name`: is required with store = \"database\""
)]
#[case::bad_name(
    PG_SOURCE,
    "store = \"database\"\nname = \"Orders\"",
    "line 13: `state.name`: \"Orders\" is not a table-name prefix"
)]
#[case::long_name(
    PG_SOURCE,
    "store = \"database\"\nname = \"a234567890123456789012345678901234567890x\"",
    "at most 40 characters"
)]
#[case::empty_schema(
    PG_SOURCE,
    "store = \"database\"\nname = \"o\"\nschema = \"\"",
    "`state.schema`: must be a PostgreSQL schema name"
)]
#[case::path_too(
    PG_SOURCE,
    "store = \"database\"\nname = \"o\"\npath = \"s.db\"",
    "`state.path`: is the local store's file"
)]
#[case::name_without_mode(
    PG_SOURCE,
    "name = \"o\"",
    "`state.name`: is a key of the database mode"
)]
#[case::unknown_store(
    PG_SOURCE,
    "store = \"cloud\"",
    "unknown variant `cloud`, expected `local` or `database`"
)]
fn the_database_mode_is_refused_where_it_cannot_work(
    #[case] source: &str,
    #[case] state: &str,
    #[case] message: &str,
) {
    let e = error(&format!("{source}{MAPPING}\n[state]\n{state}\n"));
    assert!(e.contains(message), "{e}");
}

/// A sync keyed by its custom id, with `profile` as its `profile_attributes` line (line 9).
fn with_profile(profile: &str) -> String {
    format!(
        "[source]\ntype = \"csv\"\npath = \"u.csv\"\nprimary_key = [\"email\"]\n\n[mapping]\ncustom_id = \"email\"\nevent = \"signed_up\"\n{profile}\n"
    )
}

#[test]
fn profile_attributes_take_a_list_of_columns_or_a_table_of_names() {
    let s = parse(&with_profile(r#"profile_attributes = ["plan", "country"]"#)).unwrap();
    let names: Vec<_> = s.plan.profile.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["country", "plan"]);
    assert_eq!(s.sync.on_remove, OnRemove::Keep);

    let s = parse(&format!(
        "{}\n[sync]\non_remove = \"unset\"\n",
        with_profile(r#"profile_attributes = { "$region" = "country", tier = "plan" }"#)
    ))
    .unwrap();
    let attrs: Vec<_> = s
        .plan
        .profile
        .iter()
        .map(|a| (a.name.as_str(), s.plan.columns[a.column].as_str(), a.native))
        .collect();
    assert_eq!(
        attrs,
        [
            (
                "$region",
                "country",
                Some(crate::core::mapping::Native::Region)
            ),
            ("tier", "plan", None)
        ]
    );
    assert_eq!(s.sync.on_remove, OnRemove::Unset);
    // Their columns are read, but the row hash covers the event's columns only.
    assert_eq!(s.plan.columns[..s.plan.hashed], ["email".to_string()]);
    assert_eq!(s.plan.columns.len(), 3);
}

#[test]
fn profile_attributes_leave_the_mappings_identity_and_rules_as_they_were() {
    let plain = parse(&with_profile("")).unwrap();
    let profiled = parse(&with_profile(r#"profile_attributes = ["plan"]"#)).unwrap();
    // Stores written before profile attributes keep diffing (and keep their open rejects).
    assert_eq!(plain.plan.identity(), profiled.plan.identity());
    assert_ne!(plain.rules_identity(), profiled.rules_identity());
    assert_eq!(plain.plan.profile_identity(), "");
    assert_eq!(profiled.plan.profile_identity(), "plan=plan");
}

#[rstest]
#[case::not_keyed_by_the_custom_id(
    "[source]\ntype = \"csv\"\npath = \"u.csv\"\nprimary_key = [\"id\"]\n\n[mapping]\ncustom_id = \"email\"\nevent = \"signed_up\"\nprofile_attributes = [\"plan\"]\n",
    "primary_key must be [\"email\"]"
)]
#[case::bad_name(&with_profile(r#"profile_attributes = { Plan = "plan" }"#), "Batch's rule for names")]
#[case::unknown_native(&with_profile(r#"profile_attributes = { "$country" = "c" }"#), "not one of Batch's native profile attributes")]
#[case::listed_twice(&with_profile(r#"profile_attributes = ["plan", "plan"]"#), "listed twice")]
#[case::the_custom_id(&with_profile(r#"profile_attributes = ["email"]"#), "identifies the profile")]
fn a_bad_profile_attribute_is_named_with_its_key_and_line(#[case] text: &str, #[case] why: &str) {
    let msg = error(text);
    assert!(
        msg.contains("line 9") && msg.contains("mapping.profile_attributes") && msg.contains(why),
        "{msg}"
    );
}

#[test]
fn a_native_profile_attribute_must_be_a_string_column() {
    let msg = error(&with_profile(
        "profile_attributes = { \"$timezone\" = \"tz\" }\ntypes = { tz = \"integer\" }",
    ));
    assert!(
        msg.contains("mapping.types") && msg.contains("native profile attribute $timezone"),
        "{msg}"
    );
}

#[test]
fn the_database_mode_refuses_profile_attributes_with_their_line() {
    let msg = error(
        "[source]\ntype = \"postgres\"\nurl = \"postgres://u@h/db\"\nquery = \"SELECT 1\"\nprimary_key = [\"email\"]\n\n[mapping]\ncustom_id = \"email\"\nevent = \"e\"\nprofile_attributes = [\"plan\"]\n\n[state]\nstore = \"database\"\nname = \"s\"\n",
    );
    assert!(
        msg.contains("line 10") && msg.contains("store = \"local\""),
        "{msg}"
    );
}

#[test]
fn a_sync_of_profile_attributes_alone_needs_no_event_but_event_keys_need_one() {
    let text = "[source]\ntype = \"csv\"\npath = \"u.csv\"\nprimary_key = [\"email\"]\n\n[mapping]\ncustom_id = \"email\"\nprofile_attributes = [\"plan\"]\n";
    let s = parse(text).unwrap();
    assert!(!s.plan.has_event() && s.plan.has_profile());
    let msg = error(&format!("{text}time = \"at\"\n"));
    assert!(
        msg.contains("line 9")
            && msg.contains("mapping.time")
            && msg.contains("belongs to an event"),
        "{msg}"
    );
    // Without profile attributes, an event is required.
    let msg =
        error("[source]\ntype = \"csv\"\npath = \"u.csv\"\n\n[mapping]\ncustom_id = \"email\"\n");
    assert!(msg.contains("mapping.event"), "{msg}");
}
