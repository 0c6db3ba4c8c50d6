//! entra-sync's own sync state: assigned groups and delta links.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use entity::GroupId;
use entity::sync::{assigned_group, delta_link};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::Set, DatabaseConnection, DatabaseTransaction, EntityTrait, TransactionTrait,
};

use crate::error::Result;
use crate::lease::Fence;

/// The delta query entra-sync runs.
pub(super) const GROUPS: &str = "groups";

pub(super) async fn assigned(db: &DatabaseConnection) -> Result<HashMap<GroupId, Option<String>>> {
    Ok(assigned_group::Entity::find()
        .all(db)
        .await?
        .into_iter()
        .map(|g| (g.group_id, g.display_name))
        .collect())
}

/// A transaction for entra-sync's own state, which commits only while `fence` holds its lease.
async fn begin(db: &DatabaseConnection, fence: Option<Fence>) -> Result<DatabaseTransaction> {
    let txn = db.begin().await?;
    if let Some(fence) = fence {
        crate::lease::check(&txn, fence).await?;
    }
    Ok(txn)
}

/// Records groups as assigned, with their current names, in one statement.
pub(super) async fn remember_assigned(
    db: &DatabaseConnection,
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

pub(super) async fn forget_assigned(
    db: &DatabaseConnection,
    fence: Option<Fence>,
    group: &GroupId,
) -> Result<()> {
    let txn = begin(db, fence).await?;
    assigned_group::Entity::delete_by_id(group.clone())
        .exec(&txn)
        .await?;
    txn.commit().await?;
    Ok(())
}

pub(super) async fn delta_link(db: &DatabaseConnection) -> Result<Option<String>> {
    Ok(delta_link::Entity::find_by_id(GROUPS.to_owned())
        .one(db)
        .await?
        .map(|l| l.delta_link))
}

/// When the groups' deltaLink was last stored: the last committed round.
pub async fn last_delta_round(db: &DatabaseConnection) -> Result<Option<DateTime<Utc>>> {
    Ok(delta_link::Entity::find_by_id(GROUPS.to_owned())
        .one(db)
        .await?
        .map(|l| l.updated_at))
}

pub(super) async fn save_delta_link(
    db: &DatabaseConnection,
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
