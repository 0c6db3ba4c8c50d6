//! Virtual keys: what removal does to them, as LiteLLM's own code does (litellm 1.110.2).
//!
//! LiteLLM's auth looks at the key row and the team row, not at the membership row, so a removed
//! member's team key keeps working until something revokes it:
//! - a member leaving a team: their keys for it (`user_id` and `team_id` match) are copied into
//!   `"LiteLLM_DeletedVerificationToken"` and deleted, in the membership's own transaction
//!   (`team_member_delete`); or blocked, or kept ([`RemovedMemberKeys`]);
//! - a user disabled or deleted in Entra: every key of theirs is blocked, with a marker in its
//!   metadata (SCIM's `_set_user_keys_blocked`), and unblocked when they are enabled again
//!   ([`DepartedUserKeys`]).
//!
//! Only keys carrying entra-sync's marker (`metadata.entra_sync_blocked`, see [`BlockReason`])
//! are ever unblocked, so a key an admin blocked stays blocked. Personal keys (no team) and other
//! members' keys are never touched by a removal.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseTransaction, FromQueryResult};

use super::change::{BlockReason, Change};
use super::sql::{litellm_timestamp, lock_team, stmt, text_array};
use super::users;
use crate::error::Result;

/// What happens to a removed member's keys for the team (`ENTRA_SYNC_REMOVED_MEMBER_KEYS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum RemovedMemberKeys {
    /// Copied into `"LiteLLM_DeletedVerificationToken"`, then deleted: LiteLLM's own behaviour.
    #[default]
    Delete,
    /// Blocked, and unblocked if the user rejoins the team.
    Block,
    /// Left alone.
    Keep,
}

/// What happens to the keys of a user disabled or deleted in Entra
/// (`ENTRA_SYNC_DEPARTED_USER_KEYS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DepartedUserKeys {
    /// Every key blocked, and unblocked when the user is enabled again: LiteLLM's SCIM behaviour.
    #[default]
    Block,
    /// Left alone.
    Keep,
}

/// Both key settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyPolicy {
    pub removed_member: RemovedMemberKeys,
    pub departed_user: DepartedUserKeys,
}

/// A key as the store decides on it.
#[derive(Clone, Debug, FromQueryResult)]
pub(super) struct KeyRow {
    pub token: String,
    pub user_id: String,
    pub team_id: Option<String>,
    pub key_alias: Option<String>,
    pub blocked: Option<bool>,
    /// `metadata.entra_sync_blocked`.
    pub marker: Option<String>,
}

impl KeyRow {
    fn blocked(&self) -> bool {
        self.blocked == Some(true)
    }

    fn blocked_for(&self, reason: BlockReason) -> bool {
        self.blocked() && self.marker.as_deref() == Some(reason.as_str())
    }

    fn deleted(&self) -> Change {
        Change::KeyDeleted {
            token: self.token.clone(),
            user_id: self.user_id.clone(),
            team_id: self.team_id.clone(),
            key_alias: self.key_alias.clone(),
        }
    }

    fn blocked_change(&self, reason: BlockReason) -> Change {
        Change::KeyBlocked {
            token: self.token.clone(),
            user_id: self.user_id.clone(),
            team_id: self.team_id.clone(),
            reason,
        }
    }

    fn unblocked_change(&self, reason: BlockReason) -> Change {
        Change::KeyUnblocked {
            token: self.token.clone(),
            user_id: self.user_id.clone(),
            team_id: self.team_id.clone(),
            reason,
        }
    }
}

const KEY_COLUMNS: &str = r#"token, user_id, team_id, key_alias, blocked,
    CASE WHEN jsonb_typeof(metadata) = 'object' THEN metadata->>'entra_sync_blocked' END AS marker"#;

/// Locks and reads the keys of these (team, user) pairs, in one statement and a fixed order
/// (LiteLLM's spend writer updates key rows too), the rows of their users being locked already
/// (see the lock order in [`super`]).
pub(super) async fn lock_member_keys(
    txn: &DatabaseTransaction,
    pairs: &[(&str, &str)],
) -> Result<Vec<KeyRow>> {
    if pairs.is_empty() {
        return Ok(Vec::new());
    }
    let (teams, users): (Vec<&str>, Vec<&str>) = pairs.iter().copied().unzip();
    Ok(KeyRow::find_by_statement(stmt(
        &format!(
            r#"SELECT {KEY_COLUMNS} FROM "LiteLLM_VerificationToken"
               WHERE (team_id, user_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
               ORDER BY token FOR UPDATE"#
        ),
        [text_array(teams), text_array(users)],
    ))
    .all(txn)
    .await?)
}

/// Everything a removal or a return does to keys, decided before anything is written.
#[derive(Debug, Default)]
pub(super) struct KeyPlan {
    delete: Vec<String>,
    /// Tokens to block, with the reason each carries.
    block: Vec<(String, BlockReason)>,
    unblock: Vec<String>,
    pub changes: Vec<Change>,
}

impl KeyPlan {
    fn delete(&mut self, key: &KeyRow) {
        self.delete.push(key.token.clone());
        self.changes.push(key.deleted());
    }

    fn block(&mut self, key: &KeyRow, reason: BlockReason) {
        self.block.push((key.token.clone(), reason));
        self.changes.push(key.blocked_change(reason));
    }

    fn unblock(&mut self, key: &KeyRow, reason: BlockReason) {
        self.unblock.push(key.token.clone());
        self.changes.push(key.unblocked_change(reason));
    }

    /// Applies the removal policy to keys of users who left the team.
    pub fn removed<'k>(
        &mut self,
        keys: impl IntoIterator<Item = &'k KeyRow>,
        policy: RemovedMemberKeys,
    ) {
        for key in keys {
            match policy {
                RemovedMemberKeys::Keep => {}
                RemovedMemberKeys::Delete => self.delete(key),
                // A key blocked because its user departed (or while the removal was held) is now
                // blocked because they left the team: re-enabling the user must not bring it
                // back. Other blocked keys (an admin's, or already ours) stay as they are.
                RemovedMemberKeys::Block => {
                    if !key.blocked()
                        || key.blocked_for(BlockReason::UserDeparted)
                        || key.blocked_for(BlockReason::RemovalHeld)
                    {
                        self.block(key, BlockReason::MemberRemoved);
                    }
                }
            }
        }
    }

    /// Keys of a removal held for a person: those not blocked yet are blocked (deleted if the
    /// removal is released, unblocked if it is dropped). Keys blocked already (by an admin, or
    /// for a departure) stay as they are.
    pub fn hold<'k>(&mut self, keys: impl IntoIterator<Item = &'k KeyRow>) {
        for key in keys {
            if !key.blocked() {
                self.block(key, BlockReason::RemovalHeld);
            }
        }
    }

    /// Keys of users who are members of the team again: those entra-sync blocked when they
    /// left it, or while their removal was held, come back.
    pub fn rejoined<'k>(&mut self, keys: impl IntoIterator<Item = &'k KeyRow>) {
        for key in keys {
            for reason in [BlockReason::MemberRemoved, BlockReason::RemovalHeld] {
                if key.blocked_for(reason) {
                    self.unblock(key, reason);
                }
            }
        }
    }

    /// Keys of a held removal that no longer stands (the member stays, or a person discarded
    /// it): only those blocked for the hold come back; a key blocked because its user left the
    /// team earlier stays blocked.
    pub fn unheld<'k>(&mut self, keys: impl IntoIterator<Item = &'k KeyRow>) {
        for key in keys {
            if key.blocked_for(BlockReason::RemovalHeld) {
                self.unblock(key, BlockReason::RemovalHeld);
            }
        }
    }

    /// Writes the plan; returns the cache keys it made stale beyond those its changes name (the
    /// JWT mappings of deleted keys, which the deletion cascades to).
    pub async fn execute(
        &self,
        txn: &DatabaseTransaction,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>> {
        let stamp = litellm_timestamp(now);
        let mut stale = Vec::new();
        if !self.delete.is_empty() {
            stale = jwt_mapping_cache_keys(txn, &self.delete).await?;
            let columns = shared_columns(txn).await?;
            // `id` is Prisma's client-side uuid(), made here.
            txn.execute(stmt(
                &format!(
                    r#"INSERT INTO "LiteLLM_DeletedVerificationToken"
                         ({columns}, id, deleted_at, deleted_by)
                       SELECT {columns}, gen_random_uuid()::text, $2, 'entra-sync'
                       FROM "LiteLLM_VerificationToken" WHERE token = ANY($1)"#
                ),
                [text_array(&self.delete), stamp.into()],
            ))
            .await?;
            txn.execute(stmt(
                r#"DELETE FROM "LiteLLM_VerificationToken" WHERE token = ANY($1)"#,
                [text_array(&self.delete)],
            ))
            .await?;
        }
        if !self.block.is_empty() {
            let (tokens, reasons): (Vec<&str>, Vec<&str>) = self
                .block
                .iter()
                .map(|(token, reason)| (token.as_str(), reason.as_str()))
                .unzip();
            txn.execute(stmt(
                r#"UPDATE "LiteLLM_VerificationToken" AS k
                   SET blocked = true,
                       metadata = CASE WHEN jsonb_typeof(k.metadata) = 'object'
                                       THEN k.metadata ELSE '{}'::jsonb END
                                  || jsonb_build_object('entra_sync_blocked', b.reason),
                       updated_at = $3
                   FROM unnest($1::text[], $2::text[]) AS b(token, reason)
                   WHERE k.token = b.token"#,
                [text_array(tokens), text_array(reasons), stamp.into()],
            ))
            .await?;
        }
        if !self.unblock.is_empty() {
            txn.execute(stmt(
                r#"UPDATE "LiteLLM_VerificationToken"
                   SET blocked = false, metadata = metadata - 'entra_sync_blocked', updated_at = $2
                   WHERE token = ANY($1)"#,
                [text_array(&self.unblock), stamp.into()],
            ))
            .await?;
        }
        Ok(stale)
    }
}

/// The columns `"LiteLLM_DeletedVerificationToken"` shares with `"LiteLLM_VerificationToken"`,
/// by name, quoted and comma-separated: a deleted key keeps every field LiteLLM's copy keeps,
/// whichever columns this LiteLLM version has (read from the catalog, which costs well under a
/// millisecond).
async fn shared_columns(txn: &DatabaseTransaction) -> Result<String> {
    #[derive(FromQueryResult)]
    struct Row {
        columns: Option<String>,
    }
    let columns = Row::find_by_statement(stmt(
        r#"SELECT string_agg(quote_ident(d.attname), ', ' ORDER BY d.attnum) AS columns
           FROM pg_attribute d
           JOIN pg_attribute k ON k.attname = d.attname
             AND k.attrelid = '"LiteLLM_VerificationToken"'::regclass
             AND k.attnum > 0 AND NOT k.attisdropped
           WHERE d.attrelid = '"LiteLLM_DeletedVerificationToken"'::regclass
             AND d.attnum > 0 AND NOT d.attisdropped
             AND d.attname NOT IN ('id', 'deleted_at', 'deleted_by', 'deleted_by_api_key',
                                   'litellm_changed_by')"#,
        [],
    ))
    .one(txn)
    .await?
    .and_then(|row| row.columns);
    columns.ok_or_else(|| {
        crate::Error::LiteLlmSchema(
            "LiteLLM_DeletedVerificationToken shares no column with LiteLLM_VerificationToken"
                .into(),
        )
    })
}

/// The cache keys of the JWT claims mapped to these keys (`jwt_key_mapping_cache_key`), read
/// before the deletion cascades to them. LiteLLM versions without the table have none.
async fn jwt_mapping_cache_keys(
    txn: &DatabaseTransaction,
    tokens: &[String],
) -> Result<Vec<String>> {
    #[derive(FromQueryResult)]
    struct Row {
        cache_key: String,
    }
    #[derive(FromQueryResult)]
    struct Exists {
        present: bool,
    }
    let present = Exists::find_by_statement(stmt(
        r#"SELECT to_regclass('"LiteLLM_JWTKeyMapping"') IS NOT NULL AS present"#,
        [],
    ))
    .one(txn)
    .await?
    .is_some_and(|row| row.present);
    if !present {
        return Ok(Vec::new());
    }
    Ok(Row::find_by_statement(stmt(
        r#"SELECT 'jwt_key_mapping:'
                  || CASE WHEN coalesce(jwt_issuer, '') = '' THEN '' ELSE jwt_issuer || ':' END
                  || jwt_claim_name || ':' || jwt_claim_value AS cache_key
           FROM "LiteLLM_JWTKeyMapping" WHERE token = ANY($1)"#,
        [text_array(tokens)],
    ))
    .all(txn)
    .await?
    .into_iter()
    .map(|row| row.cache_key)
    .collect())
}

/// The keys of the users these Entra object ids find that meet `condition`, locked in the
/// store's order (the users' rows, then the keys).
async fn lock_user_keys(
    txn: &DatabaseTransaction,
    entra_ids: &[&str],
    condition: &str,
) -> Result<Vec<KeyRow>> {
    let rows = users::by_object_ids(txn, entra_ids).await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut user_ids: Vec<&str> = rows.iter().map(|row| row.user_id.as_str()).collect();
    user_ids.sort_unstable();
    user_ids.dedup();
    users::lock_users(txn, &user_ids).await?;
    Ok(KeyRow::find_by_statement(stmt(
        &format!(
            r#"SELECT {KEY_COLUMNS} FROM "LiteLLM_VerificationToken" k
               WHERE k.user_id = ANY($1) AND ({condition})
               ORDER BY token FOR UPDATE"#
        ),
        [text_array(user_ids)],
    ))
    .all(txn)
    .await?)
}

/// Users disabled or deleted in Entra: every key of theirs not blocked yet is blocked, marked
/// [`BlockReason::UserDeparted`]. Keys already blocked (by an admin, or by a removal) stay as
/// they are.
pub(super) async fn block_departed(
    txn: &DatabaseTransaction,
    entra_ids: &[&str],
    now: DateTime<Utc>,
) -> Result<Vec<Change>> {
    let keys = lock_user_keys(txn, entra_ids, "k.blocked IS NOT TRUE").await?;
    let mut plan = KeyPlan::default();
    for key in &keys {
        plan.block(key, BlockReason::UserDeparted);
    }
    plan.execute(txn, now).await?;
    Ok(plan.changes)
}

/// Users enabled in Entra: keys entra-sync blocked because they had departed come back.
pub(super) async fn reinstate(
    txn: &DatabaseTransaction,
    entra_ids: &[&str],
    now: DateTime<Utc>,
) -> Result<Vec<Change>> {
    let keys = lock_user_keys(
        txn,
        entra_ids,
        "k.blocked AND jsonb_typeof(k.metadata) = 'object'
         AND k.metadata->>'entra_sync_blocked' = 'user_departed'",
    )
    .await?;
    let mut plan = KeyPlan::default();
    for key in &keys {
        plan.unblock(key, BlockReason::UserDeparted);
    }
    plan.execute(txn, now).await?;
    Ok(plan.changes)
}

/// Keys that survived a removal entra-sync made: the audit log says entra-sync removed the user
/// from the key's team after the key was created, and the user is not a member again. (A worker
/// before this version left them; so may a key created while its member was being removed.) The
/// policy as of now applies: deleted, blocked (unless blocked already), or kept.
const SURVIVING: &str = r#"
    k.team_id IS NOT NULL AND k.user_id IS NOT NULL
    AND NOT EXISTS (SELECT 1 FROM "LiteLLM_TeamMembership" m
                    WHERE m.user_id = k.user_id AND m.team_id = k.team_id)
    AND EXISTS (SELECT 1 FROM entra_sync_audit_log a
                WHERE a.kind = 'member_removed' AND a.team_id = k.team_id
                  AND a.user_id = k.user_id
                  AND a.recorded_at >= coalesce(k.created_at AT TIME ZONE 'UTC', '-infinity'))"#;

/// The teams that have surviving keys.
pub(super) async fn teams_with_surviving_keys(db: &impl ConnectionTrait) -> Result<Vec<String>> {
    #[derive(FromQueryResult)]
    struct Row {
        team_id: String,
    }
    Ok(Row::find_by_statement(stmt(
        &format!(
            r#"SELECT DISTINCT k.team_id FROM "LiteLLM_VerificationToken" k WHERE {SURVIVING}
               ORDER BY k.team_id"#
        ),
        [],
    ))
    .all(db)
    .await?
    .into_iter()
    .map(|row| row.team_id)
    .collect())
}

/// The (team, user) pairs with surviving keys that `policy` would still change: any key when
/// it deletes them; when it blocks them, keys not blocked yet, or blocked for another reason of
/// ours (a key already blocked for the removal is revoked already).
pub(super) async fn surviving_pairs(
    db: &impl ConnectionTrait,
    policy: RemovedMemberKeys,
) -> Result<Vec<(String, String)>> {
    #[derive(FromQueryResult)]
    struct Row {
        team_id: String,
        user_id: String,
    }
    Ok(Row::find_by_statement(stmt(
        &format!(
            r#"SELECT DISTINCT k.team_id, k.user_id FROM "LiteLLM_VerificationToken" k
               WHERE {SURVIVING}
                 AND ($1 OR k.blocked IS NOT TRUE
                      OR (jsonb_typeof(k.metadata) = 'object'
                          AND k.metadata->>'entra_sync_blocked' IN ('user_departed', 'removal_held')))
               ORDER BY k.team_id, k.user_id"#
        ),
        [(policy == RemovedMemberKeys::Delete).into()],
    ))
    .all(db)
    .await?
    .into_iter()
    .map(|row| (row.team_id, row.user_id))
    .collect())
}

/// Revokes one team's surviving keys under LiteLLM's team lock, as a removal would have, in the
/// store's lock order: the team, the rows of the keys' users, then the keys.
pub(super) async fn revoke_surviving(
    txn: &DatabaseTransaction,
    team_id: &str,
    policy: RemovedMemberKeys,
    now: DateTime<Utc>,
) -> Result<(Vec<Change>, Vec<String>)> {
    #[derive(FromQueryResult)]
    struct Owner {
        user_id: String,
    }
    lock_team(txn, team_id).await?;
    let owners: Vec<String> = Owner::find_by_statement(stmt(
        &format!(
            r#"SELECT DISTINCT k.user_id FROM "LiteLLM_VerificationToken" k
               WHERE k.team_id = $1 AND {SURVIVING}"#
        ),
        [team_id.into()],
    ))
    .all(txn)
    .await?
    .into_iter()
    .map(|owner| owner.user_id)
    .collect();
    users::lock_users(txn, &owners.iter().map(String::as_str).collect::<Vec<_>>()).await?;
    let keys = KeyRow::find_by_statement(stmt(
        &format!(
            r#"SELECT {KEY_COLUMNS} FROM "LiteLLM_VerificationToken" k
               WHERE k.team_id = $1 AND k.user_id = ANY($2) AND {SURVIVING}
               ORDER BY token FOR UPDATE"#
        ),
        [team_id.into(), text_array(&owners)],
    ))
    .all(txn)
    .await?;
    let mut plan = KeyPlan::default();
    plan.removed(&keys, policy);
    let stale = plan.execute(txn, now).await?;
    Ok((plan.changes, stale))
}

/// The keys of `users` in `team_id`, out of `keys`.
pub(super) fn of_members<'k>(
    keys: &'k [KeyRow],
    team_id: &'k str,
    users: &'k HashSet<&str>,
) -> impl Iterator<Item = &'k KeyRow> {
    keys.iter().filter(move |key| {
        key.team_id.as_deref() == Some(team_id) && users.contains(key.user_id.as_str())
    })
}
