//! `entra_sync_delta_links`: the Graph deltaLink to resume each delta query from.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "entra_sync_delta_links")]
pub struct Model {
    /// What the delta query reads, e.g. `groups`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub resource: String,
    pub delta_link: String,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
