//! `"LiteLLM_TeamMembership"`: a user's spend and budget within one team. It has no foreign key to
//! the team or user tables.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "LiteLLM_TeamMembership")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub user_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub team_id: String,
    /// LiteLLM's; entra-sync never writes it.
    pub spend: f64,
    /// LiteLLM's; entra-sync never writes it.
    pub total_spend: f64,
    pub budget_id: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
