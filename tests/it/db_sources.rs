//! Database sources against the real servers: PostgreSQL at `BATCHSYNC_TEST_PG_URL`, MariaDB
//! (or MySQL) at `BATCHSYNC_TEST_MYSQL_URL` (`.ci/run` sets both). Without a variable, its
//! tests print a SKIPPED line to stderr and pass, unless `CI` is set (to anything but empty,
//! `0` or `false`): then they fail, so that CI never passes without having run them. SQLite
//! needs no server and always runs.
//!
//! Each test owns tables named `<prefix>_<pid>_<counter>`, dropped when it ends (panics
//! included), so tests run in parallel against one database.

use crate::common::db::{loud, runtime, server_url, unique, Pg, MYSQL_VAR, PG_VAR};
use crate::common::{emulator, fixture, json_of, Dir};
use crate::url_or_skip;
use batchsync::core::value::{format_time, parse_bool, parse_time};
use serde_json::{json, Value};
use std::process::Stdio;
use std::time::{Duration, Instant};

struct My {
    rt: tokio::runtime::Runtime,
    conn: Option<mysql_async::Conn>,
    tables: Vec<String>,
}

impl My {
    fn connect(url: &str) -> My {
        let rt = runtime();
        let opts = mysql_async::Opts::from_url(url).expect("a MySQL URL");
        let conn = rt
            .block_on(mysql_async::Conn::new(opts))
            .unwrap_or_else(|e| panic!("cannot connect to {MYSQL_VAR}: {e}"));
        My {
            rt,
            conn: Some(conn),
            tables: Vec::new(),
        }
    }

    fn table(&mut self, prefix: &str) -> String {
        let name = unique(prefix);
        self.tables.push(name.clone());
        name
    }

    fn exec(&mut self, sql: &str) {
        use mysql_async::prelude::Queryable;
        let conn = self.conn.as_mut().unwrap();
        self.rt
            .block_on(conn.query_drop(sql))
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

impl Drop for My {
    fn drop(&mut self) {
        use mysql_async::prelude::Queryable;
        if let Some(mut conn) = self.conn.take() {
            for t in &self.tables {
                let _ = self
                    .rt
                    .block_on(conn.query_drop(format!("DROP TABLE IF EXISTS {t}")));
            }
            let _ = self.rt.block_on(conn.disconnect());
        }
    }
}

/// Writes `batchsync.toml`: the source and mapping sections given, late events sent (the
/// fixtures' times are older than Batch's window), the emulator as the destination.
fn write_config(dir: &Dir, source: &str, mapping: &str, endpoint: &str) {
    dir.write(
        "batchsync.toml",
        format!(
            "[source]\n{source}\n\n[mapping]\n{mapping}\n\n[sync]\nlate_events = \"send\"\n\n[destination]\nendpoint = \"{endpoint}\"\n"
        ),
    );
}

fn db_source(kind: &str, url: &str, query: &str, key: &str) -> String {
    format!("type = \"{kind}\"\nurl = \"{url}\"\nquery = '''{query}'''\nprimary_key = [\"{key}\"]")
}

const ORDERS_MAPPING: &str = r#"custom_id = "customer_email"
event = "order_completed"
time = "ordered_at"
label = "campaign"
attributes = ["amount", "currency", "gift"]
timezone = "UTC""#;

const ORDERS_COLUMNS: &str =
    "order_id, customer_email, ordered_at, amount, currency, gift, campaign";

/// The records of a fixture CSV, header first.
fn csv_records(name: &str) -> Vec<Vec<String>> {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_path(fixture(name))
        .unwrap();
    r.records()
        .map(|rec| rec.unwrap().iter().map(String::from).collect())
        .collect()
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `(…), (…)` rows of the orders fixture for an INSERT, each field through `field`.
fn orders_values(name: &str, field: impl Fn(&str, &str) -> String) -> String {
    let records = csv_records(name);
    let header = &records[0];
    records[1..]
        .iter()
        .map(|rec| {
            let fields: Vec<String> = header
                .iter()
                .zip(rec)
                .map(|(col, v)| {
                    if v.is_empty() {
                        "NULL".to_string()
                    } else {
                        field(col, v)
                    }
                })
                .collect();
            format!("({})", fields.join(", "))
        })
        .collect::<Vec<_>>()
        .join(",\n")
}

/// The orders fixture as a PostgreSQL table (PostgreSQL reads every spelling in it).
fn pg_orders(pg: &Pg, table: &str, fixture_name: &str) {
    pg.exec(&format!(
        "CREATE TABLE {table} (order_id int4 PRIMARY KEY, customer_email text NOT NULL, \
         ordered_at timestamptz NOT NULL, amount numeric(10, 2), currency varchar(3), \
         gift boolean, campaign text, status text)"
    ));
    pg.exec(&format!(
        "INSERT INTO {table} VALUES {}",
        orders_values(fixture_name, |_, v| quote(v))
    ));
}

/// A time of the fixture as a naive UTC `YYYY-MM-DD HH:MM:SS` (for MySQL and SQLite).
fn utc_naive(v: &str) -> String {
    format_time(parse_time(v, chrono_tz::UTC).expect("a fixture time"))
        .trim_end_matches('Z')
        .replace('T', " ")
}

/// The baseline of a state store: (key, hash) in hex, present rows only, by key.
fn baseline(dir: &Dir) -> Vec<(String, String)> {
    crate::common::baseline(&dir.state())
        .into_iter()
        .filter(|(_, _, present)| *present)
        .map(|(k, h, _)| (hex_upper(&k), hex_upper(&h)))
        .collect()
}

fn hex_upper(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

fn sorted_ids(received: &[batchsync::emulate::Received]) -> Vec<String> {
    let mut ids: Vec<String> = received.iter().map(|r| r.custom_id.clone()).collect();
    ids.sort();
    ids
}

fn error_of(summary: &Value) -> String {
    summary["error"].as_str().unwrap_or_default().to_string()
}

#[test]
fn a_postgres_segment_syncs_and_a_second_run_sends_only_the_added_rows() {
    let url = url_or_skip!(PG_VAR);
    let mut pg = Pg::connect(&url);
    let t = pg.table("orders");
    pg_orders(&pg, &t, "orders_day1.csv");
    let emu = emulator();
    let dir = Dir::new();
    let query = format!("SELECT * FROM {t}");
    write_config(
        &dir,
        &db_source("postgres", &url, &query, "order_id"),
        ORDERS_MAPPING,
        &emu.endpoint(),
    );

    let (code, first) = dir.sync();
    assert_eq!(code, 0, "{first}");
    assert_eq!(
        (first["rows"].as_u64(), first["added"].as_u64()),
        (Some(12), Some(12))
    );
    assert_eq!(first["events_sent"], 12);
    assert_eq!(emu.received().len(), 12);

    // Day 2: one removal, two mapped changes, one unmapped change, three new orders.
    pg.exec(&format!(
        "DELETE FROM {t} WHERE order_id = 1004;
         UPDATE {t} SET status = 'refunded' WHERE order_id = 1001;
         UPDATE {t} SET amount = 21.99 WHERE order_id = 1002;
         UPDATE {t} SET campaign = 'spring_sale' WHERE order_id = 1007;
         INSERT INTO {t} VALUES
           (1013, 'ada@example.com', '2026-11-21T08:00:00Z', 12.00, 'EUR', false, NULL, 'paid'),
           (1014, 'alan@example.com', '2026-11-21T09:30:00Z', 450, 'USD', true, 'vip', 'paid'),
           (1015, 'katherine@example.com', '2026-11-21T10:45:00Z', 27.5, 'EUR', false, NULL, 'paid');"
    ));
    let (code, second) = dir.sync();
    assert_eq!(code, 0, "{second}");
    assert_eq!(
        (
            second["added"].as_u64(),
            second["changed"].as_u64(),
            second["removed"].as_u64(),
            second["events_sent"].as_u64()
        ),
        (Some(3), Some(2), Some(1), Some(3)),
        "{second}"
    );
    let received = emu.received();
    assert_eq!(received.len(), 15);
    assert_eq!(
        sorted_ids(&received[12..]),
        [
            "ada@example.com",
            "alan@example.com",
            "katherine@example.com"
        ]
    );
    let alan = received
        .iter()
        .find(|r| r.custom_id == "alan@example.com")
        .unwrap();
    assert_eq!(
        alan.event,
        json!({"name": "order_completed", "time": "2026-11-21T09:30:00Z",
               "attributes": {"$label": "vip", "amount": 450, "currency": "USD", "gift": true}})
    );

    let (code, third) = dir.sync();
    assert_eq!(
        (code, third["events_sent"].as_u64()),
        (0, Some(0)),
        "{third}"
    );
    assert_eq!(emu.received().len(), 15);
}

const TYPED_MAPPING: &str = r#"custom_id = "email"
event = "signed_up"
time = "paid_at"
attributes = ["price", "ratio", "weight", "paid", "token", "born", "seen_at", "meta", "tags", "note"]
timezone = "Europe/Paris""#;

/// The types CSV needs declared (NDJSON needs the dates; declaring the rest changes nothing).
const TYPED_TYPES: &str = r#"types = { id = "integer", price = "number", ratio = "number", weight = "number", paid = "bool", born = "date", seen_at = "date", meta = "json", tags = "string_array" }"#;

fn pg_typed(pg: &Pg, table: &str) {
    let sql = std::fs::read_to_string(fixture("db/typed.sql")).unwrap();
    pg.exec(&sql.replace("{table}", table));
}

#[test]
fn postgres_types_map_to_the_values_batch_receives() {
    let url = url_or_skip!(PG_VAR);
    let mut pg = Pg::connect(&url);
    let t = pg.table("typed");
    pg_typed(&pg, &t);
    let emu = emulator();
    let dir = Dir::new();
    let query = format!("SELECT * FROM {t}");
    write_config(
        &dir,
        &db_source("postgres", &url, &query, "id"),
        TYPED_MAPPING,
        &emu.endpoint(),
    );

    let (code, summary) = dir.sync();
    assert_eq!(code, 0, "{summary}");
    let mut received = emu.received();
    received.sort_by(|a, b| a.custom_id.cmp(&b.custom_id));
    let events: Vec<&Value> = received.iter().map(|r| &r.event).collect();
    assert_eq!(
        events,
        [
            &json!({"name": "signed_up", "time": "2026-11-20T09:15:00Z", "attributes": {
                "price": 42.5, "ratio": 0.1, "weight": 2.25, "paid": true,
                "token": "0b3f6c1e-2a4d-4c8e-9f10-5a6b7c8d9e0f",
                // A date is midnight in the configured timezone (CEST in May 1990).
                "date(born)": "1990-05-16T22:00:00Z",
                // A naive timestamp is wall-clock time in the configured timezone (CET).
                "date(seen_at)": "2026-11-20T09:30:00Z",
                "meta": {"plan": "pro", "seats": 3}, "tags": ["vip", "early"], "note": "hello"}}),
            &json!({"name": "signed_up", "time": "2026-11-20T09:02:11Z", "attributes": {
                "price": 250, "ratio": 1.5, "weight": -0.125, "paid": false,
                "token": "7d9e8f00-1111-4222-8333-944455556666",
                "date(born)": "1985-12-08T23:00:00Z",
                "date(seen_at)": "2026-03-29T01:30:00Z",
                "meta": [{"sku": "a1", "qty": 2}], "tags": ["x"], "note": "l'été"}}),
            // Nulls leave their attributes out; a timestamptz keeps its microseconds.
            &json!({"name": "signed_up", "time": "2026-11-20T11:30:00.250000Z", "attributes": {
                "price": 19.99}}),
        ]
    );
}

/// Runs a store's first run as `--initial baseline` and returns its baseline.
fn baseline_of(dir: &Dir) -> Vec<(String, String)> {
    let (code, summary) = dir.sync_with(&["--initial", "baseline"]);
    assert_eq!(code, 0, "{summary}");
    assert_eq!(summary["rejected"], 0, "{summary}");
    baseline(dir)
}

#[test]
fn the_same_rows_from_typed_csv_ndjson_and_postgres_hash_the_same() {
    let url = url_or_skip!(PG_VAR);
    let mut pg = Pg::connect(&url);
    let t = pg.table("typed");
    pg_typed(&pg, &t);
    let emu = emulator();

    let csv = Dir::new();
    csv.copy_fixture("db/typed.csv", "typed.csv");
    let mapping = format!("{TYPED_MAPPING}\n{TYPED_TYPES}");
    write_config(
        &csv,
        "type = \"csv\"\npath = \"typed.csv\"\nprimary_key = [\"id\"]",
        &mapping,
        &emu.endpoint(),
    );

    let ndjson = Dir::new();
    ndjson.copy_fixture("db/typed.ndjson", "typed.ndjson");
    write_config(
        &ndjson,
        "type = \"ndjson\"\npath = \"typed.ndjson\"\nprimary_key = [\"id\"]",
        &mapping,
        &emu.endpoint(),
    );

    // PostgreSQL with no declared types at all: its native types must give the same values.
    let postgres = Dir::new();
    let query = format!("SELECT * FROM {t}");
    write_config(
        &postgres,
        &db_source("postgres", &url, &query, "id"),
        TYPED_MAPPING,
        &emu.endpoint(),
    );

    let from_csv = baseline_of(&csv);
    assert_eq!(from_csv.len(), 3);
    assert_eq!(baseline_of(&ndjson), from_csv, "NDJSON and CSV differ");
    assert_eq!(
        baseline_of(&postgres),
        from_csv,
        "PostgreSQL and CSV differ"
    );
    assert!(emu.received().is_empty());
}

#[test]
fn the_orders_fixture_hashes_the_same_from_every_source() {
    let url = url_or_skip!(PG_VAR);
    let mut pg = Pg::connect(&url);
    let t = pg.table("orders");
    pg_orders(&pg, &t, "orders_day1.csv");
    let emu = emulator();

    let csv = Dir::new();
    csv.copy_fixture("orders_day1.csv", "orders.csv");
    csv.orders_config(&emu.endpoint());
    let expected = baseline_of(&csv);
    assert_eq!(expected.len(), 12);

    let ndjson = Dir::new();
    ndjson.copy_fixture("orders_day1.ndjson", "orders.ndjson");
    ndjson.orders_config(&emu.endpoint());
    ndjson.edit_config(
        "type = \"csv\"\npath = \"orders.csv\"",
        "type = \"ndjson\"\npath = \"orders.ndjson\"",
    );
    assert_eq!(baseline_of(&ndjson), expected, "NDJSON");

    let postgres = Dir::new();
    let query = format!("SELECT * FROM {t}");
    write_config(
        &postgres,
        &db_source("postgres", &url, &query, "order_id"),
        ORDERS_MAPPING,
        &emu.endpoint(),
    );
    assert_eq!(baseline_of(&postgres), expected, "PostgreSQL");

    // SQLite types values, not columns: times are text, gift is 0/1 declared bool.
    let sqlite = Dir::new();
    let conn = rusqlite::Connection::open(sqlite.join("shop.db")).unwrap();
    conn.execute_batch(&format!(
        "CREATE TABLE orders (order_id INTEGER PRIMARY KEY, customer_email TEXT, ordered_at TEXT, \
         amount REAL, currency TEXT, gift INTEGER, campaign TEXT, status TEXT);
         INSERT INTO orders VALUES {};",
        orders_values("orders_day1.csv", |col, v| match col {
            "gift" => (parse_bool(v).unwrap() as u8).to_string(),
            "order_id" | "amount" => v.to_string(),
            _ => quote(v),
        })
    ))
    .unwrap();
    drop(conn);
    write_config(
        &sqlite,
        "type = \"sqlite\"\npath = \"shop.db\"\nquery = '''SELECT * FROM orders'''\nprimary_key = [\"order_id\"]",
        &format!("{ORDERS_MAPPING}\ntypes = {{ gift = \"bool\" }}"),
        &emu.endpoint(),
    );
    assert_eq!(baseline_of(&sqlite), expected, "SQLite");

    if let Some(my_url) = server_url(MYSQL_VAR) {
        let mut my = My::connect(&my_url);
        let mt = my.table("orders");
        my.exec(&format!(
            "CREATE TABLE {mt} (order_id INT PRIMARY KEY, customer_email VARCHAR(100), \
             ordered_at DATETIME, amount DECIMAL(10, 2), currency CHAR(3), gift TINYINT(1), \
             campaign VARCHAR(40), status VARCHAR(20))"
        ));
        my.exec(&format!(
            "INSERT INTO {mt} VALUES {}",
            orders_values("orders_day1.csv", |col, v| match col {
                "gift" => (parse_bool(v).unwrap() as u8).to_string(),
                "ordered_at" => quote(&utc_naive(v)),
                _ => quote(v),
            })
        ));
        let mysql = Dir::new();
        let query = format!("SELECT * FROM {mt}");
        write_config(
            &mysql,
            &db_source("mysql", &my_url, &query, "order_id"),
            &format!("{ORDERS_MAPPING}\ntypes = {{ gift = \"bool\" }}"),
            &emu.endpoint(),
        );
        assert_eq!(baseline_of(&mysql), expected, "MySQL");
    }
    assert!(emu.received().is_empty());
}

#[test]
fn a_postgres_query_error_aborts_the_run_before_commit_with_the_database_message() {
    let url = url_or_skip!(PG_VAR);
    let mut pg = Pg::connect(&url);
    let t = pg.table("orders");
    pg_orders(&pg, &t, "orders_day1.csv");
    let emu = emulator();
    let dir = Dir::new();
    let good = format!("SELECT * FROM {t} ORDER BY order_id");
    write_config(
        &dir,
        &db_source("postgres", &url, &good, "order_id"),
        ORDERS_MAPPING,
        &emu.endpoint(),
    );
    let (code, _) = dir.sync();
    assert_eq!(code, 0);
    let before = baseline(&dir);
    pg.exec(&format!(
        "INSERT INTO {t} VALUES (1013, 'ada@example.com', '2026-11-21T08:00:00Z', 12, 'EUR', false, NULL, 'paid')"
    ));

    // Rows stream before the failing one: the error comes mid-result.
    let failing = format!("SELECT *, 1 / (order_id - 1010) AS boom FROM {t}");
    dir.edit_config(&good, &failing);
    let (code, summary) = dir.sync();
    assert_eq!(code, 1, "{summary}");
    let error = error_of(&summary);
    assert!(
        error.contains("division by zero") && error.contains("SQLSTATE 22012"),
        "{error}"
    );
    assert_eq!(baseline(&dir), before);
    assert_eq!(emu.received().len(), 12);

    let missing = format!("SELECT * FROM {t}_nope");
    dir.edit_config(&failing, &missing);
    let (code, summary) = dir.sync();
    assert_eq!(code, 1, "{summary}");
    assert!(error_of(&summary).contains("does not exist"), "{summary}");

    dir.edit_config(&missing, &good);
    let (code, summary) = dir.sync();
    assert_eq!((code, summary["added"].as_u64()), (0, Some(1)), "{summary}");
    assert_eq!(emu.received().len(), 13);
}

/// A segment of `n` generated orders; the server pauses for `pause_s` seconds at row
/// `pause_at` (after it has sent the rows before), and `marker` names the query.
fn generated_orders(n: u64, pause_at: u64, pause_s: u64, marker: &str) -> String {
    format!(
        "SELECT /* {marker} */ g AS order_id, 'user' || g || '@example.com' AS customer_email, \
         timestamptz '2026-11-20T00:00:00Z' + g * interval '1 second' AS ordered_at, \
         (g % 1000) + 0.5 AS amount, 'EUR' AS currency, g % 2 = 0 AS gift, NULL::text AS campaign, \
         CASE WHEN g = {pause_at} THEN pg_sleep({pause_s})::text END AS pause \
         FROM generate_series(1, {n}) g"
    )
}

#[test]
fn a_connection_dropped_mid_stream_aborts_before_commit_and_the_next_run_works() {
    let url = url_or_skip!(PG_VAR);
    let pg = Pg::connect(&url);
    let emu = emulator();
    let dir = Dir::new();
    let marker = unique("batchsync_drop");
    let small = generated_orders(10, 0, 0, &marker);
    write_config(
        &dir,
        &db_source("postgres", &url, &small, "order_id"),
        ORDERS_MAPPING,
        &emu.endpoint(),
    );
    let (code, first) = dir.sync();
    assert_eq!(code, 0, "{first}");
    let before = baseline(&dir);
    assert_eq!(before.len(), 10);

    let large = generated_orders(200_000, 20_000, 60, &marker);
    dir.edit_config(&small, &large);
    let child = dir
        .cmd(&["run", "--json", "--quiet"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the server pauses mid-result, then kill the backend from another connection.
    let active = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%{marker}%' \
         AND query LIKE '%pg_sleep(60)%' AND state = 'active' AND pid <> pg_backend_pid()"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while pg.count(&active) == 0 {
        assert!(Instant::now() < deadline, "the query never became active");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let killed = pg.count(&format!(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE query LIKE '%{marker}%' AND pid <> pg_backend_pid()) k"
    ));
    assert!(killed >= 1);
    let (code, summary) = json_of(child.wait_with_output().unwrap());
    assert_eq!(code, 1, "{summary}");
    let error = error_of(&summary);
    assert!(
        error.contains("terminating connection due to administrator command"),
        "{error}"
    );
    // Rows had arrived before the drop: "after N rows" with N > 0.
    let after: u64 = error
        .split("after ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no row count in {error}"));
    assert!(after > 0, "{error}");
    assert_eq!(baseline(&dir), before);
    assert_eq!(emu.received().len(), 10);

    dir.edit_config(&large, &small);
    let (code, next) = dir.sync();
    assert_eq!(
        (code, next["added"].as_u64(), next["removed"].as_u64()),
        (0, Some(0), Some(0)),
        "{next}"
    );
    assert_eq!(baseline(&dir), before);
}

#[test]
fn a_postgres_query_slower_than_the_source_timeout_fails_with_the_server_message() {
    let url = url_or_skip!(PG_VAR);
    let _pg = Pg::connect(&url);
    let emu = emulator();
    let dir = Dir::new();
    let query = generated_orders(10, 5, 5, &unique("batchsync_slow"));
    let source = format!(
        "{}\ntimeout = \"1s\"",
        db_source("postgres", &url, &query, "order_id")
    );
    write_config(&dir, &source, ORDERS_MAPPING, &emu.endpoint());
    let started = Instant::now();
    let (code, summary) = dir.sync();
    assert_eq!(code, 1, "{summary}");
    assert!(
        error_of(&summary).contains("statement timeout"),
        "{summary}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(emu.received().is_empty());
}

#[test]
fn an_unmapped_column_added_to_the_query_changes_no_hash_and_sends_nothing() {
    let url = url_or_skip!(PG_VAR);
    let mut pg = Pg::connect(&url);
    let t = pg.table("orders");
    pg_orders(&pg, &t, "orders_day1.csv");
    let emu = emulator();
    let dir = Dir::new();
    let narrow = format!("SELECT {ORDERS_COLUMNS} FROM {t}");
    write_config(
        &dir,
        &db_source("postgres", &url, &narrow, "order_id"),
        ORDERS_MAPPING,
        &emu.endpoint(),
    );
    let (code, _) = dir.sync();
    assert_eq!(code, 0);
    let before = baseline(&dir);

    pg.exec(&format!(
        "ALTER TABLE {t} ADD COLUMN coupon text DEFAULT 'WELCOME10'"
    ));
    let wide = format!("SELECT {ORDERS_COLUMNS}, coupon, status FROM {t}");
    dir.edit_config(&narrow, &wide);
    let (code, summary) = dir.sync();
    assert_eq!(code, 0, "{summary}");
    assert_eq!(
        (
            summary["added"].as_u64(),
            summary["changed"].as_u64(),
            summary["removed"].as_u64(),
            summary["events_sent"].as_u64()
        ),
        (Some(0), Some(0), Some(0), Some(0)),
        "{summary}"
    );
    assert_eq!(baseline(&dir), before);
    assert_eq!(emu.received().len(), 12);
}

#[test]
fn a_mapped_column_removed_from_the_query_is_a_config_error_naming_it() {
    let url = url_or_skip!(PG_VAR);
    let mut pg = Pg::connect(&url);
    let t = pg.table("orders");
    pg_orders(&pg, &t, "orders_day1.csv");
    let emu = emulator();
    let dir = Dir::new();
    let full = format!("SELECT {ORDERS_COLUMNS} FROM {t}");
    write_config(
        &dir,
        &db_source("postgres", &url, &full, "order_id"),
        ORDERS_MAPPING,
        &emu.endpoint(),
    );
    let (code, _) = dir.sync();
    assert_eq!(code, 0);
    let before = baseline(&dir);

    let without =
        format!("SELECT order_id, customer_email, ordered_at, amount, gift, campaign FROM {t}");
    dir.edit_config(&full, &without);
    let (code, summary) = dir.sync();
    assert_eq!(code, 2, "{summary}");
    let error = error_of(&summary);
    assert!(
        error.contains("column \"currency\"") && error.contains("it has: order_id"),
        "{error}"
    );
    assert!(!error.contains("password"), "{error}");
    assert_eq!(baseline(&dir), before);
}

#[test]
fn a_numeric_that_does_not_fit_a_float_exactly_becomes_a_reject_with_its_column() {
    let url = url_or_skip!(PG_VAR);
    let mut pg = Pg::connect(&url);
    let t = pg.table("big");
    pg.exec(&format!(
        "CREATE TABLE {t} (order_id int PRIMARY KEY, customer_email text, ordered_at timestamptz, \
         amount numeric(30, 3), currency text, gift bool, campaign text);
         INSERT INTO {t} VALUES
           (1, 'ada@example.com', '2026-11-20T09:00:00Z', 12345678901234567890.123, 'EUR', true, NULL),
           (2, 'grace@example.com', '2026-11-20T09:00:00Z', 0.1, 'EUR', false, NULL);"
    ));
    let emu = emulator();
    let dir = Dir::new();
    let query = format!("SELECT * FROM {t}");
    write_config(
        &dir,
        &db_source("postgres", &url, &query, "order_id"),
        ORDERS_MAPPING,
        &emu.endpoint(),
    );
    let (code, summary) = dir.sync();
    assert_eq!(code, 3, "{summary}");
    assert_eq!(
        (
            summary["rejected"].as_u64(),
            summary["events_sent"].as_u64()
        ),
        (Some(1), Some(1))
    );
    let received = emu.received();
    assert_eq!(received[0].event["attributes"]["amount"], json!(0.1));

    let (_, rejects) = json_of(dir.run(&["rejects", "--json"]));
    let rejects = rejects.as_array().unwrap();
    assert_eq!(rejects.len(), 1, "{rejects:?}");
    assert_eq!(rejects[0]["column"], "amount");
    let reason = rejects[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("12345678901234567890.123")
            && reason.contains("does not fit a 64-bit float exactly"),
        "{reason}"
    );
}

#[test]
fn a_postgres_password_comes_from_password_env_and_never_shows() {
    let url = url_or_skip!(PG_VAR);
    let _pg = Pg::connect(&url);
    let emu = emulator();
    let dir = Dir::new();
    let source = format!(
        "{}\npassword_env = \"BATCHSYNC_TEST_DB_PASSWORD\"",
        db_source("postgres", &url, "SELECT 1 AS order_id, 'a@example.com' AS customer_email, now() AS ordered_at, 1 AS amount, 'EUR' AS currency, true AS gift, NULL AS campaign", "order_id")
    );
    write_config(&dir, &source, ORDERS_MAPPING, &emu.endpoint());

    // An unset variable is a config error that names it.
    let out = dir
        .cmd(&["check"])
        .env_remove("BATCHSYNC_TEST_DB_PASSWORD")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        crate::common::stderr(&out)
    );
    assert!(crate::common::stderr(&out).contains("BATCHSYNC_TEST_DB_PASSWORD"));

    // With trust authentication the password is not checked, but it must never be printed.
    let secret = "s3cret-Pa55-do-not-print";
    let out = dir
        .cmd(&["run", "--json"])
        .env("BATCHSYNC_TEST_DB_PASSWORD", secret)
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        crate::common::stderr(&out)
    );
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(!all.contains(secret), "{all}");
    let state = std::fs::read(dir.state()).unwrap();
    assert!(!String::from_utf8_lossy(&state).contains(secret));

    // A password written in the URL stays out of messages too, failures included.
    let inline = "inline-Pa55-do-not-print";
    let Some((scheme, rest)) = url.split_once("://") else {
        return;
    };
    let Some((user, host)) = rest.split_once('@').filter(|(u, _)| !u.contains(':')) else {
        loud(&format!(
            "SKIPPED: {PG_VAR} has no user or already a password; inline password not tried"
        ));
        return;
    };
    let with_password = format!("{scheme}://{user}:{inline}@{host}");
    let failing = "SELECT 1 AS order_id FROM no_such_table_here";
    let source = db_source("postgres", &with_password, failing, "order_id");
    write_config(&dir, &source, ORDERS_MAPPING, &emu.endpoint());
    let out = dir.cmd(&["run", "--json"]).output().unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        crate::common::stderr(&out)
    );
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("no_such_table_here") && !all.contains(inline),
        "{all}"
    );
}

#[test]
fn a_postgres_url_asking_for_tls_verifies_the_server_certificate() {
    let url = url_or_skip!(PG_VAR);
    let _pg = Pg::connect(&url);
    let emu = emulator();
    let dir = Dir::new();
    let query = "SELECT 1 AS order_id, 'a@example.com' AS customer_email, now() AS ordered_at, \
                 (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()) AS gift, \
                 1 AS amount, 'EUR' AS currency, NULL AS campaign";
    let sep = if url.contains('?') { '&' } else { '?' };
    let tls_url = format!("{url}{sep}sslmode=require");
    write_config(
        &dir,
        &db_source("postgres", &tls_url, query, "order_id"),
        ORDERS_MAPPING,
        &emu.endpoint(),
    );
    let out = dir.run(&["check"]);
    let err = crate::common::stderr(&out);
    // A test server's self-signed certificate is not trusted by the public roots: refused,
    // rather than used unverified. (A server with a public certificate would connect.)
    if out.status.code() == Some(1) {
        assert!(err.contains("TLS"), "{err}");
    } else {
        assert_eq!(out.status.code(), Some(0), "{err}");
    }

    // With the server's own certificate as the root, and its name as the host, TLS is used.
    let snakeoil = "/etc/ssl/certs/ssl-cert-snakeoil.pem";
    if !std::path::Path::new(snakeoil).exists() || !url.contains("127.0.0.1") {
        loud(&format!(
            "SKIPPED: no {snakeoil} for 127.0.0.1; the verified TLS connection was not tried"
        ));
        return;
    }
    let verified = format!(
        "{}{sep}sslmode=verify-full&sslrootcert={snakeoil}",
        url.replace("127.0.0.1", "localhost")
    );
    dir.edit_config(&tls_url, &verified);
    let (code, plan) = json_of(dir.run(&["plan", "--json"]));
    if code != 0 {
        loud(&format!(
            "SKIPPED: the server's certificate is not {snakeoil}: {plan}"
        ));
        return;
    }
    assert_eq!(
        plan["sample"][0]["events"][0]["attributes"]["gift"],
        json!(true),
        "{plan}"
    );
}

#[test]
fn a_mariadb_segment_syncs_with_tinyint_declared_bool_and_naive_datetime() {
    let url = url_or_skip!(MYSQL_VAR);
    let mut my = My::connect(&url);
    let t = my.table("orders");
    my.exec(&format!(
        "CREATE TABLE {t} (order_id INT PRIMARY KEY, customer_email VARCHAR(100) NOT NULL, \
         ordered_at DATETIME(3), amount DECIMAL(10, 2), currency CHAR(3), gift TINYINT(1), \
         campaign VARCHAR(40), created TIMESTAMP NULL, note BLOB)"
    ));
    my.exec(&format!(
        "INSERT INTO {t} VALUES
           (1, 'ada@example.com', '2026-11-20 10:30:00.250', 42.50, 'EUR', 1, 'black_friday', '2026-11-20 09:00:00', 'merci'),
           (2, 'grace@example.com', '2026-07-01 08:00:00', 250.00, 'USD', 0, NULL, NULL, NULL)"
    ));
    let emu = emulator();
    let dir = Dir::new();
    let query = format!("SELECT * FROM {t}");
    let mapping = r#"custom_id = "customer_email"
event = "order_completed"
time = "ordered_at"
label = "campaign"
attributes = ["amount", "currency", "gift", "note"]
types = { gift = "bool" }
timezone = "Europe/Paris""#;
    write_config(
        &dir,
        &db_source("mysql", &url, &query, "order_id"),
        mapping,
        &emu.endpoint(),
    );
    let (code, first) = dir.sync();
    assert_eq!(code, 0, "{first}");
    let mut received = emu.received();
    received.sort_by(|a, b| a.custom_id.cmp(&b.custom_id));
    assert_eq!(
        received.iter().map(|r| &r.event).collect::<Vec<_>>(),
        [
            // DATETIME is wall-clock time in Paris (CET in November, CEST in July).
            &json!({"name": "order_completed", "time": "2026-11-20T09:30:00.250000Z", "attributes": {
                "$label": "black_friday", "amount": 42.5, "currency": "EUR", "gift": true, "note": "merci"}}),
            &json!({"name": "order_completed", "time": "2026-07-01T06:00:00Z", "attributes": {
                "amount": 250, "currency": "USD", "gift": false}}),
        ]
    );

    my.exec(&format!(
        "INSERT INTO {t} VALUES (3, 'linus@example.com', '2026-11-21 08:00:00', 7.00, 'EUR', 0, NULL, NULL, NULL)"
    ));
    let (code, second) = dir.sync();
    assert_eq!(
        (
            code,
            second["added"].as_u64(),
            second["events_sent"].as_u64()
        ),
        (0, Some(1), Some(1)),
        "{second}"
    );
    assert_eq!(emu.received()[2].custom_id, "linus@example.com");
}

#[test]
fn a_mariadb_query_error_aborts_with_the_server_message() {
    let url = url_or_skip!(MYSQL_VAR);
    let _my = My::connect(&url);
    let emu = emulator();
    let dir = Dir::new();
    let missing = unique("nope");
    let query = format!("SELECT * FROM {missing}");
    write_config(
        &dir,
        &db_source("mysql", &url, &query, "order_id"),
        ORDERS_MAPPING,
        &emu.endpoint(),
    );
    let (code, summary) = dir.sync();
    assert_eq!(code, 1, "{summary}");
    assert!(
        error_of(&summary).contains(&format!("{missing}' doesn't exist")),
        "{summary}"
    );
}

#[test]
fn a_sqlite_segment_syncs_from_a_query() {
    let emu = emulator();
    let dir = Dir::new();
    let conn = rusqlite::Connection::open(dir.join("shop.db")).unwrap();
    conn.execute_batch(
        "CREATE TABLE customer (id INTEGER PRIMARY KEY, email TEXT NOT NULL);
         CREATE TABLE orders (id INTEGER PRIMARY KEY, customer INTEGER, at TEXT, total REAL, gift INTEGER, state TEXT);
         INSERT INTO customer VALUES (1, 'ada@example.com'), (2, 'grace@example.com');
         INSERT INTO orders VALUES (10, 1, '2026-11-20T09:15:00Z', 42.5, 1, 'paid'),
                                   (11, 2, '2026-11-20 10:00:00', 19.99, 0, 'paid'),
                                   (12, 2, '2026-11-20 11:00:00', 5, 0, 'cancelled');",
    )
    .unwrap();
    let query = "SELECT o.id AS order_id, c.email AS customer_email, o.at AS ordered_at, \
                 o.total AS amount, 'EUR' AS currency, o.gift, NULL AS campaign \
                 FROM orders o JOIN customer c ON c.id = o.customer WHERE o.state = 'paid'";
    write_config(
        &dir,
        &format!("type = \"sqlite\"\npath = \"shop.db\"\nquery = '''{query}'''\nprimary_key = [\"order_id\"]"),
        &format!("{ORDERS_MAPPING}\ntypes = {{ gift = \"bool\" }}"),
        &emu.endpoint(),
    );
    let (code, first) = dir.sync();
    assert_eq!(
        (code, first["events_sent"].as_u64()),
        (0, Some(2)),
        "{first}"
    );
    let ada = emu
        .received()
        .into_iter()
        .find(|r| r.custom_id == "ada@example.com")
        .unwrap();
    assert_eq!(
        ada.event,
        json!({"name": "order_completed", "time": "2026-11-20T09:15:00Z",
               "attributes": {"amount": 42.5, "currency": "EUR", "gift": true}})
    );

    conn.execute_batch("INSERT INTO orders VALUES (13, 1, '2026-11-21 08:00:00', 12, 0, 'paid');")
        .unwrap();
    let (code, second) = dir.sync();
    assert_eq!(
        (
            code,
            second["added"].as_u64(),
            second["events_sent"].as_u64()
        ),
        (0, Some(1), Some(1)),
        "{second}"
    );
    assert_eq!(emu.received().len(), 3);

    // The source is read-only: a query that writes fails, and the file is unchanged.
    dir.edit_config(
        query,
        "DELETE FROM orders RETURNING id AS order_id, 'x' AS customer_email, at AS ordered_at, \
         total AS amount, 'EUR' AS currency, gift, NULL AS campaign",
    );
    let (code, summary) = dir.sync();
    assert_eq!(code, 1, "{summary}");
    assert!(error_of(&summary).contains("readonly"), "{summary}");
    let n: i64 = conn
        .query_row("SELECT count(*) FROM orders", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 4);
}
