//! `entra_sync_subscriptions`: the Graph change-notification subscriptions entra-sync created.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "entra_sync_subscriptions")]
pub struct Model {
    /// Graph's subscription id.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    /// The Graph resource, e.g. `groups` or `users`.
    pub resource: String,
    pub change_type: String,
    pub notification_url: String,
    pub lifecycle_notification_url: Option<String>,
    pub expires_at: DateTimeUtc,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
