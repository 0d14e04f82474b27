//! The database mode (`[state] store = "database"`, WAREHOUSE.md) end to end against the real
//! PostgreSQL at `BATCHSYNC_TEST_PG_URL` and the emulator: setup and its checks, a run and its
//! idempotent twin, `plan` writing nothing, and bad input (a second statement, a query error,
//! a statement timeout, a missing grant) leaving nothing half-done. Each test owns a schema of
//! its own and a table, dropped when it ends.

use crate::common::db::{warehouse_config, Pg, Schema, PG_VAR};
use crate::common::{assert_counts, emulator, json_of, Dir};
use crate::url_or_skip;
use serde_json::Value;

/// A table of `n` orders, `o{i}@x.io` as custom id.
fn orders(pg: &Pg, t: &str, n: u32) {
    pg.exec(&format!(
        "CREATE TABLE {t} (order_id int PRIMARY KEY, email text, amount numeric(10,2), currency text, ordered_at timestamptz);
         INSERT INTO {t} SELECT i, 'o' || i || '@x.io', i * 1.50, 'EUR', '2026-11-20T10:00:00Z'::timestamptz + i * interval '1 minute'
         FROM generate_series(1, {n}) i;"
    ));
}

const MAPPING: &str = "custom_id = \"email\"\nevent = \"order_completed\"\ntime = \"ordered_at\"\nattributes = [\"amount\", \"currency\"]";
const SYNC: &str = "late_events = \"send\"";

struct Sync {
    dir: Dir,
    schema: Schema,
    pg: Pg,
    table: String,
}

impl Sync {
    /// A table of `n` orders and a database-mode config over it (not set up yet).
    fn new(url: &str, n: u32, endpoint: &str) -> Sync {
        let mut pg = Pg::connect(url);
        let table = pg.table("wh_orders");
        orders(&pg, &table, n);
        let schema = Schema::new(url, "wh");
        let dir = Dir::new();
        let s = Sync {
            dir,
            schema,
            pg,
            table,
        };
        s.config(&format!("SELECT * FROM {};", s.table), endpoint);
        s
    }

    fn config(&self, query: &str, endpoint: &str) {
        let url = std::env::var(PG_VAR).unwrap();
        self.dir.write(
            "batchsync.toml",
            warehouse_config(
                &url,
                query,
                "order_id",
                &self.schema.name,
                "orders",
                MAPPING,
                SYNC,
                endpoint,
            ),
        );
    }

    fn table_of(&self, suffix: &str) -> String {
        format!("\"{}\".orders_{suffix}", self.schema.name)
    }

    fn count(&self, suffix: &str, filter: &str) -> i64 {
        self.pg.count(&format!(
            "SELECT count(*) FROM {} {filter}",
            self.table_of(suffix)
        ))
    }

    /// Every row of every table of the sync, as text: what "changes nothing" compares.
    fn dump(&self) -> String {
        [
            "meta",
            "runs",
            "baseline",
            "delta",
            "outbox",
            "rejects",
            "open_rejects",
            "history",
        ]
        .iter()
        .map(|s| {
            let rows = self
                .pg
                .rt
                .block_on(self.pg.client.query(
                    &format!("SELECT t::text FROM {} t ORDER BY 1", self.table_of(s)),
                    &[],
                ))
                .unwrap();
            let rows: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            format!("{s}: {}", rows.join("\n"))
        })
        .collect::<Vec<_>>()
        .join("\n")
    }

    fn setup(&self) {
        let out = self.dir.run(&["setup"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_run_against_tables_never_set_up_or_dropped_exits_2_naming_setup_and_sends_nothing() {
    let url = url_or_skip!(PG_VAR);
    let emu = emulator();
    let s = Sync::new(&url, 5, &emu.endpoint());
    let (code, summary) = s.dir.sync();
    assert_eq!(code, 2, "{summary}");
    let e = summary["error"].as_str().unwrap();
    assert!(e.contains("run `batchsync setup` first"), "{e}");
    let plan = s.dir.run(&["plan"]);
    assert_eq!(plan.status.code(), Some(2));
    assert!(stderr(&plan).contains("batchsync setup"));
    assert!(emu.received().is_empty());

    s.setup();
    let (code, summary) = s.dir.sync();
    assert_eq!(
        (code, summary["events_sent"].as_u64()),
        (0, Some(5)),
        "{summary}"
    );
    // Lost state must not turn into a first run that sends everything again.
    s.pg.exec(&format!("DROP TABLE {}", s.table_of("baseline")));
    let (code, summary) = s.dir.sync();
    assert_eq!(code, 2, "{summary}");
    assert!(
        summary["error"]
            .as_str()
            .unwrap()
            .contains("orders_baseline"),
        "{summary}"
    );
    assert_eq!(emu.received().len(), 5);
}

#[test]
fn setup_says_what_it_created_and_check_verifies_without_writing() {
    let url = url_or_skip!(PG_VAR);
    let s = Sync::new(&url, 3, "http://127.0.0.1:9");
    let check = s.dir.run(&["check"]);
    assert_eq!(check.status.code(), Some(2), "{}", stderr(&check));
    assert!(stderr(&check).contains("batchsync setup"));

    let (code, first) = json_of(s.dir.run(&["setup", "--json"]));
    assert_eq!(code, 0);
    let created: Vec<&str> = first["created"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(created.len(), 9, "{first}");
    assert!(created[0].starts_with("schema "), "{first}");
    assert!(
        created.iter().any(|c| c.ends_with("\"orders_outbox\"")),
        "{first}"
    );
    let (code, second) = json_of(s.dir.run(&["setup", "--json"]));
    assert_eq!(code, 0);
    assert_eq!(second["created"], Value::Array(vec![]), "{second}");
    assert_eq!(second["existing"].as_array().unwrap().len(), 8);

    let before = s.dump();
    let (code, check) = json_of(s.dir.run(&["check", "--json"]));
    assert_eq!(code, 0, "{check}");
    assert!(
        check["state"].as_str().unwrap().contains("set up"),
        "{check}"
    );
    assert_eq!(s.dump(), before, "check wrote something");
}

#[test]
fn a_database_run_sends_added_rows_once_and_an_unchanged_run_sends_and_writes_nothing() {
    let url = url_or_skip!(PG_VAR);
    let emu = emulator();
    let s = Sync::new(&url, 40, &emu.endpoint());
    s.setup();
    let (code, first) = s.dir.sync();
    assert_eq!(code, 0, "{first}");
    assert_eq!(
        (
            first["rows"].as_u64(),
            first["added"].as_u64(),
            first["events_sent"].as_u64()
        ),
        (Some(40), Some(40), Some(40))
    );
    assert_eq!(emu.received().len(), 40);
    let o7 = emu
        .received()
        .into_iter()
        .find(|r| r.custom_id == "o7@x.io")
        .unwrap();
    assert_eq!(
        o7.event["attributes"],
        serde_json::json!({"amount": 10.5, "currency": "EUR"})
    );
    assert_eq!(s.count("baseline", "WHERE present"), 40);
    assert_eq!(s.count("delta", ""), 0);

    let baseline = |s: &Sync| {
        s.pg.rt
            .block_on(s.pg.client.query(
                &format!(
                    "SELECT k, hash, present, run_id FROM {} ORDER BY k",
                    s.table_of("baseline")
                ),
                &[],
            ))
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    r.get::<_, Vec<u8>>(1),
                    r.get::<_, bool>(2),
                    r.get::<_, i64>(3),
                )
            })
            .collect::<Vec<_>>()
    };
    let before = baseline(&s);
    assert!(
        before.iter().any(|b| b.0 == "{\"order_id\":1}"),
        "{before:?}"
    );
    let (code, again) = s.dir.sync();
    assert_eq!(code, 0, "{again}");
    assert_counts(&again, &[("unchanged", 40), ("added", 0), ("requests", 0)]);
    assert_eq!(
        baseline(&s),
        before,
        "an unchanged run rewrote the baseline"
    );

    // A change of each kind: 2 added, 1 changed (not sent: on_change = ignore), 1 removed.
    s.pg.exec(&format!(
        "INSERT INTO {t} VALUES (41, 'n41@x.io', 1, 'USD', now()), (42, 'n42@x.io', 2, 'USD', now());
         UPDATE {t} SET amount = 99 WHERE order_id = 3; DELETE FROM {t} WHERE order_id = 4;",
        t = s.table
    ));
    let (code, third) = s.dir.sync();
    assert_eq!(code, 0, "{third}");
    assert_counts(
        &third,
        &[
            ("added", 2),
            ("changed", 1),
            ("removed", 1),
            ("unchanged", 38),
            ("events_sent", 2),
        ],
    );
    assert_eq!(s.count("baseline", "WHERE present"), 41);
    assert_eq!(
        s.count("baseline", "WHERE NOT present AND k = '{\"order_id\":4}'"),
        1
    );

    // Re-entry: the removed row comes back and is sent again (reentry = "event").
    s.pg.exec(&format!(
        "INSERT INTO {t} VALUES (4, 'o4@x.io', 6.00, 'EUR', now())",
        t = s.table
    ));
    let (code, fourth) = s.dir.sync();
    assert_eq!(code, 0, "{fourth}");
    assert_counts(
        &fourth,
        &[("added", 1), ("reentered", 1), ("events_sent", 1)],
    );
    assert_eq!(emu.received().len(), 43);

    // status reads the sync's run records.
    let (code, status) = json_of(s.dir.run(&["status", "--json"]));
    assert_eq!(code, 0);
    assert_eq!(status["runs"].as_array().unwrap().len(), 4, "{status}");
    assert_eq!(status["runs"][0]["status"], "completed");
    assert_eq!(status["baseline_rows"], 42);
}

#[test]
fn plan_in_the_database_mode_maps_the_delta_and_writes_nothing() {
    let url = url_or_skip!(PG_VAR);
    let emu = emulator();
    let s = Sync::new(&url, 10, &emu.endpoint());
    s.setup();
    assert_eq!(s.dir.sync().0, 0);
    s.pg.exec(&format!(
        "INSERT INTO {t} VALUES (11, 'n11@x.io', 1, 'USD', now()), (12, '', 2, 'USD', now()); DELETE FROM {t} WHERE order_id = 1;",
        t = s.table
    ));
    let before = s.dump();
    let (code, plan) = json_of(s.dir.run(&["plan", "--json"]));
    assert_eq!(code, 0, "{plan}");
    assert_counts(
        &plan,
        &[("added", 2), ("removed", 1), ("rejected", 1), ("events", 1)],
    );
    assert_eq!(
        plan["rejects_sample"][0]["key"],
        serde_json::json!({"order_id": 12}),
        "{plan}"
    );
    assert_eq!(plan["rejects_sample"][0]["column"], "email", "{plan}");
    assert_eq!(s.dump(), before, "plan wrote something");
    assert_eq!(emu.received().len(), 10);

    // The run does what the plan said; the empty custom id is a reject with its key.
    let (code, run) = s.dir.sync();
    assert_eq!(code, 3, "{run}");
    assert_counts(&run, &[("rejected", 1), ("events_sent", 1)]);
    let (_, rejects) = json_of(s.dir.run(&["rejects", "--json"]));
    assert_eq!(
        rejects[0]["key"],
        serde_json::json!({"order_id": 12}),
        "{rejects}"
    );
    assert_eq!(rejects[0]["rule"], "custom_id_empty", "{rejects}");
    // The rejected row did not enter the baseline: it is tried again once fixed.
    assert_eq!(s.count("baseline", "WHERE k = '{\"order_id\":12}'"), 0);
    s.pg.exec(&format!(
        "UPDATE {t} SET email = 'fixed@x.io' WHERE order_id = 12",
        t = s.table
    ));
    let (code, fixed) = s.dir.sync();
    assert_eq!(
        (code, fixed["added"].as_u64(), fixed["events_sent"].as_u64()),
        (0, Some(1), Some(1)),
        "{fixed}"
    );
}

#[test]
fn a_query_of_two_statements_is_refused_and_one_trailing_semicolon_is_fine() {
    let url = url_or_skip!(PG_VAR);
    let emu = emulator();
    let s = Sync::new(&url, 3, &emu.endpoint());
    s.setup();
    s.config(
        &format!("SELECT * FROM {t}; DELETE FROM {t}", t = s.table),
        &emu.endpoint(),
    );
    let (code, summary) = s.dir.sync();
    assert_eq!(code, 2, "{summary}");
    assert!(
        summary["error"]
            .as_str()
            .unwrap()
            .contains("more than one statement"),
        "{summary}"
    );
    assert_eq!(s.pg.count(&format!("SELECT count(*) FROM {}", s.table)), 3);
    s.config(
        &format!("SELECT * FROM {t} -- the orders\n;\n", t = s.table),
        &emu.endpoint(),
    );
    let (code, summary) = s.dir.sync();
    assert_eq!(
        (code, summary["events_sent"].as_u64()),
        (0, Some(3)),
        "{summary}"
    );
}

#[test]
fn a_query_error_or_a_statement_timeout_aborts_with_the_database_message_and_changes_nothing() {
    let url = url_or_skip!(PG_VAR);
    let emu = emulator();
    let s = Sync::new(&url, 20, &emu.endpoint());
    s.setup();
    assert_eq!(s.dir.sync().0, 0);
    s.pg.exec(&format!(
        "INSERT INTO {t} VALUES (21, 'n@x.io', 1, 'USD', now())",
        t = s.table
    ));
    let before = s.dump();

    // Fails at one row, after the first rows were read.
    s.config(&format!("SELECT order_id, email, amount / (order_id - 15) AS amount, currency, ordered_at FROM {}", s.table), &emu.endpoint());
    let (code, summary) = s.dir.sync();
    assert_eq!(code, 1, "{summary}");
    let e = summary["error"].as_str().unwrap();
    assert!(
        e.contains("division by zero") && e.contains("SQLSTATE 22012"),
        "{e}"
    );

    // A query that outlives [source] timeout.
    let cfg = std::fs::read_to_string(s.dir.join("batchsync.toml")).unwrap();
    s.dir.write(
        "batchsync.toml",
        cfg.replace(
            &format!("FROM {}", s.table),
            &format!("FROM {} WHERE pg_sleep(3) IS NOT NULL", s.table),
        )
        .replace("amount / (order_id - 15) AS amount", "amount")
        .replace(
            "primary_key = [\"order_id\"]",
            "primary_key = [\"order_id\"]\ntimeout = \"1s\"",
        ),
    );
    let (code, summary) = s.dir.sync();
    assert_eq!(code, 1, "{summary}");
    assert!(
        summary["error"]
            .as_str()
            .unwrap()
            .contains("statement timeout"),
        "{summary}"
    );

    // Nothing of either run but its failed record; the sent events unchanged.
    let after = s.dump();
    let strip_runs = |d: &str| {
        d.lines()
            .filter(|l| !l.contains("\"status\": \"failed\"") && !l.contains("failed"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(strip_runs(&after), strip_runs(&before));
    assert_eq!(s.count("runs", "WHERE status = 'failed'"), 2);
    assert_eq!(emu.received().len(), 20);
}

#[test]
fn a_missing_grant_is_named() {
    let url = url_or_skip!(PG_VAR);
    let emu = emulator();
    let s = Sync::new(&url, 3, &emu.endpoint());
    s.setup();
    let role = format!("bs_nogrant_{}", std::process::id());
    s.pg.exec(&format!(
        "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN; GRANT SELECT ON {t} TO {role}; GRANT USAGE ON SCHEMA \"{sc}\" TO {role}; GRANT SELECT ON ALL TABLES IN SCHEMA \"{sc}\" TO {role};",
        t = s.table,
        sc = s.schema.name
    ));
    let at = url.find("://").unwrap() + 3;
    let host = &url[url.find('@').map_or(at, |i| i + 1)..];
    let as_role = format!("postgres://{role}@{host}");
    s.dir.write(
        "batchsync.toml",
        warehouse_config(
            &as_role,
            &format!("SELECT * FROM {}", s.table),
            "order_id",
            &s.schema.name,
            "orders",
            MAPPING,
            SYNC,
            &emu.endpoint(),
        ),
    );
    let check = s.dir.run(&["check"]);
    let text = stderr(&check);
    assert_eq!(check.status.code(), Some(2), "{text}");
    assert!(
        text.contains("GRANT SELECT, INSERT, UPDATE, DELETE ON"),
        "{text}"
    );
    let (code, summary) = s.dir.sync();
    assert_eq!(code, 1, "{summary}");
    assert!(
        summary["error"]
            .as_str()
            .unwrap()
            .contains("permission denied for table orders_"),
        "{summary}"
    );
    s.pg.exec(&format!("DROP OWNED BY {role}; DROP ROLE {role}"));
    assert!(emu.received().is_empty());
}

#[test]
fn rows_batch_drops_become_rejects_and_their_baseline_entries_go_back() {
    use batchsync::emulate::Faults;
    let url = url_or_skip!(PG_VAR);
    let emu = crate::common::emulator_with(
        true,
        Faults {
            reject_custom_ids: vec!["o3@x.io".into()],
            ..Faults::default()
        },
    );
    let s = Sync::new(&url, 10, &emu.endpoint());
    let cfg = std::fs::read_to_string(s.dir.join("batchsync.toml")).unwrap();
    s.dir.write(
        "batchsync.toml",
        cfg.replace(SYNC, &format!("{SYNC}\non_change = \"event\"")),
    );
    s.setup();
    let (code, first) = s.dir.sync();
    assert_eq!(code, 3, "{first}");
    assert_counts(&first, &[("events_sent", 9), ("rejected", 1)]);
    let (_, rejects) = json_of(s.dir.run(&["rejects", "--json"]));
    assert_eq!(rejects[0]["source"], "batch", "{rejects}");
    assert_eq!(
        rejects[0]["key"],
        serde_json::json!({"order_id": 3}),
        "{rejects}"
    );
    // A new key Batch dropped leaves the baseline: the next run adds it again.
    assert_eq!(s.count("baseline", "WHERE k = '{\"order_id\":3}'"), 0);

    // A changed row Batch drops: its entry goes back to the old hash.
    let hash_of_5 = |s: &Sync| -> Vec<u8> {
        let r = s.pg.rt.block_on(s.pg.client.query_one(
            &format!(
                "SELECT hash FROM {} WHERE k = '{{\"order_id\":5}}'",
                s.table_of("baseline")
            ),
            &[],
        ));
        r.unwrap().get(0)
    };
    let before = hash_of_5(&s);
    emu.set_faults(Faults {
        reject_custom_ids: vec!["o3@x.io".into(), "o5@x.io".into()],
        ..Faults::default()
    });
    s.pg.exec(&format!(
        "UPDATE {t} SET amount = 77 WHERE order_id = 5",
        t = s.table
    ));
    let (code, second) = s.dir.sync();
    assert_eq!(code, 3, "{second}");
    // o3 is still rejected (unchanged since Batch dropped it): not sent again.
    assert_counts(
        &second,
        &[("changed", 1), ("rejected", 1), ("still_rejected", 1)],
    );
    assert_eq!(
        hash_of_5(&s),
        before,
        "the dropped change's entry was not put back"
    );

    emu.set_faults(Faults::default());
    // Unchanged, both stay rejected; --retry-rejects sends them once more.
    let (code, still) = s.dir.sync();
    assert_eq!(code, 0, "{still}");
    assert_counts(
        &still,
        &[("still_rejected", 2), ("events_sent", 0), ("rejected", 0)],
    );
    let (code, third) = s.dir.sync_with(&["--retry-rejects"]);
    assert_eq!(code, 0, "{third}");
    assert_counts(&third, &[("added", 1), ("changed", 1), ("events_sent", 2)]);
    assert_ne!(hash_of_5(&s), before);
    let ids: Vec<String> = emu.received().iter().map(|r| r.custom_id.clone()).collect();
    assert_eq!(ids.iter().filter(|i| *i == "o3@x.io").count(), 1, "{ids:?}");
    assert_eq!(ids.iter().filter(|i| *i == "o5@x.io").count(), 2, "{ids:?}");
}

#[test]
fn in_the_database_mode_rows_that_stay_rejected_are_not_added_again() {
    let url = url_or_skip!(PG_VAR);
    let emu = emulator();
    let s = Sync::new(&url, 1, &emu.endpoint());
    s.pg.exec(&format!(
        "INSERT INTO {t} VALUES (2, 'o2@x.io', 2, repeat('x', 301), now()), (3, '', 3, 'EUR', now())",
        t = s.table
    ));
    s.setup();
    let (code, first) = s.dir.sync();
    assert_eq!(code, 3, "{first}");
    assert_counts(&first, &[("rejected", 2), ("events_sent", 1)]);

    // One good row more: 1 added, 2 still rejected, exit 0, no guard tripped.
    s.pg.exec(&format!(
        "INSERT INTO {t} VALUES (4, 'o4@x.io', 4, 'EUR', now())",
        t = s.table
    ));
    let (code, second) = s.dir.sync();
    assert_eq!(code, 0, "{second}");
    assert_counts(
        &second,
        &[
            ("added", 1),
            ("rejected", 0),
            ("still_rejected", 2),
            ("unchanged", 1),
            ("rows", 4),
        ],
    );
    let (_, open) = json_of(s.dir.run(&["rejects", "--json"]));
    assert_eq!(open.as_array().unwrap().len(), 2, "{open}");
    assert_eq!(
        (open[0]["first_run_id"].as_i64(), open[0]["run_id"].as_i64()),
        (Some(1), Some(2)),
        "{open}"
    );

    // Fixed, it is new again; --retry-rejects tries the other once more (rejected again).
    s.pg.exec(&format!(
        "UPDATE {t} SET currency = 'EUR' WHERE order_id = 2",
        t = s.table
    ));
    let (code, third) = s.dir.sync();
    assert_eq!(code, 0, "{third}");
    assert_counts(
        &third,
        &[("added", 1), ("still_rejected", 1), ("events_sent", 1)],
    );
    let (code, retried) = s.dir.sync_with(&["--retry-rejects"]);
    assert_eq!(code, 3, "{retried}");
    assert_counts(&retried, &[("rejected", 1), ("still_rejected", 0)]);
    let (_, open) = json_of(s.dir.run(&["rejects", "--json"]));
    assert_eq!(open.as_array().unwrap().len(), 1, "{open}");
    assert_eq!(open[0]["first_run_id"].as_i64(), Some(1), "{open}");
    assert_eq!(emu.received().len(), 3);
}
