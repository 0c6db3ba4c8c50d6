//! `"LiteLLM_UserTable"`.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "LiteLLM_UserTable")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub user_id: String,
    pub user_alias: Option<String>,
    #[sea_orm(unique)]
    pub sso_user_id: Option<String>,
    pub user_email: Option<String>,
    pub user_role: Option<String>,
    pub teams: Option<Vec<String>>,
    pub models: Option<Vec<String>>,
    pub max_budget: Option<f64>,
    /// LiteLLM's; entra-sync never writes it.
    pub spend: f64,
    pub budget_duration: Option<String>,
    pub budget_reset_at: Option<DateTime>,
    pub metadata: Json,
    pub created_at: Option<DateTime>,
    pub updated_at: Option<DateTime>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
