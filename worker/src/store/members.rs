//! Team membership: adding, removing and replacing a group's members in one team.
//!
//! A LiteLLM membership has four traces, and the store keeps them consistent in both directions:
//! the `{"user_id", "user_email", "role"}` entry in the team's `members_with_roles`, the team id in
//! the user's `teams`, the `"LiteLLM_TeamMembership"` row, and (for memberships entra-sync
//! created) the `entra_sync_managed_memberships` row, which says why entra-sync keeps it: the
//! user is in the group, owns it, or both. A group's owners (`ENTRA_SYNC_OWNERS_AS_ADMINS`) are
//! planned in [`super::owners`]. Every statement is set-based, so a group of 50,000 members costs
//! a handful of statements, not one per member.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use entity::litellm::member_entry;
use entity::{GroupId, UserId};
use sea_orm::{ConnectionTrait, DatabaseTransaction, FromQueryResult};
use serde_json::{Value, json};

use super::change::Change;
use super::keys::{self, KeyPlan, RemovedMemberKeys};
use super::sql::{litellm_timestamp, lock_team, stmt, text_array};
use super::users::{self, Candidates, Match, NewUser};
use super::{Applied, RemovalMode};
use crate::directory::EntraUser;
use crate::error::{Error, Result};
use crate::litellm_config::LiteLlmSettings;

/// Which members leave the team.
#[derive(Clone, Copy, Debug)]
pub(super) enum Leaving<'a> {
    Nobody,
    /// These Entra users.
    These(&'a [UserId]),
    /// Everyone not among the members being added (a full replacement).
    EveryoneElse,
    /// Every membership entra-sync created, whatever the removal mode.
    AllManaged,
}

/// What the group's owners are to this request.
#[derive(Clone, Copy, Debug)]
pub(super) enum Owners<'a> {
    /// As last read: they stay in the team whatever happens to the members.
    Kept,
    /// These, now (an owners sync): owners become team admins, former owners go back to being
    /// members, or leave when they were in the team only as owners.
    Now(&'a [EntraUser]),
    /// Nobody stays for owning the group (a departed user, an unassigned group).
    Ignored,
}

/// One membership intention for one team.
pub(super) struct Request<'a> {
    pub group: &'a GroupId,
    pub joining: &'a [EntraUser],
    pub leaving: Leaving<'a>,
    pub owners: Owners<'a>,
    pub mode: RemovalMode,
    /// What happens to the keys of members who leave.
    pub keys: RemovedMemberKeys,
}

/// Why entra-sync keeps a membership it established.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Managed {
    pub entra_user_id: String,
    /// The user is in the group.
    pub member: bool,
    /// The user owns the group.
    pub owner: bool,
}

/// An owner of the group as the last owners sync left them.
#[derive(Clone, Debug)]
pub(super) struct OwnerRow {
    pub entra_user_id: String,
    /// entra-sync gave them the `admin` role (it was `user`, or they joined as owners).
    pub made_admin: bool,
}

/// The team as the store found it, under LiteLLM's team lock.
pub(super) struct TeamState {
    /// Users with an entry in `members_with_roles`, and the entry's role.
    pub entries: HashMap<String, String>,
    /// Users with a `"LiteLLM_TeamMembership"` row, among those this request looks at
    /// (see [`load_membership_rows`]).
    pub rows: HashSet<String>,
    /// Memberships entra-sync created, by LiteLLM user id.
    pub managed: HashMap<String, Managed>,
    /// The group's owners, by LiteLLM user id.
    pub owners: HashMap<String, OwnerRow>,
    /// `metadata.team_member_budget_id`, given to new membership rows as LiteLLM does.
    member_budget_id: Option<String>,
    /// LiteLLM caches the team under its alias too.
    alias: Option<String>,
    /// The team's organization: members who join become its members too.
    organization_id: Option<String>,
}

#[derive(FromQueryResult)]
struct TeamRow {
    members_with_roles: Value,
    member_budget_id: Option<String>,
    team_alias: Option<String>,
    organization_id: Option<String>,
}

#[derive(FromQueryResult)]
struct UserIdRow {
    user_id: String,
}

#[derive(FromQueryResult)]
struct ManagedRow {
    user_id: String,
    entra_user_id: String,
    member: bool,
    owner: bool,
}

#[derive(FromQueryResult)]
struct OwnerDbRow {
    user_id: String,
    entra_user_id: String,
    made_admin: bool,
}

async fn load_team(txn: &DatabaseTransaction, team_id: &str) -> Result<TeamState> {
    let team = TeamRow::find_by_statement(stmt(
        r#"SELECT members_with_roles, metadata->>'team_member_budget_id' AS member_budget_id,
                  team_alias, organization_id
           FROM "LiteLLM_TeamTable" WHERE team_id = $1"#,
        [team_id.into()],
    ))
    .one(txn)
    .await?
    .ok_or_else(|| Error::TeamNotFound(team_id.to_owned()))?;
    // LiteLLM's column default is `{}`, which LiteLLM reads as an empty list.
    let entries = match &team.members_with_roles {
        Value::Array(items) => items
            .iter()
            .filter_map(|item| {
                let user_id = item.get(member_entry::USER_ID)?.as_str()?;
                let role = item
                    .get(member_entry::ROLE)
                    .and_then(Value::as_str)
                    .unwrap_or(member_entry::ROLE_USER);
                Some((user_id.to_owned(), role.to_owned()))
            })
            .collect(),
        _ => HashMap::new(),
    };
    let managed = ManagedRow::find_by_statement(stmt(
        "SELECT user_id, entra_user_id, member, owner FROM entra_sync_managed_memberships
         WHERE group_id = $1",
        [team_id.into()],
    ))
    .all(txn)
    .await?
    .into_iter()
    .map(|row| {
        let managed = Managed {
            entra_user_id: row.entra_user_id,
            member: row.member,
            owner: row.owner,
        };
        (row.user_id, managed)
    })
    .collect();
    let owners = OwnerDbRow::find_by_statement(stmt(
        "SELECT user_id, entra_user_id, made_admin FROM entra_sync_group_owners WHERE group_id = $1",
        [team_id.into()],
    ))
    .all(txn)
    .await?
    .into_iter()
    .map(|row| {
        let owner = OwnerRow {
            entra_user_id: row.entra_user_id,
            made_admin: row.made_admin,
        };
        (row.user_id, owner)
    })
    .collect();
    Ok(TeamState {
        entries,
        rows: HashSet::new(),
        managed,
        owners,
        member_budget_id: team.member_budget_id,
        alias: team.team_alias,
        organization_id: team.organization_id,
    })
}

/// Which of these users have a `"LiteLLM_TeamMembership"` row in the team. LiteLLM's table is
/// keyed `(user_id, team_id)` with no index on `team_id`, so the lookup names the users: a scan
/// for one team would read every membership of every team.
async fn load_membership_rows(
    txn: &DatabaseTransaction,
    team_id: &str,
    user_ids: &[&str],
) -> Result<HashSet<String>> {
    if user_ids.is_empty() {
        return Ok(HashSet::new());
    }
    Ok(UserIdRow::find_by_statement(stmt(
        r#"SELECT user_id FROM "LiteLLM_TeamMembership" WHERE team_id = $1 AND user_id = ANY($2)"#,
        [team_id.into(), text_array(user_ids)],
    ))
    .all(txn)
    .await?
    .into_iter()
    .map(|row| row.user_id)
    .collect())
}

/// Everything one request will write, decided before anything is written.
#[derive(Default)]
pub(super) struct Plan {
    create: Vec<NewUser>,
    link: Vec<(String, String)>,
    add_team_to_user: Vec<String>,
    insert_rows: Vec<String>,
    add_entries: Vec<Value>,
    remove_entries: Vec<String>,
    remove_team_from_user: Vec<String>,
    delete_rows: Vec<String>,
    /// Why entra-sync keeps each membership this request establishes or changes the reasons of.
    managed: HashMap<String, Managed>,
    unmark_managed: Vec<String>,
    /// Existing entries whose role changes: user id -> the new role.
    pub roles: Vec<(String, &'static str)>,
    /// The group's owners after an owners sync: user id -> the row.
    pub owner_rows: Option<HashMap<String, OwnerRow>>,
    /// What happens to the keys of the members who leave, and of those who come back.
    keys: KeyPlan,
    /// Users this request makes full members (as members or as owners).
    joined: Vec<String>,
    /// Users who become members of the team's organization.
    organization_members: Vec<String>,
    pub changes: Vec<Change>,
}

impl Plan {
    /// The reasons entra-sync keeps `user_id`'s membership, to change: those already planned,
    /// else those stored; a membership entra-sync does not manage has none (`None`).
    pub fn managed_mut(&mut self, team: &TeamState, user_id: &str) -> Option<&mut Managed> {
        if !self.managed.contains_key(user_id) {
            let stored = team.managed.get(user_id)?.clone();
            self.managed.insert(user_id.to_owned(), stored);
        }
        self.managed.get_mut(user_id)
    }
}

pub(super) async fn apply(
    txn: &DatabaseTransaction,
    request: Request<'_>,
    settings: &LiteLlmSettings,
    now: DateTime<Utc>,
) -> Result<Applied> {
    let team_id = request.group.to_string();
    lock_team(txn, &team_id).await?;
    let mut team = load_team(txn, &team_id).await?;

    // Lock every user this request may touch, in one statement and in LiteLLM's order.
    let joining = distinct(request.joining);
    let owners_now = match request.owners {
        Owners::Now(owners) => Some(distinct(owners)),
        Owners::Kept | Owners::Ignored => None,
    };
    let mut ids: Vec<String> = joining.iter().map(|u| u.id.to_string()).collect();
    let mut emails: Vec<String> = joining.iter().filter_map(|u| u.email()).collect();
    if let Some(owners) = &owners_now {
        ids.extend(owners.iter().map(|u| u.id.to_string()));
        emails.extend(owners.iter().filter_map(|u| u.email()));
        ids.extend(team.owners.keys().cloned());
    }
    match request.leaving {
        Leaving::Nobody => {}
        Leaving::These(leaving) => ids.extend(leaving.iter().map(ToString::to_string)),
        Leaving::EveryoneElse => ids.extend(current_members(&team).cloned()),
        Leaving::AllManaged => ids.extend(team.managed.keys().cloned()),
    }
    let mut candidates = Candidates::new(users::lock_candidates(txn, &ids, &emails).await?);
    let mut looked_at: HashSet<&str> = candidates.rows.iter().map(|r| r.user_id.as_str()).collect();
    looked_at.extend(team.managed.keys().map(String::as_str));
    if matches!(request.leaving, Leaving::EveryoneElse | Leaving::AllManaged) {
        looked_at.extend(team.entries.keys().map(String::as_str));
    }
    let looked_at: Vec<&str> = looked_at.into_iter().collect();
    team.rows = load_membership_rows(txn, &team_id, &looked_at).await?;

    let mut plan = Plan::default();
    let mut staying = HashSet::new();
    let mut arriving = HashSet::new();
    let mut joined_members = HashMap::new();
    let owner_ids: HashSet<&UserId> = owners_now.iter().flatten().map(|u| &u.id).collect();
    for user in joining {
        // An owner joining as a member joins as the team's admin.
        let role = if owner_ids.contains(&user.id) {
            member_entry::ROLE_ADMIN
        } else {
            member_entry::ROLE_USER
        };
        let joined = plan_join(
            &mut plan,
            &mut candidates,
            &team,
            &team_id,
            user,
            settings,
            role,
        );
        if let Some(managed) = plan.managed_mut(&team, &joined.user_id) {
            managed.member = true;
        }
        if joined.added {
            arriving.insert(joined.user_id.clone());
        }
        joined_members.insert(user.id.clone(), joined.user_id.clone());
        staying.insert(joined.user_id);
    }
    let mut leaving_owners = Vec::new();
    if let Some(owners) = &owners_now {
        let planned = super::owners::plan(
            &mut plan,
            &mut candidates,
            &team,
            &team_id,
            owners,
            &joined_members,
            settings,
        );
        arriving.extend(planned.arriving);
        staying.extend(planned.staying);
        leaving_owners = planned.leaving;
    }
    // Users created just now have no keys to bring back.
    for new in &plan.create {
        arriving.remove(&new.user_id);
    }
    let mut leaving = leaving_users(&request, &candidates, &team, &staying);
    // Owners stay in the team while they own the group: leaving it, they are members no more.
    let kept_owners: HashSet<&String> = match request.owners {
        Owners::Kept => team.owners.keys().collect(),
        Owners::Now(_) => plan
            .owner_rows
            .iter()
            .flat_map(|rows| rows.keys())
            .collect(),
        Owners::Ignored => HashSet::new(),
    };
    let kept: Vec<String> = leaving
        .iter()
        .filter(|user_id| kept_owners.contains(user_id))
        .cloned()
        .collect();
    leaving.retain(|user_id| !kept_owners.contains(user_id));
    for user_id in &kept {
        if let Some(managed) = plan.managed_mut(&team, user_id) {
            managed.member = false;
        }
    }
    leaving.extend(leaving_owners);
    leaving.sort();
    leaving.dedup();
    for user_id in &leaving {
        plan_leave(&mut plan, &candidates, &team, &team_id, user_id.clone());
    }
    plan_keys(txn, &mut plan, &team_id, &leaving, &arriving, request.keys).await?;
    plan_organization(txn, &mut plan, &team).await?;
    let mut stale = Vec::new();
    if !plan.changes.is_empty() {
        stale.extend(
            team.alias
                .as_deref()
                .map(|alias| format!("team_alias:{alias}")),
        );
    }
    execute(txn, &plan, &team, &team_id, settings, now).await?;
    stale.extend(plan.keys.execute(txn, now).await?);
    Ok(Applied {
        changes: plan.changes,
        stale,
    })
}

/// Each user once, in the order given.
fn distinct(users: &[EntraUser]) -> Vec<&EntraUser> {
    let mut seen = HashSet::new();
    users
        .iter()
        .filter(|user| seen.insert(user.id.clone()))
        .collect()
}

/// Plans what happens to the keys of the members who leave (the removal policy) and of those who
/// join again (keys entra-sync blocked when they left come back). The keys are read only when
/// someone comes or goes, so an unchanged team costs no statement more.
async fn plan_keys(
    txn: &DatabaseTransaction,
    plan: &mut Plan,
    team_id: &str,
    leaving: &[String],
    arriving: &HashSet<String>,
    policy: RemovedMemberKeys,
) -> Result<()> {
    let leaving: HashSet<&str> = match policy {
        RemovedMemberKeys::Keep => HashSet::new(),
        RemovedMemberKeys::Delete | RemovedMemberKeys::Block => {
            leaving.iter().map(String::as_str).collect()
        }
    };
    let arriving: HashSet<&str> = arriving.iter().map(String::as_str).collect();
    let users: Vec<&str> = leaving.union(&arriving).copied().collect();
    let found = keys::lock_team_keys(txn, team_id, &users).await?;
    plan.keys.removed(keys::of_users(&found, &leaving), policy);
    plan.keys.rejoined(keys::of_users(&found, &arriving));
    plan.changes.append(&mut plan.keys.changes);
    Ok(())
}

/// LiteLLM's role for a member its team brings into an organization
/// (`_auto_add_team_members_to_organization`: `LitellmUserRoles.INTERNAL_USER`).
const ORGANIZATION_MEMBER_ROLE: &str = "internal_user";

/// Members who join a team in an organization become members of the organization, as LiteLLM
/// makes a team's members when its team enters one (`team_endpoints.py`,
/// `_auto_add_team_members_to_organization` calling `organization_endpoints.py`,
/// `add_member_to_organization`): a `"LiteLLM_OrganizationMembership"` row with role
/// `internal_user`, for users who have none; an existing membership and its role stay, and the
/// user row's own `organization_id` is not touched (LiteLLM does not set it either). Leaving the
/// team leaves the organization membership alone: LiteLLM's `team_member_delete` does too.
async fn plan_organization(
    txn: &DatabaseTransaction,
    plan: &mut Plan,
    team: &TeamState,
) -> Result<()> {
    let Some(organization_id) = &team.organization_id else {
        return Ok(());
    };
    if plan.joined.is_empty() {
        return Ok(());
    }
    let members: HashSet<String> = UserIdRow::find_by_statement(stmt(
        r#"SELECT user_id FROM "LiteLLM_OrganizationMembership"
           WHERE organization_id = $1 AND user_id = ANY($2)"#,
        [organization_id.into(), text_array(&plan.joined)],
    ))
    .all(txn)
    .await?
    .into_iter()
    .map(|row| row.user_id)
    .collect();
    let mut joining: Vec<String> = plan
        .joined
        .iter()
        .filter(|user_id| !members.contains(*user_id))
        .cloned()
        .collect();
    joining.sort();
    joining.dedup();
    for user_id in &joining {
        plan.changes.push(Change::OrganizationMemberAdded {
            organization_id: organization_id.clone(),
            user_id: user_id.clone(),
            user_role: ORGANIZATION_MEMBER_ROLE.to_owned(),
        });
    }
    plan.organization_members = joining;
    Ok(())
}

/// The LiteLLM user ids to take out of the team, sorted, after the removal mode's filter.
fn leaving_users(
    request: &Request<'_>,
    candidates: &Candidates,
    team: &TeamState,
    staying: &HashSet<String>,
) -> Vec<String> {
    let mut leaving: Vec<String> = match request.leaving {
        Leaving::Nobody => Vec::new(),
        Leaving::These(leaving) => {
            let managed_by_entra_id: HashMap<&str, &String> = team
                .managed
                .iter()
                .map(|(user_id, managed)| (managed.entra_user_id.as_str(), user_id))
                .collect();
            leaving
                .iter()
                .filter_map(|id| {
                    candidates
                        .by_object_id(id.as_str())
                        .map(|row| candidates.rows[row].user_id.clone())
                        // The user row may be gone (an admin deleted it) while traces remain.
                        .or_else(|| managed_by_entra_id.get(id.as_str()).map(|u| (*u).clone()))
                })
                .collect()
        }
        Leaving::EveryoneElse => current_members(team).cloned().collect(),
        Leaving::AllManaged => team.managed.keys().cloned().collect(),
    };
    leaving.retain(|user_id| {
        !staying.contains(user_id)
            && match request.mode {
                RemovalMode::Managed => team.managed.contains_key(user_id),
                RemovalMode::Mirror => true,
            }
    });
    leaving.sort();
    leaving.dedup();
    leaving
}

/// The team's members: everyone in `members_with_roles` (what LiteLLM shows as the team's
/// members) and every membership entra-sync created. A bare `"LiteLLM_TeamMembership"` row of
/// someone in neither is LiteLLM's spend record and is left alone.
fn current_members(team: &TeamState) -> impl Iterator<Item = &String> {
    let mut seen = HashSet::new();
    team.entries
        .keys()
        .chain(team.managed.keys())
        .filter(move |user_id| seen.insert(*user_id))
}

/// A user a request brought into the team.
pub(super) struct Joined {
    /// LiteLLM's user id.
    pub user_id: String,
    /// They were not a full member before.
    pub added: bool,
}

/// Plans whatever is missing for one joining user, with `role` for an entry it adds (an existing
/// entry keeps its role). A membership entra-sync establishes is marked managed, with no reason
/// yet: the caller says whether the user joins as a member or as an owner.
pub(super) fn plan_join(
    plan: &mut Plan,
    candidates: &mut Candidates,
    team: &TeamState,
    team_id: &str,
    user: &EntraUser,
    settings: &LiteLlmSettings,
    role: &'static str,
) -> Joined {
    let (user_id, email, in_teams) = match candidates.find(user) {
        Match::New => {
            let new = NewUser::from_entra(user);
            plan.changes.push(new.change(settings));
            let found = (new.user_id.clone(), new.user_email.clone(), true);
            plan.create.push(new);
            found
        }
        Match::Existing { row, link } => {
            let row = &candidates.rows[row];
            if link {
                plan.link.push((row.user_id.clone(), user.id.to_string()));
                plan.changes.push(Change::UserLinked {
                    user_id: row.user_id.clone(),
                    sso_user_id: user.id.to_string(),
                });
            }
            (
                row.user_id.clone(),
                row.user_email.clone(),
                row.in_team(team_id),
            )
        }
    };
    let has_entry = team.entries.contains_key(&user_id);
    let has_row = team.rows.contains(&user_id);
    if !in_teams {
        plan.add_team_to_user.push(user_id.clone());
    }
    if !has_row {
        plan.insert_rows.push(user_id.clone());
    }
    if !has_entry {
        plan.add_entries.push(json!({
            member_entry::USER_ID: user_id,
            member_entry::USER_EMAIL: email,
            member_entry::ROLE: role,
        }));
        // Only a membership entra-sync established is entra-sync's to remove later.
        if !team.managed.contains_key(&user_id) && !plan.managed.contains_key(&user_id) {
            plan.managed.insert(
                user_id.clone(),
                Managed {
                    entra_user_id: user.id.to_string(),
                    member: false,
                    owner: false,
                },
            );
        }
    }
    let added = !(in_teams && has_row && has_entry);
    if added {
        plan.joined.push(user_id.clone());
        plan.changes.push(Change::MemberAdded {
            team_id: team_id.to_owned(),
            user_id: user_id.clone(),
        });
        if !has_entry && role != member_entry::ROLE_USER {
            plan.changes.push(Change::MemberRoleChanged {
                team_id: team_id.to_owned(),
                user_id: user_id.clone(),
                from: None,
                to: role.to_owned(),
            });
        }
    }
    Joined { user_id, added }
}

/// Plans the removal of every trace of one user's membership.
fn plan_leave(
    plan: &mut Plan,
    candidates: &Candidates,
    team: &TeamState,
    team_id: &str,
    user_id: String,
) {
    let in_teams = candidates
        .by_user_id(&user_id)
        .is_some_and(|row| row.in_team(team_id));
    let has_entry = team.entries.contains_key(&user_id);
    let has_row = team.rows.contains(&user_id);
    let managed = team.managed.contains_key(&user_id);
    plan.managed.remove(&user_id);
    if in_teams {
        plan.remove_team_from_user.push(user_id.clone());
    }
    if has_entry {
        plan.remove_entries.push(user_id.clone());
    }
    if has_row {
        plan.delete_rows.push(user_id.clone());
    }
    if managed {
        plan.unmark_managed.push(user_id.clone());
    }
    if in_teams || has_entry || has_row {
        plan.changes.push(Change::MemberRemoved {
            team_id: team_id.to_owned(),
            user_id,
        });
    }
}

async fn execute(
    txn: &DatabaseTransaction,
    plan: &Plan,
    team: &TeamState,
    team_id: &str,
    settings: &LiteLlmSettings,
    now: DateTime<Utc>,
) -> Result<()> {
    let member_budget_id = team.member_budget_id.as_deref();
    let stamp = litellm_timestamp(now);
    // New users are created with the team already in their `teams`.
    users::create(txn, &plan.create, &[team_id], settings, now).await?;
    users::link(txn, &plan.link, now).await?;
    if !plan.add_team_to_user.is_empty() {
        txn.execute(stmt(
            r#"UPDATE "LiteLLM_UserTable"
               SET teams = array_append(coalesce(teams, '{}'), $1), updated_at = $3
               WHERE user_id = ANY($2) AND NOT ($1 = ANY(coalesce(teams, '{}')))"#,
            [
                team_id.into(),
                text_array(&plan.add_team_to_user),
                stamp.into(),
            ],
        ))
        .await?;
    }
    if !plan.remove_team_from_user.is_empty() {
        txn.execute(stmt(
            r#"UPDATE "LiteLLM_UserTable" SET teams = array_remove(teams, $1), updated_at = $3
               WHERE user_id = ANY($2) AND $1 = ANY(teams)"#,
            [
                team_id.into(),
                text_array(&plan.remove_team_from_user),
                stamp.into(),
            ],
        ))
        .await?;
    }
    if !plan.insert_rows.is_empty() {
        txn.execute(stmt(
            r#"INSERT INTO "LiteLLM_TeamMembership" (user_id, team_id, budget_id)
               SELECT user_id, $1, $3 FROM unnest($2::text[]) AS user_id
               ON CONFLICT (user_id, team_id) DO NOTHING"#,
            [
                team_id.into(),
                text_array(&plan.insert_rows),
                member_budget_id.into(),
            ],
        ))
        .await?;
    }
    if let Some(organization_id) = &team.organization_id
        && !plan.organization_members.is_empty()
    {
        // After the users exist (the row's foreign key); a row LiteLLM wrote meanwhile stays.
        txn.execute(stmt(
            r#"INSERT INTO "LiteLLM_OrganizationMembership"
                 (user_id, organization_id, user_role, created_at, updated_at)
               SELECT user_id, $1, $3, $4, $4 FROM unnest($2::text[]) AS user_id
               ON CONFLICT (user_id, organization_id) DO NOTHING"#,
            [
                organization_id.into(),
                text_array(&plan.organization_members),
                ORGANIZATION_MEMBER_ROLE.into(),
                stamp.into(),
            ],
        ))
        .await?;
    }
    if !plan.delete_rows.is_empty() {
        txn.execute(stmt(
            r#"DELETE FROM "LiteLLM_TeamMembership" WHERE team_id = $1 AND user_id = ANY($2)"#,
            [team_id.into(), text_array(&plan.delete_rows)],
        ))
        .await?;
    }
    if !plan.add_entries.is_empty() || !plan.remove_entries.is_empty() {
        // Keeps every other entry, its order and its role; drops the leaving users' entries and
        // appends the joining ones (a `{}` default counts as an empty list). NOT IN over a
        // subquery is hashed, so this stays linear for large teams.
        txn.execute(stmt(
            r#"UPDATE "LiteLLM_TeamTable"
               SET members_with_roles = (
                     SELECT coalesce(jsonb_agg(entry ORDER BY position), '[]'::jsonb)
                     FROM jsonb_array_elements(
                            CASE WHEN jsonb_typeof(members_with_roles) = 'array'
                                 THEN members_with_roles ELSE '[]'::jsonb END
                          ) WITH ORDINALITY AS current(entry, position)
                     WHERE entry->>'user_id' IS NULL
                        OR entry->>'user_id' NOT IN (SELECT unnest($2::text[]))
                   ) || $3::jsonb,
                   updated_at = $4
               WHERE team_id = $1"#,
            [
                team_id.into(),
                text_array(&plan.remove_entries),
                Value::Array(plan.add_entries.clone()).into(),
                stamp.into(),
            ],
        ))
        .await?;
    }
    let managed: Vec<(&String, &Managed)> = plan
        .managed
        .iter()
        .filter(|(user_id, managed)| team.managed.get(*user_id) != Some(*managed))
        .collect();
    if !managed.is_empty() {
        let user_ids: Vec<&str> = managed.iter().map(|(u, _)| u.as_str()).collect();
        let entra_ids: Vec<&str> = managed
            .iter()
            .map(|(_, m)| m.entra_user_id.as_str())
            .collect();
        let member: Vec<bool> = managed.iter().map(|(_, m)| m.member).collect();
        let owner: Vec<bool> = managed.iter().map(|(_, m)| m.owner).collect();
        txn.execute(stmt(
            r#"INSERT INTO entra_sync_managed_memberships
                 (group_id, user_id, entra_user_id, created_at, member, owner)
               SELECT $1, x.user_id, x.entra_user_id, $4, x.member, x.owner
               FROM unnest($2::text[], $3::text[], $5::bool[], $6::bool[])
                    AS x(user_id, entra_user_id, member, owner)
               ON CONFLICT (group_id, user_id)
               DO UPDATE SET member = EXCLUDED.member, owner = EXCLUDED.owner"#,
            [
                team_id.into(),
                text_array(user_ids),
                text_array(entra_ids),
                now.into(),
                member.into(),
                owner.into(),
            ],
        ))
        .await?;
    }
    if !plan.unmark_managed.is_empty() {
        txn.execute(stmt(
            "DELETE FROM entra_sync_managed_memberships WHERE group_id = $1 AND user_id = ANY($2)",
            [team_id.into(), text_array(&plan.unmark_managed)],
        ))
        .await?;
    }
    if !plan.roles.is_empty() {
        super::owners::set_roles(txn, team_id, &plan.roles, now).await?;
    }
    if let Some(rows) = &plan.owner_rows {
        super::owners::store_owners(txn, team_id, rows, &team.owners).await?;
    }
    Ok(())
}
