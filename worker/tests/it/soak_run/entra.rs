//! What graph-sim holds, as LiteLLM should show it once entra-sync has caught up: the teams of
//! the assigned groups with their names and members, and each user's role; and the history of
//! who left which team, which the keys' expectations need.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::RangeInclusive;

use graph_sim::GraphSim;
use graph_sim::tenant::{PrincipalType, Tenant};
use uuid::Uuid;
use worker::roles::LiteLlmRole;
use worker::sync::Membership;

use crate::graph_common::{gid, uid};

/// The tenant's users and groups, by number (`uid(n)`, `gid(n)`). Small on purpose: at most
/// 40 x 8 = 320 memberships, so no unit of work can remove 500 and be held.
pub const USERS: RangeInclusive<u128> = 1..=40;
pub const GROUPS: RangeInclusive<u128> = 1..=8;

/// The number of one of the soak's users.
pub fn user_number(id: Uuid) -> Option<u128> {
    let n = id.as_u128().checked_sub(uid(0).as_u128())?;
    USERS.contains(&n).then_some(n)
}

/// The number of one of the soak's groups.
pub fn group_number(id: Uuid) -> Option<u128> {
    let n = id.as_u128().checked_sub(gid(0).as_u128())?;
    GROUPS.contains(&n).then_some(n)
}

/// What LiteLLM should show for graph-sim's tenant as it is now.
#[derive(Clone, Debug)]
pub struct Entra {
    /// Every group assigned to the app (with default access or a role): its name, and the
    /// users its team should have (enabled, direct or transitive members as configured).
    pub teams: BTreeMap<u128, (String, BTreeSet<u128>)>,
    pub enabled: BTreeSet<u128>,
    /// Each user's `user_role`, should they have a LiteLLM row: the most privileged valid role
    /// assigned to them or to a group they are a direct member of, while enabled; otherwise the
    /// default role (a role entra-sync set drops to it when its last Entra role goes).
    pub roles: BTreeMap<u128, &'static str>,
}

impl Entra {
    pub fn read(sim: &GraphSim, membership: Membership) -> Self {
        sim.read(|t| Self::of(t, membership))
    }

    fn of(t: &Tenant, membership: Membership) -> Self {
        let enabled: BTreeSet<u128> = USERS
            .filter(|n| t.users.get(&uid(*n)).is_some_and(|u| u.account_enabled))
            .collect();
        let users = |ids: Vec<Uuid>| -> BTreeSet<u128> {
            ids.into_iter()
                .filter_map(user_number)
                .filter(|n| enabled.contains(n))
                .collect()
        };
        let assigned: BTreeSet<Uuid> = t
            .app
            .assignments
            .iter()
            .filter(|a| a.principal_type == PrincipalType::Group)
            .map(|a| a.principal_id)
            .collect();
        let transitive = membership == Membership::Transitive;
        let teams = GROUPS
            .filter(|g| assigned.contains(&gid(*g)))
            .filter_map(|g| {
                let group = t.groups.get(&gid(g))?;
                let members = users(t.members_of(gid(g), transitive).unwrap_or_default());
                Some((g, (group.display_name.clone(), members)))
            })
            .collect();

        let values: HashMap<Uuid, &str> = t
            .app
            .app_roles
            .iter()
            .filter(|r| r.is_enabled)
            .map(|r| (r.id, r.value.as_str()))
            .collect();
        let mut held: BTreeMap<u128, Vec<&str>> = BTreeMap::new();
        for assignment in &t.app.assignments {
            let Some(value) = values.get(&assignment.app_role_id) else {
                continue;
            };
            // App roles stay direct, also where membership is transitive.
            let holders = match assignment.principal_type {
                PrincipalType::User => users(vec![assignment.principal_id]),
                PrincipalType::Group => users(
                    t.members_of(assignment.principal_id, false)
                        .unwrap_or_default(),
                ),
                PrincipalType::ServicePrincipal => BTreeSet::new(),
            };
            for n in holders {
                held.entry(n).or_default().push(value);
            }
        }
        let roles = USERS
            .map(|n| {
                let role = LiteLlmRole::highest(held.get(&n).into_iter().flatten().copied())
                    .unwrap_or(LiteLlmRole::DEFAULT_FOR_NEW_USER);
                (n, role.as_str())
            })
            .collect();
        Self {
            teams,
            enabled,
            roles,
        }
    }

    /// Whether user `user` should be a member of group `group`'s team.
    pub fn is_member(&self, user: u128, group: u128) -> bool {
        self.teams
            .get(&group)
            .is_some_and(|(_, members)| members.contains(&user))
    }

    /// Every (user, group) membership LiteLLM should have.
    pub fn memberships(&self) -> BTreeSet<(u128, u128)> {
        self.teams
            .iter()
            .flat_map(|(g, (_, members))| members.iter().map(|u| (*u, *g)))
            .collect()
    }
}

/// Who left which team in Entra since the soak began: a membership LiteLLM should have that,
/// after some change, it should no longer have (the user removed from the group, or from a group
/// nested in it, disabled, or the group unassigned), whether or not it came back.
#[derive(Debug, Default)]
pub struct History {
    now: BTreeSet<(u128, u128)>,
    pub left: BTreeSet<(u128, u128)>,
}

impl History {
    pub fn new(entra: &Entra) -> Self {
        Self {
            now: entra.memberships(),
            left: BTreeSet::new(),
        }
    }

    /// Takes in the tenant after one more change.
    pub fn update(&mut self, entra: &Entra) {
        let next = entra.memberships();
        self.left.extend(self.now.difference(&next).copied());
        self.now = next;
    }
}
