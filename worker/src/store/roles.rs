//! A user's LiteLLM role from their Entra app roles.

use chrono::{DateTime, Utc};
use entity::UserId;
use sea_orm::{ConnectionTrait, DatabaseTransaction};

use super::change::Change;
use super::sql::{litellm_timestamp, stmt};
use super::users;
use crate::error::{Error, Result};
use crate::roles::LiteLlmRole;

/// Sets `user_role` to the most privileged valid role among the app-role values; with no valid
/// value the stored role stays. The role set is remembered in `entra_sync_managed_roles`.
pub(super) async fn set(
    txn: &DatabaseTransaction,
    user: &UserId,
    role_values: &[String],
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<Vec<Change>> {
    let candidates =
        users::Candidates::new(users::lock_candidates(txn, &[user.to_string()], &[]).await?);
    let row = candidates
        .by_object_id(user.as_str())
        .map(|row| &candidates.rows[row])
        .ok_or_else(|| Error::UserNotFound(user.to_string()))?;
    let Some(role) = LiteLlmRole::highest(role_values.iter().map(String::as_str)) else {
        return Ok(Vec::new());
    };
    let mut changes = Vec::new();
    if row.user_role.as_deref() != Some(role.as_str()) {
        changes.push(Change::RoleChanged {
            user_id: row.user_id.clone(),
            from: row.user_role.clone(),
            to: role.as_str().to_owned(),
        });
    }
    if dry_run {
        return Ok(changes);
    }
    if !changes.is_empty() {
        txn.execute(stmt(
            r#"UPDATE "LiteLLM_UserTable" SET user_role = $2, updated_at = $3 WHERE user_id = $1"#,
            [
                row.user_id.clone().into(),
                role.as_str().into(),
                litellm_timestamp(now).into(),
            ],
        ))
        .await?;
    }
    txn.execute(stmt(
        r#"INSERT INTO entra_sync_managed_roles (user_id, entra_user_id, role, updated_at)
           VALUES ($1, $2, $3, $4)
           ON CONFLICT (user_id) DO UPDATE
             SET entra_user_id = EXCLUDED.entra_user_id, role = EXCLUDED.role,
                 updated_at = EXCLUDED.updated_at
             WHERE entra_sync_managed_roles.role IS DISTINCT FROM EXCLUDED.role
                OR entra_sync_managed_roles.entra_user_id IS DISTINCT FROM EXCLUDED.entra_user_id"#,
        [
            row.user_id.clone().into(),
            user.to_string().into(),
            role.as_str().into(),
            now.into(),
        ],
    ))
    .await?;
    Ok(changes)
}
