//! Talking to the PostgreSQL server through `psql`, which is also what applies LiteLLM's
//! migrations (some use `CREATE INDEX CONCURRENTLY`, which cannot run inside the implicit
//! transaction of a multi-statement query).

use std::process::{Command, Output};
use std::sync::OnceLock;

/// The server the tests use, without a database name: `ENTRA_SYNC_TEST_POSTGRES`, by default
/// `postgres://postgres@127.0.0.1:5432` (the trust-auth server on a development machine).
pub fn server_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        std::env::var("ENTRA_SYNC_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
            .trim_end_matches('/')
            .to_owned()
    })
}

/// The server's address, for a proxy in front of it.
pub fn server_addr() -> std::net::SocketAddr {
    use std::net::ToSocketAddrs;
    let url = server_url();
    let host_port = url
        .split("://")
        .nth(1)
        .unwrap_or_default()
        .rsplit('@')
        .next()
        .unwrap_or_default()
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    host_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .unwrap_or_else(|| panic!("cannot resolve the PostgreSQL address in {url}"))
}

pub fn database_url(name: &str) -> String {
    format!("{}/{name}?sslmode=disable", server_url())
}

/// Prefix of every per-test database; the creating process id follows it, so that databases left
/// behind by a killed run can be recognised and dropped.
pub const TEST_DATABASE_PREFIX: &str = "entra_sync_test_";

/// Prefix of the demo's databases (`cargo run -p entra-sync-demo`), recognised the same way.
pub const DEMO_DATABASE_PREFIX: &str = "entra_sync_demo_";

fn psql(database: &str, sql: &str) -> Output {
    Command::new("psql")
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(database_url(database))
        .args(["-c", sql])
        .output()
        .unwrap_or_else(|e| {
            panic!("psql could not be run ({e}): install PostgreSQL's client (Debian: postgresql-client)")
        })
}

/// Runs SQL on the maintenance database and returns its output, panicking with psql's message.
pub fn admin(sql: &str) -> String {
    check_server_once();
    let out = psql("postgres", sql);
    if !out.status.success() {
        panic!(
            "PostgreSQL refused `{sql}`: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn check_server_once() {
    static CHECKED: OnceLock<()> = OnceLock::new();
    CHECKED.get_or_init(|| {
        let out = psql("postgres", "select 1");
        if !out.status.success() {
            panic!(
                "PostgreSQL is not reachable at {} ({}): start it, or point ENTRA_SYNC_TEST_POSTGRES at a server.",
                server_url(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        drop_abandoned_test_databases();
    });
}

/// Runs a SQL file against one database, as LiteLLM's migrations are meant to be applied.
pub fn run_file(database: &str, file: &std::path::Path) {
    let out = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(database_url(database))
        .arg("-f")
        .arg(file)
        .output()
        .expect("psql could not be run: install PostgreSQL's client (Debian: postgresql-client)");
    if !out.status.success() {
        panic!(
            "LiteLLM migration {} failed: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
}

pub fn database_exists(name: &str) -> bool {
    admin(&format!(
        "select 1 from pg_database where datname = '{name}'"
    )) == "1"
}

/// Creates a new database as a copy of `template`, named `prefix`, the process id and a random part.
pub fn create_database_from(template: &str, prefix: &str) -> String {
    let name = format!(
        "{prefix}{}_{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    // Cloning fails while another session is connected to the template; nobody should be, but a
    // concurrent clone can briefly look like one, so try a few times.
    let sql = format!("create database \"{name}\" template \"{template}\"");
    for attempt in 0.. {
        check_server_once();
        let out = psql("postgres", &sql);
        if out.status.success() {
            break;
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        if attempt < 20 && stderr.contains("being accessed by other users") {
            std::thread::sleep(std::time::Duration::from_millis(100));
            continue;
        }
        panic!("cannot create test database {name}: {}", stderr.trim());
    }
    name
}

pub fn drop_database(name: &str) {
    // FORCE ends the test's own pooled connections, which are still open during Drop.
    let _ = psql(
        "postgres",
        &format!("drop database if exists \"{name}\" with (force)"),
    );
}

/// Drops per-test and demo databases whose creating process is gone (a run that was killed or
/// crashed).
fn drop_abandoned_test_databases() {
    let out = psql(
        "postgres",
        &format!(
            "select datname from pg_database where datname like '{TEST_DATABASE_PREFIX}%' or datname like '{DEMO_DATABASE_PREFIX}%'"
        ),
    );
    for name in String::from_utf8_lossy(&out.stdout).lines() {
        let pid = [TEST_DATABASE_PREFIX, DEMO_DATABASE_PREFIX]
            .iter()
            .find_map(|prefix| name.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split('_').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if let Some(pid) = pid
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            drop_database(name.trim());
        }
    }
}
