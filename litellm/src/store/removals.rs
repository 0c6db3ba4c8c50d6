//! Removals a unit of work plans, and those it holds for a person.
//!
//! Deleting a key cannot be undone, and one bad read could plan thousands of removals. So an
//! operation inside a unit of work does not remove members itself: it stages each removal
//! ([`Removals::Stage`]) and the unit decides at its end, when it knows how many it plans. Up to
//! `ENTRA_SYNC_REMOVAL_THRESHOLD` memberships (and key deletions), they are applied, a batch of
//! teams to a transaction; over it, every one of them is held (`entra_sync_held_removals`): the
//! member stays, the keys the removal would have deleted are blocked (marker `removal_held`),
//! and a person releases or discards them (`entra-sync-worker removals`), as Entra Connect's
//! "prevent accidental deletes" does. A unit that fails applies none of its staged removals.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use entity::GroupId;
use sea_orm::{ConnectionTrait, DatabaseTransaction, FromQueryResult, TransactionTrait};

use super::ApplyOptions;
use super::change::{BlockReason, Change, RemovalReason};
use super::keys::{self, KeyPlan, RemovedMemberKeys};
use super::sql::{lock_teams, stmt, text_array};
pub use super::staged::{Removals, StagedRemoval, UnitId};
use super::{members, planning};
use crate::error::Result;

/// The removals each unit of work staged so far, by unit.
#[derive(Debug, Default)]
pub(super) struct Staging {
    next: AtomicU64,
    staged: Mutex<HashMap<UnitId, Vec<StagedRemoval>>>,
}

impl Staging {
    pub fn new_unit(&self) -> UnitId {
        UnitId(self.next.fetch_add(1, Ordering::Relaxed))
    }

    pub fn stage(&self, unit: UnitId, removals: Vec<StagedRemoval>) {
        if removals.is_empty() {
            return;
        }
        // A panic while holding the lock leaves the map whole (every change is one call).
        let mut staged = self
            .staged
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        staged.entry(unit).or_default().extend(removals);
    }

    /// The unit's staged removals, each (team, user) once; the unit forgets them.
    pub fn take(&self, unit: UnitId) -> Vec<StagedRemoval> {
        let taken = self
            .staged
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&unit)
            .unwrap_or_default();
        let mut seen = HashSet::new();
        taken
            .into_iter()
            .filter(|removal| seen.insert((removal.team_id.clone(), removal.user_id.clone())))
            .collect()
    }
}

/// A removal held for a person, as `removals list` shows it.
#[derive(Clone, Debug, FromQueryResult, serde::Serialize)]
pub struct HeldRemoval {
    pub id: i64,
    pub team_id: String,
    pub team_alias: Option<String>,
    pub user_id: String,
    pub user_email: Option<String>,
    pub entra_user_id: Option<String>,
    pub reason: String,
    /// The keys blocked while it is held (their hashes, as LiteLLM stores them).
    pub keys: Vec<String>,
    pub cause: Option<String>,
    pub held_at: DateTime<Utc>,
}

/// Every held removal (or those with these ids), oldest first.
pub(super) async fn held(
    db: &impl ConnectionTrait,
    ids: Option<&[i64]>,
) -> Result<Vec<HeldRemoval>> {
    Ok(HeldRemoval::find_by_statement(stmt(
        r#"SELECT h.id, h.group_id AS team_id, t.team_alias, h.user_id, u.user_email,
                  h.entra_user_id, h.reason, h.keys, h.cause, h.held_at
           FROM entra_sync_held_removals h
           LEFT JOIN "LiteLLM_TeamTable" t ON t.team_id = h.group_id
           LEFT JOIN "LiteLLM_UserTable" u ON u.user_id = h.user_id
           WHERE $1::bigint[] IS NULL OR h.id = ANY($1)
           ORDER BY h.held_at, h.id"#,
        [ids.map(<[i64]>::to_vec).into()],
    ))
    .all(db)
    .await?)
}

/// How many removals are held now (the `entra_sync_removals_held` gauge).
pub async fn held_count(db: &impl ConnectionTrait) -> Result<i64> {
    #[derive(FromQueryResult)]
    struct Count {
        held: i64,
    }
    Ok(Count::find_by_statement(stmt(
        "SELECT count(*) AS held FROM entra_sync_held_removals",
        [],
    ))
    .one(db)
    .await?
    .map_or(0, |count| count.held))
}

/// How many keys these (team, user) pairs hold: what removing them would delete.
pub(super) async fn count_keys(
    db: &impl ConnectionTrait,
    removals: &[StagedRemoval],
) -> Result<u64> {
    #[derive(FromQueryResult)]
    struct Count {
        keys: i64,
    }
    if removals.is_empty() {
        return Ok(0);
    }
    let teams: Vec<&str> = removals.iter().map(|r| r.team_id.as_str()).collect();
    let users: Vec<&str> = removals.iter().map(|r| r.user_id.as_str()).collect();
    let count = Count::find_by_statement(stmt(
        r#"SELECT count(*) AS keys FROM "LiteLLM_VerificationToken"
           WHERE (team_id, user_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))"#,
        [text_array(teams), text_array(users)],
    ))
    .one(db)
    .await?;
    Ok(count.map_or(0, |c| u64::try_from(c.keys).unwrap_or(0)))
}

/// Holds these removals (several teams, each under its lock): a held row for each pair not held
/// yet, and their keys that are not blocked yet blocked with the `removal_held` marker (when
/// the policy would delete or block them). The members stay in their teams.
pub(super) async fn hold(
    txn: &DatabaseTransaction,
    removals: &[StagedRemoval],
    block_keys: bool,
    now: DateTime<Utc>,
    cause: Option<&str>,
) -> Result<(Vec<Change>, Vec<String>)> {
    let teams: Vec<&str> = removals.iter().map(|r| r.team_id.as_str()).collect();
    lock_teams(txn, &teams).await?;
    let inserted = insert_held(txn, removals, now, cause).await?;
    let mut changes: Vec<Change> = removals
        .iter()
        .filter(|r| inserted.contains(&(r.team_id.clone(), r.user_id.clone())))
        .map(|r| Change::RemovalHeld {
            team_id: r.team_id.clone(),
            user_id: r.user_id.clone(),
            reason: r.reason,
        })
        .collect();
    if !block_keys {
        return Ok((changes, Vec::new()));
    }
    let pairs: Vec<(&str, &str)> = removals
        .iter()
        .map(|r| (r.team_id.as_str(), r.user_id.as_str()))
        .collect();
    let (mut plan, stale) = revise_keys(txn, &pairs, now, |plan, keys| plan.hold(keys)).await?;
    remember_blocked_keys(txn, &plan.changes).await?;
    changes.append(&mut plan.changes);
    Ok((changes, stale))
}

/// A held row for each (team, user) pair not held yet. Returns the pairs inserted.
async fn insert_held(
    txn: &DatabaseTransaction,
    removals: &[StagedRemoval],
    now: DateTime<Utc>,
    cause: Option<&str>,
) -> Result<HashSet<(String, String)>> {
    #[derive(FromQueryResult)]
    struct Inserted {
        group_id: String,
        user_id: String,
    }
    Ok(Inserted::find_by_statement(stmt(
        "INSERT INTO entra_sync_held_removals
           (group_id, user_id, entra_user_id, reason, cause, held_at)
         SELECT x.group_id, x.user_id, NULLIF(x.entra_user_id, ''), x.reason, $5::text,
                $6::timestamptz
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
              AS x(group_id, user_id, entra_user_id, reason)
         ON CONFLICT (group_id, user_id) DO NOTHING
         RETURNING group_id, user_id",
        [
            text_array(removals.iter().map(|r| r.team_id.as_str())),
            text_array(removals.iter().map(|r| r.user_id.as_str())),
            text_array(
                removals
                    .iter()
                    .map(|r| r.entra_user_id.as_deref().unwrap_or_default()),
            ),
            text_array(removals.iter().map(|r| r.reason.as_str())),
            cause.map(str::to_owned).into(),
            now.into(),
        ],
    ))
    .all(txn)
    .await?
    .into_iter()
    .map(|row| (row.group_id, row.user_id))
    .collect())
}

/// Each held row remembers the keys blocked for it (so that discarding the hold unblocks
/// exactly those).
async fn remember_blocked_keys(txn: &DatabaseTransaction, changes: &[Change]) -> Result<()> {
    let blocked: Vec<(&str, &str, &str)> = changes
        .iter()
        .filter_map(|change| match change {
            Change::KeyBlocked {
                token,
                user_id,
                team_id: Some(team_id),
                reason: BlockReason::RemovalHeld,
            } => Some((team_id.as_str(), user_id.as_str(), token.as_str())),
            _ => None,
        })
        .collect();
    if blocked.is_empty() {
        return Ok(());
    }
    txn.execute(stmt(
        "UPDATE entra_sync_held_removals h
         SET keys = h.keys || x.tokens
         FROM (SELECT team_id, user_id, array_agg(token ORDER BY token) AS tokens
               FROM unnest($1::text[], $2::text[], $3::text[]) AS b(team_id, user_id, token)
               GROUP BY team_id, user_id) AS x
         WHERE h.group_id = x.team_id AND h.user_id = x.user_id",
        [
            text_array(blocked.iter().map(|b| b.0)),
            text_array(blocked.iter().map(|b| b.1)),
            text_array(blocked.iter().map(|b| b.2)),
        ],
    ))
    .await?;
    Ok(())
}

/// The keys of these (team, user) pairs, locked in the store's order (the users' rows, then
/// the keys), planned by `revise` and written. Returns the plan (its changes) and the cache keys
/// it made stale.
async fn revise_keys(
    txn: &DatabaseTransaction,
    pairs: &[(&str, &str)],
    now: DateTime<Utc>,
    revise: impl FnOnce(&mut KeyPlan, &[keys::KeyRow]),
) -> Result<(KeyPlan, Vec<String>)> {
    let mut users: Vec<&str> = pairs.iter().map(|(_, user)| *user).collect();
    users.sort_unstable();
    users.dedup();
    super::users::lock_users(txn, &users).await?;
    let found = keys::lock_member_keys(txn, pairs).await?;
    let mut plan = KeyPlan::default();
    revise(&mut plan, &found);
    let stale = plan.execute(txn, now).await?;
    Ok((plan, stale))
}

/// Drops these holds (a person discarded them, or Graph lists the members again): the held rows
/// go, and the keys blocked for them are unblocked. The members stay in their teams.
pub(super) async fn drop_holds(
    txn: &DatabaseTransaction,
    holds: &[(String, String)],
    now: DateTime<Utc>,
) -> Result<(Vec<Change>, Vec<String>)> {
    let teams: Vec<&str> = holds.iter().map(|(team, _)| team.as_str()).collect();
    lock_teams(txn, &teams).await?;
    #[derive(FromQueryResult)]
    struct Dropped {
        group_id: String,
        user_id: String,
    }
    let dropped = Dropped::find_by_statement(stmt(
        "DELETE FROM entra_sync_held_removals h
         USING unnest($1::text[], $2::text[]) AS x(group_id, user_id)
         WHERE h.group_id = x.group_id AND h.user_id = x.user_id
         RETURNING h.group_id, h.user_id",
        [
            text_array(&teams),
            text_array(holds.iter().map(|(_, user)| user.as_str())),
        ],
    ))
    .all(txn)
    .await?;
    let pairs: Vec<(&str, &str)> = dropped
        .iter()
        .map(|d| (d.group_id.as_str(), d.user_id.as_str()))
        .collect();
    let (mut plan, stale) = revise_keys(txn, &pairs, now, |plan, keys| plan.unheld(keys)).await?;
    let mut changes: Vec<Change> = dropped
        .into_iter()
        .map(|d| Change::RemovalDropped {
            team_id: d.group_id,
            user_id: d.user_id,
        })
        .collect();
    changes.append(&mut plan.changes);
    Ok((changes, stale))
}

impl super::Store {
    /// A new unit of work's number, under which its operations stage their removals.
    pub fn new_unit(&self) -> UnitId {
        self.staging.new_unit()
    }

    /// The removals the unit staged, each (team, user) once; the store forgets them.
    pub fn take_staged(&self, unit: UnitId) -> Vec<StagedRemoval> {
        self.staging.take(unit)
    }

    /// How many keys removing these members would delete (none unless
    /// `ENTRA_SYNC_REMOVED_MEMBER_KEYS=delete`).
    pub async fn keys_removals_would_delete(&self, removals: &[StagedRemoval]) -> Result<u64> {
        if self.keys.removed_member != RemovedMemberKeys::Delete {
            return Ok(0);
        }
        count_keys(&self.db, removals).await
    }

    /// Applies staged (or released) removals, in one transaction for all their teams: each
    /// member leaves as any removal does, with their keys, and a hold on them goes.
    #[tracing::instrument(skip(self, removals), fields(removals = removals.len()), err(level = "debug"))]
    pub async fn apply_removals(
        &self,
        removals: &[StagedRemoval],
        options: ApplyOptions,
    ) -> Result<Vec<Change>> {
        let mut by_team: BTreeMap<&str, (Vec<String>, RemovalReason)> = BTreeMap::new();
        for removal in removals {
            by_team
                .entry(removal.team_id.as_str())
                .or_insert_with(|| (Vec::new(), removal.reason))
                .0
                .push(removal.user_id.clone());
        }
        let groups: Vec<(GroupId, &Vec<String>, RemovalReason)> = by_team
            .iter()
            .filter_map(|(team, (users, reason))| {
                Some((GroupId::parse(team).ok()?, users, *reason))
            })
            .collect();
        let requests: Vec<planning::Request> = groups
            .iter()
            .map(|(group, users, reason)| planning::Request {
                group,
                joining: &[],
                leaving: planning::Leaving::Exactly(users),
                owners: planning::Owners::Ignored,
                mode: self.removal_mode,
                keys: self.keys.removed_member,
                unreadable: &[],
                removals: Removals::Apply,
                reason: *reason,
            })
            .collect();
        let options = options.removing(Removals::Apply);
        let txn = self.db.begin().await?;
        let work = members::apply_many(&txn, &requests, &self.settings, options.now)
            .await
            .map(|applied| super::Applied {
                changes: applied.changes.into_iter().flatten().collect(),
                stale: applied.stale,
                staged: Vec::new(),
            });
        self.settle(txn, work, options).await
    }

    /// Holds these removals for a person (see the module documentation).
    #[tracing::instrument(skip(self, removals), fields(removals = removals.len()), err(level = "debug"))]
    pub async fn hold_removals(
        &self,
        removals: &[StagedRemoval],
        options: ApplyOptions,
    ) -> Result<Vec<Change>> {
        let block_keys = self.keys.removed_member != RemovedMemberKeys::Keep;
        let txn = self.db.begin().await?;
        let cause = options.cause.map(super::Cause::as_str);
        let work = hold(&txn, removals, block_keys, options.now, cause)
            .await
            .map(|(changes, stale)| super::Applied {
                changes,
                stale,
                staged: Vec::new(),
            });
        self.settle(txn, work, options).await
    }

    /// Drops these holds ((team, user) pairs): the members stay, their keys blocked for the
    /// hold come back.
    #[tracing::instrument(skip(self, holds), fields(holds = holds.len()), err(level = "debug"))]
    pub async fn drop_holds(
        &self,
        holds: &[(String, String)],
        options: ApplyOptions,
    ) -> Result<Vec<Change>> {
        let txn = self.db.begin().await?;
        let work = drop_holds(&txn, holds, options.now)
            .await
            .map(|(changes, stale)| super::Applied {
                changes,
                stale,
                staged: Vec::new(),
            });
        self.settle(txn, work, options).await
    }

    /// The removals held now (those with these ids), oldest first.
    pub async fn held_removals(&self, ids: Option<&[i64]>) -> Result<Vec<HeldRemoval>> {
        held(&self.db, ids).await
    }
}
