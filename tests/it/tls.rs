//! TLS to real servers, with certificates made by the test (rcgen): a CA, and a server
//! certificate it signs for 127.0.0.1 only. Each test starts a PostgreSQL cluster or a
//! MariaDB server of its own from the machine's binaries, in a temporary directory, on a free
//! loopback port, and stops it when it ends (panics included). One test also reads the shared
//! PostgreSQL of `db_sources` (`BATCHSYNC_TEST_PG_URL`) for `prefer`'s default.
//!
//! Why servers of their own: giving the shared servers another certificate would change them
//! under the other tests (and CI) that run against them at the same time, and a test killed
//! midway would leave them changed. A private server needs no restore; starting one takes
//! about a second.
//!
//! What the servers say is the oracle: PostgreSQL's `pg_stat_ssl` and MariaDB's `Ssl_cipher`
//! status, selected by the query and read from `plan --json`'s sample event, not anything
//! batchsync reports about itself.
//!
//! The binaries: PostgreSQL's `initdb` and `postgres` (in `BATCHSYNC_TEST_PG_BIN`, else
//! `pg_config --bindir`), MariaDB's `mariadbd` (`BATCHSYNC_TEST_MARIADBD`, else
//! `/usr/sbin/mariadbd` or `/usr/sbin/mysqld`). Without them a test prints SKIPPED and
//! passes, unless `CI` is set: then it fails. Run as root, the servers run as the `postgres`
//! and `mysql` users, since both refuse root.

use crate::common::crash_support::signal;
use crate::common::{stderr, Dir};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use serde_json::Value;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Whether the tests run in CI, where a test may not skip.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

/// Says loudly that a test did not run (a failure in CI); straight to stderr, which libtest
/// does not capture.
fn skipped(why: &str) {
    assert!(
        !in_ci(),
        "{why}, and CI is set: the TLS tests must run in CI"
    );
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {why}; the TLS test did not run"
    );
}

/// Unwraps what a test needs, or returns from it after saying why (see [`skipped`]).
macro_rules! or_skip {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(why) => {
                skipped(&why);
                return;
            }
        }
    };
}

/// A certificate authority made for one test.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for 127.0.0.1 alone (no `localhost`), and its key, in PEM.
    fn server(&self) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "batchsync test server");
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// The ids a server must run as: `None` when the tests do not run as root (the server runs
/// as the current user), else those of `user`.
fn server_ids(user: &str) -> Result<Option<(u32, u32)>, String> {
    let id = |args: &[&str]| -> Result<u32, String> {
        let out = Command::new("id")
            .args(args)
            .output()
            .map_err(|e| format!("cannot run id: {e}"))?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| format!("`id {}` says: {}", args.join(" "), stderr(&out).trim()))
    };
    if id(&["-u"])? != 0 {
        return Ok(None);
    }
    Ok(Some((id(&["-u", user])?, id(&["-g", user])?)))
}

/// A loopback port nothing listens on (free when asked; a server started right after gets it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server this test started, stopped (by its own pid) when dropped.
struct Server {
    child: Child,
    /// Shared with the next attempt when this one could not bind its port.
    dir: Rc<tempfile::TempDir>,
    port: u16,
    /// The signal that stops it promptly.
    stop: i32,
}

impl Server {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Waits until `ready` holds: `false` when the server exited first (its log says why),
    /// a panic when it takes longer than 60 s.
    fn wait_ready(&mut self, mut ready: impl FnMut(u16) -> bool) -> bool {
        let t0 = Instant::now();
        while !ready(self.port) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "the test server is not ready after 60 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }
}

/// Starts a server with `spawn` on a free port until it is `ready`: a port taken between
/// [`free_port`] and the server's bind (another test's server) is retried with another.
fn start_on_free_port(
    mut spawn: impl FnMut(u16) -> Server,
    mut ready: impl FnMut(u16) -> bool,
) -> Server {
    let mut last_log = String::new();
    for _ in 0..3 {
        let mut server = spawn(free_port());
        if server.wait_ready(&mut ready) {
            return server;
        }
        last_log = server.log();
    }
    panic!("the test server exited three times; its last log:\n{last_log}");
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(&self.child, self.stop);
            let t0 = Instant::now();
            while let Ok(None) = self.child.try_wait() {
                if t0.elapsed() > Duration::from_secs(10) {
                    let _ = self.child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.wait();
        }
    }
}

/// A temporary directory the server's user owns, holding `tls`'s certificate and key (the
/// key readable by that user alone, as both servers require).
fn server_dir(ids: Option<(u32, u32)>, tls: Option<&(String, String)>) -> tempfile::TempDir {
    use std::os::unix::fs::{chown, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let own = |p: &Path| {
        if let Some((uid, gid)) = ids {
            chown(p, Some(uid), Some(gid)).unwrap();
        }
    };
    own(dir.path());
    if let Some((cert, key)) = tls {
        let (cert_path, key_path) = (dir.path().join("server.crt"), dir.path().join("server.key"));
        std::fs::write(&cert_path, cert).unwrap();
        std::fs::write(&key_path, key).unwrap();
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        own(&cert_path);
        own(&key_path);
    }
    dir
}

fn as_user(cmd: &mut Command, ids: Option<(u32, u32)>) -> &mut Command {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = ids {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// Spawns `cmd`, its output to `server.log` in `dir`.
fn spawn_logged(cmd: &mut Command, dir: Rc<tempfile::TempDir>, port: u16, stop: i32) -> Server {
    let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    Server {
        child,
        dir,
        port,
        stop,
    }
}

/// PostgreSQL's binaries: `BATCHSYNC_TEST_PG_BIN`, else `pg_config --bindir`.
fn pg_bindir() -> Result<PathBuf, String> {
    let dir = match std::env::var("BATCHSYNC_TEST_PG_BIN") {
        Ok(d) if !d.is_empty() => PathBuf::from(d),
        _ => Command::new("pg_config")
            .arg("--bindir")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
            .ok_or(
                "no PostgreSQL binaries (pg_config is not on PATH; set BATCHSYNC_TEST_PG_BIN)",
            )?,
    };
    if dir.join("initdb").is_file() && dir.join("postgres").is_file() {
        Ok(dir)
    } else {
        Err(format!("no initdb and postgres in {}", dir.display()))
    }
}

/// A PostgreSQL cluster of the test's own: superuser `batchsync`, trust authentication, TLS
/// with `tls`'s certificate and key, or none.
fn start_postgres(tls: Option<&(String, String)>) -> Result<Server, String> {
    let bin = pg_bindir()?;
    let ids = server_ids("postgres")?;
    let dir = server_dir(ids, tls);
    let data = dir.path().join("data");
    let out = as_user(&mut Command::new(bin.join("initdb")), ids)
        .args([
            "-A",
            "trust",
            "-U",
            "batchsync",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "-D",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success(), "initdb failed: {}", stderr(&out));
    let data = &data;
    let dir = Rc::new(dir);
    let rt = runtime();
    let server = start_on_free_port(
        |port| {
            let d = dir.path();
            let settings = [
                "listen_addresses=127.0.0.1".to_string(),
                format!("unix_socket_directories={}", d.display()),
                "fsync=off".into(),
                format!("ssl={}", if tls.is_some() { "on" } else { "off" }),
                format!("ssl_cert_file={}", d.join("server.crt").display()),
                format!("ssl_key_file={}", d.join("server.key").display()),
            ];
            let mut cmd = Command::new(bin.join("postgres"));
            as_user(&mut cmd, ids)
                .arg("-D")
                .arg(data)
                .args(["-p", &port.to_string()]);
            for s in &settings {
                cmd.args(["-c", s]);
            }
            spawn_logged(&mut cmd, dir.clone(), port, libc::SIGQUIT)
        },
        |port| {
            let url = format!("postgres://batchsync@127.0.0.1:{port}/postgres?sslmode=disable");
            rt.block_on(tokio_postgres::connect(&url, tokio_postgres::NoTls))
                .is_ok()
        },
    );
    Ok(server)
}

/// MariaDB's server binary: `BATCHSYNC_TEST_MARIADBD`, else the Debian paths.
fn mariadbd() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("BATCHSYNC_TEST_MARIADBD") {
        if !p.is_empty() {
            return Ok(PathBuf::from(p));
        }
    }
    ["/usr/sbin/mariadbd", "/usr/sbin/mysqld"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| "no mariadbd (set BATCHSYNC_TEST_MARIADBD)".to_string())
}

/// A MariaDB server of the test's own, on an empty data directory without grant tables (any
/// user gets in), TLS with `tls`'s certificate and key, or none.
fn start_mariadb(tls: Option<&(String, String)>) -> Result<Server, String> {
    let bin = mariadbd()?;
    let ids = server_ids("mysql")?;
    let dir = server_dir(ids, tls);
    let d = dir.path();
    std::fs::create_dir(d.join("data")).unwrap();
    if let Some((uid, gid)) = ids {
        std::os::unix::fs::chown(d.join("data"), Some(uid), Some(gid)).unwrap();
    }
    let dir = Rc::new(dir);
    let rt = runtime();
    let server = start_on_free_port(
        |port| {
            let d = dir.path();
            let mut args = vec![
                "--no-defaults".to_string(),
                format!("--datadir={}", d.join("data").display()),
                format!("--socket={}", d.join("mysqld.sock").display()),
                format!("--pid-file={}", d.join("mysqld.pid").display()),
                format!("--port={port}"),
                "--bind-address=127.0.0.1".into(),
                "--skip-grant-tables".into(),
                "--skip-name-resolve".into(),
                "--skip-log-bin".into(),
                "--innodb-buffer-pool-size=8M".into(),
                "--innodb-log-file-size=4M".into(),
            ];
            if tls.is_some() {
                args.push(format!("--ssl-cert={}", d.join("server.crt").display()));
                args.push(format!("--ssl-key={}", d.join("server.key").display()));
            }
            let mut cmd = Command::new(&bin);
            as_user(&mut cmd, ids).args(&args);
            spawn_logged(&mut cmd, dir.clone(), port, libc::SIGTERM)
        },
        |port| {
            let opts = mysql_async::OptsBuilder::default()
                .ip_or_hostname("127.0.0.1")
                .tcp_port(port)
                .user(Some("root"))
                .prefer_socket(false);
            rt.block_on(async {
                match mysql_async::Conn::new(opts).await {
                    Ok(conn) => conn.disconnect().await.is_ok(),
                    Err(_) => false,
                }
            })
        },
    );
    Ok(server)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The query that tells whether this very connection is encrypted, from the server's side.
const PG_PROBE: &str = "SELECT 'probe@example.com' AS email, ssl AS tls \
                        FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
/// The same for MariaDB: the session's cipher, empty over plain TCP.
const MYSQL_PROBE: &str = "SELECT 'probe@example.com' AS email, \
                           CONCAT('cipher:', VARIABLE_VALUE) AS tls \
                           FROM information_schema.SESSION_STATUS \
                           WHERE VARIABLE_NAME = 'Ssl_cipher'";

/// A directory whose config reads `probe` from `url`, with `files` (name, content) beside it.
fn probe_dir(kind: &str, url: &str, probe: &str, files: &[(&str, &str)]) -> Dir {
    let dir = Dir::new();
    for (name, content) in files {
        dir.write(name, content);
    }
    dir.write(
        "batchsync.toml",
        format!(
            "[source]\ntype = \"{kind}\"\nurl = \"{url}\"\nquery = \"{probe}\"\n\n\
             [mapping]\ncustom_id = \"email\"\nevent = \"probe\"\nattributes = [\"tls\"]\n\n\
             [destination]\nendpoint = \"http://127.0.0.1:9\"\n"
        ),
    );
    dir
}

/// What `plan` read as the probe's `tls` column through the real binary, or its stderr
/// when it failed (with the exit code, which must be 1: a source error, not a config one).
fn plan_tls(dir: &Dir) -> Result<Value, String> {
    let out = dir.run(&["plan", "--json"]);
    match out.status.code() {
        Some(0) => {
            let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
            Ok(plan["sample"][0]["events"][0]["attributes"]["tls"].clone())
        }
        code => {
            assert_eq!(code, Some(1), "{}", stderr(&out));
            Err(stderr(&out))
        }
    }
}

fn tls_of(kind: &str, url: &str, files: &[(&str, &str)]) -> Result<Value, String> {
    let probe = if kind == "postgres" {
        PG_PROBE
    } else {
        MYSQL_PROBE
    };
    plan_tls(&probe_dir(kind, url, probe, files))
}

fn encrypted_mysql(tls: &Value) -> bool {
    let cipher = tls.as_str().unwrap().trim_start_matches("cipher:");
    !cipher.is_empty()
}

#[test]
fn postgres_verify_full_with_the_ca_of_the_servers_certificate_reads_over_tls() {
    let ca = Ca::new("test CA");
    let server = or_skip!(start_postgres(Some(&ca.server())));
    let pem = ca.pem();
    let files = [("ca.pem", pem.as_str())];
    let base = format!("postgres://batchsync@127.0.0.1:{}/postgres", server.port);
    for mode in ["verify-full", "verify-ca", "require"] {
        // sslrootcert relative to the working directory, as libpq reads it.
        let url = format!("{base}?sslmode={mode}&sslrootcert=ca.pem");
        assert_eq!(
            tls_of("postgres", &url, &files),
            Ok(Value::Bool(true)),
            "{mode}"
        );
    }
}

#[test]
fn postgres_a_certificate_from_another_ca_or_for_another_host_is_refused_with_the_reason() {
    let ca = Ca::new("test CA");
    let server = or_skip!(start_postgres(Some(&ca.server())));
    let other = Ca::new("another CA");
    let (ours, theirs) = (ca.pem(), other.pem());
    let files = [("ca.pem", ours.as_str()), ("other.pem", theirs.as_str())];

    let url = format!(
        "postgres://batchsync@127.0.0.1:{}/postgres?sslmode=verify-full&sslrootcert=other.pem",
        server.port
    );
    let err = tls_of("postgres", &url, &files).unwrap_err();
    assert!(
        err.contains("certificate is refused") && err.contains("UnknownIssuer"),
        "{err}"
    );
    assert!(err.contains("sslrootcert=FILE"), "says what to do: {err}");

    // The certificate names 127.0.0.1 only; verify-ca checks the name too.
    let url = format!(
        "postgres://batchsync@localhost:{}/postgres?sslmode=verify-ca&sslrootcert=ca.pem",
        server.port
    );
    let err = tls_of("postgres", &url, &files).unwrap_err();
    assert!(
        err.contains("certificate is refused") && err.contains("not valid for name \"localhost\""),
        "{err}"
    );
}

#[test]
fn postgres_prefer_encrypts_without_checking_the_certificate_and_disable_does_not_encrypt() {
    let ca = Ca::new("a CA batchsync does not know");
    let server = or_skip!(start_postgres(Some(&ca.server())));
    let base = format!("postgres://batchsync@127.0.0.1:{}/postgres", server.port);
    assert_eq!(
        tls_of("postgres", &base, &[]),
        Ok(Value::Bool(true)),
        "no sslmode"
    );
    let prefer = format!("{base}?sslmode=prefer");
    assert_eq!(tls_of("postgres", &prefer, &[]), Ok(Value::Bool(true)));
    let disable = format!("{base}?sslmode=disable");
    assert_eq!(tls_of("postgres", &disable, &[]), Ok(Value::Bool(false)));
}

#[test]
fn postgres_prefer_falls_back_to_plain_tcp_when_the_server_has_no_tls_and_require_does_not() {
    let server = or_skip!(start_postgres(None));
    let base = format!("postgres://batchsync@127.0.0.1:{}/postgres", server.port);
    assert_eq!(tls_of("postgres", &base, &[]), Ok(Value::Bool(false)));
    let err = tls_of("postgres", &format!("{base}?sslmode=require"), &[]).unwrap_err();
    assert!(err.contains("server does not support TLS"), "{err}");
}

#[test]
fn postgres_prefer_is_the_default_and_uses_tls_exactly_when_the_shared_server_offers_it() {
    let url = or_skip!(std::env::var("BATCHSYNC_TEST_PG_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .ok_or("BATCHSYNC_TEST_PG_URL is not set"));
    let rt = runtime();
    let offered = rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("the shared server answers");
        tokio::spawn(conn);
        let row = client.query_one("SHOW ssl", &[]).await.unwrap();
        row.get::<_, String>(0) == "on"
    });
    assert_eq!(tls_of("postgres", &url, &[]), Ok(Value::Bool(offered)));
}

#[test]
fn mysql_verify_full_with_the_ca_of_the_servers_certificate_reads_over_tls() {
    let ca = Ca::new("test CA");
    let server = or_skip!(start_mariadb(Some(&ca.server())));
    let pem = ca.pem();
    let files = [("ca.pem", pem.as_str())];
    let base = format!("mysql://root@127.0.0.1:{}/", server.port);
    for params in [
        "sslmode=verify-full&sslrootcert=ca.pem",
        "sslmode=require&sslrootcert=ca.pem",
        "ssl-mode=VERIFY_IDENTITY&ssl-ca=ca.pem",
    ] {
        let tls = tls_of("mysql", &format!("{base}?{params}"), &files).unwrap();
        assert!(encrypted_mysql(&tls), "{params}: {tls}");
    }
}

#[test]
fn mysql_a_certificate_from_another_ca_or_for_another_host_is_refused_with_the_reason() {
    let ca = Ca::new("test CA");
    let server = or_skip!(start_mariadb(Some(&ca.server())));
    let other = Ca::new("another CA");
    let (ours, theirs) = (ca.pem(), other.pem());
    let files = [("ca.pem", ours.as_str()), ("other.pem", theirs.as_str())];

    let url = format!(
        "mysql://root@127.0.0.1:{}/?sslmode=verify-full&sslrootcert=other.pem",
        server.port
    );
    let err = tls_of("mysql", &url, &files).unwrap_err();
    assert!(
        err.contains("certificate is refused") && err.contains("UnknownIssuer"),
        "{err}"
    );

    let url = format!(
        "mysql://root@localhost:{}/?sslmode=verify-ca&sslrootcert=ca.pem",
        server.port
    );
    let err = tls_of("mysql", &url, &files).unwrap_err();
    assert!(
        err.contains("certificate is refused") && err.contains("not valid for name \"localhost\""),
        "{err}"
    );
}

#[test]
fn mysql_prefer_encrypts_without_checking_the_certificate_and_disable_does_not_encrypt() {
    let ca = Ca::new("a CA batchsync does not know");
    let server = or_skip!(start_mariadb(Some(&ca.server())));
    let base = format!("mysql://root@127.0.0.1:{}/", server.port);
    let tls = tls_of("mysql", &base, &[]).unwrap();
    assert!(encrypted_mysql(&tls), "no sslmode: {tls}");
    let tls = tls_of("mysql", &format!("{base}?sslmode=disable"), &[]).unwrap();
    assert!(!encrypted_mysql(&tls), "disable: {tls}");
}

#[test]
fn mysql_prefer_falls_back_to_plain_tcp_when_the_server_has_no_tls_and_require_does_not() {
    let server = or_skip!(start_mariadb(None));
    let base = format!("mysql://root@127.0.0.1:{}/", server.port);
    let tls = tls_of("mysql", &base, &[]).unwrap();
    assert!(!encrypted_mysql(&tls), "{tls}");
    let err = tls_of("mysql", &format!("{base}?sslmode=require"), &[]).unwrap_err();
    assert!(err.contains("the server offers no TLS"), "{err}");
}
