//! `entra_sync_managed_roles`: the `user_role` entra-sync last set on a LiteLLM user. A stored role
//! that differs from this one was set by an admin, and entra-sync leaves it alone.

use sea_orm::entity::prelude::*;

use crate::ids::UserId;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "entra_sync_managed_roles")]
pub struct Model {
    /// LiteLLM's `user_id`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub user_id: String,
    pub entra_user_id: UserId,
    pub role: String,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
