//! `entra_sync_reconciliations`: one row per reconciliation run, for `status`.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "entra_sync_reconciliations")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub started_at: DateTimeUtc,
    pub finished_at: DateTimeUtc,
    pub dry_run: bool,
    /// The drift found: changes made, or planned in a dry run.
    pub changes: i64,
    /// Why the run stopped, when it failed.
    pub error: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
