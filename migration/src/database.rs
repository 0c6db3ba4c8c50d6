//! LiteLLM's database: connecting to `DATABASE_URL` without its password ever reaching an error
//! or a log, directly or through PgBouncer in transaction mode.
//!
//! sea-orm quotes a URL it cannot parse in its error ("The connection string '...' cannot be
//! parsed."), password included, and a driver may one day quote parts of it too. So the URL is
//! checked here first, with errors that quote nothing of it, and whatever error connecting
//! gives has the URL and its password cut out before anyone sees it.
//!
//! PgBouncer in transaction mode (Azure Database for PostgreSQL's built-in pooler, and what
//! LiteLLM's own Prisma client supports) hands each transaction a server connection of its
//! choosing, so a prepared statement made in one may be missing in the next, or another
//! client's statement of the same name may be left behind (PgBouncer before 1.21 does not track
//! them). A `DATABASE_URL` with `pgbouncer=true` (Prisma's own parameter, which LiteLLM's
//! URL already carries behind PgBouncer) makes [`Db`] do what Prisma does there: no prepared
//! statement is reused, every statement runs inside a transaction, and each transaction starts
//! with `DEALLOCATE ALL`, dropping whatever statements an earlier client left on that server
//! connection. Without `pgbouncer=true` behind such a pooler, PostgreSQL soon answers that a
//! prepared statement already exists or does not exist ([`is_lost_prepared_statement`]), which
//! no retry mends: the worker stops on the first one, naming the fix ([`PGBOUNCER_FIX`]).
//!
//! The password travels to whatever server answers at the URL's host. Before connecting,
//! [`check_transport`] refuses a host that is neither loopback nor a Unix socket unless the
//! server's certificate is verified (`sslmode=verify-full` or `verify-ca`): with `require`
//! (or less) this driver hands the password to any certificate, see the README's "PostgreSQL
//! over TLS".

use std::net::IpAddr;

use sea_orm_migration::sea_orm::sqlx;
use sea_orm_migration::sea_orm::sqlx::postgres::{PgConnectOptions, PgSslMode};
use sea_orm_migration::sea_orm::{
    AccessMode, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction,
    DbBackend, DbErr, ExecResult, IsolationLevel, QueryResult, RuntimeErr, Statement,
    TransactionError, TransactionTrait,
};

/// A driver error as sea-orm reports one, so that it is classified alike (the database away, a
/// lost prepared statement).
pub fn driver_error(error: sqlx::Error) -> DbErr {
    DbErr::Query(RuntimeErr::SqlxError(error))
}

/// Prisma's URL parameter for a database behind PgBouncer in transaction mode.
const PGBOUNCER_PARAMETER: &str = "pgbouncer";

/// LiteLLM's database, directly or behind PgBouncer in transaction mode. Use it wherever a
/// [`DatabaseConnection`] would do: it is a [`ConnectionTrait`] and a [`TransactionTrait`].
#[derive(Clone, Debug)]
pub struct Db {
    connection: DatabaseConnection,
    pooled: bool,
}

impl From<DatabaseConnection> for Db {
    /// A database reached directly.
    fn from(connection: DatabaseConnection) -> Self {
        Self {
            connection,
            pooled: false,
        }
    }
}

impl Db {
    /// Whether PgBouncer in transaction mode stands in between (`pgbouncer=true`).
    pub fn behind_pgbouncer(&self) -> bool {
        self.pooled
    }

    /// A session of the driver's own, out of the pool, for what sea-orm cannot say: `COPY ...
    /// FROM STDIN` into tables that later statements read, with no transaction open in between.
    /// Behind PgBouncer in transaction mode each of its transactions may run on another server
    /// connection: use simple-protocol or unnamed statements, each a transaction of its own or
    /// inside one, and no session state (temporary tables, `SET`). Dropped, it closes.
    pub async fn session(&self) -> Result<sqlx::PgConnection, DbErr> {
        let pool = self.connection.get_postgres_connection_pool();
        Ok(pool.acquire().await.map_err(driver_error)?.detach())
    }

    /// A statement that runs alone: behind PgBouncer, in a transaction of its own.
    async fn alone<T, F>(&self, statement: Statement, run: F) -> Result<T, DbErr>
    where
        F: for<'t> FnOnce(
            &'t DatabaseTransaction,
            Statement,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, DbErr>> + Send + 't>,
        >,
        T: Send,
    {
        let transaction = self.begin().await?;
        match run(&transaction, statement).await {
            Ok(result) => {
                transaction.commit().await?;
                Ok(result)
            }
            Err(error) => {
                // The error is what matters; a failed rollback ends with the connection.
                let _ = transaction.rollback().await;
                Err(error)
            }
        }
    }
}

#[sea_orm_migration::async_trait::async_trait]
impl ConnectionTrait for Db {
    fn get_database_backend(&self) -> DbBackend {
        self.connection.get_database_backend()
    }

    async fn execute(&self, statement: Statement) -> Result<ExecResult, DbErr> {
        if !self.pooled {
            return self.connection.execute(statement).await;
        }
        self.alone(statement, |t, s| Box::pin(t.execute(s))).await
    }

    /// The simple query protocol prepares nothing: as is, behind PgBouncer too.
    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        self.connection.execute_unprepared(sql).await
    }

    async fn query_one(&self, statement: Statement) -> Result<Option<QueryResult>, DbErr> {
        if !self.pooled {
            return self.connection.query_one(statement).await;
        }
        self.alone(statement, |t, s| Box::pin(t.query_one(s))).await
    }

    async fn query_all(&self, statement: Statement) -> Result<Vec<QueryResult>, DbErr> {
        if !self.pooled {
            return self.connection.query_all(statement).await;
        }
        self.alone(statement, |t, s| Box::pin(t.query_all(s))).await
    }

    fn support_returning(&self) -> bool {
        self.connection.support_returning()
    }

    fn is_mock_connection(&self) -> bool {
        self.connection.is_mock_connection()
    }
}

#[sea_orm_migration::async_trait::async_trait]
impl TransactionTrait for Db {
    async fn begin(&self) -> Result<DatabaseTransaction, DbErr> {
        self.begin_with_config(None, None).await
    }

    async fn begin_with_config(
        &self,
        isolation_level: Option<IsolationLevel>,
        access_mode: Option<AccessMode>,
    ) -> Result<DatabaseTransaction, DbErr> {
        let transaction = self
            .connection
            .begin_with_config(isolation_level, access_mode)
            .await?;
        if self.pooled {
            transaction.execute_unprepared("DEALLOCATE ALL").await?;
        }
        Ok(transaction)
    }

    async fn transaction<F, T, E>(&self, callback: F) -> Result<T, TransactionError<E>>
    where
        F: for<'c> FnOnce(
                &'c DatabaseTransaction,
            ) -> std::pin::Pin<
                Box<dyn std::future::Future<Output = Result<T, E>> + Send + 'c>,
            > + Send,
        T: Send,
        E: std::fmt::Display + std::fmt::Debug + Send,
    {
        self.transaction_with_config(callback, None, None).await
    }

    async fn transaction_with_config<F, T, E>(
        &self,
        callback: F,
        isolation_level: Option<IsolationLevel>,
        access_mode: Option<AccessMode>,
    ) -> Result<T, TransactionError<E>>
    where
        F: for<'c> FnOnce(
                &'c DatabaseTransaction,
            ) -> std::pin::Pin<
                Box<dyn std::future::Future<Output = Result<T, E>> + Send + 'c>,
            > + Send,
        T: Send,
        E: std::fmt::Display + std::fmt::Debug + Send,
    {
        let transaction = self
            .begin_with_config(isolation_level, access_mode)
            .await
            .map_err(TransactionError::Connection)?;
        match callback(&transaction).await {
            Ok(result) => {
                transaction
                    .commit()
                    .await
                    .map_err(TransactionError::Connection)?;
                Ok(result)
            }
            Err(error) => {
                let _ = transaction.rollback().await;
                Err(TransactionError::Transaction(error))
            }
        }
    }
}

/// What stands in for a secret in an error.
const REDACTED: &str = "***";

/// How `DATABASE_URL` reaches its server, as far as its password is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    /// A Unix socket, or TCP to a loopback address: no one else is on the path.
    Local,
    /// TCP with the server's certificate checked (`sslmode=verify-full` or `verify-ca`).
    Verified,
    /// TCP to `host` without checking whom it reaches: anyone on the path may answer, and be
    /// handed the password.
    Unverified { host: String },
}

/// How `url` reaches its server, read as the driver reads it: the URL's host or a `host=`
/// parameter (a path there is a Unix socket folder), `sslmode`, and the `PG*` variables the
/// URL leaves to them. The error quotes nothing of the URL.
pub fn transport(url: &str) -> Result<Transport, String> {
    let secrets = checked_secrets(url)?;
    let (url, _) = without_pgbouncer_parameter(url)?;
    let options = url.parse::<PgConnectOptions>().map_err(|error| {
        format!(
            "DATABASE_URL cannot be read: {}",
            redact(&error.to_string(), &secrets)
        )
    })?;
    if options.get_socket().is_some() || options.get_host().starts_with('/') {
        return Ok(Transport::Local);
    }
    if is_loopback(options.get_host()) {
        return Ok(Transport::Local);
    }
    Ok(match options.get_ssl_mode() {
        PgSslMode::VerifyFull | PgSslMode::VerifyCa => Transport::Verified,
        PgSslMode::Disable | PgSslMode::Allow | PgSslMode::Prefer | PgSslMode::Require => {
            Transport::Unverified {
                host: options.get_host().to_owned(),
            }
        }
    })
}

/// `localhost`, 127.0.0.0/8 or ::1 (also as an IPv4-mapped address, and in brackets).
fn is_loopback(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    match bare.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ip.is_loopback(),
        Ok(IpAddr::V6(ip)) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|ip| ip.is_loopback())
        }
        Err(_) => false,
    }
}

/// The setting that lets [`check_transport`] pass an unverified connection.
pub const ALLOW_UNVERIFIED_TLS: &str = "ENTRA_SYNC_ALLOW_UNVERIFIED_TLS";

/// Refuses, before anything connects, a `url` whose password anyone on the path could read
/// (see [`Transport::Unverified`]), unless `allow_unverified` (the operator's
/// `ENTRA_SYNC_ALLOW_UNVERIFIED_TLS=true`) says to go ahead. The error says why and what to do.
pub fn check_transport(url: &str, allow_unverified: bool) -> Result<Transport, String> {
    let transport = transport(url)?;
    if let Transport::Unverified { host } = &transport
        && !allow_unverified
    {
        return Err(format!(
            "DATABASE_URL reaches {host} without sslmode=verify-full (or verify-ca): without \
             a verified certificate the password goes to whoever answers, so a man in the \
             middle could read it (see the README's \"PostgreSQL over TLS\"). Add \
             sslmode=verify-full to DATABASE_URL (and sslrootcert=<CA file> for a private CA), \
             or set {ALLOW_UNVERIFIED_TLS}=true to connect anyway"
        ));
    }
    Ok(transport)
}

/// What PostgreSQL answers a client whose prepared statements a pooler lost track of: 42P05
/// (duplicate_prepared_statement: "prepared statement ... already exists") and 26000
/// (invalid_sql_statement_name: "... does not exist").
const LOST_PREPARED_STATEMENT: [&str; 2] = ["42P05", "26000"];

/// What to do when [`is_lost_prepared_statement`]: an error's last words.
pub const PGBOUNCER_FIX: &str = "DATABASE_URL goes through PgBouncer in transaction mode (or \
     another pooler that shares server connections) without pgbouncer=true: add pgbouncer=true \
     to DATABASE_URL, as LiteLLM's own URL has it behind PgBouncer";

/// Whether `error` is PostgreSQL saying that a prepared statement already exists or does not
/// exist: a pooler in transaction mode handing this client's statements to server connections
/// of its choosing (a `DATABASE_URL` without `pgbouncer=true`). No retry mends it.
pub fn is_lost_prepared_statement(error: &DbErr) -> bool {
    use sea_orm_migration::sea_orm::RuntimeErr;
    use sea_orm_migration::sea_orm::sqlx;
    let (DbErr::Exec(runtime) | DbErr::Query(runtime) | DbErr::Conn(runtime)) = error else {
        return false;
    };
    let RuntimeErr::SqlxError(sqlx::Error::Database(database)) = runtime else {
        return false;
    };
    database
        .code()
        .is_some_and(|code| LOST_PREPARED_STATEMENT.contains(&code.as_ref()))
}

/// Connects to the database `url` names, with `configure`'s pool settings; behind PgBouncer
/// when the URL says `pgbouncer=true`. The error says what went wrong, naming `DATABASE_URL`,
/// and never contains the URL's password.
pub async fn connect(url: &str, configure: impl FnOnce(&mut ConnectOptions)) -> Result<Db, String> {
    let secrets = checked_secrets(url)?;
    let (url, pooled) = without_pgbouncer_parameter(url)?;
    let mut options = ConnectOptions::new(url);
    configure(&mut options);
    if pooled {
        // A statement is never prepared once and run again: PgBouncer may have moved on.
        options.map_sqlx_postgres_opts(|postgres| postgres.statement_cache_capacity(0));
    }
    let connection = Database::connect(options).await.map_err(|error| {
        format!(
            "cannot connect to DATABASE_URL: {}",
            redact(&error.to_string(), &secrets)
        )
    })?;
    Ok(Db { connection, pooled })
}

/// The URL without Prisma's `pgbouncer` parameter (which the driver does not know), and whether
/// it said `true`.
fn without_pgbouncer_parameter(url: &str) -> Result<(String, bool), String> {
    let mut parsed = url::Url::parse(url).map_err(|_| "DATABASE_URL is not a URL".to_owned())?;
    let mut pooled = false;
    let kept: Vec<(String, String)> = parsed
        .query_pairs()
        .filter(|(name, value)| {
            let is_pgbouncer = name == PGBOUNCER_PARAMETER;
            if is_pgbouncer {
                pooled = value.eq_ignore_ascii_case("true");
            }
            !is_pgbouncer
        })
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect();
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    Ok((parsed.into(), pooled))
}

/// Checks that `url` is a PostgreSQL URL, and returns what of it must never be shown: the
/// password (as written and decoded, in the user info or as a `password` parameter) and the
/// whole URL. The errors quote nothing of `url`.
fn checked_secrets(url: &str) -> Result<Vec<String>, String> {
    let parsed = url::Url::parse(url).map_err(|error| {
        format!(
            "DATABASE_URL is not a URL ({error}); expected \
             postgres://user:password@host:5432/database"
        )
    })?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err("DATABASE_URL must start with postgres:// or postgresql://".into());
    }
    let mut secrets = vec![url.to_owned()];
    let mut add = |raw: &str| {
        secrets.push(raw.to_owned());
        secrets.push(
            percent_encoding::percent_decode_str(raw)
                .decode_utf8_lossy()
                .into_owned(),
        );
    };
    if let Some(password) = parsed.password() {
        add(password);
    }
    for (name, value) in parsed.query_pairs() {
        if name == "password" {
            add(&value);
        }
    }
    if let Some(query) = parsed.query() {
        for pair in query.split('&') {
            if let Some(raw) = pair.strip_prefix("password=") {
                add(raw);
            }
        }
    }
    secrets.retain(|secret| !secret.is_empty());
    // The longest first, so that no part of a longer secret survives a shorter one's removal.
    secrets.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
    secrets.dedup();
    Ok(secrets)
}

fn redact(text: &str, secrets: &[String]) -> String {
    secrets.iter().fold(text.to_owned(), |text, secret| {
        text.replace(secret, REDACTED)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_urls_are_refused_without_quoting_them() {
        for url in [
            "postgres://u:s3cr3t@[bad",
            "postgres://u:s3cr3t@host:notaport/db",
            "u:s3cr3t@host/db",
            "",
        ] {
            let error = checked_secrets(url).unwrap_err();
            assert!(error.contains("DATABASE_URL"), "{url}: {error}");
            assert!(!error.contains("s3cr3t"), "{url}: {error}");
        }
        for url in ["mysql://u:s3cr3t@host/db", "s3cr3t://u:s3cr3t@host/db"] {
            let error = checked_secrets(url).unwrap_err();
            assert!(error.contains("postgres://"), "{url}: {error}");
            assert!(!error.contains("s3cr3t"), "{url}: {error}");
        }
    }

    #[test]
    fn passwords_are_cut_out_of_error_text_in_every_spelling() {
        let url = "postgres://u:p%40ss%2Fw0rd@db.example:5432/litellm?password=qu%3Dery&sslmode=verify-full";
        let secrets = checked_secrets(url).unwrap();
        let text = format!(
            "failed: {url}; raw p%40ss%2Fw0rd; decoded p@ss/w0rd; query qu%3Dery or qu=ery; user u"
        );
        let shown = redact(&text, &secrets);
        for secret in ["p%40ss%2Fw0rd", "p@ss/w0rd", "qu%3Dery", "qu=ery", url] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("user u"), "{shown}");
    }

    #[test]
    fn prismas_pgbouncer_parameter_is_read_and_taken_out() {
        let (url, pooled) = without_pgbouncer_parameter(
            "postgres://u:p@pgbouncer:6432/litellm?sslmode=verify-full&pgbouncer=true",
        )
        .unwrap();
        assert!(pooled);
        assert_eq!(
            url,
            "postgres://u:p@pgbouncer:6432/litellm?sslmode=verify-full"
        );
        let (url, pooled) =
            without_pgbouncer_parameter("postgres://u:p@db:5432/litellm?pgbouncer=false").unwrap();
        assert!(!pooled);
        assert_eq!(url, "postgres://u:p@db:5432/litellm");
        let (url, pooled) = without_pgbouncer_parameter("postgres://u:p@db:5432/litellm").unwrap();
        assert!(!pooled);
        assert_eq!(url, "postgres://u:p@db:5432/litellm");
    }

    #[test]
    fn a_url_without_a_password_hides_only_itself() {
        let url = "postgresql://postgres@127.0.0.1:5432/litellm";
        let secrets = checked_secrets(url).unwrap();
        assert_eq!(secrets, [url]);
        assert_eq!(
            redact("connection refused (os error 111)", &secrets),
            "connection refused (os error 111)"
        );
    }

    #[test]
    fn loopback_and_unix_sockets_are_local_other_hosts_need_a_verified_certificate() {
        let unverified = |host: &str| Transport::Unverified { host: host.into() };
        for (url, expected) in [
            ("postgres://u:p@127.0.0.1:5432/db", Transport::Local),
            ("postgres://u:p@127.8.9.10/db", Transport::Local),
            ("postgresql://u:p@LocalHost/db", Transport::Local),
            ("postgres://u:p@[::1]:5432/db", Transport::Local),
            ("postgres://u:p@[::ffff:127.0.0.1]/db", Transport::Local),
            // A socket folder, as a parameter or (percent-encoded) as the host.
            (
                "postgres://u@localhost/db?host=/var/run/postgresql",
                Transport::Local,
            ),
            (
                "postgres://u@db.example.com/db?host=/tmp&port=6433",
                Transport::Local,
            ),
            (
                "postgres://u@%2Fvar%2Frun%2Fpostgresql/db",
                Transport::Local,
            ),
            (
                "postgres://u:p@db.example.com/db",
                unverified("db.example.com"),
            ),
            (
                "postgres://u:p@192.0.2.1:5432/db?sslmode=require",
                unverified("192.0.2.1"),
            ),
            (
                "postgres://u:p@10.1.2.3/db?sslmode=prefer&pgbouncer=true",
                unverified("10.1.2.3"),
            ),
            (
                "postgres://u:p@[2001:db8::1]/db?sslmode=disable",
                unverified("[2001:db8::1]"),
            ),
            // Names that only look local.
            (
                "postgres://u:p@localhost.example.com/db",
                unverified("localhost.example.com"),
            ),
            (
                "postgres://u:p@127.0.0.1.nip.io/db",
                unverified("127.0.0.1.nip.io"),
            ),
            // A `host=` parameter wins over the URL's host, as in the driver.
            (
                "postgres://u:p@localhost/db?host=db.example.com",
                unverified("db.example.com"),
            ),
            (
                "postgres://u:p@localhost/db?hostaddr=10.0.0.5",
                unverified("10.0.0.5"),
            ),
            (
                "postgres://u:p@db.example.com/db?sslmode=verify-full&sslrootcert=/ca.pem",
                Transport::Verified,
            ),
            (
                "postgres://u:p@db.example.com/db?sslmode=verify-ca",
                Transport::Verified,
            ),
            (
                "postgres://u:p@db.example.com/db?sslmode=VERIFY-FULL",
                Transport::Verified,
            ),
        ] {
            assert_eq!(transport(url).unwrap(), expected, "{url}");
        }
        // No host at all: a socket the driver finds, else localhost; both local (unless the
        // PG* variables say otherwise, which this test cannot set without racing the others).
        if std::env::var_os("PGHOST").is_none() && std::env::var_os("PGHOSTADDR").is_none() {
            assert_eq!(transport("postgres:///db").unwrap(), Transport::Local);
        }
    }

    #[test]
    fn an_unverified_remote_host_stops_unless_allowed_naming_the_opt_out() {
        let url = "postgres://u:s3cr3t@db.example.com:5432/litellm?sslmode=require";
        let error = check_transport(url, false).unwrap_err();
        for expected in [
            "db.example.com",
            "sslmode=verify-full",
            "PostgreSQL over TLS",
            "ENTRA_SYNC_ALLOW_UNVERIFIED_TLS=true",
        ] {
            assert!(error.contains(expected), "{expected} not in {error}");
        }
        assert!(!error.contains("s3cr3t"), "{error}");
        assert_eq!(
            check_transport(url, true).unwrap(),
            Transport::Unverified {
                host: "db.example.com".into()
            }
        );
        assert_eq!(
            check_transport("postgres://u:p@127.0.0.1/db", false).unwrap(),
            Transport::Local
        );
        // A URL the driver cannot read is refused without quoting it.
        let error = check_transport("postgres://u:s3cr3t@db.example.com/db?sslmode=bogus", true)
            .unwrap_err();
        assert!(error.contains("DATABASE_URL"), "{error}");
        assert!(!error.contains("s3cr3t"), "{error}");
    }

    #[test]
    fn lost_prepared_statements_are_told_from_other_database_errors() {
        use sea_orm_migration::sea_orm::RuntimeErr;
        assert!(!is_lost_prepared_statement(&DbErr::Exec(
            RuntimeErr::Internal("prepared statement \"sqlx_s_1\" does not exist".into())
        )));
        assert!(!is_lost_prepared_statement(&DbErr::RecordNotFound(
            "x".into()
        )));
    }

    #[tokio::test]
    async fn connection_errors_never_carry_the_password() {
        for url in [
            // Unknown host: the driver's own error.
            "postgres://u:s3cr3t@unreachable.invalid:5432/db",
            // Nothing listens there.
            "postgres://u:s3cr3t@127.0.0.1:9/db?password=s3cr3t",
            // sea-orm quotes URLs it cannot parse.
            "postgres://u:s3cr3t@[bad",
        ] {
            let Err(error) = connect(url, |options| {
                options.connect_timeout(std::time::Duration::from_secs(2));
            })
            .await
            else {
                panic!("{url} connected");
            };
            assert!(error.contains("DATABASE_URL"), "{url}: {error}");
            assert!(!error.contains("s3cr3t"), "{url}: {error}");
        }
    }
}
