//! The soak's random steps: Entra changes, faults and keys, each drawn from the seed's random
//! number generator, which nothing else draws from, so that a seed replays the same steps.
//! What a step picks (a member to remove, a disabled user to enable) comes from graph-sim's
//! tenant, which only these steps change; whether a key could be made depends on LiteLLM and
//! changes no later draw.

use std::time::Duration;

use graph_sim::Fault;
use graph_sim::tenant::{AppRole, Notice, PrincipalType, Tenant, User};
use uuid::Uuid;

use super::Run;
use super::entra::{Entra, GROUPS, USERS, group_number, user_number};
use crate::graph_common::{PROXY_ADMIN_ROLE, gid, role_id, uid};

/// The app's roles: three LiteLLM roles and one value LiteLLM does not know (no role).
const ROLES: [u128; 4] = [PROXY_ADMIN_ROLE, 2, 3, 4];
/// Graph paths the faults hit (a fault applies to the first requests whose path contains it).
const PATHS: [&str; 6] = [
    "/groups/delta",
    "/directoryObjects/getByIds",
    "/members",
    "/transitiveMembers",
    "/appRoleAssignedTo",
    "/users/",
];
/// The mean pause between steps.
const MEAN_PAUSE_MILLIS: u64 = 100;
/// At most this many keys: with 320 memberships, no unit can delete 500.
const MAX_KEYS: usize = 300;
/// At most this many users disabled at once, so that a long run (where enabling may be left
/// out) keeps users to change.
const MAX_DISABLED: usize = 10;

#[derive(Clone, Copy, Debug)]
enum Step {
    AddMember,
    RemoveMember,
    Disable,
    Enable,
    Rename,
    Assign,
    Unassign,
    GrantUserRole,
    RevokeUserRoles,
    GrantGroupRole,
    Nest,
    Unnest,
    TeamKey,
    PersonalKey,
    Throttle,
    Unavailable,
    Lag,
    LaggingMember,
    ExpireDelta,
    Delivery,
    Kill,
    KillMidRound,
}

/// How often each step comes, relative to the others.
const WEIGHTS: [(Step, u32); 22] = [
    (Step::AddMember, 16),
    (Step::RemoveMember, 12),
    (Step::Disable, 5),
    (Step::Enable, 5),
    (Step::Rename, 4),
    (Step::Assign, 4),
    (Step::Unassign, 3),
    (Step::GrantUserRole, 4),
    (Step::RevokeUserRoles, 3),
    (Step::GrantGroupRole, 3),
    (Step::Nest, 4),
    (Step::Unnest, 3),
    (Step::TeamKey, 10),
    (Step::PersonalKey, 3),
    (Step::Throttle, 3),
    (Step::Unavailable, 2),
    (Step::Lag, 3),
    (Step::LaggingMember, 3),
    (Step::ExpireDelta, 2),
    (Step::Delivery, 4),
    (Step::Kill, 2),
    (Step::KillMidRound, 1),
];

fn pick<T: Copy>(rng: &mut fastrand::Rng, items: &[T]) -> Option<T> {
    (!items.is_empty()).then(|| items[rng.usize(..items.len())])
}

/// The tenant the soak starts from: graph_common's (users 1-10, groups 1 and 2, group 1 and
/// user 9 assigned) with users 11-40, groups 3-8 of random members, two more app roles
/// (`proxy_admin_viewer` and `Reader`, which is no LiteLLM role), and random assignments.
pub fn populate(sim: &graph_sim::GraphSim, rng: &mut fastrand::Rng) {
    sim.change(|t| {
        for n in 11..=*USERS.end() {
            t.upsert_user(User {
                id: uid(n),
                display_name: format!("User {n}"),
                user_principal_name: format!("user{n}@contoso.example"),
                mail: Some(format!("user{n}.mail@contoso.example")),
                account_enabled: true,
            });
        }
        t.app.app_roles.extend([
            AppRole {
                id: role_id(3),
                value: "proxy_admin_viewer".into(),
                display_name: "Proxy Admin Viewer".into(),
                is_enabled: true,
            },
            AppRole {
                id: role_id(4),
                value: "Reader".into(),
                display_name: "Reader".into(),
                is_enabled: true,
            },
        ]);
        for g in 3..=*GROUPS.end() {
            t.upsert_group(gid(g), &format!("Group {g}"), None);
            for _ in 0..rng.usize(3..=8) {
                t.add_member(gid(g), uid(rng.u128(USERS)));
            }
            match rng.u32(0..10) {
                0..=3 => {
                    t.assign(gid(g), Uuid::nil());
                }
                4 | 5 => {
                    t.assign(gid(g), role_id(ROLES[rng.usize(..ROLES.len())]));
                }
                _ => {}
            }
        }
        t.assign(uid(rng.u128(USERS)), role_id(3));
        ((), Vec::new())
    });
}

/// Groups assigned to the app, and groups not.
fn assigned_groups(t: &Tenant) -> (Vec<u128>, Vec<u128>) {
    let assigned: Vec<u128> = t
        .app
        .assignments
        .iter()
        .filter(|a| a.principal_type == PrincipalType::Group)
        .filter_map(|a| group_number(a.principal_id))
        .collect();
    GROUPS.partition(|g| assigned.contains(g))
}

/// A group's direct members: its users, and the groups nested in it.
fn direct_members(t: &Tenant, group: u128) -> (Vec<u128>, Vec<u128>) {
    let members = t
        .groups
        .get(&gid(group))
        .map(|g| g.members.iter().copied().collect::<Vec<_>>())
        .unwrap_or_default();
    (
        members.iter().copied().filter_map(user_number).collect(),
        members.iter().copied().filter_map(group_number).collect(),
    )
}

fn users_enabled(t: &Tenant, enabled: bool) -> Vec<u128> {
    USERS
        .filter(|n| {
            t.users
                .get(&uid(*n))
                .is_some_and(|u| u.account_enabled == enabled)
        })
        .collect()
}

impl Run {
    /// One random step, then a random pause.
    pub(super) async fn step(&mut self, number: usize) {
        if let Some(steps) = self.restart_in {
            if steps == 0 {
                self.workers.start_process(&mut self.world);
                self.restart_in = None;
                self.note(number, "the worker process starts again".into());
            } else {
                self.restart_in = Some(steps - 1);
            }
        }
        let total: u32 = WEIGHTS.iter().map(|(_, w)| w).sum();
        let mut draw = self.rng.u32(..total);
        let step = WEIGHTS
            .iter()
            .find(|(_, w)| {
                let hit = draw < *w;
                draw = draw.saturating_sub(*w);
                hit
            })
            .map_or(Step::AddMember, |(step, _)| *step);
        let what = self.take(step).await;
        self.note(number, what);
        let pause = self.rng.u64(..=2 * MEAN_PAUSE_MILLIS);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }

    fn tenant<R>(&self, f: impl FnOnce(&Tenant) -> R) -> R {
        self.world.sim.read(f)
    }

    /// An Entra change: its notifications go out as graph-sim's delivery is set now.
    fn change(&mut self, f: impl FnOnce(&mut Tenant) -> Vec<Notice>) {
        self.world.sim.apply(f);
        self.counts.changes += 1;
        let entra = Entra::read(&self.world.sim, self.setup.membership);
        self.history.update(&entra);
    }

    fn fault(&mut self, fault: Fault) {
        self.world.sim.add_fault(fault);
        self.counts.faults += 1;
    }

    async fn take(&mut self, step: Step) -> String {
        let group = self.rng.u128(GROUPS);
        match step {
            Step::AddMember => {
                let outside: Vec<u128> = self.tenant(|t| {
                    let (users, _) = direct_members(t, group);
                    USERS.filter(|n| !users.contains(n)).collect()
                });
                let Some(user) = pick(&mut self.rng, &outside) else {
                    return format!("group {group} has every user already");
                };
                self.change(|t| t.add_member(gid(group), uid(user)));
                format!("user {user} joins group {group}")
            }
            Step::RemoveMember => {
                let (users, _) = self.tenant(|t| direct_members(t, group));
                let Some(user) = pick(&mut self.rng, &users) else {
                    return format!("group {group} has no user to remove");
                };
                self.change(|t| t.remove_member(gid(group), uid(user)));
                format!("user {user} leaves group {group}")
            }
            Step::Disable => {
                let enabled = self.tenant(|t| users_enabled(t, true));
                if USERS.count() - enabled.len() >= MAX_DISABLED {
                    return format!("{MAX_DISABLED} users are disabled already");
                }
                let Some(user) = pick(&mut self.rng, &enabled) else {
                    return "no user to disable".into();
                };
                self.set_enabled(user, false)
            }
            Step::Enable => {
                let disabled = self.tenant(|t| users_enabled(t, false));
                let Some(user) = pick(&mut self.rng, &disabled) else {
                    return "no user to enable".into();
                };
                self.set_enabled(user, true)
            }
            Step::Rename => {
                let name = format!("Group {group} ({})", self.rng.u32(1000..10_000));
                self.change(|t| {
                    let description = t
                        .groups
                        .get(&gid(group))
                        .and_then(|g| g.description.clone());
                    t.upsert_group(gid(group), &name, description.as_deref())
                });
                format!("group {group} renamed {name:?}")
            }
            Step::Assign => {
                let (_, unassigned) = self.tenant(assigned_groups);
                let Some(group) = pick(&mut self.rng, &unassigned) else {
                    return "every group is assigned".into();
                };
                self.change(|t| {
                    t.assign(gid(group), Uuid::nil());
                    Vec::new()
                });
                format!("group {group} assigned (default access)")
            }
            Step::Unassign => {
                let (assigned, _) = self.tenant(assigned_groups);
                let Some(group) = pick(&mut self.rng, &assigned) else {
                    return "no group is assigned".into();
                };
                self.change(|t| {
                    t.unassign(gid(group));
                    Vec::new()
                });
                format!("group {group} unassigned")
            }
            Step::GrantUserRole => {
                let user = self.rng.u128(USERS);
                let role = ROLES[self.rng.usize(..ROLES.len())];
                self.change(|t| {
                    t.assign(uid(user), role_id(role));
                    Vec::new()
                });
                format!("user {user} assigned role {}", role_name(role))
            }
            Step::RevokeUserRoles => {
                let holders: Vec<u128> = self.tenant(|t| {
                    let mut holders: Vec<u128> = t
                        .app
                        .assignments
                        .iter()
                        .filter(|a| a.principal_type == PrincipalType::User)
                        .filter_map(|a| user_number(a.principal_id))
                        .collect();
                    holders.sort_unstable();
                    holders.dedup();
                    holders
                });
                let Some(user) = pick(&mut self.rng, &holders) else {
                    return "no user holds a role".into();
                };
                self.change(|t| {
                    t.unassign(uid(user));
                    Vec::new()
                });
                format!("user {user}'s roles unassigned")
            }
            Step::GrantGroupRole => {
                let role = ROLES[self.rng.usize(..ROLES.len())];
                self.change(|t| {
                    t.assign(gid(group), role_id(role));
                    Vec::new()
                });
                format!("group {group} assigned role {}", role_name(role))
            }
            Step::Nest => {
                let (_, nested) = self.tenant(|t| direct_members(t, group));
                let candidates: Vec<u128> = GROUPS
                    .filter(|g| *g != group && !nested.contains(g))
                    .collect();
                let Some(child) = pick(&mut self.rng, &candidates) else {
                    return format!("group {group} holds every group already");
                };
                self.change(|t| t.add_member(gid(group), gid(child)));
                format!("group {child} nested in group {group}")
            }
            Step::Unnest => {
                let (_, nested) = self.tenant(|t| direct_members(t, group));
                let Some(child) = pick(&mut self.rng, &nested) else {
                    return format!("group {group} holds no group");
                };
                self.change(|t| t.remove_member(gid(group), gid(child)));
                format!("group {child} taken out of group {group}")
            }
            Step::TeamKey => {
                let entra = Entra::read(&self.world.sim, self.setup.membership);
                let members: Vec<u128> = entra
                    .teams
                    .get(&group)
                    .map(|(_, m)| m.iter().copied().collect())
                    .unwrap_or_default();
                let Some(user) = pick(&mut self.rng, &members) else {
                    return format!("group {group}'s team should have no member for a key");
                };
                let token = self.next_token();
                if self.keys.made.len() >= MAX_KEYS {
                    return format!("no key for user {user} in group {group}: enough keys");
                }
                let db = self.world.db.conn().clone();
                if self
                    .keys
                    .make_team_key(&db, token.clone(), user, group)
                    .await
                {
                    format!("key {token} made for user {user} in group {group}'s team")
                } else {
                    format!("no key for user {user} in group {group}: not a member in LiteLLM yet")
                }
            }
            Step::PersonalKey => {
                let enabled = self.tenant(|t| users_enabled(t, true));
                let Some(user) = pick(&mut self.rng, &enabled) else {
                    return "no enabled user for a key".into();
                };
                let token = self.next_token();
                if self.keys.made.len() >= MAX_KEYS {
                    return format!("no personal key for user {user}: enough keys");
                }
                let db = self.world.db.conn().clone();
                if self.keys.make_personal_key(&db, token.clone(), user).await {
                    format!("personal key {token} made for user {user}")
                } else {
                    format!("no personal key for user {user}: no LiteLLM row yet")
                }
            }
            Step::Throttle | Step::Unavailable => {
                let path = PATHS[self.rng.usize(..PATHS.len())];
                let times = self.rng.u32(1..=3);
                if matches!(step, Step::Throttle) {
                    self.fault(Fault::throttle(path, 1, times));
                    format!("429 (Retry-After 1 s) for the next {times} requests to {path}")
                } else {
                    self.fault(Fault::status(path, 503, times));
                    format!("503 for the next {times} requests to {path}")
                }
            }
            Step::Lag => {
                let user = self.rng.u128(USERS);
                let millis = self.rng.u64(500..=4000);
                self.world
                    .sim
                    .lag_for(uid(user), Duration::from_millis(millis));
                self.counts.faults += 1;
                format!("user {user} unreadable for {millis} ms (replication lag)")
            }
            Step::LaggingMember => {
                let outside: Vec<u128> = self.tenant(|t| {
                    let (users, _) = direct_members(t, group);
                    USERS.filter(|n| !users.contains(n)).collect()
                });
                let Some(user) = pick(&mut self.rng, &outside) else {
                    return format!("group {group} has every user already");
                };
                let millis = self.rng.u64(500..=4000);
                self.world
                    .sim
                    .lag_for(uid(user), Duration::from_millis(millis));
                self.counts.faults += 1;
                self.change(|t| t.add_member(gid(group), uid(user)));
                format!("user {user} joins group {group}, unreadable for {millis} ms")
            }
            Step::ExpireDelta => {
                self.world.sim.change(|t| {
                    t.expire_delta_tokens();
                    ((), Vec::new())
                });
                self.counts.faults += 1;
                "every delta token expires".into()
            }
            Step::Delivery => {
                let duplicates = self.rng.u32(0..=2);
                let reorder = self.rng.bool();
                let delay = [0, 100, 500][self.rng.usize(..3)];
                let loss = [0.0, 0.0, 0.3, 0.7][self.rng.usize(..4)];
                self.world.sim.set_delivery(|d| {
                    d.duplicates = duplicates;
                    d.reorder = reorder;
                    d.delay_millis = delay;
                    d.loss_rate = loss;
                });
                self.counts.faults += 1;
                format!(
                    "notifications: {duplicates} duplicates, reordered {reorder}, delayed up to \
                     {delay} ms, {loss} lost"
                )
            }
            Step::Kill | Step::KillMidRound => {
                if !self.workers.process_running() {
                    return "the worker process is down already".into();
                }
                let mut what = String::new();
                if matches!(step, Step::KillMidRound) {
                    // A round held in Graph when the SIGKILL comes, its entries read and not
                    // acknowledged (if the process took them).
                    self.fault(Fault::delay("/groups/delta", 1500, 1));
                    let (users, _) = self.tenant(|t| direct_members(t, group));
                    let outside: Vec<u128> = USERS.filter(|n| !users.contains(n)).collect();
                    if let Some(user) = pick(&mut self.rng, &outside) {
                        self.change(|t| t.add_member(gid(group), uid(user)));
                        what = format!("user {user} joins group {group}, a delta read slowed; ");
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                self.workers.kill_process(&mut self.world);
                self.counts.kills += 1;
                let after = self.rng.usize(..=8);
                if after == 0 {
                    self.workers.start_process(&mut self.world);
                    format!("{what}SIGKILL to the worker process, started again at once")
                } else {
                    self.restart_in = Some(after - 1);
                    format!("{what}SIGKILL to the worker process, started again in {after} steps")
                }
            }
        }
    }

    /// Disables or enables a user. Its `users` notification may be lost like any other: the
    /// next round's users delta names the user.
    fn set_enabled(&mut self, user: u128, enabled: bool) -> String {
        self.change(|t| match t.users.get(&uid(user)).cloned() {
            Some(mut u) => {
                u.account_enabled = enabled;
                t.upsert_user(u)
            }
            None => Vec::new(),
        });
        format!(
            "user {user} {}",
            if enabled { "enabled" } else { "disabled" }
        )
    }

    fn next_token(&mut self) -> String {
        self.counts.keys_tried += 1;
        format!("soak-{}-{}", self.seed, self.counts.keys_tried)
    }
}

fn role_name(role: u128) -> &'static str {
    match role {
        PROXY_ADMIN_ROLE => "proxy_admin",
        2 => "internal_user",
        3 => "proxy_admin_viewer",
        _ => "Reader (no LiteLLM role)",
    }
}
