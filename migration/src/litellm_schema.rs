//! LiteLLM's schema as entra-sync needs it: every LiteLLM table and column entra-sync reads or
//! writes, checked against the live database at the start of `run`, `sync` and
//! `entra-sync-migrate status`, so that a LiteLLM release that renamed or dropped one stops
//! entra-sync with its name instead of failing a round later.

use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};

/// The LiteLLM releases entra-sync supports: every table and column it uses is in their schema,
/// and the store's tests run on both ends' (tests/testkit; README "Supported LiteLLM versions").
pub const SUPPORTED_LITELLM: &str = "LiteLLM 1.103.0 to 1.110.2 (tested on litellm-proxy-extras \
     0.4.100's migrations, which 1.103.0 applies, and on 0.4.110's completed by 1.110.2's \
     schema.prisma)";

/// The newest migration of the newest schema tested (0.4.110's): a database whose
/// `_prisma_migrations` records a later one has a newer LiteLLM's schema.
pub const NEWEST_KNOWN_MIGRATION: &str = "20261015000000_managed_object_end_user_id";

/// Every LiteLLM table entra-sync reads or writes, with the columns it uses. The team, user and
/// membership columns are the entity crate's (a test in the worker keeps them equal); the others
/// are those the store's SQL names.
pub const REQUIRED: &[(&str, &[&str])] = &[
    (
        "LiteLLM_TeamTable",
        &[
            "team_id",
            "team_alias",
            "organization_id",
            "members_with_roles",
            "metadata",
            "max_budget",
            "soft_budget",
            "spend",
            "models",
            "max_parallel_requests",
            "tpm_limit",
            "rpm_limit",
            "tpd_limit",
            "budget_duration",
            "budget_reset_at",
            "blocked",
            "created_at",
            "updated_at",
            "team_member_permissions",
            "access_group_ids",
            "policies",
            "default_team_member_models",
            "model_max_budget",
        ],
    ),
    (
        "LiteLLM_UserTable",
        &[
            "user_id",
            "user_alias",
            "sso_user_id",
            "user_email",
            "user_role",
            "teams",
            "models",
            "max_budget",
            "spend",
            "budget_duration",
            "budget_reset_at",
            "metadata",
            "created_at",
            "updated_at",
        ],
    ),
    (
        "LiteLLM_TeamMembership",
        &["user_id", "team_id", "spend", "total_spend", "budget_id"],
    ),
    (
        "LiteLLM_VerificationToken",
        &[
            "token",
            "user_id",
            "team_id",
            "key_alias",
            "blocked",
            "metadata",
            "updated_at",
        ],
    ),
    ("LiteLLM_DeletedVerificationToken", &["token"]),
    (
        "LiteLLM_BudgetTable",
        &[
            "budget_id",
            "max_budget",
            "tpm_limit",
            "rpm_limit",
            "budget_duration",
            "budget_reset_at",
            "created_at",
            "created_by",
            "updated_at",
            "updated_by",
        ],
    ),
    (
        "LiteLLM_OrganizationMembership",
        &[
            "user_id",
            "organization_id",
            "user_role",
            "created_at",
            "updated_at",
        ],
    ),
    ("LiteLLM_OrganizationTable", &["organization_id"]),
];

/// What the live schema is, against [`REQUIRED`].
#[derive(Debug, PartialEq, Eq)]
pub enum SchemaCheck {
    /// Everything entra-sync uses is there, and LiteLLM's migrations are ones entra-sync knows
    /// (or unrecorded, as when they were applied by hand).
    Supported,
    /// Everything entra-sync uses is there, in a schema LiteLLM's newer migrations made (the
    /// newest applied is named).
    Newer(String),
    /// Tables or columns entra-sync uses are missing (`table` or `table.column`).
    Missing(Vec<String>),
}

impl SchemaCheck {
    /// The message for an operator: the error that stops the command, or the one notice for a
    /// newer schema.
    pub fn message(&self) -> Option<String> {
        match self {
            Self::Supported => None,
            Self::Newer(migration) => Some(format!(
                "LiteLLM's schema is newer than entra-sync was tested with (its migration \
                 {migration}; supported: {SUPPORTED_LITELLM}); every table and column entra-sync \
                 uses is there"
            )),
            Self::Missing(missing) => Some(format!(
                "LiteLLM's schema lacks what entra-sync reads or writes: {}; supported: \
                 {SUPPORTED_LITELLM}",
                missing.join(", ")
            )),
        }
    }
}

/// Compares the live schema (the connection's `search_path` schema) with [`REQUIRED`].
pub async fn check(db: &impl ConnectionTrait) -> Result<SchemaCheck, DbErr> {
    let rows = db
        .query_all(Statement::from_string(
            DbBackend::Postgres,
            r#"SELECT table_name::text, column_name::text FROM information_schema.columns
               WHERE table_schema = current_schema() AND table_name LIKE 'LiteLLM\_%'"#,
        ))
        .await?;
    let present: std::collections::HashSet<(String, String)> = rows
        .iter()
        .filter_map(|row| {
            Some((
                row.try_get_by_index::<String>(0).ok()?,
                row.try_get_by_index::<String>(1).ok()?,
            ))
        })
        .collect();
    let mut missing = Vec::new();
    for (table, columns) in REQUIRED {
        if !present.iter().any(|(t, _)| t == table) {
            missing.push((*table).to_owned());
            continue;
        }
        for column in *columns {
            if !present.contains(&((*table).to_owned(), (*column).to_owned())) {
                missing.push(format!("{table}.{column}"));
            }
        }
    }
    if !missing.is_empty() {
        return Ok(SchemaCheck::Missing(missing));
    }
    Ok(match newest_applied_migration(db).await? {
        Some(newest) if newest.as_str() > NEWEST_KNOWN_MIGRATION => SchemaCheck::Newer(newest),
        _ => SchemaCheck::Supported,
    })
}

/// The newest migration LiteLLM's `prisma migrate` recorded, when it recorded any.
async fn newest_applied_migration(db: &impl ConnectionTrait) -> Result<Option<String>, DbErr> {
    let recorded = db
        .query_one(Statement::from_string(
            DbBackend::Postgres,
            "SELECT (to_regclass('_prisma_migrations') IS NOT NULL)::int",
        ))
        .await?
        .and_then(|row| row.try_get_by_index::<i32>(0).ok())
        == Some(1);
    if !recorded {
        return Ok(None);
    }
    Ok(db
        .query_one(Statement::from_string(
            DbBackend::Postgres,
            "SELECT max(migration_name) FROM _prisma_migrations WHERE finished_at IS NOT NULL \
             AND rolled_back_at IS NULL",
        ))
        .await?
        .and_then(|row| row.try_get_by_index::<Option<String>>(0).ok())
        .flatten())
}
