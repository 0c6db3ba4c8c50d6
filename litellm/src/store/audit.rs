//! The audit log read back (`entra-sync-worker audit`: why did a user gain or lose a team) and
//! kept to its retention.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, FromQueryResult, Value};
use serde::Serialize;

use super::Store;
use super::sql::{stmt, text_array};
use crate::error::Result;

/// Which audit entries to read; every filter given must hold.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// A user: a LiteLLM user id, an Entra object id or an email.
    pub user: Option<String>,
    /// A team: its id (the group's object id) or its alias.
    pub team: Option<String>,
    /// Entries recorded at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Entries of these kinds (`member_removed`, `team_created`, ...).
    pub kinds: Vec<String>,
    /// At most this many, the newest.
    pub limit: u64,
}

/// One audit entry, with the team's alias and the user's email as LiteLLM has them now.
#[derive(Clone, Debug, FromQueryResult, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub recorded_at: DateTime<Utc>,
    pub kind: String,
    pub team_id: Option<String>,
    pub team_alias: Option<String>,
    pub user_id: Option<String>,
    pub user_email: Option<String>,
    /// The unit of work that made the change ([`super::Cause`]); none for entries written
    /// before causes were recorded.
    pub cause: Option<String>,
    pub detail: serde_json::Value,
}

#[derive(FromQueryResult)]
struct Id {
    id: String,
}

impl Store {
    /// The newest entries that match `filter`, newest first. A user or team is matched by every
    /// id it goes by (a user found by email is also found under its LiteLLM id and its object
    /// id), and by the text given itself, so that a user or team LiteLLM no longer has is found
    /// too.
    #[tracing::instrument(skip(self), err)]
    pub async fn audit_entries(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>> {
        let mut conditions = Vec::new();
        let mut values: Vec<Value> = Vec::new();
        if let Some(user) = &filter.user {
            let ids = self
                .ids_of(
                    r#"SELECT user_id AS id FROM "LiteLLM_UserTable"
                       WHERE user_id = $1 OR sso_user_id = $1 OR lower(user_email) = lower($1)
                       UNION SELECT sso_user_id FROM "LiteLLM_UserTable"
                       WHERE (user_id = $1 OR lower(user_email) = lower($1))
                         AND sso_user_id IS NOT NULL"#,
                    user,
                )
                .await?;
            values.push(text_array(ids));
            conditions.push(format!("a.user_id = ANY(${})", values.len()));
        }
        if let Some(team) = &filter.team {
            let ids = self
                .ids_of(
                    r#"SELECT team_id AS id FROM "LiteLLM_TeamTable"
                       WHERE team_id = $1 OR team_alias = $1"#,
                    team,
                )
                .await?;
            values.push(text_array(ids));
            conditions.push(format!("a.team_id = ANY(${})", values.len()));
        }
        if let Some(since) = filter.since {
            values.push(since.into());
            conditions.push(format!("a.recorded_at >= ${}", values.len()));
        }
        if !filter.kinds.is_empty() {
            values.push(text_array(&filter.kinds));
            conditions.push(format!("a.kind = ANY(${})", values.len()));
        }
        let filtered = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        values.push(i64::try_from(filter.limit).unwrap_or(i64::MAX).into());
        let sql = format!(
            r#"SELECT a.id, a.recorded_at, a.kind, a.team_id, t.team_alias, a.user_id,
                      u.user_email, a.cause, a.detail
               FROM (SELECT * FROM entra_sync_audit_log a {filtered}
                     ORDER BY a.recorded_at DESC, a.id DESC LIMIT ${limit}) a
               LEFT JOIN "LiteLLM_TeamTable" t ON t.team_id = a.team_id
               LEFT JOIN "LiteLLM_UserTable" u ON u.user_id = a.user_id
               ORDER BY a.recorded_at DESC, a.id DESC"#,
            limit = values.len(),
        );
        Ok(AuditEntry::find_by_statement(stmt(&sql, values))
            .all(&self.db)
            .await?)
    }

    /// The ids `query` finds for `name`, and `name` itself.
    async fn ids_of(&self, query: &str, name: &str) -> Result<Vec<String>> {
        let mut ids: Vec<String> = Id::find_by_statement(stmt(query, [name.into()]))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|row| row.id)
            .collect();
        ids.push(name.to_owned());
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// Deletes the entries recorded before `cutoff`, `batch` at a time, each batch its own
    /// transaction (so that neither the locks nor the WAL of one statement grow with the log).
    /// Returns how many went.
    #[tracing::instrument(skip(self), err)]
    pub async fn purge_audit_log(&self, cutoff: DateTime<Utc>, batch: u64) -> Result<u64> {
        let batch = i64::try_from(batch).unwrap_or(i64::MAX).max(1);
        let mut purged = 0;
        loop {
            let deleted = self
                .db
                .execute(stmt(
                    "DELETE FROM entra_sync_audit_log WHERE id IN (
                         SELECT id FROM entra_sync_audit_log WHERE recorded_at < $1
                         ORDER BY recorded_at LIMIT $2)",
                    [cutoff.into(), batch.into()],
                ))
                .await?
                .rows_affected();
            purged += deleted;
            if deleted < batch.unsigned_abs() {
                return Ok(purged);
            }
        }
    }
}
