//! `entra_sync_managed_memberships`: the team memberships entra-sync created, and why it keeps
//! them. In the default `managed` removal mode only these are ever removed, so members an admin
//! added by hand stay.

use sea_orm::entity::prelude::*;

use crate::ids::{GroupId, UserId};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "entra_sync_managed_memberships")]
pub struct Model {
    /// The group, which is also the LiteLLM `team_id`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub group_id: GroupId,
    /// LiteLLM's `user_id` (an Entra object id, or a UPN for users LiteLLM's SCIM created).
    #[sea_orm(primary_key, auto_increment = false)]
    pub user_id: String,
    pub entra_user_id: UserId,
    pub created_at: DateTimeUtc,
    /// The user is in the group (directly, or through nested groups in `transitive` mode).
    pub member: bool,
    /// The user owns the group (`ENTRA_SYNC_OWNERS_AS_ADMINS`).
    pub owner: bool,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
