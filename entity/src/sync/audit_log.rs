//! `entra_sync_audit_log`: one row for every change entra-sync made to LiteLLM's tables.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "entra_sync_audit_log")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub recorded_at: DateTimeUtc,
    /// What changed, e.g. `member_added` (the `kind` of the change's JSON in `detail`).
    pub kind: String,
    pub team_id: Option<String>,
    pub user_id: Option<String>,
    /// The whole change as JSON.
    pub detail: Json,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
