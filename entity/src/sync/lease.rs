//! `entra_sync_leases`: work that one worker replica at a time does, and who does it until when.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "entra_sync_leases")]
pub struct Model {
    /// What the lease is for, e.g. `subscriptions`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub name: String,
    /// The replica holding it (its consumer name).
    pub holder: String,
    /// When it passes to another replica unless renewed (by the database's clock).
    pub expires_at: DateTimeUtc,
    /// Grows each time the lease changes hands: work checks at commit that its number is still
    /// the current one.
    pub fence: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
