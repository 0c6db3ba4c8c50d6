//! `"LiteLLM_TeamTable"`.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "LiteLLM_TeamTable")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub team_id: String,
    pub team_alias: Option<String>,
    pub organization_id: Option<String>,
    pub members_with_roles: Json,
    pub metadata: Json,
    pub max_budget: Option<f64>,
    pub soft_budget: Option<f64>,
    /// LiteLLM's; entra-sync never writes it.
    pub spend: f64,
    pub models: Option<Vec<String>>,
    pub max_parallel_requests: Option<i32>,
    pub tpm_limit: Option<i64>,
    pub rpm_limit: Option<i64>,
    pub tpd_limit: Option<i64>,
    pub budget_duration: Option<String>,
    pub budget_reset_at: Option<DateTime>,
    pub blocked: bool,
    pub created_at: DateTime,
    pub updated_at: DateTime,
    pub team_member_permissions: Option<Vec<String>>,
    pub access_group_ids: Option<Vec<String>>,
    pub policies: Option<Vec<String>>,
    pub default_team_member_models: Option<Vec<String>>,
    pub model_max_budget: Json,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
