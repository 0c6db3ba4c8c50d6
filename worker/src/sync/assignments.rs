//! The app's assignments, polled: which groups have teams, and which users have which roles.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use entity::{GroupId, UserId};

use super::Syncer;
use crate::directory::EntraUser;
use crate::error::Result;
use crate::graph::model::{AppRoleAssignment, DEFAULT_ACCESS};
use crate::store::{Changes, Item, LiteLlmWriter};

/// What a poll did.
#[derive(Debug, Default)]
pub struct AssignmentReport {
    pub assigned_groups: usize,
    pub newly_assigned: usize,
    pub unassigned: usize,
    pub changes: Changes,
}

fn group_id(assignment: &AppRoleAssignment) -> Option<GroupId> {
    (assignment.principal_type == "Group")
        .then(|| GroupId::parse(&assignment.principal_id).ok())
        .flatten()
}

impl Syncer {
    /// Polls the app's assignments: new groups get their team and full membership, groups no
    /// longer assigned follow the policy, and every user's role follows their app roles. Under
    /// the sync lease, so that a poll never interleaves with another replica's round.
    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn poll_assignments(&self, now: DateTime<Utc>) -> Result<AssignmentReport> {
        self.exclusively(|syncer| async move { syncer.poll_locked(now).await })
            .await
    }

    /// [`Self::poll_assignments`], inside a unit of work that holds the lease.
    pub(super) async fn poll_locked(&self, now: DateTime<Utc>) -> Result<AssignmentReport> {
        let app = self.graph.service_principal().await?;
        let assignments = self.graph.app_role_assignments().await?;
        let mut report = AssignmentReport {
            changes: self.tally(),
            ..AssignmentReport::default()
        };

        let mut assigned: HashMap<GroupId, String> = HashMap::new();
        for assignment in &assignments {
            if let Some(group) = group_id(assignment) {
                let name = assignment
                    .principal_display_name
                    .clone()
                    .unwrap_or_default();
                assigned.insert(group, name);
            }
        }
        report.assigned_groups = assigned.len();
        let known = self.store.assigned_groups().await?;
        let new: Vec<(GroupId, String)> = assigned
            .iter()
            .filter(|(group, _)| !known.contains_key(*group))
            .map(|(group, name)| (group.clone(), name.clone()))
            .collect();
        report.newly_assigned = new.len();
        self.sync_new_groups(new, now, &mut report.changes).await?;
        for group in known.keys().filter(|g| !assigned.contains_key(*g)) {
            report.unassigned += 1;
            let outcome = self.retire_group(group, now).await;
            report.changes.add(
                self.settle_item(Item::Group(group.clone()), outcome, now)
                    .await?,
            );
        }

        // Owners last: the new groups' teams exist by now.
        let groups: Vec<GroupId> = assigned.keys().cloned().collect();
        self.sync_owners(&groups, now, &mut report.changes).await?;

        let role_values: HashMap<String, String> = app
            .app_roles
            .iter()
            .filter(|r| r.is_enabled)
            .filter_map(|r| Some((r.id.to_lowercase(), r.value.clone()?)))
            .collect();
        self.sync_roles(&assignments, &role_values, now, &mut report.changes)
            .await?;
        Ok(report)
    }

    /// New groups get their team and full membership, several at a time; each slice is
    /// recorded as assigned once synced, so a failure repeats at most one slice.
    async fn sync_new_groups(
        &self,
        groups: Vec<(GroupId, String)>,
        now: DateTime<Utc>,
        changes: &mut Changes,
    ) -> Result<()> {
        const SLICE: usize = 500;
        for slice in groups.chunks(SLICE) {
            // A group that fails on its own is recorded as assigned all the same, and its retry
            // makes its team (see `Syncer::retry_failed`).
            self.in_parallel(
                slice.to_vec(),
                |(group, _)| Item::Group(group.clone()),
                now,
                move |syncer, (group, name)| async move {
                    syncer.sync_group_fully(&group, Some(&name), now).await
                },
                changes,
            )
            .await?;
            let synced: Vec<(GroupId, Option<String>)> = slice
                .iter()
                .map(|(group, name)| (group.clone(), Some(name.clone())))
                .collect();
            self.remember_assigned(&synced, now).await?;
        }
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
    ) -> Result<()> {
        let options = self.options(now);
        let mut values: HashMap<UserId, Vec<String>> = HashMap::new();
        let mut known_users: HashMap<UserId, EntraUser> = HashMap::new();
        let mut unknown_members = false;
        for assignment in assignments {
            if assignment.app_role_id.eq_ignore_ascii_case(DEFAULT_ACCESS) {
                continue;
            }
            let Some(value) = role_values.get(&assignment.app_role_id.to_lowercase()) else {
                continue;
            };
            match assignment.principal_type.as_str() {
                "User" => {
                    if let Ok(user) = UserId::parse(&assignment.principal_id)
                        && self.included(&user)
                    {
                        values.entry(user).or_default().push(value.clone());
                    }
                }
                "Group" => {
                    let Ok(group) = GroupId::parse(&assignment.principal_id) else {
                        continue;
                    };
                    let members = match self.graph.group_members(&group, false).await {
                        Ok(members) => members,
                        Err(error) => {
                            unknown_members = true;
                            self.settle_item(Item::Group(group.clone()), Err(error), now)
                                .await?;
                            continue;
                        }
                    };
                    for user in members
                        .into_iter()
                        .filter_map(|o| o.into_enabled_user())
                        .filter(|user| self.included(&user.id))
                    {
                        values
                            .entry(user.id.clone())
                            .or_default()
                            .push(value.clone());
                        known_users.insert(user.id.clone(), user);
                    }
                }
                _ => {}
            }
        }
        // Users assigned directly may not be in any group yet: read them and create them.
        let unknown: Vec<UserId> = values
            .keys()
            .filter(|u| !known_users.contains_key(*u))
            .cloned()
            .collect();
        for user in self.graph.users_by_ids(&unknown).await? {
            known_users.insert(user.id.clone(), user);
        }
        // Disabled accounts are absent from what getByIds gives back: no role for them.
        let mut granted: HashSet<UserId> = HashSet::new();
        for (user_id, user_values) in &values {
            let Some(user) = known_users.get(user_id) else {
                continue; // gone from Entra
            };
            if crate::roles::LiteLlmRole::highest(user_values.iter().map(String::as_str)).is_none()
            {
                continue;
            }
            granted.insert(user_id.clone());
            let outcome = self.store.set_user_role(user, user_values, options).await;
            changes.add(
                self.settle_item(Item::User(user_id.clone()), outcome, now)
                    .await?,
            );
        }
        if unknown_members {
            tracing::warn!("a role-holding group could not be read: no role is revoked this time");
            return Ok(());
        }
        for holder in self.store.managed_role_holders().await? {
            if !granted.contains(&holder) {
                let outcome = self.store.revoke_role(&holder, options).await;
                changes.add(self.settle_item(Item::User(holder), outcome, now).await?);
            }
        }
        Ok(())
    }
}
