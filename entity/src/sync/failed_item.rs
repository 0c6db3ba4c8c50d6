//! `entra_sync_failed_items`: a group or user whose sync failed on its own while the rest of the
//! work went on; retried with backoff until it succeeds, then removed.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "entra_sync_failed_items")]
pub struct Model {
    /// `group` or `user`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub kind: String,
    /// The Entra object id.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    /// The last failure.
    pub error: String,
    pub attempts: i32,
    pub first_failed_at: DateTimeUtc,
    pub last_failed_at: DateTimeUtc,
    /// Not retried before this.
    pub retry_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
