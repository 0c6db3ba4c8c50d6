//! Sync: from what Graph says to the store's intentions.
//!
//! - [`assignments`]: who is assigned to LiteLLM's enterprise app (polled: Graph sends no
//!   notifications for assignments) — new groups get their team and full membership, unassigned
//!   ones follow the [`UnassignedPolicy`], and app roles become LiteLLM roles.
//! - [`round`]: one groups-delta round — renames, members added and removed — for the assigned
//!   groups only, under a lock all worker replicas share.
//!
//! Notifications only say that a round is due; delta query is the truth.

mod assignments;
mod batch;
mod compare;
mod nesting;
mod owners;
mod reconcile;
mod removals;
mod round;
mod tasks;
mod users;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use entity::{GroupId, UserId};

use crate::directory::UserState;
use crate::error::{Error, Result};
use crate::graph::GraphClient;
use crate::store::lease::{Fence, Lease};
use crate::store::{ApplyOptions, Cause, Change, Changes, Item, Removals, Store, UnitId};

pub use assignments::AssignmentReport;
pub use nesting::Membership;
pub use reconcile::ReconcileReport;
pub use removals::{DEFAULT_REMOVAL_THRESHOLD, ReleaseReport, UnitReport};
pub use round::RoundReport;
pub use users::DepartedUserPolicy;

/// Users written in one transaction (roles, departures, returns): a few statements per batch.
pub(super) const USER_BATCH: usize = 1_000;

/// A batch of users' outcome: its changes; `None` when it failed on its own (one user LiteLLM
/// refuses, say), and each user is then tried alone, so that one bad user never holds the others
/// back; a systemic error (the database away) as it is.
pub(super) fn whole_batch(
    outcome: Result<Vec<Change>>,
    users: usize,
) -> Result<Option<Vec<Change>>> {
    match outcome {
        Ok(changes) => Ok(Some(changes)),
        Err(error) if error.is_systemic() => Err(error),
        Err(error) => {
            tracing::info!(%error, users, "a batch of users failed: each is tried on its own");
            Ok(None)
        }
    }
}

impl Syncer {
    /// The users of a batch that failed on its own ([`whole_batch`]), each applied alone by
    /// `apply` and settled as an item of its own; returns whether every one succeeded.
    pub(super) async fn each_alone<'a, U, F, Fut>(
        &self,
        batch: &'a [U],
        user_id: impl Fn(&U) -> UserId,
        apply: F,
        now: DateTime<Utc>,
        changes: &mut Changes,
    ) -> Result<bool>
    where
        F: Fn(&'a U) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<Change>>>,
    {
        let mut applied = true;
        for user in batch {
            let outcome = apply(user).await;
            applied &= outcome.is_ok();
            changes.add(
                self.settle_item(Item::User(user_id(user)), outcome, now)
                    .await?,
            );
        }
        Ok(applied)
    }
}

/// Runs a store operation again when another writer created the same user at the same moment
/// ([`crate::Error::ConcurrentChange`]: nothing was applied, and it is safe to repeat), up to
/// five times, after a few milliseconds with jitter so that the two writers do not meet again.
pub(crate) async fn retrying<T, F, Fut>(operation: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = entra_sync_litellm::Result<T>>,
{
    use backon::{ExponentialBuilder, Retryable};
    Ok(operation
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(5))
                .with_max_delay(Duration::from_millis(200))
                .with_max_times(5)
                .with_jitter(),
        )
        .when(|error| matches!(error, entra_sync_litellm::Error::ConcurrentChange(_)))
        .notify(|error, delay| {
            tracing::debug!(%error, ?delay, "concurrent change; trying again");
        })
        .await?)
}

/// What happens to a team whose group is no longer assigned to the app, or was deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum UnassignedPolicy {
    /// Nothing: the team and its members stay.
    Keep,
    /// The team and its spend history stay; the members entra-sync added go.
    #[default]
    RemoveMembers,
    /// The team is blocked; its members stay.
    Block,
}

/// The lease a replica holds for each unit of sync work (a round, a poll, a reconciliation, a
/// re-read of users), so that replicas never interleave their intentions.
pub const SYNC_LEASE: &str = "sync";

/// The lease a replica holds while it deletes audit entries past their retention, apart from
/// [`SYNC_LEASE`] so that a long purge never holds a round back.
pub const AUDIT_RETENTION_LEASE: &str = "audit_retention";

/// Audit entries deleted to a transaction.
const AUDIT_PURGE_BATCH: u64 = 10_000;

/// How a syncer takes the [`SYNC_LEASE`].
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// This replica's name (its consumer name).
    pub holder: String,
    /// The lease runs out this long after its holder stopped renewing it (a replica that died).
    pub ttl: Duration,
    /// How long a unit of work waits for another replica's to finish before it gives up
    /// ([`crate::Error::LeaseBusy`]) and is tried again later.
    pub patience: Duration,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        Self {
            holder: crate::store::lease::this_process(),
            ttl: Duration::from_secs(30),
            patience: Duration::from_secs(10),
        }
    }
}

/// Applies Entra's state to LiteLLM through the store.
#[derive(Clone, Debug)]
pub struct Syncer {
    graph: GraphClient,
    store: Store,
    lease: Lease,
    patience: Duration,
    /// This process's units of work, one at a time: the worker's tasks (the stream's rounds,
    /// polls, reconciliations) share the replica's lease, which alone would let them interleave.
    turn: Arc<tokio::sync::Mutex<()>>,
    /// Set inside a unit of work: the lease it holds, checked at every commit.
    fence: Option<Fence>,
    /// Set inside a unit of work: what it is, recorded with every change it makes.
    cause: Option<Cause>,
    /// Set inside a unit of work: its number (its removals are staged under it) and the
    /// deltaLink it stores once its removals are settled.
    unit: Option<Arc<removals::Unit>>,
    /// A unit of work that would remove more memberships, or delete more keys, than this holds
    /// its removals for a person; 0: never.
    removal_threshold: u64,
    policy: UnassignedPolicy,
    departed_policy: DepartedUserPolicy,
    membership: Membership,
    /// Group owners become their teams' admins.
    owners_as_admins: bool,
    /// Plan every change and write nothing: neither LiteLLM's tables nor entra-sync's state.
    dry_run: bool,
    /// Users disabled or deleted in Entra (they may still be group members there), with when
    /// the read that said so was made: given no team and no role on any path, unless a read of
    /// this unit of work, newer than that, says they are enabled ([`Self::admits`]). Loaded at
    /// the start of each unit of work; a reconciliation adds the tenant's disabled users, so that
    /// it does not add what it then takes away.
    excluded: Arc<HashMap<UserId, DateTime<Utc>>>,
    /// Items failing at the start of this unit of work, cleared when they succeed.
    failing: Arc<HashSet<Item>>,
    /// Whether reports list their changes, or only count them (see [`Changes`]).
    listing: bool,
}

impl Syncer {
    /// A syncer reading Graph through `graph` and writing through `store` (which holds the
    /// database, LiteLLM's tables and entra-sync's own).
    pub fn new(graph: GraphClient, store: Store, policy: UnassignedPolicy) -> Self {
        let lease_settings = LeaseSettings::default();
        Self {
            graph,
            lease: store.lease(SYNC_LEASE, &lease_settings.holder, lease_settings.ttl),
            store,
            patience: lease_settings.patience,
            turn: Arc::default(),
            fence: None,
            cause: None,
            unit: None,
            removal_threshold: DEFAULT_REMOVAL_THRESHOLD,
            policy,
            departed_policy: DepartedUserPolicy::default(),
            membership: Membership::default(),
            owners_as_admins: false,
            dry_run: false,
            excluded: Arc::default(),
            failing: Arc::default(),
            listing: true,
        }
    }

    /// How this syncer takes the [`SYNC_LEASE`].
    #[must_use]
    pub fn with_lease(mut self, settings: LeaseSettings) -> Self {
        self.lease = self.store.lease(SYNC_LEASE, &settings.holder, settings.ttl);
        self.patience = settings.patience;
        self
    }

    /// Runs one unit of sync work holding the [`SYNC_LEASE`], every commit checked against its
    /// fence; no transaction stays open meanwhile. Within the process, units wait their turn.
    /// Work already inside a unit (a reconciliation's poll) runs as it is, under that unit's
    /// lease and cause; dry runs (which write nothing) take no lease. `cause` is recorded with
    /// every change the unit makes. The removals the unit staged are applied, or held, at its
    /// end, and only then is its deltaLink stored ([`Self::finish_unit`]).
    pub(super) async fn exclusively<T, F, Fut>(
        &self,
        cause: Cause,
        now: DateTime<Utc>,
        work: F,
    ) -> Result<T>
    where
        T: UnitReport,
        F: FnOnce(Syncer) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        if self.unit.is_some() {
            return work(self.clone()).await;
        }
        if self.dry_run {
            let unit = self.within_unit(None, cause, now).await?;
            return unit.run_unit(now, work).await;
        }
        let _turn = self.turn.lock().await;
        self.lease
            .hold(self.patience, |fence| async move {
                let unit = self.within_unit(Some(fence), cause, now).await?;
                unit.run_unit(now, work).await
            })
            .await
    }

    /// The syncer for one unit of work: its fence, cause and number, the users to leave out, the
    /// failing items.
    async fn within_unit(
        &self,
        fence: Option<Fence>,
        cause: Cause,
        now: DateTime<Utc>,
    ) -> Result<Self> {
        Ok(Self {
            fence,
            cause: Some(cause),
            unit: Some(Arc::new(removals::Unit::new(self.store.new_unit(), now))),
            excluded: Arc::new(self.store.departed_users().await?),
            failing: Arc::new(self.store.failing_items().await?),
            ..self.clone()
        })
    }

    /// A unit of work's number, inside one.
    fn unit_id(&self) -> Option<UnitId> {
        self.unit.as_ref().map(|unit| unit.id)
    }

    /// One item's outcome: its changes; or, for an error of its own, nothing now and a retry
    /// later (recorded as failed, with backoff), while the rest of the work goes on. A systemic
    /// error (the database or Graph away) is returned, to fail the unit of work as a whole.
    async fn settle_item(
        &self,
        item: Item,
        outcome: Result<Vec<Change>>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Change>> {
        match outcome {
            Ok(changes) => {
                if self.failing.contains(&item) {
                    self.store.clear_failure(&item, self.options(now)).await?;
                    tracing::info!(%item, "a failed item succeeded");
                }
                Ok(changes)
            }
            Err(error) if error.is_systemic() => Err(error),
            Err(error) => {
                tracing::warn!(%item, %error, "failed on its own; the rest goes on, and it is retried later");
                self.store
                    .record_failure(&item, &error.to_string(), self.options(now))
                    .await?;
                Ok(Vec::new())
            }
        }
    }

    /// Deletes the audit entries recorded more than `retention` before `now`, in batches, on one
    /// replica at a time: `None` when another replica is at it (it does the same work).
    pub async fn purge_audit_log(
        &self,
        now: DateTime<Utc>,
        retention: chrono::Duration,
    ) -> Result<Option<u64>> {
        if self.dry_run {
            return Ok(Some(0));
        }
        let cutoff = now
            .checked_sub_signed(retention)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let lease = self.store.lease(
            AUDIT_RETENTION_LEASE,
            self.lease.holder(),
            Duration::from_secs(60),
        );
        match lease
            .hold(Duration::ZERO, |_| {
                self.store.purge_audit_log(cutoff, AUDIT_PURGE_BATCH)
            })
            .await
        {
            Ok(purged) => Ok(Some(purged)),
            Err(entra_sync_litellm::Error::LeaseBusy { .. }) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// Whether failed items are due for another attempt (made at the end of the next round).
    pub async fn failures_due(&self, now: DateTime<Utc>) -> Result<bool> {
        Ok(!self.store.due_items(now).await?.is_empty())
    }

    /// How many reconciliations in a row, up to the newest, found drift (counted up to ten).
    pub async fn reconciliations_with_drift(&self) -> Result<u64> {
        Ok(self.store.reconciliations_with_drift(10).await?)
    }

    /// How many removals are held for a person now.
    pub async fn held_removals(&self) -> Result<i64> {
        Ok(crate::store::held_count(self.store.connection()).await?)
    }

    /// How many groups and users fail now.
    pub async fn failing_counts(&self) -> Result<(i64, i64)> {
        Ok(self.store.failing_counts().await?)
    }

    /// Reports count their changes without listing them (the worker's `run`: each change is
    /// in the audit log, and a first sync of a million memberships lists none in memory).
    #[must_use]
    pub fn counting_only(mut self) -> Self {
        self.listing = false;
        self
    }

    /// An empty tally for a report: listing, unless [`Self::counting_only`].
    fn tally(&self) -> Changes {
        if self.listing {
            Changes::listed()
        } else {
            Changes::counted()
        }
    }

    /// The same syncer, leaving exactly these users out of every team and role (a
    /// reconciliation, which knows every account's state), each as of the time given.
    fn excluding(&self, users: HashMap<UserId, DateTime<Utc>>) -> Self {
        Self {
            excluded: Arc::new(users),
            ..self.clone()
        }
    }

    /// Whether a user may hold a team or a role: not disabled or deleted in Entra (unless the
    /// departed-user policy keeps such users where they are).
    fn included(&self, user: &UserId) -> bool {
        self.departed_policy == DepartedUserPolicy::Keep || !self.excluded.contains_key(user)
    }

    /// Whether a user this unit of work read may hold a team or a role: enabled, and not
    /// departed, or departed before this read, which says the account is enabled: what Graph
    /// says now wins over what entra-sync remembers, and the user is restored at the unit's end
    /// (see `Syncer::finish_unit`). A read that does not say whether the account is enabled
    /// brings nobody back.
    fn admits(&self, state: &UserState) -> bool {
        if !state.enabled {
            return false;
        }
        if self.included(&state.user.id) {
            return true;
        }
        let read_after = match (&self.unit, self.excluded.get(&state.user.id)) {
            (Some(unit), Some(since)) => unit.started > *since,
            _ => false,
        };
        if read_after && state.confirmed_enabled {
            if let Some(unit) = &self.unit {
                unit.restore(state.user.clone());
            }
            return true;
        }
        false
    }

    /// What happens to the memberships of a user deleted or disabled in Entra.
    #[must_use]
    pub fn with_departed_users(mut self, policy: DepartedUserPolicy) -> Self {
        self.departed_policy = policy;
        self
    }

    /// Whose membership of a group makes a team member (`ENTRA_SYNC_MEMBERSHIP`).
    #[must_use]
    pub fn with_membership(mut self, membership: Membership) -> Self {
        self.membership = membership;
        self
    }

    /// Whether group owners become their teams' admins (`ENTRA_SYNC_OWNERS_AS_ADMINS`).
    #[must_use]
    pub fn with_owners_as_admins(mut self, owners_as_admins: bool) -> Self {
        self.owners_as_admins = owners_as_admins;
        self
    }

    /// A syncer that plans the same changes and writes nothing (`sync --full --dry-run`).
    #[must_use]
    pub fn dry_run(mut self) -> Self {
        self.dry_run = true;
        self
    }

    fn options(&self, now: DateTime<Utc>) -> ApplyOptions {
        if self.dry_run {
            ApplyOptions::dry_run(now)
        } else {
            ApplyOptions::commit(now).fenced(self.fence)
        }
        .caused_by(self.cause)
        .removing(match self.unit_id() {
            // With the threshold off nothing is ever held: staging would only apply the
            // removals later, reading every team they touch a second time.
            Some(unit) if self.removal_threshold > 0 => Removals::Stage(unit),
            _ => Removals::Apply,
        })
    }

    /// How many memberships (or key deletions) one unit of work may remove before it holds its
    /// removals for a person (`ENTRA_SYNC_REMOVAL_THRESHOLD`); 0 turns the hold off.
    #[must_use]
    pub fn with_removal_threshold(mut self, threshold: u64) -> Self {
        self.removal_threshold = threshold;
        self
    }

    /// Records groups as assigned, with their names.
    async fn remember_assigned(
        &self,
        groups: &[(GroupId, Option<String>)],
        now: DateTime<Utc>,
    ) -> Result<()> {
        Ok(self
            .store
            .remember_assigned(groups, self.options(now))
            .await?)
    }

    /// Runs `work` for every item, `PARALLEL_GROUPS` at a time, adding the changes to
    /// `changes`; returns how many items changed something. An item's own failure is settled as
    /// such ([`Self::settle_item`], `key` names the item) and the others go on, a task that
    /// panicked among them ([`crate::Error::ItemTaskFailed`]); a systemic error stops the rest.
    /// Group after group, a sync of thousands of groups is bound by round trips, not by
    /// PostgreSQL.
    async fn in_parallel<I, F, Fut>(
        &self,
        items: Vec<I>,
        key: impl Fn(&I) -> Item,
        now: DateTime<Utc>,
        work: F,
        changes: &mut Changes,
    ) -> Result<usize>
    where
        I: Send + 'static,
        F: Fn(Syncer, I) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<Change>>> + Send + 'static,
    {
        const PARALLEL_GROUPS: usize = 8;
        let mut changed = 0;
        let mut running = tasks::Bounded::new(items, PARALLEL_GROUPS, |item| {
            (key(&item), work(self.clone(), item))
        });
        while let Some((item, outcome)) = running.next().await {
            let outcome = outcome.unwrap_or_else(|reason| Err(Error::ItemTaskFailed(reason)));
            let settled = self.settle_item(item, outcome, now).await?;
            if !settled.is_empty() {
                changed += 1;
            }
            changes.add(settled);
        }
        Ok(changed)
    }

    /// The policy for a group that is no longer assigned, or no longer exists.
    async fn retire_group(&self, group: &GroupId, now: DateTime<Utc>) -> Result<Vec<Change>> {
        let options = self.options(now);
        let changes = match self.policy {
            UnassignedPolicy::Keep => Vec::new(),
            UnassignedPolicy::RemoveMembers => {
                self.store.remove_managed_members(group, options).await?
            }
            UnassignedPolicy::Block => self.store.block_team(group, options).await?,
        };
        self.forget_assigned(group, now).await?;
        Ok(changes)
    }
}
