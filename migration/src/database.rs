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
//! connection.

use sea_orm_migration::sea_orm::{
    AccessMode, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction,
    DbBackend, DbErr, ExecResult, IsolationLevel, QueryResult, Statement, TransactionError,
    TransactionTrait,
};

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
