//! One groups-delta round: what changed in the assigned groups since the stored deltaLink.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use entity::{GroupId, UserId};

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::batch::{BatchWriter, WholeGroup, WholeGroups, read_all_in_parallel};
use super::tasks::task_failure;
use super::{Membership, Syncer, retrying};
use crate::directory::{EntraUser, UserState};
use crate::error::{Error, Result};
use crate::graph::DeltaStart;
use crate::graph::model::ObjectKind;
use crate::graph::{DeltaRound, GroupDelta};
use crate::store::{Cause, Change, Changes, Item, TeamSync};

/// Groups a resync reads and applies together: four filtered delta requests.
pub(super) const RESYNC_SLICE: usize = 200;

/// A slice of groups as a resync read them.
#[derive(Default)]
struct SliceRead {
    /// Groups Graph says are gone.
    removed: Vec<GroupId>,
    /// Groups read whole.
    whole: Vec<WholeGroup>,
    /// Groups whose members could not be read, with their current names.
    unreadable: Vec<(GroupId, Option<String>, Error)>,
}

/// A group's members as one read found them.
#[derive(Debug, Default)]
pub(super) struct Members {
    /// Those who may be the team's members (readable, enabled, not departed).
    pub joining: Vec<EntraUser>,
    /// Those the group lists whose user objects Graph could not read (replication lag): left
    /// exactly as they are, and read again soon.
    pub unreadable: Vec<UserId>,
    /// Members who may join, read earlier in the same comparison ([`UsersRead`]): not read
    /// again. Only a comparison reads groups so.
    pub read_before: Vec<UserId>,
}

/// The users a resync's comparison has read so far, and whether each may be a member: each is
/// read once however many groups list her (her details were copied the first time).
#[derive(Default)]
pub(super) struct UsersRead(std::sync::Mutex<HashMap<UserId, bool>>);

impl UsersRead {
    fn admitted(&self, user: &UserId) -> Option<bool> {
        self.lock().get(user).copied()
    }

    fn note(&self, user: &UserId, admitted: bool) {
        self.lock().insert(user.clone(), admitted);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, bool>> {
        // A panic while holding it leaves a map that is whole all the same.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What a round did.
#[derive(Debug, Default)]
pub struct RoundReport {
    /// Groups the delta named (assigned or not).
    pub groups_seen: usize,
    /// Assigned groups whose team changed.
    pub groups_applied: usize,
    /// A full resync ran (first round, or the delta token had expired).
    pub resynced: bool,
    pub changes: Changes,
}

impl Syncer {
    /// Runs one round under the replicas' shared lease: from the stored deltaLink (or, with
    /// none, or an expired one, a full resync of the assigned groups), applies each assigned
    /// group's changes, and stores the new deltaLink only after they are committed.
    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn delta_round(&self, now: DateTime<Utc>) -> Result<RoundReport> {
        self.exclusively(Cause::DeltaRound, now, |syncer| async move {
            syncer.round_locked(now).await
        })
        .await
    }

    /// A full resync of every assigned group, whatever the stored deltaLink (after a `missed`
    /// lifecycle event, or a subscription that was removed), under the same lease.
    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn resync_round(&self, now: DateTime<Utc>) -> Result<RoundReport> {
        self.exclusively(Cause::Resync, now, |syncer| async move {
            syncer.resync(now).await
        })
        .await
    }

    async fn round_locked(&self, now: DateTime<Utc>) -> Result<RoundReport> {
        let Some(link) = self.store.delta_link().await? else {
            return self.resync(now).await;
        };
        let round = match self
            .graph
            .groups_delta(DeltaStart::Link(link))
            .await
            .map_err(Error::from)
        {
            Ok(round) => round,
            Err(Error::DeltaExpired) => {
                tracing::warn!("the delta token expired: resyncing every assigned group");
                return self.resync(now).await;
            }
            Err(error) => return Err(error),
        };
        let assigned = self.store.assigned_groups().await?;
        let mut report = RoundReport {
            groups_seen: round.groups.len(),
            changes: self.tally(),
            ..RoundReport::default()
        };
        match self.membership {
            Membership::Direct => {
                self.apply_round(&round, &assigned, &mut report, now)
                    .await?
            }
            Membership::Transitive => {
                // Every assigned group a changed group reaches is read whole again.
                let changed: Vec<GroupId> = round.groups.iter().map(|(g, _)| g.clone()).collect();
                let reached: Vec<GroupId> = self
                    .reached(&changed, &assigned)
                    .await?
                    .into_iter()
                    .collect();
                report.groups_applied += self
                    .resync_groups(reached, now, &mut report.changes)
                    .await?;
            }
        }
        if self.owners_as_admins {
            let owners_changed: Vec<GroupId> = round
                .groups
                .iter()
                .filter(|(group, delta)| delta.owners_changed && assigned.contains_key(group))
                .map(|(group, _)| group.clone())
                .collect();
            self.sync_owners(&owners_changed, now, &mut report.changes)
                .await?;
        }
        // A role-holding group's members changed: their roles are worked out at the next poll.
        let changed: Vec<GroupId> = round.groups.iter().map(|(g, _)| g.clone()).collect();
        self.store
            .mark_roles_stale(Some(&changed), self.options(now))
            .await?;
        self.users_round(now, &mut report.changes).await?;
        report.changes.add(self.retry_failed(now).await?);
        // Stored once the round's removals are settled (see `Syncer::finish_unit`).
        self.defer_delta_link(&round.delta_link, now).await?;
        Ok(report)
    }

    /// A round's changes to the assigned groups' direct members, applied group by group.
    async fn apply_round(
        &self,
        round: &DeltaRound,
        assigned: &HashMap<GroupId, Option<String>>,
        report: &mut RoundReport,
        now: DateTime<Utc>,
    ) -> Result<()> {
        // New members' details, for every assigned group of the round in one go.
        let users = self
            .users_added(
                round
                    .groups
                    .iter()
                    .filter(|(group, _)| assigned.contains_key(group))
                    .map(|(_, delta)| delta),
                None,
            )
            .await?;

        for (group, delta) in &round.groups {
            if !assigned.contains_key(group) {
                continue; // not LiteLLM's
            }
            let outcome = match self.apply_delta(group, delta, &users, now).await {
                // Something about this group alone (its team deleted by hand, say): read it
                // whole and make its team match, which also makes a missing team again.
                Err(error) if !error.is_systemic() => {
                    tracing::info!(%group, %error, "repairing the group from its current state");
                    self.resync_group_by_id(group, now).await
                }
                other => other,
            };
            let changes = self
                .settle_item(Item::Group(group.clone()), outcome, now)
                .await?;
            if !changes.is_empty() {
                report.groups_applied += 1;
            }
            report.changes.add(changes);
        }
        Ok(())
    }

    /// One assigned group's changes from a delta round.
    async fn apply_delta(
        &self,
        group: &GroupId,
        delta: &GroupDelta,
        users: &HashMap<UserId, UserState>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Change>> {
        if delta.group_removed.is_some() {
            return self.retire_group(group, now).await;
        }
        let options = self.options(now);
        let mut changes = Vec::new();
        if let Some(name) = &delta.display_name {
            changes.extend(self.store.ensure_team(group, name, options).await?);
            self.remember_assigned(&[(group.clone(), Some(name.clone()))], now)
                .await?;
            if changes
                .iter()
                .any(|change| matches!(change, Change::TeamCreated { .. }))
            {
                // An assigned group's team was gone (deleted by hand): made again, it needs
                // every member, not only the ones this delta names.
                changes.extend(self.resync_group_by_id(group, now).await?);
                return Ok(changes);
            }
        }
        let members = self.joining(delta, users, None);
        if !members.joining.is_empty() {
            changes.extend(
                self.store
                    .add_members(group, &members.joining, options)
                    .await?,
            );
        }
        let leaving: Vec<UserId> = delta
            .removed
            .iter()
            .filter(|m| m.kind != ObjectKind::Group)
            .filter_map(|m| UserId::parse(&m.id).ok())
            .collect();
        // New members Graph cannot read yet join once it can: each is retried on its own. A
        // delta names only some members, so only their earlier failures are settled by it.
        let named: HashSet<UserId> = delta
            .added
            .iter()
            .filter(|m| m.kind == ObjectKind::User)
            .filter_map(|m| UserId::parse(&m.id).ok())
            .chain(leaving.iter().cloned())
            .collect();
        self.settle_members(group, &members.unreadable, Some(&named), now)
            .await?;
        if !leaving.is_empty() {
            changes.extend(self.store.remove_members(group, &leaving, options).await?);
        }
        Ok(changes)
    }

    /// The failed items whose next attempt is due: a group is read whole and its team made to
    /// match; a user is read again.
    pub(super) async fn retry_failed(&self, now: DateTime<Utc>) -> Result<Vec<Change>> {
        if self.dry_run {
            return Ok(Vec::new());
        }
        let mut changes = Vec::new();
        for item in self.store.due_items(now).await? {
            let outcome = match &item {
                Item::Group(group) => self.resync_group_by_id(group, now).await,
                Item::User(user) => match self.graph.user_state(user).await {
                    Ok(state) => self.apply_user(user, state.as_ref(), now).await,
                    Err(error) => Err(error.into()),
                },
                // The group read whole again settles its members, this one among them.
                Item::Member(group, _) => match self.resync_group_by_id(group, now).await {
                    Ok(made) => {
                        changes.extend(made);
                        continue;
                    }
                    Err(error) => Err(error),
                },
            };
            changes.extend(self.settle_item(item, outcome, now).await?);
        }
        Ok(changes)
    }

    /// One assigned group read whole and applied, as a resync does it.
    async fn resync_group_by_id(&self, group: &GroupId, now: DateTime<Utc>) -> Result<Vec<Change>> {
        let current = self.current_state(std::slice::from_ref(group)).await?;
        let Some(delta) = current.get(group) else {
            // Not in Graph's answer: the next poll settles whether it is still assigned.
            return Ok(Vec::new());
        };
        let direct = self
            .direct_members(std::iter::once((group, delta)), None)
            .await?
            .remove(group);
        let members = self.members_now(group, delta, direct, now).await?;
        let changes = self.resync_group(group, delta, &members, now).await?;
        if delta.group_removed.is_none()
            && let Some(name) = &delta.display_name
        {
            self.remember_assigned(&[(group.clone(), Some(name.clone()))], now)
                .await?;
        }
        self.settle_members(group, &members.unreadable, None, now)
            .await?;
        Ok(changes)
    }

    /// Every assigned group read in full: its current name and members through delta with
    /// `$filter=id eq ...` (50 groups a request), its users with getByIds, and its owners (20
    /// groups a request), a slice of groups at a
    /// time so that memory stays bounded however large the tenant. The new deltaLink is taken
    /// first, so that whatever changes meanwhile is in the next round (applying it twice is
    /// harmless).
    pub(super) async fn resync(&self, now: DateTime<Utc>) -> Result<RoundReport> {
        let latest = self.graph.groups_delta(DeltaStart::Latest).await?;
        if let Some(unit) = &self.unit {
            unit.note_resynced();
        }
        if self.membership == Membership::Direct {
            // Left from transitive membership: nothing reads it now.
            self.store.forget_nesting(self.options(now)).await?;
        }
        // Groups this unit retired (a reconciliation's poll) are forgotten at its end.
        let retired = self.retired_groups();
        let assigned: Vec<GroupId> = self
            .store
            .assigned_groups()
            .await?
            .into_keys()
            .filter(|group| !retired.contains(group))
            .collect();
        let mut changes = self.tally();
        // Compared with LiteLLM's rows first: only the teams that may differ are written.
        let groups_applied = self
            .compare_groups(assigned.clone(), now, &mut changes)
            .await?;
        // Owner changes made before the new deltaLink are in no round after it, and member
        // changes of role-holding groups may be among what it found.
        self.sync_owners(&assigned, now, &mut changes).await?;
        self.users_round(now, &mut changes).await?;
        self.store.mark_roles_stale(None, self.options(now)).await?;
        let report = RoundReport {
            resynced: true,
            groups_seen: assigned.len(),
            groups_applied,
            changes,
        };
        self.defer_delta_link(&latest.delta_link, now).await?;
        Ok(report)
    }

    /// Groups read whole and their teams made equal to them (renamed, retired when gone), a slice
    /// of [`RESYNC_SLICE`] groups read at a time: the next slice is read from Graph while the
    /// last one's batches are written ([`BatchWriter`]). Returns how many teams changed.
    pub(super) async fn resync_groups(
        &self,
        groups: Vec<GroupId>,
        now: DateTime<Utc>,
        changes: &mut Changes,
    ) -> Result<usize> {
        let writer = BatchWriter::new(self, now);
        self.read_whole(groups, now, changes, writer).await
    }

    /// Reads the groups whole, a slice of [`RESYNC_SLICE`] at a time, one slice read ahead:
    /// the teams of groups that are gone retired, groups that could not be read failed as
    /// items, and every group read whole handed to `whole` (written, or compared first).
    /// Returns how many teams changed.
    pub(super) async fn read_whole(
        &self,
        groups: Vec<GroupId>,
        now: DateTime<Utc>,
        changes: &mut Changes,
        mut whole: impl WholeGroups,
    ) -> Result<usize> {
        // One slice read ahead; a JoinSet, so that the reads stop when this returns early.
        let (sender, mut receiver) = mpsc::channel(1);
        let reader = self.clone();
        let to_read = groups.clone();
        let users_read = whole.users_read();
        let mut reading = JoinSet::new();
        reading.spawn(async move {
            for slice in to_read.chunks(RESYNC_SLICE) {
                let read = reader.read_slice(slice, users_read.as_deref(), now).await;
                let failed = read.is_err();
                if sender.send(read).await.is_err() || failed {
                    return;
                }
            }
        });
        let mut changed = 0;
        let mut slices_read = 0;
        while let Some(read) = receiver.recv().await {
            slices_read += 1;
            let read = read?;
            for group in read.removed {
                let outcome = self.retire_group(&group, now).await;
                let made = self.settle_item(Item::Group(group), outcome, now).await?;
                changed += usize::from(!made.is_empty());
                changes.add(made);
            }
            // Groups whose members could not be read keep their new names all the same.
            let mut renamed = Vec::new();
            for (group, display_name, error) in read.unreadable {
                changes.add(
                    self.settle_item(Item::Group(group.clone()), Err(error), now)
                        .await?,
                );
                if display_name.is_some() {
                    renamed.push((group, display_name));
                }
            }
            changed += whole.take(read.whole, renamed, changes).await?;
        }
        // A reader that panicked ended the slices early: the groups it did not send are never
        // taken as read, but fail as items (each read whole at its retry).
        if let Some(Err(failure)) = reading.join_next().await {
            let reason = task_failure(&failure);
            for group in groups.chunks(RESYNC_SLICE).skip(slices_read).flatten() {
                let outcome = Err(Error::ItemTaskFailed(reason.clone()));
                changes.add(
                    self.settle_item(Item::Group(group.clone()), outcome, now)
                        .await?,
                );
            }
        }
        changed += whole.finish(changes).await?;
        Ok(changed)
    }

    /// One slice of groups as Graph has them now: their names and members (through delta with
    /// `$filter`, their users with getByIds; with transitive membership each group's members
    /// read on their own), and which are gone.
    async fn read_slice(
        &self,
        groups: &[GroupId],
        users_read: Option<&UsersRead>,
        now: DateTime<Utc>,
    ) -> Result<SliceRead> {
        let mut current = self.current_state(groups).await?;
        let mut direct = self.direct_members(current.iter(), users_read).await?;
        let mut read = SliceRead::default();
        let mut unread = Vec::new();
        for group in groups {
            // Not returned at all: the next poll of assignments settles it.
            let Some(delta) = current.remove(group) else {
                continue;
            };
            if delta.group_removed.is_some() {
                read.removed.push(group.clone());
                continue;
            }
            match direct.remove(group) {
                Some(members) => read.whole.push(WholeGroup {
                    group: group.clone(),
                    display_name: delta.display_name,
                    members: members.joining,
                    unreadable: members.unreadable,
                    read_before: members.read_before,
                }),
                None => unread.push((group.clone(), delta.display_name)),
            }
        }
        let reader = self.clone();
        let members = read_all_in_parallel(unread, move |(group, _)| {
            let syncer = reader.clone();
            let group = group.clone();
            async move { syncer.members_of(&group, now).await }
        })
        .await;
        for ((group, display_name), members) in members {
            match members {
                Ok(members) => read.whole.push(WholeGroup {
                    group,
                    display_name,
                    members,
                    unreadable: Vec::new(),
                    read_before: Vec::new(),
                }),
                Err(error) => read.unreadable.push((group, display_name, error)),
            }
        }
        Ok(read)
    }

    /// With direct membership, each group's members from its current state (its users read
    /// with getByIds, for all the groups in one go); nothing with transitive membership, where
    /// each group is read on its own ([`Self::members_now`]).
    /// A comparison's `users_read` are not read again.
    async fn direct_members<'a>(
        &self,
        current: impl Iterator<Item = (&'a GroupId, &'a GroupDelta)>,
        users_read: Option<&UsersRead>,
    ) -> Result<HashMap<GroupId, Members>> {
        if self.membership == Membership::Transitive {
            return Ok(HashMap::new());
        }
        let current: Vec<(&GroupId, &GroupDelta)> = current.collect();
        let users = self
            .users_added(current.iter().map(|(_, delta)| *delta), users_read)
            .await?;
        Ok(current
            .into_iter()
            .map(|(group, delta)| (group.clone(), self.joining(delta, &users, users_read)))
            .collect())
    }

    /// A group's members now: its direct members already read, or, with transitive membership,
    /// its transitive members read from Graph (none for a group that is gone).
    async fn members_now(
        &self,
        group: &GroupId,
        delta: &GroupDelta,
        direct: Option<Members>,
        now: DateTime<Utc>,
    ) -> Result<Members> {
        match direct {
            Some(members) => Ok(members),
            None if delta.group_removed.is_some() => Ok(Members::default()),
            None => Ok(Members {
                joining: self.members_of(group, now).await?,
                ..Members::default()
            }),
        }
    }

    /// The groups' current names and members, through delta with `$filter=id eq ...`.
    async fn current_state(&self, groups: &[GroupId]) -> Result<HashMap<GroupId, GroupDelta>> {
        Ok(self
            .graph
            .groups_delta_for(groups)
            .await?
            .into_iter()
            .flat_map(|round| round.groups)
            .collect())
    }

    /// The users the deltas add (groups that still exist), read with getByIds in one go: each
    /// user Graph could read, enabled or not; none of a comparison's `users_read`.
    async fn users_added(
        &self,
        deltas: impl Iterator<Item = &GroupDelta>,
        users_read: Option<&UsersRead>,
    ) -> Result<HashMap<UserId, UserState>> {
        let ids: HashSet<UserId> = deltas
            .filter(|delta| delta.group_removed.is_none())
            .flat_map(|delta| delta.added.iter())
            .filter(|m| m.kind == ObjectKind::User)
            .filter_map(|m| UserId::parse(&m.id).ok())
            .filter(|id| users_read.is_none_or(|read| read.admitted(id).is_none()))
            .collect();
        let ids: Vec<UserId> = ids.into_iter().collect();
        Ok(self
            .graph
            .users_by_ids(&ids)
            .await?
            .into_iter()
            .map(|state| (state.user.id.clone(), state))
            .collect())
    }

    /// The members a delta adds: those who may join (enabled, and not departed unless this
    /// read says they are back, see [`Syncer::admits`]), and those Graph could not read
    /// (replication lag), who are neither added nor taken for leavers. A disabled account, or a
    /// user entra-sync holds as departed, is neither. A comparison notes in `users_read` whom
    /// it read, and takes those it read before as it found them then.
    fn joining(
        &self,
        delta: &GroupDelta,
        users: &HashMap<UserId, UserState>,
        users_read: Option<&UsersRead>,
    ) -> Members {
        let mut members = Members::default();
        for id in delta
            .added
            .iter()
            .filter(|m| m.kind == ObjectKind::User)
            .filter_map(|m| UserId::parse(&m.id).ok())
        {
            let Some(state) = users.get(&id) else {
                match users_read.and_then(|read| read.admitted(&id)) {
                    Some(true) => members.read_before.push(id),
                    Some(false) => {}
                    None if self.included(&id) => members.unreadable.push(id),
                    None => {}
                }
                continue;
            };
            let admitted = self.admits(state);
            if let Some(read) = users_read {
                read.note(&id, admitted);
            }
            if admitted {
                members.joining.push(state.user.clone());
            }
        }
        members
    }

    /// After a group was applied: each member it lists that Graph could not read is a failed
    /// item of its own (retried soon, never a removal), and those that failed before and are
    /// readable now (or no longer listed) are cleared. `named`: the members the read said
    /// anything about (a delta's); `None`: the group was read whole. A member the read did not
    /// name stays failed: it is no evidence that Graph can read her now.
    pub(super) async fn settle_members(
        &self,
        group: &GroupId,
        unreadable: &[UserId],
        named: Option<&HashSet<UserId>>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        for user in unreadable {
            let error = Error::MemberUnreadable {
                group: group.to_string(),
                user: user.to_string(),
            };
            self.settle_item(Item::Member(group.clone(), user.clone()), Err(error), now)
                .await?;
        }
        let recovered: Vec<Item> = self
            .failing
            .iter()
            .filter(|item| {
                matches!(item, Item::Member(failed, user)
                    if failed == group
                        && !unreadable.contains(user)
                        && named.is_none_or(|named| named.contains(user)))
            })
            .cloned()
            .collect();
        for item in recovered {
            self.settle_item(item, Ok(Vec::new()), now).await?;
        }
        Ok(())
    }

    /// One group of a resync: retired when Graph says it is gone, otherwise renamed to its
    /// current name and given exactly its current members.
    async fn resync_group(
        &self,
        group: &GroupId,
        delta: &GroupDelta,
        members: &Members,
        now: DateTime<Utc>,
    ) -> Result<Vec<Change>> {
        if delta.group_removed.is_some() {
            return self.retire_group(group, now).await;
        }
        let team = TeamSync {
            group,
            display_name: delta.display_name.as_deref(),
            members: &members.joining,
            unreadable: &members.unreadable,
        };
        let one = [team];
        match retrying(|| self.store.sync_teams(&one, self.options(now))).await {
            Ok(changes) => Ok(changes),
            // No team (the group has no name to create it with): the next poll settles it.
            Err(Error::TeamNotFound(_)) => Ok(Vec::new()),
            Err(error) => Err(error),
        }
    }
}
