//! Property tests of membership planning, with no database: random teams, user rows and requests;
//! a plan applied by a model of the writes ([`Model::apply`], written from the tables' meaning,
//! not from the planner), then planned again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap, HashSet};

use entity::litellm::member_entry;
use entity::{GroupId, UserId};
use proptest::prelude::*;

use super::*;
use crate::store::users::UserRow;

/// Entra users in the model, and the teams of their groups.
const USERS: usize = 6;
const TEAMS: usize = 3;
/// A LiteLLM user an admin made and added to teams by hand: not in Entra.
const HAND_MADE: &str = "hand-made";

fn object_id(user: usize) -> UserId {
    UserId::parse(&format!("5b000000-0000-4000-8000-{user:012}")).unwrap()
}

fn group_id(team: usize) -> GroupId {
    GroupId::parse(&format!("9a000000-0000-4000-8000-{team:012}")).unwrap()
}

fn entra_user(user: usize) -> EntraUser {
    EntraUser {
        id: object_id(user),
        user_principal_name: Some(format!("user{user}@contoso.example")),
        mail: None,
        display_name: Some(format!("User {user}")),
    }
}

/// How LiteLLM knows an Entra user before the plan.
#[derive(Clone, Copy, Debug)]
enum RowForm {
    /// No row yet.
    Absent,
    /// `user_id` = object id, as LiteLLM's sign-in makes it (`sso_user_id` set, or not).
    ById { linked: bool },
    /// Made by LiteLLM's SCIM: `user_id` = another id, found by email (linked already, or not).
    Scim { linked: bool },
}

/// A user's trace in a team before the plan.
#[derive(Clone, Copy, Debug)]
enum Trace {
    None,
    /// A full member (entry, row, the team in `teams`), with the entry's role, and whether
    /// entra-sync made the membership.
    Member {
        admin: bool,
        managed: bool,
    },
    /// Only a `"LiteLLM_TeamMembership"` row: LiteLLM's spend record.
    BareRow,
}

#[derive(Clone, Debug)]
struct World {
    forms: Vec<RowForm>,
    /// Per team, per user (the Entra users, then the hand-made one).
    traces: Vec<Vec<Trace>>,
}

#[derive(Clone, Debug)]
enum LeaveKind {
    Nobody,
    These(Vec<usize>),
    EveryoneElse,
}

/// One request's data, owned; [`RequestData::request`] borrows it as the planner takes it.
#[derive(Clone, Debug)]
struct RequestData {
    group: GroupId,
    joining: Vec<EntraUser>,
    leaving_kind: LeaveKind,
    leaving: Vec<UserId>,
    owners: Option<Vec<EntraUser>>,
    unreadable: Vec<UserId>,
    mirror: bool,
}

impl RequestData {
    fn request(&self) -> Request<'_> {
        Request {
            group: &self.group,
            joining: &self.joining,
            leaving: match self.leaving_kind {
                LeaveKind::Nobody => Leaving::Nobody,
                LeaveKind::These(_) => Leaving::These(&self.leaving),
                LeaveKind::EveryoneElse => Leaving::EveryoneElse,
            },
            owners: match &self.owners {
                Some(owners) => Owners::Now(owners),
                None => Owners::Kept,
            },
            mode: if self.mirror {
                RemovalMode::Mirror
            } else {
                RemovalMode::Managed
            },
            keys: RemovedMemberKeys::Keep,
            unreadable: &self.unreadable,
            removals: Removals::Apply,
            reason: RemovalReason::NotInGroup,
        }
    }

    fn team_id(&self) -> String {
        self.group.to_string()
    }
}

fn row_form() -> impl Strategy<Value = RowForm> {
    prop_oneof![
        Just(RowForm::Absent),
        any::<bool>().prop_map(|linked| RowForm::ById { linked }),
        any::<bool>().prop_map(|linked| RowForm::Scim { linked }),
    ]
}

fn trace() -> impl Strategy<Value = Trace> {
    prop_oneof![
        3 => Just(Trace::None),
        3 => (any::<bool>(), any::<bool>()).prop_map(|(admin, managed)| Trace::Member { admin, managed }),
        1 => Just(Trace::BareRow),
    ]
}

fn world() -> impl Strategy<Value = World> {
    (
        prop::collection::vec(row_form(), USERS),
        prop::collection::vec(prop::collection::vec(trace(), USERS + 1), TEAMS),
    )
        .prop_map(|(forms, traces)| World { forms, traces })
}

/// Some of the Entra users, each once.
fn some_users() -> impl Strategy<Value = BTreeSet<usize>> {
    prop::collection::btree_set(0..USERS, 0..=USERS)
}

fn request_data() -> impl Strategy<
    Value = (
        BTreeSet<usize>,
        u8,
        BTreeSet<usize>,
        Option<BTreeSet<usize>>,
        bool,
    ),
> {
    (
        some_users(),
        0u8..3,
        some_users(),
        prop::option::weighted(0.3, some_users()),
        any::<bool>(),
    )
}

/// Requests for distinct teams, in a random order.
fn requests() -> impl Strategy<Value = Vec<RequestData>> {
    (
        Just((0..TEAMS).collect::<Vec<_>>()).prop_shuffle(),
        1..=TEAMS,
        prop::collection::vec(request_data(), TEAMS),
    )
        .prop_map(|(order, count, data)| {
            order
                .into_iter()
                .take(count)
                .zip(data)
                .map(|(team, (joining, kind, other, owners, mirror))| {
                    // Graph names a user as joining, leaving or unreadable, never two at once.
                    let others: Vec<usize> = other.difference(&joining).copied().collect();
                    let (leaving_kind, leaving, unreadable) = match kind {
                        0 => (LeaveKind::Nobody, Vec::new(), others),
                        1 => (LeaveKind::These(others.clone()), others, Vec::new()),
                        _ => (LeaveKind::EveryoneElse, Vec::new(), others),
                    };
                    RequestData {
                        group: group_id(team),
                        joining: joining.iter().map(|&u| entra_user(u)).collect(),
                        leaving_kind,
                        leaving: leaving.iter().map(|&u| object_id(u)).collect(),
                        owners: owners.map(|o| o.iter().map(|&u| entra_user(u)).collect()),
                        unreadable: unreadable.iter().map(|&u| object_id(u)).collect(),
                        mirror,
                    }
                })
                .collect()
        })
}

/// LiteLLM's tables as the planner sees them: the user rows and the teams.
#[derive(Clone)]
struct Model {
    rows: Vec<UserRow>,
    teams: HashMap<String, TeamState>,
}

impl Model {
    fn new(world: &World) -> Self {
        let user_id_of = |user: usize| match world.forms[user] {
            RowForm::Absent => None,
            RowForm::ById { .. } => Some(object_id(user).to_string()),
            RowForm::Scim { .. } => Some(format!("scim-{user}")),
        };
        let mut rows: Vec<UserRow> = Vec::new();
        let mut teams = HashMap::new();
        let mut teams_of: HashMap<String, Vec<String>> = HashMap::new();
        let mut managed_users: HashSet<usize> = HashSet::new();
        for (team, traces) in world.traces.iter().enumerate() {
            let team_id = group_id(team).to_string();
            let mut state = TeamState {
                entries: HashMap::new(),
                rows: HashSet::new(),
                managed: HashMap::new(),
                owners: HashMap::new(),
                held: HashSet::new(),
                alias: Some(format!("Team {team}")),
                organization_id: None,
            };
            for (user, trace) in traces.iter().enumerate() {
                let entra = user < USERS;
                let Some(user_id) = (if entra {
                    user_id_of(user)
                } else {
                    Some(HAND_MADE.to_owned())
                }) else {
                    continue;
                };
                match *trace {
                    Trace::None => {}
                    Trace::BareRow => {
                        state.rows.insert(user_id);
                    }
                    Trace::Member { admin, managed } => {
                        let role = if admin {
                            member_entry::ROLE_ADMIN
                        } else {
                            member_entry::ROLE_USER
                        };
                        state.entries.insert(user_id.clone(), role.to_owned());
                        state.rows.insert(user_id.clone());
                        teams_of
                            .entry(user_id.clone())
                            .or_default()
                            .push(team_id.clone());
                        if managed && entra {
                            managed_users.insert(user);
                            state.managed.insert(
                                user_id,
                                Managed {
                                    entra_user_id: object_id(user).to_string(),
                                    member: true,
                                    owner: false,
                                },
                            );
                        }
                    }
                }
            }
            teams.insert(team_id, state);
        }
        for user in 0..USERS {
            let Some(user_id) = user_id_of(user) else {
                continue;
            };
            // entra-sync links every row whose membership it made.
            let linked = match world.forms[user] {
                RowForm::ById { linked } | RowForm::Scim { linked } => {
                    linked || managed_users.contains(&user)
                }
                RowForm::Absent => false,
            };
            rows.push(UserRow {
                sso_user_id: linked.then(|| object_id(user).to_string()),
                user_email: entra_user(user).email(),
                user_alias: Some(format!("User {user}")),
                user_role: None,
                teams: Some(teams_of.remove(&user_id).unwrap_or_default()),
                user_id,
            });
        }
        rows.push(UserRow {
            user_id: HAND_MADE.to_owned(),
            sso_user_id: None,
            user_email: Some("hand@example.com".to_owned()),
            user_alias: Some("Made by hand".to_owned()),
            user_role: None,
            teams: Some(teams_of.remove(HAND_MADE).unwrap_or_default()),
        });
        rows.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        Self { rows, teams }
    }

    /// Plans `requests` as one batch.
    fn plan<'r, 'a>(&self, requests: &'r [Request<'a>]) -> Vec<Planned<'r, 'a>> {
        let mut candidates = Candidates::new(self.rows.clone());
        let prepared = requests
            .iter()
            .map(|request| Prepared::new(request, &self.teams[&request.group.to_string()]))
            .collect();
        plan_batch(
            prepared,
            &self.teams,
            &mut candidates,
            &LiteLlmSettings::default(),
        )
        .expect("a plan")
    }

    /// What the store's writes do with a plan, table by table.
    fn apply(&mut self, planned: &Planned<'_, '_>) {
        let team_id = planned.prepared.team_id.clone();
        let plan = &planned.plan;
        for new in &plan.create {
            self.rows.push(UserRow {
                user_id: new.user_id.clone(),
                sso_user_id: Some(new.user_id.clone()),
                user_email: new.user_email.clone(),
                user_alias: new.user_alias.clone(),
                user_role: None,
                teams: Some(vec![team_id.clone()]),
            });
        }
        let row = |rows: &mut Vec<UserRow>, user_id: &str| -> usize {
            rows.iter()
                .position(|row| row.user_id == user_id)
                .expect("a row the plan names")
        };
        for (user_id, object_id) in &plan.link {
            let at = row(&mut self.rows, user_id);
            self.rows[at].sso_user_id = Some(object_id.clone());
        }
        for (user_id, email, alias) in &plan.sign_in {
            let at = row(&mut self.rows, user_id);
            if email.is_some() {
                self.rows[at].user_email = email.clone();
            }
            if alias.is_some() {
                self.rows[at].user_alias = alias.clone();
            }
        }
        for user_id in &plan.add_team_to_user {
            let at = row(&mut self.rows, user_id);
            self.rows[at]
                .teams
                .get_or_insert_with(Vec::new)
                .push(team_id.clone());
        }
        for user_id in &plan.remove_team_from_user {
            let at = row(&mut self.rows, user_id);
            if let Some(teams) = &mut self.rows[at].teams {
                teams.retain(|team| *team != team_id);
            }
        }
        self.rows.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        let team = self.teams.get_mut(&team_id).expect("the team");
        for entry in &plan.add_entries {
            let user_id = entry[member_entry::USER_ID].as_str().unwrap().to_owned();
            let role = entry[member_entry::ROLE].as_str().unwrap().to_owned();
            team.entries.insert(user_id, role);
        }
        for user_id in &plan.remove_entries {
            team.entries.remove(user_id);
        }
        for (user_id, role) in &plan.roles {
            team.entries.insert(user_id.clone(), (*role).to_owned());
        }
        team.rows.extend(plan.insert_rows.iter().cloned());
        for user_id in &plan.delete_rows {
            team.rows.remove(user_id);
        }
        for (user_id, managed) in &plan.managed {
            team.managed.insert(user_id.clone(), managed.clone());
        }
        for user_id in &plan.unmark_managed {
            team.managed.remove(user_id);
        }
        if let Some(owners) = &plan.owner_rows {
            team.owners = owners.clone();
        }
        for user_id in &plan.drop_holds {
            team.held.remove(user_id);
        }
    }
}

fn sorted<T: std::fmt::Debug>(items: impl IntoIterator<Item = T>) -> Vec<String> {
    let mut items: Vec<String> = items.into_iter().map(|i| format!("{i:?}")).collect();
    items.sort();
    items
}

/// Everything a plan decides, comparable; `arriving` without the users `created_before` (a batch
/// knows that users it created have no keys to bring back).
fn summary(planned: &Planned<'_, '_>, created_before: &HashSet<String>) -> Vec<Vec<String>> {
    let plan = &planned.plan;
    let mut owner_rows: Vec<String> = plan
        .owner_rows
        .iter()
        .flatten()
        .map(|(user, row)| format!("{user} {} {}", row.entra_user_id, row.made_admin))
        .collect();
    owner_rows.sort();
    vec![
        sorted(plan.create.iter().map(|new| &new.user_id)),
        sorted(&plan.link),
        sorted(&plan.add_team_to_user),
        sorted(&plan.insert_rows),
        sorted(&plan.add_entries),
        sorted(&plan.remove_entries),
        sorted(&plan.remove_team_from_user),
        sorted(&plan.delete_rows),
        sorted(&plan.managed),
        sorted(&plan.unmark_managed),
        sorted(&plan.roles),
        owner_rows,
        sorted(&plan.joined),
        sorted(&plan.drop_holds),
        sorted(&plan.sign_in),
        plan.changes.iter().map(|c| format!("{c:?}")).collect(),
        sorted(&planned.leaving),
        sorted(
            planned
                .arriving
                .iter()
                .filter(|u| !created_before.contains(*u)),
        ),
    ]
}

fn borrowed(data: &[RequestData]) -> Vec<Request<'_>> {
    data.iter().map(RequestData::request).collect()
}

/// The requests planned one at a time, each after the one before was applied: each one's
/// summary, and the model at the end.
fn one_by_one(model: &Model, data: &[RequestData]) -> (Vec<Vec<Vec<String>>>, Model) {
    let mut model = model.clone();
    let mut created = HashSet::new();
    let mut summaries = Vec::new();
    for one in data {
        let request = [one.request()];
        let planned = model.plan(&request);
        summaries.push(summary(&planned[0], &created));
        created.extend(planned[0].plan.create.iter().map(|new| new.user_id.clone()));
        model.apply(&planned[0]);
    }
    (summaries, model)
}

/// The LiteLLM user ids of the Entra users `users`, before any plan.
fn litellm_ids(world: &World, users: impl IntoIterator<Item = usize>) -> HashSet<String> {
    users
        .into_iter()
        .filter_map(|user| match world.forms[user] {
            RowForm::Absent => None,
            RowForm::ById { .. } => Some(object_id(user).to_string()),
            RowForm::Scim { .. } => Some(format!("scim-{user}")),
        })
        .collect()
}

fn removed_users(changes: &[Change]) -> Vec<String> {
    changes
        .iter()
        .filter_map(|change| match change {
            Change::MemberRemoved { user_id, .. } => Some(user_id.clone()),
            _ => None,
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn a_batch_plans_what_its_teams_planned_one_by_one_plan(world in world(), data in requests()) {
        let model = Model::new(&world);
        let requests = borrowed(&data);
        let batch = model.plan(&requests);
        let mut created = HashSet::new();
        let mut batch_summaries = Vec::new();
        for planned in &batch {
            batch_summaries.push(summary(planned, &created));
            created.extend(planned.plan.create.iter().map(|new| new.user_id.clone()));
        }
        let (alone, _) = one_by_one(&model, &data);
        prop_assert_eq!(batch_summaries, alone);
    }

    #[test]
    fn planning_again_after_applying_plans_nothing(world in world(), data in requests()) {
        let mut model = Model::new(&world);
        for one in &data {
            let request = [one.request()];
            let planned = model.plan(&request);
            model.apply(&planned[0]);
            let again = model.plan(&request);
            let team = &model.teams[&one.team_id()];
            prop_assert!(again[0].plan.changes.is_empty(), "{:?}", again[0].plan.changes);
            prop_assert_eq!(writes(&again[0], team), Vec::<String>::new());
        }
    }

    #[test]
    fn removals_are_of_members_graph_said_left_and_never_of_hand_added_ones(
        world in world(),
        data in requests(),
    ) {
        let model = Model::new(&world);
        let requests = borrowed(&data);
        for (planned, one) in model.plan(&requests).iter().zip(&data) {
            let team = &model.teams[&one.team_id()];
            let removed = removed_users(&planned.plan.changes);
            let owners_now = one.owners.is_some();
            // Owners leave when their ownership ends: that is Graph's word too, on the owners.
            let former_owners: HashSet<&String> = team.owners.keys().collect();
            for user_id in &removed {
                if owners_now && former_owners.contains(user_id) {
                    continue;
                }
                if !one.mirror {
                    prop_assert!(
                        team.managed.contains_key(user_id),
                        "{user_id} was not added by entra-sync, yet leaves under the managed mode"
                    );
                }
                match &one.leaving_kind {
                    LeaveKind::Nobody => prop_assert!(false, "{user_id} leaves; Graph named nobody"),
                    LeaveKind::These(users) => prop_assert!(
                        litellm_ids(&world, users.iter().copied()).contains(user_id),
                        "{user_id} leaves; Graph named {users:?}"
                    ),
                    LeaveKind::EveryoneElse => {
                        let listed: Vec<usize> = data_listed(one);
                        prop_assert!(
                            !litellm_ids(&world, listed.iter().copied()).contains(user_id),
                            "{user_id} leaves although the group lists them"
                        );
                    }
                }
            }
            // An admin's role set by hand is never planned away while the owners are as read.
            if !owners_now {
                prop_assert!(planned.plan.roles.is_empty(), "{:?}", planned.plan.roles);
            }
        }
    }
}

/// What a plan would write, as the store's writers decide it: the managed memberships and the
/// owners are written only where they differ from what is stored.
fn writes(planned: &Planned<'_, '_>, team: &TeamState) -> Vec<String> {
    let plan = &planned.plan;
    let mut writes = Vec::new();
    let mut note = |what: &str, items: Vec<String>| {
        if !items.is_empty() {
            writes.push(format!("{what}: {items:?}"));
        }
    };
    note("create", sorted(plan.create.iter().map(|new| &new.user_id)));
    note("link", sorted(&plan.link));
    note("add_team_to_user", sorted(&plan.add_team_to_user));
    note("insert_rows", sorted(&plan.insert_rows));
    note("add_entries", sorted(&plan.add_entries));
    note("remove_entries", sorted(&plan.remove_entries));
    note("remove_team_from_user", sorted(&plan.remove_team_from_user));
    note("delete_rows", sorted(&plan.delete_rows));
    note("unmark_managed", sorted(&plan.unmark_managed));
    note("roles", sorted(&plan.roles));
    note("sign_in", sorted(&plan.sign_in));
    note("drop_holds", sorted(&plan.drop_holds));
    note(
        "managed",
        sorted(
            plan.managed
                .iter()
                .filter(|(user_id, managed)| team.managed.get(*user_id) != Some(*managed)),
        ),
    );
    let owners_differ = plan.owner_rows.as_ref().is_some_and(|rows| {
        rows.len() != team.owners.len()
            || rows.iter().any(|(user_id, row)| {
                team.owners.get(user_id).is_none_or(|old| {
                    old.entra_user_id != row.entra_user_id || old.made_admin != row.made_admin
                })
            })
    });
    if owners_differ {
        writes.push("owners".to_owned());
    }
    writes
}

/// The users a complete read of the group listed: those joining and those it could not read.
fn data_listed(one: &RequestData) -> Vec<usize> {
    (0..USERS)
        .filter(|&user| {
            let id = object_id(user);
            one.joining.iter().any(|u| u.id == id) || one.unreadable.contains(&id)
        })
        .collect()
}
