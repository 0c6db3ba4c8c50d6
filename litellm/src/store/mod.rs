//! The store: the only writer of LiteLLM's tables and of entra-sync's own.
//!
//! Each operation applies one intention in one transaction, taking LiteLLM's own locks in the
//! lock order below, and returns the [`Change`]s it made, which are also written to the audit
//! log. Operations are idempotent: applying the same intention again finds
//! nothing to change and writes nothing. There is one dry-run mechanism: every operation does
//! its work in its transaction, and [`ApplyOptions::dry_run`] decides at the end whether it
//! commits or rolls back, so a dry run lists exactly what a real run would change. entra-sync's
//! own state (assigned groups, delta links, failed items, departed users) is kept here too, its
//! writes skipped in a dry run. After a commit, the objects it changed are evicted from LiteLLM's
//! caches (see [`crate::litellm_cache`]).
//!
//! # Lock order
//!
//! Every operation takes its locks in this order, each kind in one statement, so that two
//! writers (ours, or ours and LiteLLM's) wait for each other instead of deadlocking:
//! 1. LiteLLM's team locks, `pg_advisory_xact_lock(hashtext(team_id))`: every team the
//!    operation writes or whose members it changes, all at once, in the order of their lock keys
//!    (see [`sql::lock_teams`]);
//! 2. the LiteLLM user rows it writes, and the rows of the users whose keys it locks,
//!    `ORDER BY user_id COLLATE "C" FOR UPDATE` (LiteLLM's own statement and order). Rows are
//!    read without a lock first, and only those written are locked, once planned; every write
//!    is relative to the row as it is then, and one that finds the row changed since the read is
//!    an [`crate::Error::ConcurrentChange`], which the caller retries;
//! 3. key rows, `ORDER BY token FOR UPDATE`, only ever under the row locks of their users, so
//!    that the keys one operation locks in two statements (a departure: the keys of the teams
//!    the user leaves, then the rest) cannot cross another's.
//!
//! A lock taken again later in the same transaction (a team or a user row held already) does not
//! wait. A member removal and the same user's departure thus meet at the user's row, whichever
//! comes first, and never wait for each other's keys.

mod audit;
mod change;
mod compare;
mod deletions;
mod departures;
mod failures;
mod keys;
pub mod lease;
mod members;
mod nesting;
mod owners;
mod planning;
mod poll_state;
mod removals;
mod roles;
mod sql;
mod staged;
mod state;
mod statistics;
pub mod subscriptions;
mod teams;
mod users;

use migration::database::Db;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use entity::{GroupId, UserId};
use sea_orm::{DatabaseTransaction, TransactionTrait};

pub use crate::error::{Error, Result};
pub use audit::{AuditEntry, AuditFilter};
pub use change::{BlockReason, Cause, Change, Changes, RemovalReason};
pub use compare::Comparison;
pub use deletions::{CONFIRMATION_GAP, Deletion};
pub use departures::Departure;
pub use failures::{Item, failed_items};
pub use keys::{DepartedUserKeys, KeyPolicy, RemovedMemberKeys};
pub use poll_state::PollState;
pub use removals::{HeldRemoval, Removals, StagedRemoval, UnitId, held_count};
pub use state::{
    ReconciliationRecord, assigned_group_count, last_delta_round, last_reconciliation,
};

use crate::directory::EntraUser;
use crate::litellm_cache::LiteLlmCache;
use crate::litellm_config::LiteLlmSettings;
use crate::team_rules::TeamRules;
use lease::Fence;

/// Which members a removal may take out of a team.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum RemovalMode {
    /// Only memberships entra-sync created; members an admin added by hand stay.
    #[default]
    Managed,
    /// Every member who is not in the Entra group.
    Mirror,
}

/// When an operation happens, whether it may write, and the lease it writes under.
#[derive(Clone, Copy, Debug)]
pub struct ApplyOptions {
    pub now: DateTime<Utc>,
    pub dry_run: bool,
    /// Set: the commit happens only while this fence still holds its lease (see
    /// [`crate::store::lease`]), so that work whose lease passed to another replica writes nothing.
    pub fence: Option<Fence>,
    /// What the changes are written to the audit log as made by.
    pub cause: Option<Cause>,
    /// Whether removals happen now or are left to the unit of work (see [`removals`]).
    pub removals: Removals,
}

impl ApplyOptions {
    pub fn commit(now: DateTime<Utc>) -> Self {
        Self {
            now,
            dry_run: false,
            fence: None,
            cause: None,
            removals: Removals::Apply,
        }
    }

    pub fn dry_run(now: DateTime<Utc>) -> Self {
        Self {
            now,
            dry_run: true,
            fence: None,
            cause: None,
            removals: Removals::Apply,
        }
    }

    /// The same, its removals staged for a unit of work (or applied).
    #[must_use]
    pub fn removing(self, removals: Removals) -> Self {
        Self { removals, ..self }
    }

    /// The same, its changes recorded as made by `cause`.
    #[must_use]
    pub fn caused_by(self, cause: Option<Cause>) -> Self {
        Self { cause, ..self }
    }

    /// The same, committing only under `fence`.
    #[must_use]
    pub fn fenced(self, fence: Option<Fence>) -> Self {
        Self { fence, ..self }
    }
}

/// One group's team brought up to date (see [`Store::sync_teams`]): created or renamed
/// first when a display name is given, then its membership made equal to `members`.
#[derive(Clone, Copy, Debug)]
pub struct TeamSync<'a> {
    pub group: &'a GroupId,
    pub display_name: Option<&'a str>,
    pub members: &'a [EntraUser],
    /// Members the group lists whose user objects Graph could not read: they stay as they are.
    pub unreadable: &'a [UserId],
}

/// What one operation did: its changes, and the cache keys its commit made stale beyond those
/// the changes name (a team's alias, the JWT mappings of deleted keys).
#[derive(Debug, Default)]
pub(super) struct Applied {
    pub changes: Vec<Change>,
    pub stale: Vec<String>,
    /// Removals left to the unit of work ([`Removals::Stage`]).
    pub staged: Vec<StagedRemoval>,
}

impl From<Vec<Change>> for Applied {
    fn from(changes: Vec<Change>) -> Self {
        Self {
            changes,
            ..Self::default()
        }
    }
}

/// Rolls a failed operation back at once, on its connection, rather than leaving it to the
/// transaction's drop (where it may be deferred while the connection goes back to the pool).
async fn rollback(txn: DatabaseTransaction) {
    if let Err(error) = txn.rollback().await {
        tracing::warn!(%error, "rollback after a failed operation failed");
    }
}

/// The PostgreSQL store, writing LiteLLM's tables through SeaORM.
#[derive(Clone, Debug)]
pub struct Store {
    db: Db,
    settings: Arc<LiteLlmSettings>,
    /// Per-group parameters for new teams (`ENTRA_SYNC_TEAM_RULES`).
    rules: Arc<TeamRules>,
    removal_mode: RemovalMode,
    keys: KeyPolicy,
    /// Set: LiteLLM's Redis, where each commit's stale objects are evicted.
    cache: Option<LiteLlmCache>,
    statistics: Arc<statistics::Statistics>,
    /// The removals each unit of work staged, until its end.
    staging: Arc<removals::Staging>,
}

impl Store {
    /// A store with the default key policy and no LiteLLM cache to evict from.
    pub fn new(db: impl Into<Db>, settings: LiteLlmSettings, removal_mode: RemovalMode) -> Self {
        Self {
            db: db.into(),
            settings: Arc::new(settings),
            rules: Arc::new(TeamRules::default()),
            removal_mode,
            keys: KeyPolicy::default(),
            cache: None,
            statistics: Arc::new(statistics::Statistics::new()),
            staging: Arc::default(),
        }
    }

    /// The team rules new teams follow (checked at start, see [`TeamRules::check_organizations`]).
    #[must_use]
    pub fn with_team_rules(mut self, rules: TeamRules) -> Self {
        self.rules = Arc::new(rules);
        self
    }

    /// The assigned groups' teams whose parameters differ from their team rule's (for
    /// `sync --full --dry-run`); nothing is changed.
    pub async fn rule_drift(&self) -> Result<Vec<crate::team_rules::RuleDrift>> {
        let groups = self.assigned_groups().await?;
        teams::rule_drift(&self.db, &self.rules, &groups).await
    }

    /// What removals and departures do to keys.
    #[must_use]
    pub fn with_key_policy(mut self, keys: KeyPolicy) -> Self {
        self.keys = keys;
        self
    }

    /// Evicts what each commit changed from LiteLLM's caches.
    #[must_use]
    pub fn with_litellm_cache(mut self, cache: LiteLlmCache) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Of these users (enabled in Entra, not departed), those a re-read finds nothing to change
    /// for: LiteLLM already has their email and display name, and no key of theirs is blocked
    /// for a departure. Two statements however many users.
    pub async fn unchanged_users(
        &self,
        users: &[&EntraUser],
    ) -> Result<std::collections::HashSet<UserId>> {
        if users.is_empty() {
            return Ok(std::collections::HashSet::new());
        }
        users::unchanged(&self.db, users).await
    }

    /// Of these users (enabled in Entra), those whose LiteLLM row has another email or display
    /// name than Entra's. One statement however many users.
    pub async fn renamed_users(
        &self,
        users: &[&EntraUser],
    ) -> Result<std::collections::HashSet<UserId>> {
        if users.is_empty() {
            return Ok(std::collections::HashSet::new());
        }
        users::renamed(&self.db, users).await
    }

    /// LiteLLM's database, which this store writes.
    pub fn connection(&self) -> &Db {
        &self.db
    }

    /// The LiteLLM cache this store evicts from, if any.
    pub fn litellm_cache(&self) -> Option<&LiteLlmCache> {
        self.cache.as_ref()
    }

    /// Ends an operation's transaction: a dry run rolls back; otherwise the changes are written to
    /// the audit log and everything commits together, and then the cached copies of what changed
    /// are evicted from LiteLLM's caches.
    async fn finish(
        &self,
        txn: DatabaseTransaction,
        applied: Applied,
        options: ApplyOptions,
    ) -> Result<Vec<Change>> {
        let Applied {
            changes,
            stale,
            staged,
        } = applied;
        if options.dry_run {
            txn.rollback().await?;
        } else {
            let recorded = async {
                if let Some(fence) = options.fence {
                    crate::store::lease::check(&txn, fence).await?;
                }
                change::record(&txn, &changes, options.now, options.cause).await
            }
            .await;
            if let Err(error) = recorded {
                rollback(txn).await;
                return Err(error);
            }
            txn.commit().await?;
            if let Some(cache) = &self.cache
                && !changes.is_empty()
            {
                let mut keys: Vec<String> = changes.iter().flat_map(Change::cache_keys).collect();
                keys.extend(stale);
                cache.evict(keys);
            }
            self.statistics.after_commit(&self.db, &changes);
        }
        // Committed (or, in a dry run, planned): the unit of work decides on them at its end.
        if let Removals::Stage(unit) = options.removals {
            self.staging.stage(unit, staged);
        }
        Ok(changes)
    }

    /// Ends an operation whose work may have failed: a failure rolls back at once.
    async fn settle<A: Into<Applied>>(
        &self,
        txn: DatabaseTransaction,
        work: Result<A>,
        options: ApplyOptions,
    ) -> Result<Vec<Change>> {
        match work {
            Ok(applied) => self.finish(txn, applied.into(), options).await,
            Err(error) => {
                rollback(txn).await;
                Err(error)
            }
        }
    }

    async fn membership(
        &self,
        group: &GroupId,
        joining: &[EntraUser],
        leaving: planning::Leaving<'_>,
        reason: RemovalReason,
        options: ApplyOptions,
    ) -> Result<Vec<Change>> {
        let txn = self.db.begin().await?;
        let request = planning::Request {
            group,
            joining,
            leaving,
            // Taking out every membership entra-sync manages takes out its owners too.
            owners: match leaving {
                planning::Leaving::AllManaged => planning::Owners::Ignored,
                _ => planning::Owners::Kept,
            },
            mode: self.removal_mode,
            keys: self.keys.removed_member,
            unreadable: &[],
            removals: options.removals,
            reason,
        };
        let changes = members::apply(&txn, request, &self.settings, options.now).await;
        self.settle(txn, changes, options).await
    }
}

/// The intentions the worker applies to LiteLLM's tables.
impl Store {
    /// Creates the team for a group, or brings its alias up to date.
    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn ensure_team(
        &self,
        group: &GroupId,
        display_name: &str,
        options: ApplyOptions,
    ) -> Result<Vec<Change>> {
        let txn = self.db.begin().await?;
        let changes = teams::ensure(
            &txn,
            group,
            display_name,
            &self.settings,
            &self.rules,
            options.now,
        )
        .await;
        self.settle(txn, changes, options).await
    }

    /// Creates the LiteLLM user for an Entra user, or links an existing one found by email.
    #[tracing::instrument(skip(self, user), fields(user = %user.id), err(level = "debug"))]
    pub async fn ensure_user(
        &self,
        user: &EntraUser,
        options: ApplyOptions,
    ) -> Result<Vec<Change>> {
        let txn = self.db.begin().await?;
        let changes = users::ensure(&txn, user, &self.settings, options.now).await;
        self.settle(txn, changes, options).await
    }

    /// Entra renamed a user: a known user's email and display name follow (unknown users: nothing).
    #[tracing::instrument(skip(self, user), fields(user = %user.id), err(level = "debug"))]
    pub async fn update_user(
        &self,
        user: &EntraUser,
        options: ApplyOptions,
    ) -> Result<Vec<Change>> {
        let txn = self.db.begin().await?;
        let work = async {
            let mut changes = users::update(&txn, user, options.now).await?;
            // Enabled in Entra: keys blocked because the user had departed come back.
            changes.extend(keys::reinstate(&txn, &[user.id.as_str()], options.now).await?);
            Ok(changes)
        }
        .await;
        self.settle(txn, work, options).await
    }

    /// [`Self::ensure_user`] then [`Self::set_role`] in one transaction (so that a dry run plans
    /// the role of a user it would create).
    #[tracing::instrument(skip(self, user), fields(user = %user.id), err(level = "debug"))]
    pub async fn set_user_role(
        &self,
        user: &EntraUser,
        role_values: &[String],
        options: ApplyOptions,
    ) -> Result<Vec<Change>> {
        let txn = self.db.begin().await?;
        let changes =
            roles::ensure_and_set(&txn, &[(user, role_values)], &self.settings, options.now).await;
        self.settle(txn, changes, options).await
    }

    /// [`Self::set_user_role`] for many users in one transaction and a few statements: the
    /// users made or linked, then each given the most privileged valid role of their values.
    #[tracing::instrument(skip(self, users), fields(users = users.len()), err(level = "debug"))]
    pub async fn set_user_roles(
        &self,
        users: &[(EntraUser, Vec<String>)],
        options: ApplyOptions,
    ) -> Result<Vec<Change>> {
        let txn = self.db.begin().await?;
        let users: Vec<(&EntraUser, &[String])> = users
            .iter()
            .map(|(user, values)| (user, values.as_slice()))
            .collect();
        let changes = roles::ensure_and_set(&txn, &users, &self.settings, options.now).await;
        self.settle(txn, changes, options).await
    }

    /// [`Self::revoke_role`] for many users in one transaction and a few statements.
    #[tracing::instrument(skip(self, users), fields(users = users.len()), err(level = "debug"))]
    pub async fn revoke_roles(
        &self,
        users: &[UserId],
        options: ApplyOptions,
    ) -> Result<Vec<Change>> {
        let default = self.settings.default_user_role();
        let txn = self.db.begin().await?;
        let changes = roles::revoke(&txn, users, default, options.now).await;
        self.settle(txn, changes, options).await
    }

    /// Makes the users full members of the group's team (creating users as needed).
    #[tracing::instrument(skip(self, members), fields(members = members.len()), err(level = "debug"))]
    pub async fn add_members(
        &self,
        group: &GroupId,
        members: &[EntraUser],
        options: ApplyOptions,
    ) -> Result<Vec<Change>> {
        self.membership(
            group,
            members,
            planning::Leaving::Nobody,
            RemovalReason::LeftGroup,
            options,
        )
        .await
    }

    /// Takes the users out of the group's team (in `Managed` mode, only memberships entra-sync
    /// created).
    #[tracing::instrument(skip(self, members), fields(members = members.len()), err(level = "debug"))]
    pub async fn remove_members(
        &self,
        group: &GroupId,
        members: &[UserId],
        options: ApplyOptions,
    ) -> Result<Vec<Change>> {
        self.membership(
            group,
            &[],
            planning::Leaving::These(members),
            RemovalReason::LeftGroup,
            options,
        )
        .await
    }

    /// Makes the team's membership equal the group's full member list: adds the missing, removes
    /// the others (in `Managed` mode, only memberships entra-sync created).
    #[tracing::instrument(skip(self, members), fields(members = members.len()), err(level = "debug"))]
    pub async fn replace_members(
        &self,
        group: &GroupId,
        members: &[EntraUser],
        options: ApplyOptions,
    ) -> Result<Vec<Change>> {
        self.membership(
            group,
            members,
            planning::Leaving::EveryoneElse,
            RemovalReason::NotInGroup,
            options,
        )
        .await
    }

    /// Brings a group's team up to date in one transaction: created (or renamed) first when a
    /// display name is given, then its membership made equal to `members` as
    /// [`Self::replace_members`] does. In a dry run a new team's members are planned too.
    #[tracing::instrument(skip(self, members), fields(members = members.len()), err(level = "debug"))]
    pub async fn sync_team(
        &self,
        group: &GroupId,
        display_name: Option<&str>,
        members: &[EntraUser],
        options: ApplyOptions,
    ) -> Result<Vec<Change>> {
        let team = TeamSync {
            group,
            display_name,
            members,
            unreadable: &[],
        };
        self.sync_teams(&[team], options).await
    }

    /// [`Self::sync_team`] for several groups (each once) in one transaction and a fixed number
    /// of statements however many: how a first sync and a resync apply groups, a batch at a
    /// time. Changes come group by group, in the order given.
    #[tracing::instrument(skip(self, teams), fields(teams = teams.len()), err(level = "debug"))]
    pub async fn sync_teams(
        &self,
        teams: &[TeamSync<'_>],
        options: ApplyOptions,
    ) -> Result<Vec<Change>> {
        let txn = self.db.begin().await?;
        let work = async {
            // Every team's lock at once, before those of the teams to create or rename.
            let all: Vec<String> = teams.iter().map(|team| team.group.to_string()).collect();
            sql::lock_teams(&txn, &all).await?;
            let named: Vec<(&GroupId, &str)> = teams
                .iter()
                .filter_map(|team| Some((team.group, team.display_name?)))
                .collect();
            let mut made =
                teams::ensure_many(&txn, &named, &self.settings, &self.rules, options.now)
                    .await?
                    .into_iter();
            let requests: Vec<planning::Request> = teams
                .iter()
                .map(|team| planning::Request {
                    group: team.group,
                    joining: team.members,
                    leaving: planning::Leaving::EveryoneElse,
                    owners: planning::Owners::Kept,
                    mode: self.removal_mode,
                    keys: self.keys.removed_member,
                    unreadable: team.unreadable,
                    removals: options.removals,
                    reason: RemovalReason::NotInGroup,
                })
                .collect();
            let applied = members::apply_many(&txn, &requests, &self.settings, options.now).await?;
            let mut changes = Vec::new();
            for (team, membership) in teams.iter().zip(applied.changes) {
                if team.display_name.is_some() {
                    changes.extend(made.next().unwrap_or_default());
                }
                changes.extend(membership);
            }
            Ok(Applied {
                changes,
                stale: applied.stale,
                staged: applied.staged,
            })
        }
        .await;
        self.settle(txn, work, options).await
    }

    /// Takes out every membership entra-sync created in the group's team, whatever the removal
    /// mode (the `remove-members` policy for an unassigned or deleted group).
    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn remove_managed_members(
        &self,
        group: &GroupId,
        options: ApplyOptions,
    ) -> Result<Vec<Change>> {
        self.membership(
            group,
            &[],
            planning::Leaving::AllManaged,
            RemovalReason::GroupRetired,
            options,
        )
        .await
    }

    /// Makes the group's owners its team's admins (`ENTRA_SYNC_OWNERS_AS_ADMINS`): owners join
    /// as admins (or become admins, from `user`), former owners go back to `user`, or leave when
    /// they were in the team only as owners. An admin role set by hand stays.
    #[tracing::instrument(skip(self, owners), fields(owners = owners.len()), err(level = "debug"))]
    pub async fn sync_owners(
        &self,
        group: &GroupId,
        owners: &[EntraUser],
        options: ApplyOptions,
    ) -> Result<Vec<Change>> {
        let txn = self.db.begin().await?;
        let request = planning::Request {
            group,
            joining: &[],
            leaving: planning::Leaving::Nobody,
            owners: planning::Owners::Now(owners),
            mode: self.removal_mode,
            keys: self.keys.removed_member,
            unreadable: &[],
            removals: options.removals,
            reason: RemovalReason::OwnershipEnded,
        };
        let changes = members::apply(&txn, request, &self.settings, options.now).await;
        self.settle(txn, changes, options).await
    }

    /// Blocks the group's team (the `block` policy for an unassigned or deleted group).
    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn block_team(&self, group: &GroupId, options: ApplyOptions) -> Result<Vec<Change>> {
        let txn = self.db.begin().await?;
        let changes = teams::block(&txn, group, options.now).await;
        self.settle(txn, changes, options).await
    }

    /// The user has no valid Entra role left: a role entra-sync set drops to the default role
    /// for new users; a role an admin set since stays.
    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn revoke_role(&self, user: &UserId, options: ApplyOptions) -> Result<Vec<Change>> {
        let default = self.settings.default_user_role();
        let txn = self.db.begin().await?;
        let changes = roles::revoke(&txn, std::slice::from_ref(user), default, options.now).await;
        self.settle(txn, changes, options).await
    }

    /// Sets the user's role from their Entra app-role values: the most privileged valid one wins;
    /// none valid leaves the role as it is.
    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn set_role(
        &self,
        user: &UserId,
        role_values: &[String],
        options: ApplyOptions,
    ) -> Result<Vec<Change>> {
        let txn = self.db.begin().await?;
        let changes = roles::set(&txn, user, role_values, options.now).await;
        self.settle(txn, changes, options).await
    }

    /// Keys of members entra-sync removed that survived the removal (see the audit log) get
    /// `ENTRA_SYNC_REMOVED_MEMBER_KEYS` now, one team at a time under its lock.
    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn revoke_surviving_keys(&self, options: ApplyOptions) -> Result<Vec<Change>> {
        let policy = self.keys.removed_member;
        if policy == RemovedMemberKeys::Keep {
            return Ok(Vec::new());
        }
        if let Removals::Stage(unit) = options.removals {
            // Key deletions count towards the unit's threshold like any removal's.
            let staged = keys::surviving_pairs(&self.db, policy)
                .await?
                .into_iter()
                .map(|(team_id, user_id)| StagedRemoval {
                    team_id,
                    user_id,
                    entra_user_id: None,
                    reason: RemovalReason::KeysSurvived,
                })
                .collect();
            self.staging.stage(unit, staged);
            return Ok(Vec::new());
        }
        let mut changes = Vec::new();
        for team in keys::teams_with_surviving_keys(&self.db).await? {
            let txn = self.db.begin().await?;
            let work = keys::revoke_surviving(&txn, &team, policy, options.now)
                .await
                .map(|(changes, stale)| Applied {
                    changes,
                    stale,
                    staged: Vec::new(),
                });
            changes.extend(self.settle(txn, work, options).await?);
        }
        Ok(changes)
    }
}
