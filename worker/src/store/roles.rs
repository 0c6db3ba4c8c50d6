//! A user's LiteLLM role from their Entra app roles.

use chrono::{DateTime, Utc};
use entity::UserId;
use sea_orm::{ConnectionTrait, DatabaseTransaction, FromQueryResult};

use super::change::Change;
use super::sql::{litellm_timestamp, stmt};
use super::users;
use crate::error::{Error, Result};
use crate::roles::LiteLlmRole;

/// The role entra-sync last set on a user, if any.
async fn managed_role(txn: &DatabaseTransaction, user_id: &str) -> Result<Option<String>> {
    #[derive(FromQueryResult)]
    struct Row {
        role: String,
    }
    Ok(Row::find_by_statement(stmt(
        "SELECT role FROM entra_sync_managed_roles WHERE user_id = $1",
        [user_id.into()],
    ))
    .one(txn)
    .await?
    .map(|r| r.role))
}

/// Gives a LiteLLM user the role `to`; the change, or none when `from` is already `to`.
async fn change_role(
    txn: &DatabaseTransaction,
    user_id: &str,
    from: Option<&str>,
    to: LiteLlmRole,
    now: DateTime<Utc>,
) -> Result<Vec<Change>> {
    if from == Some(to.as_str()) {
        return Ok(Vec::new());
    }
    txn.execute(stmt(
        r#"UPDATE "LiteLLM_UserTable" SET user_role = $2, updated_at = $3 WHERE user_id = $1"#,
        [
            user_id.into(),
            to.as_str().into(),
            litellm_timestamp(now).into(),
        ],
    ))
    .await?;
    Ok(vec![Change::RoleChanged {
        user_id: user_id.to_owned(),
        from: from.map(str::to_owned),
        to: to.as_str().to_owned(),
    }])
}

/// Sets `user_role` to the most privileged valid role among the app-role values; with no valid
/// value the stored role stays. The role set is remembered in `entra_sync_managed_roles`. A role
/// that differs from the one entra-sync last set was set by an admin in LiteLLM: it stays.
pub(super) async fn set(
    txn: &DatabaseTransaction,
    user: &UserId,
    role_values: &[String],
    now: DateTime<Utc>,
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
    if let Some(ours) = managed_role(txn, &row.user_id).await?
        && row.user_role.as_deref() != Some(ours.as_str())
    {
        // Every poll finds it again: not news after the first time.
        tracing::debug!(
            user = row.user_id,
            "role changed by hand in LiteLLM; left alone"
        );
        return Ok(Vec::new());
    }
    let changes = change_role(txn, &row.user_id, row.user_role.as_deref(), role, now).await?;
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

/// A user whose Entra roles are all gone: if the role is still the one entra-sync set, it drops
/// to the default role for new users (a revoked admin must not stay admin); a role an admin set
/// since stays. Either way entra-sync stops managing it.
pub(super) async fn revoke(
    txn: &DatabaseTransaction,
    user: &UserId,
    default_role: LiteLlmRole,
    now: DateTime<Utc>,
) -> Result<Vec<Change>> {
    #[derive(FromQueryResult)]
    struct Row {
        user_id: String,
        role: String,
    }
    let Some(ours) = Row::find_by_statement(stmt(
        "SELECT user_id, role FROM entra_sync_managed_roles WHERE entra_user_id = $1",
        [user.to_string().into()],
    ))
    .one(txn)
    .await?
    else {
        return Ok(Vec::new());
    };
    let candidates = users::Candidates::new(
        users::lock_candidates(txn, std::slice::from_ref(&ours.user_id), &[]).await?,
    );
    let current = candidates
        .by_user_id(&ours.user_id)
        .and_then(|r| r.user_role.clone());
    let changes = if current.as_deref() == Some(ours.role.as_str()) {
        change_role(txn, &ours.user_id, current.as_deref(), default_role, now).await?
    } else {
        Vec::new()
    };
    txn.execute(stmt(
        "DELETE FROM entra_sync_managed_roles WHERE user_id = $1",
        [ours.user_id.into()],
    ))
    .await?;
    Ok(changes)
}
