//! The end of a unit of work: the removals it staged are applied, or, over
//! `ENTRA_SYNC_REMOVAL_THRESHOLD`, held for a person (see [`crate::store::Removals`]); then its
//! deltaLink is stored. And the person's side: held removals released after a fresh look at
//! Graph, or discarded.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use entity::{GroupId, UserId};

use super::assignments::AssignmentReport;
use super::{Membership, ReconcileReport, RoundReport, Syncer};
use crate::directory::EntraUser;
use crate::error::{Error, Result};
use crate::graph::model::{DirectoryObject, ObjectKind};
use crate::store::{
    Cause, Change, Changes, HeldRemoval, Item, RemovalReason, StagedRemoval, UnitId,
};

/// `ENTRA_SYNC_REMOVAL_THRESHOLD`'s default: Entra Connect's "prevent accidental deletes" holds
/// an export that would delete more than 500 objects.
pub const DEFAULT_REMOVAL_THRESHOLD: u64 = 500;

/// Teams whose staged removals are applied (or held) in one transaction, and at most this many
/// removals: a transaction holds LiteLLM's team locks for a fraction of a second.
const BATCH_TEAMS: usize = 200;
const BATCH_REMOVALS: usize = 6_000;

/// What a unit of work keeps until its end.
#[derive(Debug)]
pub(super) struct Unit {
    pub id: UnitId,
    /// When it started: its reads are newer than anything remembered from before.
    pub started: DateTime<Utc>,
    /// The deltaLink to store once the unit's removals are settled: stored before, it would let
    /// a failed settlement's removals fall out of every later round.
    delta_link: Mutex<Option<String>>,
    /// Departed users one of its reads found enabled, to restore at its end.
    restoring: Mutex<HashMap<UserId, EntraUser>>,
    /// A departed user came back in this unit: every group they are in must be read again.
    restored: AtomicBool,
    /// It read every assigned group whole (a resync): nothing needs reading again for them.
    resynced: AtomicBool,
    /// Groups retired (unassigned or gone), forgotten as assigned once the unit's removals are
    /// settled: forgotten before, a unit that fails would leave their members in for good, since
    /// nothing would find them unassigned again.
    retired: Mutex<Vec<GroupId>>,
}

impl Unit {
    pub fn new(id: UnitId, started: DateTime<Utc>) -> Self {
        Self {
            id,
            started,
            delta_link: Mutex::new(None),
            restoring: Mutex::default(),
            restored: AtomicBool::new(false),
            resynced: AtomicBool::new(false),
            retired: Mutex::new(Vec::new()),
        }
    }

    fn delta_link(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.delta_link
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn restoring(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, EntraUser>> {
        self.restoring
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A departed user a read found enabled: restored at the unit's end.
    pub fn restore(&self, user: EntraUser) {
        self.restoring().insert(user.id.clone(), user);
    }

    /// A departed user is back (their departure forgotten).
    pub fn note_restored(&self) {
        self.restored.store(true, Ordering::Relaxed);
    }

    /// The unit read every assigned group whole.
    pub fn note_resynced(&self) {
        self.resynced.store(true, Ordering::Relaxed);
    }

    fn retired(&self) -> std::sync::MutexGuard<'_, Vec<GroupId>> {
        self.retired
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A unit of work's report, to which the changes of its end are added.
pub trait UnitReport {
    fn changes_mut(&mut self) -> Option<&mut Changes>;
}

impl UnitReport for Changes {
    fn changes_mut(&mut self) -> Option<&mut Changes> {
        Some(self)
    }
}

impl UnitReport for RoundReport {
    fn changes_mut(&mut self) -> Option<&mut Changes> {
        Some(&mut self.changes)
    }
}

impl UnitReport for AssignmentReport {
    fn changes_mut(&mut self) -> Option<&mut Changes> {
        Some(&mut self.changes)
    }
}

impl UnitReport for ReconcileReport {
    fn changes_mut(&mut self) -> Option<&mut Changes> {
        Some(&mut self.changes)
    }
}

impl UnitReport for ReleaseReport {
    fn changes_mut(&mut self) -> Option<&mut Changes> {
        Some(&mut self.changes)
    }
}

impl<T: UnitReport> UnitReport for Option<T> {
    fn changes_mut(&mut self) -> Option<&mut Changes> {
        self.as_mut().and_then(UnitReport::changes_mut)
    }
}

/// What `removals release` or `removals discard` did.
#[derive(Debug, Default)]
pub struct ReleaseReport {
    /// Held removals applied: the members left their teams.
    pub released: usize,
    /// Held removals dropped: Graph lists the member again, or a person discarded them.
    pub dropped: usize,
    /// Held removals still held: their group could not be read (the errors, by team).
    pub still_held: Vec<(String, String)>,
    pub changes: Changes,
}

impl Syncer {
    /// Runs a unit's work, then its end ([`Self::finish_unit`]). A unit that fails applies none
    /// of the removals it staged: its retry plans them again from what Graph says then.
    pub(super) async fn run_unit<T, F, Fut>(self, now: DateTime<Utc>, work: F) -> Result<T>
    where
        T: UnitReport,
        F: FnOnce(Syncer) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        match work(self.clone()).await {
            Ok(mut report) => {
                let ended = self.finish_unit(now).await?;
                if let Some(changes) = report.changes_mut() {
                    changes.add(ended);
                }
                Ok(report)
            }
            Err(error) => {
                if let Some(unit) = &self.unit {
                    let dropped = self.store.take_staged(unit.id);
                    if !dropped.is_empty() {
                        tracing::warn!(removals = dropped.len(), %error, "the unit of work failed: the removals it planned are not applied");
                    }
                }
                Err(error)
            }
        }
    }

    /// Stores `link` as where the next round resumes once this unit's removals are settled (at
    /// once outside a unit).
    pub(super) async fn defer_delta_link(&self, link: &str, now: DateTime<Utc>) -> Result<()> {
        match &self.unit {
            Some(unit) => {
                *unit.delta_link() = Some(link.to_owned());
                Ok(())
            }
            None => Ok(self.store.save_delta_link(link, self.options(now)).await?),
        }
    }

    /// Forgets a retired group as assigned once this unit's removals are settled (at once
    /// outside a unit).
    pub(super) async fn forget_assigned(&self, group: &GroupId, now: DateTime<Utc>) -> Result<()> {
        match &self.unit {
            Some(unit) => {
                unit.retired().push(group.clone());
                Ok(())
            }
            None => Ok(self.store.forget_assigned(group, self.options(now)).await?),
        }
    }

    /// The groups this unit retired so far (none outside a unit).
    pub(super) fn retired_groups(&self) -> Vec<GroupId> {
        self.unit
            .as_ref()
            .map(|unit| unit.retired().clone())
            .unwrap_or_default()
    }

    /// The end of a unit of work: departed users its reads found enabled restored, its staged
    /// removals applied or held, the groups it retired forgotten as assigned, then its deltaLink
    /// stored; or, when a departed user came back and the unit did not read every group whole,
    /// forgotten, so that the next round reads every assigned group and they rejoin the teams
    /// of all the groups they are in.
    pub(super) async fn finish_unit(&self, now: DateTime<Utc>) -> Result<Vec<Change>> {
        let Some(unit) = &self.unit else {
            return Ok(Vec::new());
        };
        let restoring: Vec<EntraUser> = unit.restoring().drain().map(|(_, user)| user).collect();
        let mut changes = Vec::new();
        for user in restoring {
            let state = crate::directory::UserState {
                user,
                enabled: true,
                confirmed_enabled: true,
            };
            let outcome = self.apply_user(&state.user.id, Some(&state), now).await;
            changes.extend(
                self.settle_item(Item::User(state.user.id.clone()), outcome, now)
                    .await?,
            );
        }
        changes.extend(self.settle_removals(now).await?);
        let retired = std::mem::take(&mut *unit.retired());
        for group in &retired {
            self.store.forget_assigned(group, self.options(now)).await?;
        }
        let link = unit.delta_link().take();
        let restored = unit.restored.swap(false, Ordering::Relaxed);
        if restored {
            // Roles come back with the user too.
            self.store.mark_roles_stale(None, self.options(now)).await?;
        }
        if restored && !unit.resynced.load(Ordering::Relaxed) {
            tracing::info!(
                "a departed user is back: every assigned group is read whole at the next round"
            );
            self.store.forget_delta_link(self.options(now)).await?;
        } else if let Some(link) = link {
            self.store.save_delta_link(&link, self.options(now)).await?;
        }
        Ok(changes)
    }

    /// The unit's staged removals: applied when they are at most the threshold (memberships,
    /// and keys they would delete), every one of them held for a person otherwise.
    async fn settle_removals(&self, now: DateTime<Utc>) -> Result<Vec<Change>> {
        let Some(unit) = &self.unit else {
            return Ok(Vec::new());
        };
        let staged = self.store.take_staged(unit.id);
        if staged.is_empty() {
            return Ok(Vec::new());
        }
        let memberships = staged
            .iter()
            .filter(|removal| removal.reason != RemovalReason::KeysSurvived)
            .count() as u64;
        let keys = self.store.keys_removals_would_delete(&staged).await?;
        let threshold = self.removal_threshold;
        let hold = threshold > 0 && (memberships > threshold || keys > threshold);
        if hold {
            tracing::warn!(
                memberships,
                keys,
                threshold,
                "more removals than ENTRA_SYNC_REMOVAL_THRESHOLD: all of them are held, their keys blocked; see `entra-sync-worker removals list`"
            );
        }
        let mut changes = Vec::new();
        for batch in team_batches(staged) {
            changes.extend(self.settle_batch(&batch, hold, now).await?);
        }
        Ok(changes)
    }

    /// One batch of removals applied (or held) in one transaction; when it fails on its own,
    /// team by team, so that one team LiteLLM refuses is that team's failure alone.
    async fn settle_batch(
        &self,
        batch: &[StagedRemoval],
        hold: bool,
        now: DateTime<Utc>,
    ) -> Result<Vec<Change>> {
        let settle = |removals: &[StagedRemoval]| {
            let options = self.options(now);
            let removals = removals.to_vec();
            async move {
                if hold {
                    self.store.hold_removals(&removals, options).await
                } else {
                    self.store.apply_removals(&removals, options).await
                }
            }
        };
        match super::retrying(|| settle(batch)).await {
            Ok(changes) => return Ok(changes),
            Err(error) if error.is_systemic() => return Err(error),
            Err(error) => {
                tracing::info!(%error, removals = batch.len(), "a batch of removals failed: each team is tried on its own");
            }
        }
        let mut changes = Vec::new();
        for team in team_batches_of(batch.to_vec(), 1, usize::MAX) {
            let outcome = super::retrying(|| settle(&team)).await;
            match team.first().and_then(|r| GroupId::parse(&r.team_id).ok()) {
                Some(group) => {
                    changes.extend(self.settle_item(Item::Group(group), outcome, now).await?)
                }
                None => changes.extend(outcome?),
            }
        }
        Ok(changes)
    }

    /// Applies held removals (all, or those with these ids) after checking each against Graph
    /// again: a member Graph lists in the group again (enabled, the group still assigned, or
    /// its owner while owners are admins) stays, the hold dropped and their keys unblocked; the
    /// others leave, their keys deleted (or blocked) as any removal's.
    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn release_removals(
        &self,
        ids: Option<Vec<i64>>,
        now: DateTime<Utc>,
    ) -> Result<ReleaseReport> {
        self.exclusively(Cause::RemovalRelease, now, |syncer| async move {
            syncer.release_locked(ids.as_deref(), now).await
        })
        .await
    }

    /// Drops held removals (all, or those with these ids): the members stay and their keys
    /// blocked for the hold are unblocked. A reconciliation that finds them still due holds
    /// them again when they are still over the threshold.
    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn discard_removals(
        &self,
        ids: Option<Vec<i64>>,
        now: DateTime<Utc>,
    ) -> Result<ReleaseReport> {
        self.exclusively(Cause::RemovalDiscard, now, |syncer| async move {
            let held = syncer.store.held_removals(ids.as_deref()).await?;
            let mut report = ReleaseReport {
                changes: syncer.tally(),
                ..ReleaseReport::default()
            };
            let holds: Vec<(String, String)> = held
                .into_iter()
                .map(|hold| (hold.team_id, hold.user_id))
                .collect();
            for batch in holds.chunks(BATCH_REMOVALS) {
                let made = syncer.store.drop_holds(batch, syncer.options(now)).await?;
                report.dropped += count_dropped(&made);
                report.changes.add(made);
            }
            Ok(report)
        })
        .await
    }

    async fn release_locked(
        &self,
        ids: Option<&[i64]>,
        now: DateTime<Utc>,
    ) -> Result<ReleaseReport> {
        let mut report = ReleaseReport {
            changes: self.tally(),
            ..ReleaseReport::default()
        };
        let held = self.store.held_removals(ids).await?;
        if held.is_empty() {
            return Ok(report);
        }
        let assigned: HashSet<GroupId> = self
            .graph
            .app_role_assignments()
            .await?
            .iter()
            .filter_map(super::assignments::group_id)
            .collect();
        let groups: Vec<GroupId> = held
            .iter()
            .filter_map(|hold| GroupId::parse(&hold.team_id).ok())
            .filter(|group| assigned.contains(group))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let members = self.members_now_for_release(groups).await?;
        let mut leaving = Vec::new();
        let mut staying = Vec::new();
        for hold in held {
            let group = GroupId::parse(&hold.team_id).ok();
            let user = UserId::parse(hold.entra_user_id.as_deref().unwrap_or(&hold.user_id)).ok();
            let decision = match (&group, &user) {
                (Some(group), Some(user)) if assigned.contains(group) => match members.get(group) {
                    Some(Ok(listed)) => Ok(listed.contains(user) && self.included(user)),
                    Some(Err(error)) => Err(error.clone()),
                    None => Ok(false),
                },
                // The group is no longer assigned (or Graph deleted it), or the member is not
                // an Entra user entra-sync can look up: nothing keeps them.
                _ => Ok(false),
            };
            match decision {
                Ok(true) => staying.push((hold.team_id, hold.user_id)),
                Ok(false) => leaving.push((hold.id, staged_from(hold))),
                Err(error) => report.still_held.push((hold.team_id, error)),
            }
        }
        let releasing: Vec<i64> = leaving.iter().map(|(id, _)| *id).collect();
        let leaving: Vec<StagedRemoval> = leaving.into_iter().map(|(_, removal)| removal).collect();
        for batch in team_batches(leaving) {
            report
                .changes
                .add(self.settle_batch(&batch, false, now).await?);
        }
        // A team that failed on its own keeps its holds (and is retried as a failed item).
        let kept = self.store.held_removals(Some(&releasing)).await?.len();
        report.released = releasing.len() - kept.min(releasing.len());
        for batch in staying.chunks(BATCH_REMOVALS) {
            let made = self.store.drop_holds(batch, self.options(now)).await?;
            report.dropped += count_dropped(&made);
            report.changes.add(made);
        }
        Ok(report)
    }

    /// For a release: the users each group lists now (enabled ones only; with owners as
    /// admins, its owners too), or why the group could not be read.
    async fn members_now_for_release(
        &self,
        groups: Vec<GroupId>,
    ) -> Result<HashMap<GroupId, Result<HashSet<UserId>, String>>> {
        let transitive = self.membership == Membership::Transitive;
        let mut listed: HashMap<GroupId, Result<HashSet<UserId>, String>> = HashMap::new();
        for group in &groups {
            let read = match self
                .graph
                .group_members(group, transitive)
                .await
                .map_err(Error::from)
            {
                Ok(objects) => Ok(enabled_users(objects)),
                Err(error) if error.is_systemic() => return Err(error),
                Err(error) => Err(error.to_string()),
            };
            listed.insert(group.clone(), read);
        }
        if self.owners_as_admins {
            for (group, owners) in self.graph.group_owners(&groups).await? {
                if let (Some(Ok(users)), Ok(owners)) = (listed.get_mut(&group), owners) {
                    users.extend(owners.into_iter().map(|owner| owner.id));
                }
            }
        }
        Ok(listed)
    }
}

/// The enabled users among the objects a members read listed.
fn enabled_users(objects: Vec<DirectoryObject>) -> HashSet<UserId> {
    objects
        .into_iter()
        .filter(|object| object.kind() == ObjectKind::User)
        .filter_map(DirectoryObject::into_enabled_user)
        .map(|user| user.id)
        .collect()
}

/// A held removal, to apply as a staged one.
fn staged_from(hold: HeldRemoval) -> StagedRemoval {
    StagedRemoval {
        reason: RemovalReason::parse(&hold.reason).unwrap_or(RemovalReason::NotInGroup),
        team_id: hold.team_id,
        user_id: hold.user_id,
        entra_user_id: hold.entra_user_id,
    }
}

fn count_dropped(changes: &[Change]) -> usize {
    changes
        .iter()
        .filter(|change| matches!(change, Change::RemovalDropped { .. }))
        .count()
}

/// Removals grouped by team, in batches of at most [`BATCH_TEAMS`] teams and about
/// [`BATCH_REMOVALS`] removals (a team's removals are never split).
fn team_batches(removals: Vec<StagedRemoval>) -> Vec<Vec<StagedRemoval>> {
    team_batches_of(removals, BATCH_TEAMS, BATCH_REMOVALS)
}

fn team_batches_of(
    removals: Vec<StagedRemoval>,
    teams: usize,
    size: usize,
) -> Vec<Vec<StagedRemoval>> {
    let mut by_team: BTreeMap<String, Vec<StagedRemoval>> = BTreeMap::new();
    for removal in removals {
        by_team
            .entry(removal.team_id.clone())
            .or_default()
            .push(removal);
    }
    let mut batches: Vec<Vec<StagedRemoval>> = Vec::new();
    let mut current: Vec<StagedRemoval> = Vec::new();
    let mut in_current = 0;
    for (_, mut team) in by_team {
        if in_current >= teams || (!current.is_empty() && current.len() + team.len() > size) {
            batches.push(std::mem::take(&mut current));
            in_current = 0;
        }
        current.append(&mut team);
        in_current += 1;
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn removal(team: &str, user: &str) -> StagedRemoval {
        StagedRemoval {
            team_id: team.into(),
            user_id: user.into(),
            entra_user_id: None,
            reason: RemovalReason::NotInGroup,
        }
    }

    #[test]
    fn batches_keep_a_team_whole_and_stay_within_their_bounds() {
        let removals = vec![
            removal("a", "1"),
            removal("b", "1"),
            removal("a", "2"),
            removal("c", "1"),
            removal("c", "2"),
            removal("c", "3"),
        ];
        let batches = team_batches_of(removals, 2, 4);
        let teams: Vec<Vec<&str>> = batches
            .iter()
            .map(|batch| batch.iter().map(|r| r.team_id.as_str()).collect())
            .collect();
        assert_eq!(teams, [vec!["a", "a", "b"], vec!["c", "c", "c"]]);
        let one_each = team_batches_of(vec![removal("a", "1"), removal("b", "1")], 1, usize::MAX);
        assert_eq!(one_each.len(), 2);
    }
}
