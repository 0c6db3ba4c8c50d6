//! `entra_sync_subscriptions`: the Graph subscriptions entra-sync created, so that the keeper
//! finds them again after a restart and tells its own from anyone else's.

use migration::database::Db;

use chrono::{DateTime, Utc};
use entity::sync::subscription;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, EntityTrait};

use crate::error::Result;
use entra_sync_graph::model::Subscription;

/// Every stored subscription.
#[tracing::instrument(skip(db), err(level = "debug"))]
pub async fn stored(db: &Db) -> Result<Vec<subscription::Model>> {
    Ok(subscription::Entity::find().all(db).await?)
}

/// Stores a subscription Graph created or renewed: a renewal moves only its expiry.
#[tracing::instrument(skip(db), fields(id = %s.id), err(level = "debug"))]
pub async fn remember(db: &Db, s: &Subscription, now: DateTime<Utc>) -> Result<()> {
    subscription::Entity::insert(subscription::ActiveModel {
        id: Set(s.id.clone()),
        resource: Set(s.resource.clone()),
        change_type: Set(s.change_type.clone()),
        notification_url: Set(s.notification_url.clone()),
        lifecycle_notification_url: Set(s.lifecycle_notification_url.clone()),
        expires_at: Set(s.expiration_date_time),
        created_at: Set(now),
        updated_at: Set(now),
    })
    .on_conflict(
        OnConflict::column(subscription::Column::Id)
            .update_columns([
                subscription::Column::ExpiresAt,
                subscription::Column::UpdatedAt,
            ])
            .to_owned(),
    )
    .exec_without_returning(db)
    .await?;
    Ok(())
}

/// Forgets a subscription deleted in Graph (or already gone from it).
#[tracing::instrument(skip(db), err(level = "debug"))]
pub async fn forget(db: &Db, id: &str) -> Result<()> {
    subscription::Entity::delete_by_id(id.to_owned())
        .exec(db)
        .await?;
    Ok(())
}
