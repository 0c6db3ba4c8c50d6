//! entra-sync's own sync state: assigned groups and delta links.

use migration::database::Db;
use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use entity::sync::{assigned_group, delta_link};
use entity::{GroupId, UserId};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::Set, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait,
    FromQueryResult, Statement, TransactionTrait,
};

use crate::error::Result;
use crate::lease::Fence;

/// The delta query entra-sync runs.
pub(super) const GROUPS: &str = "groups";

pub(super) async fn assigned(db: &Db) -> Result<HashMap<GroupId, Option<String>>> {
    Ok(assigned_group::Entity::find()
        .all(db)
        .await?
        .into_iter()
        .map(|g| (g.group_id, g.display_name))
        .collect())
}

/// A transaction for entra-sync's own state, which commits only while `fence` holds its lease.
pub(super) async fn begin(db: &Db, fence: Option<Fence>) -> Result<DatabaseTransaction> {
    let txn = db.begin().await?;
    if let Some(fence) = fence {
        crate::lease::check(&txn, fence).await?;
    }
    Ok(txn)
}

/// Records groups as assigned, with their current names, in one statement.
pub(super) async fn remember_assigned(
    db: &Db,
    fence: Option<Fence>,
    groups: &[(GroupId, Option<String>)],
    now: DateTime<Utc>,
) -> Result<()> {
    if groups.is_empty() {
        return Ok(());
    }
    let txn = begin(db, fence).await?;
    assigned_group::Entity::insert_many(groups.iter().map(|(group, display_name)| {
        assigned_group::ActiveModel {
            group_id: Set(group.clone()),
            display_name: Set(display_name.clone()),
            assigned_at: Set(now),
        }
    }))
    .on_conflict(
        OnConflict::column(assigned_group::Column::GroupId)
            .update_column(assigned_group::Column::DisplayName)
            .to_owned(),
    )
    .exec_without_returning(&txn)
    .await?;
    txn.commit().await?;
    Ok(())
}

pub(super) async fn forget_assigned(db: &Db, fence: Option<Fence>, group: &GroupId) -> Result<()> {
    let txn = begin(db, fence).await?;
    assigned_group::Entity::delete_by_id(group.clone())
        .exec(&txn)
        .await?;
    txn.commit().await?;
    Ok(())
}

pub(super) async fn delta_link(db: &Db) -> Result<Option<String>> {
    Ok(delta_link::Entity::find_by_id(GROUPS.to_owned())
        .one(db)
        .await?
        .map(|l| l.delta_link))
}

/// When the groups' deltaLink was last stored: the last committed round.
pub async fn last_delta_round(db: &impl ConnectionTrait) -> Result<Option<DateTime<Utc>>> {
    Ok(delta_link::Entity::find_by_id(GROUPS.to_owned())
        .one(db)
        .await?
        .map(|l| l.updated_at))
}

pub(super) async fn save_delta_link(
    db: &Db,
    fence: Option<Fence>,
    link: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    let txn = begin(db, fence).await?;
    delta_link::Entity::insert(delta_link::ActiveModel {
        resource: Set(GROUPS.to_owned()),
        delta_link: Set(link.to_owned()),
        updated_at: Set(now),
    })
    .on_conflict(
        OnConflict::column(delta_link::Column::Resource)
            .update_columns([delta_link::Column::DeltaLink, delta_link::Column::UpdatedAt])
            .to_owned(),
    )
    .exec_without_returning(&txn)
    .await?;
    txn.commit().await?;
    Ok(())
}

/// Users entra-sync saw disabled or deleted in Entra.
pub(super) async fn departed(db: &Db) -> Result<HashSet<UserId>> {
    #[derive(FromQueryResult)]
    struct Row {
        entra_user_id: String,
    }
    Ok(Row::find_by_statement(Statement::from_string(
        DbBackend::Postgres,
        "SELECT entra_user_id FROM entra_sync_departed_users",
    ))
    .all(db)
    .await?
    .into_iter()
    .filter_map(|row| UserId::parse(&row.entra_user_id).ok())
    .collect())
}

/// Remembers that a user was disabled or deleted in Entra (`departed`), or is back.
pub(super) async fn set_departed(
    db: &Db,
    fence: Option<Fence>,
    user: &UserId,
    departed: bool,
    now: DateTime<Utc>,
) -> Result<()> {
    let txn = begin(db, fence).await?;
    let sql = if departed {
        "INSERT INTO entra_sync_departed_users (entra_user_id, since) VALUES ($1, $2)
         ON CONFLICT (entra_user_id) DO NOTHING"
    } else {
        "DELETE FROM entra_sync_departed_users WHERE entra_user_id = $1 AND $2 IS NOT NULL"
    };
    txn.execute(Statement::from_sql_and_values(
        DbBackend::Postgres,
        sql,
        [user.to_string().into(), now.into()],
    ))
    .await?;
    txn.commit().await?;
    Ok(())
}
