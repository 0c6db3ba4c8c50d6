//! `entra_sync_assigned_groups`: the groups assigned to the app at the last poll.

use sea_orm::entity::prelude::*;

use crate::ids::GroupId;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "entra_sync_assigned_groups")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub group_id: GroupId,
    pub display_name: Option<String>,
    pub assigned_at: DateTimeUtc,
    /// Assigned an app role (not only default access): its members' roles follow it.
    pub holds_role: bool,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
