//! The test harness: real PostgreSQL with LiteLLM's real schema.
//!
//! LiteLLM's schema is built once per machine and LiteLLM version from the migrations in the pinned
//! `litellm-proxy-extras` wheel (downloaded with pip at test time, cached under `target/`, never
//! committed) into a template database; `ENTRA_SYNC_TEST_LITELLM_EXTRAS` selects another release's. Each test then gets its own database cloned from that
//! template, so tests run in parallel and never see each other's rows.
//!
//! Test support code: it panics with one clear sentence when something it needs is missing.
#![allow(clippy::expect_used, clippy::panic)]

pub mod listen;
pub mod litellm_proxy;
mod litellm_schema;
pub mod own_process;
mod postgres;
mod prisma_schema;
pub mod proxy;
pub mod redis;
pub mod servers;
mod shared_servers;

use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectOptions, Database, DatabaseConnection};

pub use litellm_schema::{
    EXTRAS_VARIABLE, LITELLM_PROXY_EXTRAS_VERSION, LITELLM_VERSION, LiteLlmSchema,
};

/// The clientState the tests give the webhook, the worker and their subscriptions: as long as
/// `ENTRA_SYNC_CLIENT_STATE` must be (32 to 128 characters).
pub const CLIENT_STATE: &str = "entra-sync-tests-client-state-0123456789";
pub use postgres::{server_addr, server_url};

/// A database of its own for one test, dropped when the value is dropped (set
/// `ENTRA_SYNC_KEEP_TEST_DB=1` to keep it for a look after a failure).
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
    conn: DatabaseConnection,
}

impl TestDatabase {
    /// A fresh database holding LiteLLM's schema and entra-sync's own tables.
    pub async fn new() -> Self {
        let db = Self::litellm_only().await;
        Migrator::up(&db.conn, None)
            .await
            .expect("entra-sync's migrations failed on a fresh LiteLLM database");
        db
    }

    /// A fresh database holding LiteLLM's schema only, as LiteLLM's own migrations leave it.
    pub async fn litellm_only() -> Self {
        Self::litellm_only_named(postgres::TEST_DATABASE_PREFIX).await
    }

    /// Like [`Self::litellm_only`], for the demo: named `entra_sync_demo_<pid>_<random>`, so that
    /// one left behind by a killed demo is dropped like a test's.
    pub async fn litellm_only_for_demo() -> Self {
        Self::litellm_only_named(postgres::DEMO_DATABASE_PREFIX).await
    }

    async fn litellm_only_named(prefix: &str) -> Self {
        let template = litellm_schema::template_database();
        let name = postgres::create_database_from(template, prefix);
        let url = postgres::database_url(&name);
        let conn = connect(&url).await;
        Self { name, url, conn }
    }

    pub fn conn(&self) -> &DatabaseConnection {
        &self.conn
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The database's URL through a proxy listening at `proxy` (see [`proxy::TcpProxy`]).
    pub fn url_via(&self, proxy: std::net::SocketAddr) -> String {
        let server = postgres::server_url();
        let (scheme, rest) = server.split_once("://").unwrap_or(("postgres", server));
        let user = rest
            .rsplit_once('@')
            .map(|(user, _)| format!("{user}@"))
            .unwrap_or_default();
        format!("{scheme}://{user}{proxy}/{}", self.name)
    }

    /// The database's URL through PgBouncer in transaction mode, as LiteLLM's `DATABASE_URL` reads
    /// behind it (`pgbouncer=true`). Panics with what to do when PgBouncer does not answer.
    pub fn url_through_pgbouncer(&self) -> String {
        let addr = pgbouncer_addr();
        assert!(
            answers_tcp(&addr),
            "PgBouncer does not answer at {addr}: run tests/servers/start (the tests run it \
             themselves when PgBouncer does not answer), or point ENTRA_SYNC_TEST_PGBOUNCER at one \
             in transaction mode in front of the test PostgreSQL."
        );
        let server = postgres::server_url();
        let user = server
            .split_once("://")
            .map(|(_, rest)| rest)
            .and_then(|rest| rest.rsplit_once('@'))
            .map(|(user, _)| format!("{user}@"))
            .unwrap_or_default();
        format!("postgres://{user}{addr}/{}?pgbouncer=true", self.name)
    }

    /// Opens another, independent pool on the same database (for concurrency tests).
    pub async fn connect_again(&self) -> DatabaseConnection {
        connect(&self.url).await
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if std::env::var_os("ENTRA_SYNC_KEEP_TEST_DB").is_none() {
            postgres::drop_database(&self.name);
        }
    }
}

/// PgBouncer in transaction mode in front of the test PostgreSQL: `ENTRA_SYNC_TEST_PGBOUNCER`,
/// by default `127.0.0.1:6432`, where tests/servers/start runs it (started here when it does not
/// answer).
pub fn pgbouncer_addr() -> String {
    if let Ok(addr) = std::env::var("ENTRA_SYNC_TEST_PGBOUNCER") {
        return addr;
    }
    let addr = "127.0.0.1:6432";
    shared_servers::ensure(&format!("PgBouncer at {addr}"), || answers_tcp(addr));
    addr.to_owned()
}

/// Whether something accepts TCP connections at `addr` within a few seconds.
fn answers_tcp(addr: &str) -> bool {
    addr.parse::<std::net::SocketAddr>()
        .ok()
        .and_then(|socket| {
            std::net::TcpStream::connect_timeout(&socket, std::time::Duration::from_secs(2)).ok()
        })
        .is_some()
}

/// Whether the end-to-end tests' workers reach PostgreSQL through PgBouncer
/// (`ENTRA_SYNC_TEST_THROUGH_PGBOUNCER=1`; `.ci/run` runs them so a second time).
pub fn through_pgbouncer() -> bool {
    std::env::var("ENTRA_SYNC_TEST_THROUGH_PGBOUNCER").is_ok_and(|v| v == "1" || v == "true")
}

async fn connect(url: &str) -> DatabaseConnection {
    let mut options = ConnectOptions::new(url);
    options.max_connections(8).sqlx_logging(false);
    Database::connect(options)
        .await
        .expect("cannot connect to a freshly created test database")
}
