//! Work that one worker replica at a time may do, serialised by a PostgreSQL advisory lock.

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait};

use crate::error::Result;

/// Runs `work` holding the advisory lock `key`. The lock lives in a transaction that only holds
/// it, so the work commits on other connections; it is released when the work ends, and by
/// PostgreSQL when this process dies.
pub async fn with_lock<T>(
    db: &DatabaseConnection,
    key: i64,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let lock = db.begin().await?;
    lock.execute(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_advisory_xact_lock($1)",
        [key.into()],
    ))
    .await?;
    let result = work.await;
    lock.commit().await?;
    result
}
