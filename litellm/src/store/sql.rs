//! Small helpers for the raw statements the store runs, and LiteLLM's locks.

use chrono::{DateTime, NaiveDateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, Statement, Value};

use crate::error::Result;

pub(super) fn stmt(sql: &str, values: impl IntoIterator<Item = Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

/// A text[] parameter.
pub(super) fn text_array<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> Value {
    Value::from(
        items
            .into_iter()
            .map(|s| s.as_ref().to_owned())
            .collect::<Vec<String>>(),
    )
}

/// `now` as LiteLLM stores timestamps: UTC without time zone, millisecond precision.
pub(super) fn litellm_timestamp(now: DateTime<Utc>) -> NaiveDateTime {
    let naive = now.naive_utc();
    naive - chrono::Duration::nanoseconds(i64::from(now.timestamp_subsec_nanos() % 1_000_000))
}

/// LiteLLM's team lock: every writer of a team's membership takes it first, so that our writes and
/// LiteLLM's serialize instead of losing each other's changes.
pub(super) async fn lock_team(txn: &DatabaseTransaction, team_id: &str) -> Result<()> {
    lock_teams(txn, &[team_id]).await
}

/// [`lock_team`] for several teams, in one statement and in the order of their lock keys
/// (`hashtext(team_id)`, each key once), so that two writers locking overlapping sets never wait
/// on each other in a circle. Ordering by team id would not do: two ids whose hashes collide
/// share one lock, which the id order can put on both sides of a third team's.
pub(super) async fn lock_teams<S: AsRef<str>>(
    txn: &DatabaseTransaction,
    team_ids: &[S],
) -> Result<()> {
    if team_ids.is_empty() {
        return Ok(());
    }
    // A volatile function in the select list is evaluated after the sort (PostgreSQL 9.6 and
    // later), so the locks are taken in `lock_key` order.
    txn.execute(stmt(
        "SELECT pg_advisory_xact_lock(lock_key)
         FROM (SELECT DISTINCT hashtext(team_id) AS lock_key
               FROM unnest($1::text[]) AS team_id) AS keys
         ORDER BY lock_key",
        [text_array(team_ids.iter().map(AsRef::as_ref))],
    ))
    .await?;
    Ok(())
}
