//! Items whose sync failed on their own: one group or user that keeps failing (a team deleted by
//! hand that cannot be made again, a group Graph answers 404 for) must never stall the others.
//! The rest of the work commits and the round moves on; the failed item is recorded in
//! `entra_sync_failed_items` (and the audit log) and retried with backoff until it succeeds.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use entity::sync::failed_item;
use entity::{GroupId, UserId};
use sea_orm::{ConnectionTrait, EntityTrait, FromQueryResult, QueryOrder};

use super::sql::stmt;
use super::{ApplyOptions, Cause, Store};
use crate::error::Result;

/// What failed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Item {
    Group(GroupId),
    User(UserId),
    /// A member a group lists whose user object Graph could not read yet: they stay as they are
    /// until the group, read again, shows them readable (or no longer lists them).
    Member(GroupId, UserId),
}

impl Item {
    fn kind(&self) -> &'static str {
        match self {
            Self::Group(_) => "group",
            Self::User(_) => "user",
            Self::Member(..) => "member",
        }
    }

    /// The id stored for it: the object id, or `group/user` for a member.
    fn id(&self) -> String {
        match self {
            Self::Group(id) => id.to_string(),
            Self::User(id) => id.to_string(),
            Self::Member(group, user) => format!("{group}/{user}"),
        }
    }

    fn parse(kind: &str, id: &str) -> Option<Self> {
        match kind {
            "group" => GroupId::parse(id).ok().map(Self::Group),
            "user" => UserId::parse(id).ok().map(Self::User),
            "member" => {
                let (group, user) = id.split_once('/')?;
                Some(Self::Member(
                    GroupId::parse(group).ok()?,
                    UserId::parse(user).ok()?,
                ))
            }
            _ => None,
        }
    }
}

impl std::fmt::Display for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind(), self.id())
    }
}

impl Store {
    /// Records a failure (or one more): retried 5 s after the first, doubling up to an hour.
    /// The audit log says what failed and why.
    pub async fn record_failure(
        &self,
        item: &Item,
        error: &str,
        options: ApplyOptions,
    ) -> Result<()> {
        let Some(txn) = self.state_transaction(options).await? else {
            return Ok(());
        };
        txn.execute(stmt(
            "INSERT INTO entra_sync_failed_items
               (kind, id, error, attempts, first_failed_at, last_failed_at, retry_at)
             VALUES ($1, $2, $3, 1, $4, $4, $4 + interval '5 seconds')
             ON CONFLICT (kind, id) DO UPDATE
               SET error = excluded.error, attempts = entra_sync_failed_items.attempts + 1,
                   last_failed_at = excluded.last_failed_at,
                   retry_at = excluded.last_failed_at
                     + least(interval '5 seconds'
                               * power(2, least(entra_sync_failed_items.attempts, 20)),
                             interval '1 hour')",
            [
                item.kind().into(),
                item.id().into(),
                error.into(),
                options.now.into(),
            ],
        ))
        .await?;
        audit(&txn, "sync_failed", item, Some(error), options).await?;
        txn.commit().await?;
        Ok(())
    }

    /// The item is in order again.
    pub async fn clear_failure(&self, item: &Item, options: ApplyOptions) -> Result<()> {
        let Some(txn) = self.state_transaction(options).await? else {
            return Ok(());
        };
        let cleared = txn
            .execute(stmt(
                "DELETE FROM entra_sync_failed_items WHERE kind = $1 AND id = $2",
                [item.kind().into(), item.id().into()],
            ))
            .await?;
        if cleared.rows_affected() > 0 {
            audit(&txn, "sync_recovered", item, None, options).await?;
        }
        txn.commit().await?;
        Ok(())
    }

    /// Every item failing now.
    pub async fn failing_items(&self) -> Result<HashSet<Item>> {
        Ok(
            Row::find_by_statement(stmt("SELECT kind, id FROM entra_sync_failed_items", []))
                .all(&self.db)
                .await?
                .into_iter()
                .filter_map(|row| Item::parse(&row.kind, &row.id))
                .collect(),
        )
    }

    /// The failed items whose next attempt is due at `now`.
    pub async fn due_items(&self, now: DateTime<Utc>) -> Result<Vec<Item>> {
        Ok(Row::find_by_statement(stmt(
            "SELECT kind, id FROM entra_sync_failed_items WHERE retry_at <= $1 ORDER BY retry_at",
            [now.into()],
        ))
        .all(&self.db)
        .await?
        .into_iter()
        .filter_map(|row| Item::parse(&row.kind, &row.id))
        .collect())
    }

    /// How many items fail now, by kind (for the metrics): (groups, users).
    pub async fn failing_counts(&self) -> Result<(i64, i64)> {
        failing_counts(&self.db).await
    }
}

async fn audit(
    txn: &sea_orm::DatabaseTransaction,
    kind: &str,
    item: &Item,
    error: Option<&str>,
    options: ApplyOptions,
) -> Result<()> {
    let (team, user) = match item {
        Item::Group(id) => (Some(id.to_string()), None),
        Item::User(id) => (None, Some(id.to_string())),
        Item::Member(group, user) => (Some(group.to_string()), Some(user.to_string())),
    };
    let detail = serde_json::json!({
        "kind": kind, "item": item.kind(), "id": item.id(), "error": error,
    });
    txn.execute(stmt(
        "INSERT INTO entra_sync_audit_log (recorded_at, kind, team_id, user_id, detail, cause)
         VALUES ($1, $2, $3, $4, $5, $6)",
        [
            options.now.into(),
            kind.into(),
            team.into(),
            user.into(),
            detail.into(),
            options.cause.map(Cause::as_str).into(),
        ],
    ))
    .await?;
    Ok(())
}

#[derive(FromQueryResult)]
struct Row {
    kind: String,
    id: String,
}

/// Every failed item, most attempts first (for `status`).
pub async fn failed_items(db: &impl ConnectionTrait) -> Result<Vec<failed_item::Model>> {
    use sea_orm::QuerySelect;
    Ok(failed_item::Entity::find()
        .order_by_desc(failed_item::Column::Attempts)
        .limit(100)
        .all(db)
        .await?)
}

/// How many items fail now, by kind (for the metrics): a member Graph could not read counts
/// as a user.
pub async fn failing_counts(db: &impl ConnectionTrait) -> Result<(i64, i64)> {
    #[derive(FromQueryResult)]
    struct Counts {
        groups: i64,
        users: i64,
    }
    let counts = Counts::find_by_statement(stmt(
        "SELECT count(*) FILTER (WHERE kind = 'group') AS groups,
                count(*) FILTER (WHERE kind IN ('user', 'member')) AS users
         FROM entra_sync_failed_items",
        [],
    ))
    .one(db)
    .await?;
    Ok(counts.map_or((0, 0), |c| (c.groups, c.users)))
}
