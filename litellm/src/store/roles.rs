//! A user's LiteLLM role from their Entra app roles, for many users in a few statements.
//!
//! Rows are read without a lock, and only the rows whose role changes are locked (in the store's
//! order, with any others the operation writes): each update is relative to the role as read,
//! and a row changed meanwhile is a [`Error::ConcurrentChange`].

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use entity::UserId;
use sea_orm::{ConnectionTrait, DatabaseTransaction, FromQueryResult};

use super::change::Change;
use super::sql::{litellm_timestamp, stmt, text_array};
use super::users;
use crate::directory::EntraUser;
use crate::error::{Error, Result};
use crate::litellm_config::LiteLlmSettings;
use crate::roles::LiteLlmRole;

/// Sets `user_role` to the most privileged valid role among the app-role values; with no valid
/// value the stored role stays. The user must exist (see [`users::ensure`]).
pub(super) async fn set(
    txn: &DatabaseTransaction,
    user: &UserId,
    role_values: &[String],
    now: DateTime<Utc>,
) -> Result<Vec<Change>> {
    let row = users::by_object_id(txn, user.as_str())
        .await?
        .ok_or_else(|| Error::UserNotFound(user.to_string()))?;
    let Some(role) = LiteLlmRole::highest(role_values.iter().map(String::as_str)) else {
        return Ok(Vec::new());
    };
    let wanted = Wanted {
        user_id: row.user_id,
        entra_id: user.clone(),
        role,
        current: row.user_role,
    };
    let plan = RolePlan::new(txn, vec![wanted]).await?;
    users::lock_users(txn, &plan.written().collect::<Vec<_>>()).await?;
    plan.execute(txn, now).await
}

/// Makes each user exist (created, or linked by email) and gives them the most privileged valid
/// role of their app-role values (none valid: their role stays), in a few statements however
/// many: the users and their roles planned from rows read without a lock, then the rows written
/// locked in one statement, then written.
pub(super) async fn ensure_and_set(
    txn: &DatabaseTransaction,
    users: &[(&EntraUser, &[String])],
    settings: &LiteLlmSettings,
    now: DateTime<Utc>,
) -> Result<Vec<Change>> {
    let entra_users: Vec<&EntraUser> = users.iter().map(|(user, _)| *user).collect();
    let ensuring = users::Ensuring::plan(txn, &entra_users, settings).await?;
    let created: HashSet<&str> = ensuring.created().collect();
    let new_role = settings.default_user_role();
    let wanted: Vec<Wanted> = users
        .iter()
        .filter_map(|(user, values)| {
            let role = LiteLlmRole::highest(values.iter().map(String::as_str))?;
            let user_id = ensuring.found.get(&user.id)?.clone();
            let current = match ensuring.rows.get(&user_id) {
                Some(row) => row.user_role.clone(),
                None if created.contains(user_id.as_str()) => Some(new_role.as_str().to_owned()),
                None => None,
            };
            Some(Wanted {
                user_id,
                entra_id: user.id.clone(),
                role,
                current,
            })
        })
        .collect();
    let roles = RolePlan::new(txn, wanted).await?;
    let mut written: Vec<&str> = ensuring.written().chain(roles.written()).collect();
    written.sort_unstable();
    written.dedup();
    users::lock_users(txn, &written).await?;
    ensuring.execute(txn, settings, now).await?;
    let mut changes = ensuring.changes;
    changes.extend(roles.execute(txn, now).await?);
    Ok(changes)
}

/// The role one user should have.
struct Wanted {
    user_id: String,
    entra_id: UserId,
    role: LiteLlmRole,
    /// Their `user_role` as read (for a user being created: the role they are created with).
    current: Option<String>,
}

/// Roles to set, decided from the rows as read. The role set is remembered in
/// `entra_sync_managed_roles`; a role that differs from the one entra-sync last set was set by
/// an admin in LiteLLM, and stays.
struct RolePlan {
    /// (`user_id`, role as read, new role).
    changed: Vec<(String, Option<String>, &'static str)>,
    /// (`user_id`, Entra object id, role) remembered.
    managed: Vec<(String, String, &'static str)>,
    changes: Vec<Change>,
}

impl RolePlan {
    async fn new(txn: &DatabaseTransaction, wanted: Vec<Wanted>) -> Result<Self> {
        let mut plan = Self {
            changed: Vec::new(),
            managed: Vec::new(),
            changes: Vec::new(),
        };
        if wanted.is_empty() {
            return Ok(plan);
        }
        let user_ids: Vec<&str> = wanted.iter().map(|w| w.user_id.as_str()).collect();
        let ours = managed_roles(txn, &user_ids).await?;
        for want in wanted {
            if let Some(ours) = ours.get(&want.user_id)
                && want.current.as_deref() != Some(ours.as_str())
            {
                // Every poll that works roles out finds it again: not news after the first time.
                tracing::debug!(
                    user = want.user_id,
                    "role changed by hand in LiteLLM; left alone"
                );
                continue;
            }
            if want.current.as_deref() != Some(want.role.as_str()) {
                plan.changes.push(Change::RoleChanged {
                    user_id: want.user_id.clone(),
                    from: want.current.clone(),
                    to: want.role.as_str().to_owned(),
                });
                plan.changed
                    .push((want.user_id.clone(), want.current, want.role.as_str()));
            }
            plan.managed
                .push((want.user_id, want.entra_id.to_string(), want.role.as_str()));
        }
        Ok(plan)
    }

    /// The rows it writes.
    fn written(&self) -> impl Iterator<Item = &str> {
        self.changed.iter().map(|(user_id, _, _)| user_id.as_str())
    }

    /// Writes the roles ([`Self::written`] being locked) and remembers them.
    async fn execute(self, txn: &DatabaseTransaction, now: DateTime<Utc>) -> Result<Vec<Change>> {
        update_roles(txn, &self.changed, now).await?;
        if !self.managed.is_empty() {
            let mut user_ids = Vec::with_capacity(self.managed.len());
            let mut entra_ids = Vec::with_capacity(self.managed.len());
            let mut roles = Vec::with_capacity(self.managed.len());
            for (user_id, entra_id, role) in &self.managed {
                user_ids.push(user_id.as_str());
                entra_ids.push(entra_id.as_str());
                roles.push(*role);
            }
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
                    text_array(user_ids),
                    text_array(entra_ids),
                    text_array(roles),
                    now.into(),
                ],
            ))
            .await?;
        }
        Ok(self.changes)
    }
}

/// The roles entra-sync last set for these users, by `user_id`.
async fn managed_roles(
    txn: &DatabaseTransaction,
    user_ids: &[&str],
) -> Result<HashMap<String, String>> {
    #[derive(FromQueryResult)]
    struct Managed {
        user_id: String,
        role: String,
    }
    Ok(Managed::find_by_statement(stmt(
        "SELECT user_id, role FROM entra_sync_managed_roles WHERE user_id = ANY($1)",
        [text_array(user_ids)],
    ))
    .all(txn)
    .await?
    .into_iter()
    .map(|managed| (managed.user_id, managed.role))
    .collect())
}

/// The LiteLLM users whose role entra-sync manages for these Entra users.
pub(super) async fn managed_users(
    txn: &DatabaseTransaction,
    entra_ids: &[&str],
) -> Result<Vec<String>> {
    Ok(managed_of(txn, entra_ids)
        .await?
        .into_iter()
        .map(|managed| managed.user_id)
        .collect())
}

#[derive(FromQueryResult)]
struct ManagedOf {
    user_id: String,
    role: String,
}

/// The roles entra-sync manages for these Entra users.
async fn managed_of(txn: &DatabaseTransaction, entra_ids: &[&str]) -> Result<Vec<ManagedOf>> {
    Ok(ManagedOf::find_by_statement(stmt(
        "SELECT user_id, role FROM entra_sync_managed_roles WHERE entra_user_id = ANY($1)",
        [text_array(entra_ids)],
    ))
    .all(txn)
    .await?)
}

/// Users whose Entra roles are all gone: a role that is still the one entra-sync set drops to
/// the default role for new users (a revoked admin must not stay admin); a role an admin set
/// since stays. Either way entra-sync stops managing it. A few statements however many users;
/// only the rows whose role drops are locked.
pub(super) async fn revoke(
    txn: &DatabaseTransaction,
    users: &[UserId],
    default_role: LiteLlmRole,
    now: DateTime<Utc>,
) -> Result<Vec<Change>> {
    if users.is_empty() {
        return Ok(Vec::new());
    }
    let entra_ids: Vec<&str> = users.iter().map(UserId::as_str).collect();
    let managed = managed_of(txn, &entra_ids).await?;
    if managed.is_empty() {
        return Ok(Vec::new());
    }
    let user_ids: Vec<&str> = managed.iter().map(|m| m.user_id.as_str()).collect();
    let current: HashMap<String, Option<String>> = users::by_user_ids(txn, &user_ids)
        .await?
        .into_iter()
        .map(|row| (row.user_id, row.user_role))
        .collect();
    let mut changes = Vec::new();
    let mut dropping = Vec::new();
    for ours in &managed {
        let role = current.get(&ours.user_id).cloned().flatten();
        if role.as_deref() == Some(ours.role.as_str())
            && role.as_deref() != Some(default_role.as_str())
        {
            changes.push(Change::RoleChanged {
                user_id: ours.user_id.clone(),
                from: role.clone(),
                to: default_role.as_str().to_owned(),
            });
            dropping.push((ours.user_id.clone(), role, default_role.as_str()));
        }
    }
    let mut written: Vec<&str> = dropping
        .iter()
        .map(|(user_id, _, _)| user_id.as_str())
        .collect();
    written.sort_unstable();
    written.dedup();
    users::lock_users(txn, &written).await?;
    update_roles(txn, &dropping, now).await?;
    txn.execute(stmt(
        "DELETE FROM entra_sync_managed_roles WHERE user_id = ANY($1)",
        [text_array(&user_ids)],
    ))
    .await?;
    Ok(changes)
}

/// `user_role` of each user (`user_id`, role as read, new role) to its new role, in one
/// statement, the rows being locked: a role that is no longer the one read was changed meanwhile
/// (by an admin in LiteLLM), and the whole operation is a [`Error::ConcurrentChange`].
async fn update_roles(
    txn: &DatabaseTransaction,
    roles: &[(String, Option<String>, &'static str)],
    now: DateTime<Utc>,
) -> Result<()> {
    if roles.is_empty() {
        return Ok(());
    }
    #[derive(serde::Serialize)]
    struct Row<'r> {
        user_id: &'r str,
        was: Option<&'r str>,
        role: &'r str,
    }
    let rows: Vec<Row> = roles
        .iter()
        .map(|(user_id, was, role)| Row {
            user_id,
            was: was.as_deref(),
            role,
        })
        .collect();
    let distinct: HashSet<&str> = rows.iter().map(|row| row.user_id).collect();
    let distinct = distinct.len();
    // As JSON: a role read may be NULL, which a text[] parameter cannot carry.
    let rows = serde_json::to_string(&rows)
        .map_err(|e| sea_orm::DbErr::Custom(format!("cannot serialise roles: {e}")))?;
    let updated = txn
        .execute(stmt(
            r#"UPDATE "LiteLLM_UserTable" AS u SET user_role = x.role, updated_at = $2
               FROM jsonb_to_recordset($1::text::jsonb) AS x(user_id text, was text, role text)
               WHERE u.user_id = x.user_id AND u.user_role IS NOT DISTINCT FROM x.was"#,
            [rows.into(), litellm_timestamp(now).into()],
        ))
        .await?;
    if updated.rows_affected() != distinct as u64 {
        return Err(Error::ConcurrentChange(
            "a user's role changed meanwhile".into(),
        ));
    }
    Ok(())
}
