//! The app's assignments, polled: which groups have teams, and which users have which roles.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use entity::{GroupId, UserId};
use tokio::sync::mpsc;

use super::batch::{
    BATCH_GROUPS, BatchWriter, WholeGroup, WholeGroups, read_all_in_parallel, read_in_parallel,
};
use super::tasks::task_failure;
use super::{Syncer, USER_BATCH, retrying, whole_batch};
use crate::directory::EntraUser;
use crate::error::{Error, Result};
use crate::graph::DeltaStart;
use crate::graph::model::{AppRoleAssignment, DEFAULT_ACCESS, DirectoryObject, ServicePrincipal};
use crate::store::{Cause, Changes, Item, PollState};

/// What a poll did.
#[derive(Debug, Default)]
pub struct AssignmentReport {
    pub assigned_groups: usize,
    pub newly_assigned: usize,
    pub unassigned: usize,
    pub changes: Changes,
}

/// The group an assignment assigns, if it assigns one.
pub(super) fn group_id(assignment: &AppRoleAssignment) -> Option<GroupId> {
    (assignment.principal_type == "Group")
        .then(|| GroupId::parse(&assignment.principal_id).ok())
        .flatten()
}

/// Each user's role values (the app roles' `value`s assigned to them, directly or through a group).
type RoleValues = HashMap<UserId, Vec<String>>;

/// The role values the app's assignments give: each user assigned directly, with their values
/// (departed or not: what the read says decides), and each role-holding group with its value.
/// The default access role and roles the app does not define (or has disabled) give none.
fn assigned_values(
    assignments: &[AppRoleAssignment],
    role_values: &HashMap<String, String>,
) -> (RoleValues, Vec<(GroupId, String)>) {
    let mut values = RoleValues::new();
    let mut role_groups: Vec<(GroupId, String)> = Vec::new();
    for assignment in assignments {
        if assignment.app_role_id.eq_ignore_ascii_case(DEFAULT_ACCESS) {
            continue;
        }
        let Some(value) = role_values.get(&assignment.app_role_id.to_lowercase()) else {
            continue;
        };
        match assignment.principal_type.as_str() {
            "User" => {
                if let Ok(user) = UserId::parse(&assignment.principal_id) {
                    values.entry(user).or_default().push(value.clone());
                }
            }
            "Group" => {
                if let Ok(group) = GroupId::parse(&assignment.principal_id) {
                    role_groups.push((group, value.clone()));
                }
            }
            _ => {}
        }
    }
    (values, role_groups)
}

/// How much a poll does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PollScope {
    /// The periodic poll: new and unassigned groups; users' roles only when the assignments or
    /// app roles changed, or the roles are stale (see [`crate::store::PollState`]).
    WhatChanged,
    /// A reconciliation: every user's role as well.
    Everything,
}

impl Syncer {
    /// Polls the app's assignments: new groups get their team and full membership, groups no
    /// longer assigned follow the policy, and users' roles follow their app roles when anything
    /// they depend on changed. An unchanged poll costs two Graph requests and three small reads of the
    /// database. Under the sync lease, so that a poll never interleaves with another replica's
    /// round.
    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn poll_assignments(&self, now: DateTime<Utc>) -> Result<AssignmentReport> {
        self.exclusively(Cause::AssignmentPoll, now, |syncer| async move {
            syncer.poll_locked(now, PollScope::WhatChanged).await
        })
        .await
    }

    /// [`Self::poll_assignments`], inside a unit of work that holds the lease.
    pub(super) async fn poll_locked(
        &self,
        now: DateTime<Utc>,
        scope: PollScope,
    ) -> Result<AssignmentReport> {
        let app = self.graph.service_principal().await?;
        let assignments = self.graph.app_role_assignments().await?;
        let role_values = enabled_role_values(&app);
        let assigned = assigned_groups(&assignments);
        let mut report = AssignmentReport {
            changes: self.tally(),
            assigned_groups: assigned.len(),
            ..AssignmentReport::default()
        };
        // With no deltaLink yet (the first start), the delta's starting point is taken before
        // the full read, so that the first round carries only what changed meanwhile instead
        // of reading every group again.
        let starting_point = match self.store.delta_link().await? {
            None if !self.dry_run => Some(self.graph.groups_delta(DeltaStart::Latest).await?),
            _ => None,
        };
        let known = self.store.assigned_groups().await?;
        let new_groups = self
            .follow_assignments(&assigned, &known, now, &mut report)
            .await?;
        if starting_point.is_some() {
            // Groups recorded by an earlier poll that stopped before a deltaLink was stored:
            // read whole as well, so that the link covers every assigned group.
            let earlier: Vec<GroupId> = known
                .keys()
                .filter(|group| assigned.contains_key(*group))
                .cloned()
                .collect();
            self.resync_groups(earlier, now, &mut report.changes)
                .await?;
        }
        // The new groups' owners, now that their teams exist. The rounds' delta carries later
        // owner changes (owners@delta), and a resync (a reconciliation's among them) reads
        // every group's owners again.
        self.sync_owners(&new_groups, now, &mut report.changes)
            .await?;
        if let Some(start) = starting_point {
            self.defer_delta_link(&start.delta_link, now).await?;
        }
        self.roles_if_changed(&assignments, &role_values, scope, now, &mut report.changes)
            .await?;
        Ok(report)
    }

    /// Newly assigned groups get their team and members; groups no longer assigned follow the
    /// unassigned policy. Returns the new groups.
    async fn follow_assignments(
        &self,
        assigned: &HashMap<GroupId, String>,
        known: &HashMap<GroupId, Option<String>>,
        now: DateTime<Utc>,
        report: &mut AssignmentReport,
    ) -> Result<Vec<GroupId>> {
        let new: Vec<(GroupId, String)> = assigned
            .iter()
            .filter(|(group, _)| !known.contains_key(*group))
            .map(|(group, name)| (group.clone(), name.clone()))
            .collect();
        report.newly_assigned = new.len();
        let new_groups: Vec<GroupId> = new.iter().map(|(group, _)| group.clone()).collect();
        self.sync_new_groups(new, now, &mut report.changes).await?;
        for group in known.keys().filter(|g| !assigned.contains_key(*g)) {
            report.unassigned += 1;
            let outcome = self.retire_group(group, now).await;
            report.changes.add(
                self.settle_item(Item::Group(group.clone()), outcome, now)
                    .await?,
            );
        }
        Ok(new_groups)
    }

    /// Works out every user's role again, unless `scope` allows skipping it and neither the
    /// assignments nor the app roles changed since the last poll that applied them.
    async fn roles_if_changed(
        &self,
        assignments: &[AppRoleAssignment],
        role_values: &HashMap<String, String>,
        scope: PollScope,
        now: DateTime<Utc>,
        changes: &mut Changes,
    ) -> Result<()> {
        let fingerprint = fingerprint(assignments, role_values);
        let unchanged = self.store.poll_state(&fingerprint).await? == PollState::Current;
        if scope == PollScope::WhatChanged && unchanged {
            return Ok(());
        }
        if self
            .sync_roles(assignments, role_values, now, changes)
            .await?
        {
            self.store
                .save_poll_state(
                    &fingerprint,
                    &role_groups(assignments, role_values),
                    self.options(now),
                )
                .await?;
        }
        Ok(())
    }

    /// New groups get their team and full membership: read several at a time while the groups
    /// read are written a batch at a time (see [`Self::write_groups`]), by [`BatchWriter`]
    /// (PostgreSQL works on one batch while the next is planned). Each batch's groups are
    /// recorded as assigned once written, so a failure repeats at most the batches in flight; a
    /// group that fails on its own is recorded as assigned all the same, and its retry makes its
    /// team (see `Syncer::retry_failed`).
    async fn sync_new_groups(
        &self,
        groups: Vec<(GroupId, String)>,
        now: DateTime<Utc>,
        changes: &mut Changes,
    ) -> Result<()> {
        // A batch's worth read ahead, so that Graph answers while PostgreSQL writes.
        let (sender, mut receiver) = mpsc::channel(BATCH_GROUPS);
        let reader = self.clone();
        let mut unread: HashMap<GroupId, String> = groups.iter().cloned().collect();
        // JoinSets, so that the reads and writes stop when this returns early.
        let mut reading = tokio::task::JoinSet::new();
        reading.spawn(read_in_parallel(
            groups,
            move |(group, _)| {
                let syncer = reader.clone();
                let group = group.clone();
                async move { syncer.members_of(&group, now).await }
            },
            sender,
        ));
        let mut writer = BatchWriter::new(self, now);
        let mut failed = Vec::new();
        while let Some(((group, name), members)) = receiver.recv().await {
            unread.remove(&group);
            match members {
                Ok(members) => {
                    let whole = WholeGroup {
                        group,
                        display_name: Some(name),
                        members,
                        unreadable: Vec::new(),
                        read_before: Vec::new(),
                    };
                    let failed = std::mem::take(&mut failed);
                    writer.take(vec![whole], failed, changes).await?;
                }
                Err(error) => {
                    self.settle_item(Item::Group(group.clone()), Err(error), now)
                        .await?;
                    failed.push((group, Some(name)));
                }
            }
        }
        // A reader that panicked ended the channel early: the groups it did not send are never
        // taken as read, but fail as items, recorded as assigned like any group that failed.
        if let Some(Err(failure)) = reading.join_next().await {
            let reason = task_failure(&failure);
            for (group, name) in unread {
                let outcome = Err(Error::ItemTaskFailed(reason.clone()));
                self.settle_item(Item::Group(group.clone()), outcome, now)
                    .await?;
                failed.push((group, Some(name)));
            }
        }
        writer.take(Vec::new(), failed, changes).await?;
        writer.finish(changes).await?;
        Ok(())
    }

    /// A user's roles are those assigned to the user directly or to a group the user is a direct
    /// member of; the store keeps the most privileged valid one. Users entra-sync gave a role
    /// earlier and who have no valid one left lose it, unless a role-holding group could not be
    /// read: then nobody's role is revoked this time, since its members are unknown. Disabled
    /// and deleted users hold no role.
    async fn sync_roles(
        &self,
        assignments: &[AppRoleAssignment],
        role_values: &HashMap<String, String>,
        now: DateTime<Utc>,
        changes: &mut Changes,
    ) -> Result<bool> {
        let (mut values, role_groups) = assigned_values(assignments, role_values);
        let mut known_users: HashMap<UserId, EntraUser> = HashMap::new();
        let members_known = self
            .add_role_group_members(role_groups, &mut values, &mut known_users, now)
            .await?;
        let unreadable = self.read_assigned_users(&values, &mut known_users).await?;
        // Whether every role was applied: otherwise the next poll works them out again.
        let mut applied = unreadable.is_empty();
        // Disabled accounts are absent from what getByIds gives back: no role for them.
        let granting: Vec<(EntraUser, Vec<String>)> = values
            .into_iter()
            .filter(|(_, user_values)| {
                crate::roles::LiteLlmRole::highest(user_values.iter().map(String::as_str)).is_some()
            })
            .filter_map(|(user_id, user_values)| Some((known_users.remove(&user_id)?, user_values)))
            .collect();
        applied &= self.grant_roles(&granting, now, changes).await?;
        if !members_known {
            tracing::warn!("a role-holding group could not be read: no role is revoked this time");
            return Ok(false);
        }
        let granted: HashSet<UserId> = granting.iter().map(|(user, _)| user.id.clone()).collect();
        let revoking: Vec<UserId> = self
            .store
            .managed_role_holders()
            .await?
            .into_iter()
            .filter(|holder| !granted.contains(holder) && !unreadable.contains(holder))
            .collect();
        applied &= self.revoke_roles_of(&revoking, now, changes).await?;
        Ok(applied)
    }

    /// Adds the members of each role-holding group to `values` (their role values) and
    /// `known_users`; returns whether every such group could be read (if not, its members are
    /// unknown, and nobody's role may be revoked).
    async fn add_role_group_members(
        &self,
        role_groups: Vec<(GroupId, String)>,
        values: &mut RoleValues,
        known_users: &mut HashMap<UserId, EntraUser>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let mut all_read = true;
        for ((group, value), members) in self.read_role_groups(role_groups).await {
            let members = match members {
                Ok(members) => members,
                Err(error) => {
                    all_read = false;
                    self.settle_item(Item::Group(group), Err(error), now)
                        .await?;
                    continue;
                }
            };
            for user in members
                .into_iter()
                .filter_map(|o| o.into_member_state())
                .filter(|state| self.admits(state))
                .map(|state| state.user)
            {
                values
                    .entry(user.id.clone())
                    .or_default()
                    .push(value.clone());
                known_users.insert(user.id.clone(), user);
            }
        }
        Ok(all_read)
    }

    /// Users assigned directly may not be in any group yet: reads them (a thousand to a request)
    /// into `known_users`. Returns those Graph could not read yet (replication lag), whose roles
    /// stay as they are until the next poll; departed users Graph could not read are not among
    /// them (their roles go, as before).
    async fn read_assigned_users(
        &self,
        values: &RoleValues,
        known_users: &mut HashMap<UserId, EntraUser>,
    ) -> Result<HashSet<UserId>> {
        let unknown: Vec<UserId> = values
            .keys()
            .filter(|u| !known_users.contains_key(*u))
            .cloned()
            .collect();
        let mut unreadable: HashSet<UserId> = unknown.iter().cloned().collect();
        for state in self.graph.users_by_ids(&unknown).await? {
            unreadable.remove(&state.user.id);
            if self.admits(&state) {
                known_users.insert(state.user.id.clone(), state.user);
            }
        }
        unreadable.retain(|user| self.included(user));
        if !unreadable.is_empty() {
            tracing::info!(
                users = unreadable.len(),
                "users assigned a role could not be read yet; their roles are left as they are"
            );
        }
        Ok(unreadable)
    }

    /// Gives each user the most privileged valid role of their values, a thousand users to a
    /// transaction; a batch that fails is applied user by user. Returns whether every user's
    /// role was applied.
    async fn grant_roles<'g>(
        &self,
        granting: &'g [(EntraUser, Vec<String>)],
        now: DateTime<Utc>,
        changes: &mut Changes,
    ) -> Result<bool> {
        let options = self.options(now);
        let mut applied = true;
        for batch in granting.chunks(USER_BATCH) {
            let outcome = retrying(|| self.store.set_user_roles(batch, options)).await;
            if let Some(made) = whole_batch(outcome, batch.len())? {
                changes.add(made);
                continue;
            }
            let grant = |granted: &'g (EntraUser, Vec<String>)| async move {
                let (user, user_values) = granted;
                Ok(self.store.set_user_role(user, user_values, options).await?)
            };
            let user_id = |(user, _): &(EntraUser, Vec<String>)| user.id.clone();
            applied &= self.each_alone(batch, user_id, grant, now, changes).await?;
        }
        Ok(applied)
    }

    /// Revokes the roles entra-sync set of these users, as [`Self::grant_roles`] grants them.
    async fn revoke_roles_of(
        &self,
        revoking: &[UserId],
        now: DateTime<Utc>,
        changes: &mut Changes,
    ) -> Result<bool> {
        let options = self.options(now);
        let mut applied = true;
        for batch in revoking.chunks(USER_BATCH) {
            let outcome = retrying(|| self.store.revoke_roles(batch, options)).await;
            if let Some(made) = whole_batch(outcome, batch.len())? {
                changes.add(made);
                continue;
            }
            let revoke = |holder| async move { Ok(self.store.revoke_role(holder, options).await?) };
            applied &= self
                .each_alone(batch, UserId::clone, revoke, now, changes)
                .await?;
        }
        Ok(applied)
    }

    /// The members of each role-holding group, read several groups at a time: every group has
    /// its outcome, a read that panicked an error of that group's ([`Error::ItemTaskFailed`]),
    /// so that its members are unknown (nobody's role is revoked), never none.
    async fn read_role_groups(
        &self,
        groups: Vec<(GroupId, String)>,
    ) -> Vec<((GroupId, String), Result<Vec<DirectoryObject>>)> {
        let graph = self.graph.clone();
        read_all_in_parallel(groups, move |(group, _)| {
            let graph = graph.clone();
            let group = group.clone();
            async move { Ok(graph.group_members(&group, false).await?) }
        })
        .await
    }
}

/// The assignments and app roles a poll applies, as a short fingerprint: equal fingerprints,
/// the same roles for everyone (group members aside, which rounds watch).
/// The app's enabled roles: id (lower case) -> value.
fn enabled_role_values(app: &ServicePrincipal) -> HashMap<String, String> {
    app.app_roles
        .iter()
        .filter(|r| r.is_enabled)
        .filter_map(|r| Some((r.id.to_lowercase(), r.value.clone()?)))
        .collect()
}

/// The groups assigned to the app, with the names the assignments give them.
fn assigned_groups(assignments: &[AppRoleAssignment]) -> HashMap<GroupId, String> {
    assignments
        .iter()
        .filter_map(|assignment| {
            let name = assignment.principal_display_name.clone();
            Some((group_id(assignment)?, name.unwrap_or_default()))
        })
        .collect()
}

fn fingerprint(assignments: &[AppRoleAssignment], role_values: &HashMap<String, String>) -> String {
    let mut lines: Vec<String> = assignments
        .iter()
        .map(|a| {
            format!(
                "assignment {} {} {}",
                a.principal_type,
                a.principal_id.to_lowercase(),
                a.app_role_id.to_lowercase()
            )
        })
        .chain(
            role_values
                .iter()
                .map(|(id, value)| format!("role {id} {value}")),
        )
        .collect();
    lines.sort_unstable();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, lines.join("\n").as_bytes());
    digest
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The groups assigned a role (not only default access) that is enabled.
fn role_groups(
    assignments: &[AppRoleAssignment],
    role_values: &HashMap<String, String>,
) -> Vec<GroupId> {
    assignments
        .iter()
        .filter(|a| role_values.contains_key(&a.app_role_id.to_lowercase()))
        .filter_map(group_id)
        .collect()
}
