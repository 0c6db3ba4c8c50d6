//! A user's LiteLLM role from their Entra app roles, for many users in a few statements.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use entity::UserId;
use sea_orm::{ConnectionTrait, DatabaseTransaction, FromQueryResult};

use super::change::Change;
use super::sql::{litellm_timestamp, stmt, text_array};
use super::users;
use crate::error::{Error, Result};
use crate::roles::LiteLlmRole;

/// Sets `user_role` to the most privileged valid role among the app-role values; with no valid
/// value the stored role stays. The user must exist (see [`users::ensure`]).
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
    set_many(txn, &[(row.user_id.clone(), user.clone(), role)], now).await
}

/// Gives each LiteLLM user (`user_id`, Entra object id, role) the role, their rows locked
/// already: one read, one update, one upsert of what entra-sync manages. The role set is
/// remembered in `entra_sync_managed_roles`; a role that differs from the one entra-sync last
/// set was set by an admin in LiteLLM, and stays.
pub(super) async fn set_many(
    txn: &DatabaseTransaction,
    wanted: &[(String, UserId, LiteLlmRole)],
    now: DateTime<Utc>,
) -> Result<Vec<Change>> {
    #[derive(FromQueryResult)]
    struct Row {
        user_id: String,
        user_role: Option<String>,
        ours: Option<String>,
    }
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = wanted
        .iter()
        .map(|(user_id, _, _)| user_id.as_str())
        .collect();
    let current: HashMap<String, Row> = Row::find_by_statement(stmt(
        r#"SELECT u.user_id, u.user_role, m.role AS ours
           FROM "LiteLLM_UserTable" u
           LEFT JOIN entra_sync_managed_roles m ON m.user_id = u.user_id
           WHERE u.user_id = ANY($1)"#,
        [text_array(&ids)],
    ))
    .all(txn)
    .await?
    .into_iter()
    .map(|row| (row.user_id.clone(), row))
    .collect();

    let mut changes = Vec::new();
    let (mut changed_ids, mut changed_roles) = (Vec::new(), Vec::new());
    let (mut managed_ids, mut managed_entra_ids, mut managed_roles) =
        (Vec::new(), Vec::new(), Vec::new());
    for (user_id, entra_id, role) in wanted {
        let row = current
            .get(user_id)
            .ok_or_else(|| Error::UserNotFound(entra_id.to_string()))?;
        if let Some(ours) = &row.ours
            && row.user_role.as_deref() != Some(ours.as_str())
        {
            // Every poll that works roles out finds it again: not news after the first time.
            tracing::debug!(
                user = user_id,
                "role changed by hand in LiteLLM; left alone"
            );
            continue;
        }
        if row.user_role.as_deref() != Some(role.as_str()) {
            changed_ids.push(user_id.as_str());
            changed_roles.push(role.as_str());
            changes.push(Change::RoleChanged {
                user_id: user_id.clone(),
                from: row.user_role.clone(),
                to: role.as_str().to_owned(),
            });
        }
        managed_ids.push(user_id.as_str());
        managed_entra_ids.push(entra_id.to_string());
        managed_roles.push(role.as_str());
    }
    update_roles(txn, &changed_ids, &changed_roles, now).await?;
    if !managed_ids.is_empty() {
        txn.execute(stmt(
            r#"INSERT INTO entra_sync_managed_roles (user_id, entra_user_id, role, updated_at)
               SELECT x.user_id, x.entra_user_id, x.role, $4
               FROM unnest($1::text[], $2::text[], $3::text[]) AS x(user_id, entra_user_id, role)
               ON CONFLICT (user_id) DO UPDATE
                 SET entra_user_id = EXCLUDED.entra_user_id, role = EXCLUDED.role,
                     updated_at = EXCLUDED.updated_at
                 WHERE entra_sync_managed_roles.role IS DISTINCT FROM EXCLUDED.role
                    OR entra_sync_managed_roles.entra_user_id IS DISTINCT FROM EXCLUDED.entra_user_id"#,
            [
                text_array(&managed_ids),
                text_array(&managed_entra_ids),
                text_array(&managed_roles),
                now.into(),
            ],
        ))
        .await?;
    }
    Ok(changes)
}

/// Users whose Entra roles are all gone: a role that is still the one entra-sync set drops to
/// the default role for new users (a revoked admin must not stay admin); a role an admin set
/// since stays. Either way entra-sync stops managing it. A few statements however many users.
pub(super) async fn revoke(
    txn: &DatabaseTransaction,
    users: &[UserId],
    default_role: LiteLlmRole,
    now: DateTime<Utc>,
) -> Result<Vec<Change>> {
    #[derive(FromQueryResult)]
    struct Managed {
        user_id: String,
        role: String,
    }
    if users.is_empty() {
        return Ok(Vec::new());
    }
    let entra_ids: Vec<String> = users.iter().map(ToString::to_string).collect();
    let managed = Managed::find_by_statement(stmt(
        "SELECT user_id, role FROM entra_sync_managed_roles WHERE entra_user_id = ANY($1)",
        [text_array(&entra_ids)],
    ))
    .all(txn)
    .await?;
    if managed.is_empty() {
        return Ok(Vec::new());
    }
    let user_ids: Vec<String> = managed.iter().map(|m| m.user_id.clone()).collect();
    let candidates = users::Candidates::new(users::lock_candidates(txn, &user_ids, &[]).await?);
    let mut changes = Vec::new();
    let mut dropping = Vec::new();
    for ours in &managed {
        let current = candidates
            .by_user_id(&ours.user_id)
            .and_then(|row| row.user_role.clone());
        if current.as_deref() == Some(ours.role.as_str())
            && current.as_deref() != Some(default_role.as_str())
        {
            dropping.push(ours.user_id.as_str());
            changes.push(Change::RoleChanged {
                user_id: ours.user_id.clone(),
                from: current,
                to: default_role.as_str().to_owned(),
            });
        }
    }
    let defaults = vec![default_role.as_str(); dropping.len()];
    update_roles(txn, &dropping, &defaults, now).await?;
    txn.execute(stmt(
        "DELETE FROM entra_sync_managed_roles WHERE user_id = ANY($1)",
        [text_array(&user_ids)],
    ))
    .await?;
    Ok(changes)
}

/// `user_role` of each user to its role, in one statement.
async fn update_roles(
    txn: &DatabaseTransaction,
    user_ids: &[&str],
    roles: &[&str],
    now: DateTime<Utc>,
) -> Result<()> {
    if user_ids.is_empty() {
        return Ok(());
    }
    txn.execute(stmt(
        r#"UPDATE "LiteLLM_UserTable" AS u SET user_role = x.role, updated_at = $3
           FROM unnest($1::text[], $2::text[]) AS x(user_id, role)
           WHERE u.user_id = x.user_id"#,
        [
            text_array(user_ids),
            text_array(roles),
            litellm_timestamp(now).into(),
        ],
    ))
    .await?;
    Ok(())
}
