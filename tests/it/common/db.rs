//! Test support for the database servers: their URLs (skipped loudly outside CI when unset,
//! failing in CI), unique table names, and a plain PostgreSQL connection for the tests' own
//! tables.

use std::io::Write as _;
use std::sync::atomic::{AtomicU32, Ordering};

pub const PG_VAR: &str = "BATCHSYNC_TEST_PG_URL";
pub const MYSQL_VAR: &str = "BATCHSYNC_TEST_MYSQL_URL";

/// Whether the tests run in CI, where a database test may not skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

/// The server's URL from `var`; `None` (said loudly) when it is not set, outside CI.
pub fn server_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(u) if !u.trim().is_empty() => Some(u),
        _ if in_ci() => panic!(
            "{var} is not set, and CI is: the database tests must run in CI \
             (`.ci/run` sets {var} for the local server)"
        ),
        _ => {
            loud(&format!(
                "SKIPPED: {var} is not set; database tests did not run (set it, or run .ci/run)"
            ));
            None
        }
    }
}

/// Straight to the process's stderr: libtest captures `eprintln!` of passing tests, and a
/// skipped database test must be seen.
pub fn loud(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The server's URL, or return from the test (loudly) when it is not configured.
#[macro_export]
macro_rules! url_or_skip {
    ($var:expr) => {
        match $crate::common::db::server_url($var) {
            Some(url) => url,
            None => return,
        }
    };
}

pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A plain connection for setting up and changing the tests' tables.
pub struct Pg {
    pub rt: tokio::runtime::Runtime,
    pub client: tokio_postgres::Client,
    pub tables: Vec<String>,
}

impl Pg {
    pub fn connect(url: &str) -> Pg {
        let rt = runtime();
        let client = rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("cannot connect to {PG_VAR}: {e}"));
            tokio::spawn(async move {
                let _ = conn.await;
            });
            client
        });
        let pg = Pg {
            rt,
            client,
            tables: Vec::new(),
        };
        pg.exec("SET TimeZone = 'UTC'");
        pg
    }

    /// A fresh table name, dropped when `self` is.
    pub fn table(&mut self, prefix: &str) -> String {
        let name = unique(prefix);
        self.tables.push(name.clone());
        name
    }

    pub fn exec(&self, sql: &str) {
        self.rt
            .block_on(self.client.batch_execute(sql))
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    pub fn count(&self, sql: &str) -> i64 {
        let row = self
            .rt
            .block_on(self.client.query_one(sql, &[]))
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        row.get(0)
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        for t in &self.tables {
            let _ = self.rt.block_on(
                self.client
                    .batch_execute(&format!("DROP TABLE IF EXISTS {t}")),
            );
        }
    }
}

/// A unique schema for one database-mode test, dropped (with its tables) when this is.
pub struct Schema {
    pub name: String,
    url: String,
}

impl Schema {
    pub fn new(url: &str, prefix: &str) -> Schema {
        Schema {
            name: unique(prefix),
            url: url.to_string(),
        }
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let pg = Pg::connect(&self.url);
        let _ = pg.rt.block_on(
            pg.client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name)),
        );
    }
}

/// A database-mode config: the query over `url`, keyed by `key`, the sync's tables named
/// `name` in `schema`; `mapping` and `sync` are the bodies of those tables.
#[allow(clippy::too_many_arguments)]
pub fn warehouse_config(
    url: &str,
    query: &str,
    key: &str,
    schema: &str,
    name: &str,
    mapping: &str,
    sync: &str,
    endpoint: &str,
) -> String {
    format!(
        "[source]\ntype = \"postgres\"\nurl = \"{url}\"\nquery = '''{query}'''\nprimary_key = [\"{key}\"]\n\n\
         [mapping]\n{mapping}\n\n[sync]\n{sync}\n\n[destination]\nendpoint = \"{endpoint}\"\n\n\
         [state]\nstore = \"database\"\nschema = \"{schema}\"\nname = \"{name}\"\n"
    )
}
