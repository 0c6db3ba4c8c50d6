//! Nested groups (`ENTRA_SYNC_MEMBERSHIP=transitive`): a team's members are its group's
//! transitive user members. Graph reports a change for the group whose direct members changed,
//! so a round maps every changed group to the assigned groups above it (through what the store
//! remembers of the nesting) and reads each of those whole again. A whole read is exact however
//! the tree changed: a group nested or taken out, a cycle (Graph's transitive read ends on it),
//! a user reached through two paths who loses one (still reached, still a member).

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use entity::GroupId;

use super::Syncer;
use crate::directory::EntraUser;
use crate::error::Result;
use crate::graph::model::ObjectKind;

/// Whose membership of a group makes a team member.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Membership {
    /// The group's direct members, as LiteLLM's sign-in sees them.
    #[default]
    Direct,
    /// The group's members and the members of the groups nested in it, at any depth.
    Transitive,
}

impl Syncer {
    /// The group's members as [`Membership`] counts them (enabled, not departed unless the read
    /// says they are back), read whole.
    pub(super) async fn members_of(
        &self,
        group: &GroupId,
        now: DateTime<Utc>,
    ) -> Result<Vec<EntraUser>> {
        match self.membership {
            Membership::Direct => Ok(self
                .graph
                .group_members(group, false)
                .await?
                .into_iter()
                .filter_map(|object| object.into_member_state())
                .filter(|state| self.admits(state))
                .map(|state| state.user)
                .collect()),
            Membership::Transitive => self.transitive_members(group, now).await,
        }
    }

    /// The group's transitive user members (enabled, not departed), read from Graph; the groups
    /// below it are remembered, so that their changes reach its team.
    async fn transitive_members(
        &self,
        group: &GroupId,
        now: DateTime<Utc>,
    ) -> Result<Vec<EntraUser>> {
        let objects = self.graph.group_members(group, true).await?;
        let mut nested = Vec::new();
        let mut users = Vec::new();
        for object in objects {
            match object.kind() {
                ObjectKind::Group => nested.extend(GroupId::parse(&object.id).ok()),
                ObjectKind::User => users.extend(object.into_member_state()),
                ObjectKind::Other => {}
            }
        }
        self.store
            .remember_nesting(group, &nested, self.options(now))
            .await?;
        Ok(users
            .into_iter()
            .filter(|state| self.admits(state))
            .map(|state| state.user)
            .collect())
    }

    /// The assigned groups a round's changed groups reach: each changed group that is assigned,
    /// and every assigned group a changed group is nested in.
    pub(super) async fn reached(
        &self,
        changed: &[GroupId],
        assigned: &HashMap<GroupId, Option<String>>,
    ) -> Result<BTreeSet<GroupId>> {
        let mut reached: BTreeSet<GroupId> = changed
            .iter()
            .filter(|group| assigned.contains_key(*group))
            .cloned()
            .collect();
        for above in self.store.assigned_above(changed).await?.into_values() {
            reached.extend(
                above
                    .into_iter()
                    .filter(|group| assigned.contains_key(group)),
            );
        }
        Ok(reached)
    }
}
