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

use super::change::{Change, RemovalReason};
use super::keys::{self, KeyPlan, RemovedMemberKeys};
use super::removals::{Removals, StagedRemoval};
use super::sql::{litellm_timestamp, lock_teams, stmt, text_array};
use super::users::{self, Candidates, Match, NewUser, UserRow};
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
    /// These LiteLLM users, whatever the removal mode: removals a unit of work staged (already
    /// filtered by the mode when they were planned), or a held removal a person released.
    Exactly(&'a [String]),
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
    /// Members the group lists whose user objects Graph could not read (replication lag): they
    /// stay exactly as they are, never taken for leavers.
    pub unreadable: &'a [UserId],
    /// Whether those who leave leave now, or are staged for the unit of work to decide.
    pub removals: Removals,
    /// What Graph said that makes them leave (recorded with a held removal).
    pub reason: RemovalReason,
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
    /// Members whose removal is held for a person (`entra_sync_held_removals`).
    pub held: HashSet<String>,
    /// LiteLLM caches the team under its alias too.
    alias: Option<String>,
    /// The team's organization: members who join become its members too.
    organization_id: Option<String>,
}

#[derive(FromQueryResult)]
struct TeamRow {
    team_id: String,
    members_with_roles: Value,
    team_alias: Option<String>,
    organization_id: Option<String>,
}

#[derive(FromQueryResult)]
struct UserIdRow {
    user_id: String,
}

#[derive(FromQueryResult)]
struct MembershipRow {
    team_id: String,
    user_id: String,
}

#[derive(FromQueryResult)]
struct ManagedRow {
    group_id: String,
    user_id: String,
    entra_user_id: String,
    member: bool,
    owner: bool,
}

#[derive(FromQueryResult)]
struct OwnerDbRow {
    group_id: String,
    user_id: String,
    entra_user_id: String,
    made_admin: bool,
}

/// The entries of a `members_with_roles` value: LiteLLM's column default is `{}`, which
/// LiteLLM reads as an empty list.
fn entries_of(members_with_roles: &Value) -> HashMap<String, String> {
    match members_with_roles {
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
    }
}

/// The teams as the store found them, by team id, in three statements however many.
async fn load_teams(
    txn: &DatabaseTransaction,
    team_ids: &[String],
) -> Result<HashMap<String, TeamState>> {
    let mut teams: HashMap<String, TeamState> = TeamRow::find_by_statement(stmt(
        r#"SELECT team_id, members_with_roles, team_alias, organization_id
           FROM "LiteLLM_TeamTable" WHERE team_id = ANY($1)"#,
        [text_array(team_ids)],
    ))
    .all(txn)
    .await?
    .into_iter()
    .map(|team| {
        let state = TeamState {
            entries: entries_of(&team.members_with_roles),
            rows: HashSet::new(),
            managed: HashMap::new(),
            owners: HashMap::new(),
            held: HashSet::new(),
            alias: team.team_alias,
            organization_id: team.organization_id,
        };
        (team.team_id, state)
    })
    .collect();
    if let Some(missing) = team_ids.iter().find(|id| !teams.contains_key(*id)) {
        return Err(Error::TeamNotFound(missing.clone()));
    }
    for row in ManagedRow::find_by_statement(stmt(
        "SELECT group_id, user_id, entra_user_id, member, owner
         FROM entra_sync_managed_memberships WHERE group_id = ANY($1)",
        [text_array(team_ids)],
    ))
    .all(txn)
    .await?
    {
        if let Some(team) = teams.get_mut(&row.group_id) {
            let managed = Managed {
                entra_user_id: row.entra_user_id,
                member: row.member,
                owner: row.owner,
            };
            team.managed.insert(row.user_id, managed);
        }
    }
    for row in OwnerDbRow::find_by_statement(stmt(
        "SELECT group_id, user_id, entra_user_id, made_admin
         FROM entra_sync_group_owners WHERE group_id = ANY($1)",
        [text_array(team_ids)],
    ))
    .all(txn)
    .await?
    {
        if let Some(team) = teams.get_mut(&row.group_id) {
            let owner = OwnerRow {
                entra_user_id: row.entra_user_id,
                made_admin: row.made_admin,
            };
            team.owners.insert(row.user_id, owner);
        }
    }
    for row in MembershipRow::find_by_statement(stmt(
        "SELECT group_id AS team_id, user_id FROM entra_sync_held_removals
         WHERE group_id = ANY($1)",
        [text_array(team_ids)],
    ))
    .all(txn)
    .await?
    {
        if let Some(team) = teams.get_mut(&row.team_id) {
            team.held.insert(row.user_id);
        }
    }
    Ok(teams)
}

/// Which of these (team, user) pairs have a `"LiteLLM_TeamMembership"` row, given to each team's
/// state. LiteLLM's table is keyed `(user_id, team_id)` with no index on `team_id`, so the
/// lookup names the users: a scan for one team would read every membership of every team.
async fn load_membership_rows(
    txn: &DatabaseTransaction,
    pairs: &[(&str, &str)],
    teams: &mut HashMap<String, TeamState>,
) -> Result<()> {
    if pairs.is_empty() {
        return Ok(());
    }
    let (team_ids, user_ids): (Vec<&str>, Vec<&str>) = pairs.iter().copied().unzip();
    for row in MembershipRow::find_by_statement(stmt(
        r#"SELECT team_id, user_id FROM "LiteLLM_TeamMembership"
           WHERE (user_id, team_id) IN (SELECT * FROM unnest($2::text[], $1::text[]))"#,
        [text_array(team_ids), text_array(user_ids)],
    ))
    .all(txn)
    .await?
    {
        if let Some(team) = teams.get_mut(&row.team_id) {
            team.rows.insert(row.user_id);
        }
    }
    Ok(())
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
    /// Users this request makes full members (as members or as owners).
    joined: Vec<String>,
    /// Users who become members of the team's organization.
    organization_members: Vec<String>,
    /// Members whose held removal goes: they stay (Graph lists them again), or they left now.
    drop_holds: Vec<String>,
    /// Existing users whose email (and empty alias) follow Entra, as LiteLLM's sign-in does:
    /// (user id, new email, new alias).
    sign_in: Vec<(String, Option<String>, Option<String>)>,
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

/// One request, with the users it names (each once) and the ids and emails of the user rows it
/// may touch.
struct Prepared<'r, 'a> {
    request: &'r Request<'a>,
    team_id: String,
    joining: Vec<&'a EntraUser>,
    owners_now: Option<Vec<&'a EntraUser>>,
    ids: Vec<String>,
    /// The joining users' and owners' emails, with their object ids.
    emails: Vec<(String, String)>,
}

impl<'r, 'a> Prepared<'r, 'a> {
    fn new(request: &'r Request<'a>, team: &TeamState) -> Self {
        let joining = distinct(request.joining);
        let owners_now = match request.owners {
            Owners::Now(owners) => Some(distinct(owners)),
            Owners::Kept | Owners::Ignored => None,
        };
        let mut ids: Vec<String> = joining.iter().map(|u| u.id.to_string()).collect();
        ids.extend(request.unreadable.iter().map(ToString::to_string));
        let with_email = |u: &&EntraUser| Some((u.id.to_string(), u.email()?));
        let mut emails: Vec<(String, String)> = joining.iter().filter_map(with_email).collect();
        if let Some(owners) = &owners_now {
            ids.extend(owners.iter().map(|u| u.id.to_string()));
            emails.extend(owners.iter().filter_map(with_email));
            ids.extend(team.owners.keys().cloned());
        }
        match request.leaving {
            Leaving::Nobody => {}
            Leaving::These(leaving) => ids.extend(leaving.iter().map(ToString::to_string)),
            Leaving::EveryoneElse => ids.extend(current_members(team).cloned()),
            Leaving::AllManaged => ids.extend(team.managed.keys().cloned()),
            Leaving::Exactly(leaving) => ids.extend(leaving.iter().cloned()),
        }
        Self {
            request,
            team_id: request.group.to_string(),
            joining,
            owners_now,
            ids,
            emails,
        }
    }

    /// The users whose membership rows the plan needs: those it may touch who are members now
    /// (an entry, or a membership entra-sync manages), those named as leaving, and every member
    /// for a replacement. A joining user who is not a member yet joins whether or not a bare row
    /// exists (the row is inserted unless it does), so a first sync looks up no rows at all.
    fn looked_at<'t>(
        &'t self,
        candidates: &'t Candidates,
        team: &'t TeamState,
    ) -> HashSet<&'t str> {
        let member = |user_id: &&str| {
            team.entries.contains_key(*user_id) || team.managed.contains_key(*user_id)
        };
        let mut looked_at: HashSet<&str> = candidates
            .matching(&self.ids, &self.emails)
            .map(|row| row.user_id.as_str())
            .filter(member)
            .collect();
        let named: Vec<String> = match self.request.leaving {
            Leaving::These(leaving) => leaving.iter().map(ToString::to_string).collect(),
            Leaving::Exactly(leaving) => leaving.to_vec(),
            Leaving::Nobody | Leaving::EveryoneElse | Leaving::AllManaged => Vec::new(),
        };
        looked_at.extend(
            candidates
                .matching(&named, &[])
                .map(|row| row.user_id.as_str()),
        );
        looked_at.extend(team.managed.keys().map(String::as_str));
        if matches!(
            self.request.leaving,
            Leaving::EveryoneElse | Leaving::AllManaged
        ) {
            looked_at.extend(team.entries.keys().map(String::as_str));
        }
        looked_at
    }
}

/// One request planned: what it writes, and who leaves the team and who comes back to it
/// (whose keys the removal policy and a return concern), and the removals it leaves to its unit
/// of work.
struct Planned<'r, 'a> {
    prepared: Prepared<'r, 'a>,
    plan: Plan,
    leaving: Vec<String>,
    arriving: HashSet<String>,
    staged: Vec<StagedRemoval>,
}

/// What [`apply_many`] did: each request's changes, the cache keys the commit makes stale, and
/// the removals staged for the unit of work.
pub(super) struct AppliedMany {
    pub changes: Vec<Vec<Change>>,
    pub stale: Vec<String>,
    pub staged: Vec<StagedRemoval>,
}

/// Applies one request (see [`apply_many`]).
pub(super) async fn apply(
    txn: &DatabaseTransaction,
    request: Request<'_>,
    settings: &LiteLlmSettings,
    now: DateTime<Utc>,
) -> Result<Applied> {
    let applied = apply_many(txn, std::slice::from_ref(&request), settings, now).await?;
    Ok(Applied {
        changes: applied.changes.into_iter().flatten().collect(),
        stale: applied.stale,
        staged: applied.staged,
    })
}

/// Applies requests for several teams (each team once) in a fixed number of statements however
/// many: the teams locked in one order, then every user the requests may touch read; each team
/// planned as if alone, in order, the users one request creates or links being found by the
/// next; the user rows written locked, then the keys (the store's lock order); then each table
/// written once for all. Returns each request's changes, and the cache keys the commit makes
/// stale.
pub(super) async fn apply_many(
    txn: &DatabaseTransaction,
    requests: &[Request<'_>],
    settings: &LiteLlmSettings,
    now: DateTime<Utc>,
) -> Result<AppliedMany> {
    let team_ids: Vec<String> = requests.iter().map(|r| r.group.to_string()).collect();
    if requests.len() > 1 {
        // A batch's lookups read thousands of rows at once, where PostgreSQL may plan parallel
        // workers: starting them costs more than they save here, and they compete with the
        // writer for the cores. For this transaction only.
        txn.execute(stmt("SET LOCAL max_parallel_workers_per_gather = 0", []))
            .await?;
    }
    lock_teams(txn, &team_ids).await?;
    let mut teams = load_teams(txn, &team_ids).await?;
    let prepared: Vec<Prepared> = requests
        .iter()
        .zip(&team_ids)
        .map(|(request, team_id)| Prepared::new(request, &teams[team_id]))
        .collect();

    // Every user the requests may touch, in one statement; only those written are locked, once
    // planned (see `execute`).
    let ids: Vec<&String> = prepared.iter().flat_map(|p| &p.ids).collect();
    let emails: Vec<&(String, String)> = prepared.iter().flat_map(|p| &p.emails).collect();
    let mut candidates = Candidates::new(users::read_candidates(txn, &ids, &emails).await?);
    let looked_at: Vec<(String, String)> = prepared
        .iter()
        .flat_map(|p| {
            p.looked_at(&candidates, &teams[&p.team_id])
                .into_iter()
                .map(|user_id| (p.team_id.clone(), user_id.to_owned()))
                .collect::<Vec<_>>()
        })
        .collect();
    let pairs: Vec<(&str, &str)> = looked_at
        .iter()
        .map(|(team, user)| (team.as_str(), user.as_str()))
        .collect();
    load_membership_rows(txn, &pairs, &mut teams).await?;

    let mut planned = Vec::with_capacity(prepared.len());
    let mut created = HashSet::new();
    for prepared in prepared {
        let team = &teams[&prepared.team_id];
        let mut one = plan_request(prepared, &mut candidates, team, settings)?;
        let team_id = one.prepared.team_id.as_str();
        // What this request creates, links and joins, the next ones find.
        for new in &one.plan.create {
            candidates.record_created(new, team_id);
            created.insert(new.user_id.clone());
        }
        for (user_id, object_id) in &one.plan.link {
            candidates.record_link(user_id, object_id);
        }
        for user_id in &one.plan.add_team_to_user {
            candidates.record_team(user_id, team_id);
        }
        // Users created in this batch have no keys to bring back.
        one.arriving.retain(|user_id| !created.contains(user_id));
        planned.push(one);
    }
    // The store's lock order: the user rows before the keys (see `locked_users`).
    users::lock_users(txn, &locked_users(&planned)).await?;
    let keys = plan_keys(txn, &mut planned).await?;
    for one in &mut planned {
        plan_organization(txn, &mut one.plan, &teams[&one.prepared.team_id]).await?;
    }
    let mut stale: Vec<String> = planned
        .iter()
        .filter(|one| !one.plan.changes.is_empty())
        .filter_map(|one| teams[&one.prepared.team_id].alias.as_deref())
        .map(|alias| format!("team_alias:{alias}"))
        .collect();
    execute(txn, &planned, &teams, settings, now).await?;
    stale.extend(keys.execute(txn, now).await?);
    let mut staged = Vec::new();
    let mut changes = Vec::with_capacity(planned.len());
    for mut one in planned {
        staged.append(&mut one.staged);
        changes.push(one.plan.changes);
    }
    Ok(AppliedMany {
        changes,
        stale,
        staged,
    })
}

/// Plans one request against its team as found, with the batch's candidates.
fn plan_request<'r, 'a>(
    prepared: Prepared<'r, 'a>,
    candidates: &mut Candidates,
    team: &TeamState,
    settings: &LiteLlmSettings,
) -> Result<Planned<'r, 'a>> {
    let request = prepared.request;
    let team_id = prepared.team_id.as_str();
    let mut plan = Plan::default();
    let mut staying = HashSet::new();
    let mut arriving = HashSet::new();
    let mut joined_members = HashMap::new();
    let owner_ids: HashSet<&UserId> = prepared
        .owners_now
        .iter()
        .flatten()
        .map(|u| &u.id)
        .collect();
    for user in &prepared.joining {
        // An owner joining as a member joins as the team's admin.
        let role = if owner_ids.contains(&user.id) {
            member_entry::ROLE_ADMIN
        } else {
            member_entry::ROLE_USER
        };
        let joined = plan_join(&mut plan, candidates, team, team_id, user, settings, role)?;
        if let Some(managed) = plan.managed_mut(team, &joined.user_id) {
            managed.member = true;
        }
        if joined.added {
            arriving.insert(joined.user_id.clone());
        }
        joined_members.insert(user.id.clone(), joined.user_id.clone());
        staying.insert(joined.user_id);
    }
    // Listed by the group but unreadable: not evidence of leaving, so they stay as they are.
    for id in request.unreadable {
        if let Some(user_id) = litellm_user_of(candidates, team, id.as_str())? {
            staying.insert(user_id);
        }
    }
    let mut leaving_owners = Vec::new();
    if let Some(owners) = &prepared.owners_now {
        let planned = super::owners::plan(
            &mut plan,
            candidates,
            team,
            team_id,
            owners,
            &joined_members,
            settings,
        )?;
        arriving.extend(planned.arriving);
        staying.extend(planned.staying);
        leaving_owners = planned.leaving;
    }
    // Users created just now have no keys to bring back.
    for new in &plan.create {
        arriving.remove(&new.user_id);
    }
    let mut leaving = leaving_users(request, candidates, team, &staying)?;
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
        if let Some(managed) = plan.managed_mut(team, user_id) {
            managed.member = false;
        }
    }
    let leaving_owners: HashSet<String> = leaving_owners.into_iter().collect();
    leaving.extend(leaving_owners.iter().cloned());
    leaving.sort();
    leaving.dedup();
    // A member who stays, whose removal a unit of work held: the hold no longer stands.
    plan.drop_holds = staying
        .iter()
        .filter(|user_id| team.held.contains(*user_id) && !leaving.contains(*user_id))
        .cloned()
        .collect();
    plan.drop_holds.sort();
    for user_id in &plan.drop_holds {
        plan.changes.push(Change::RemovalDropped {
            team_id: team_id.to_owned(),
            user_id: user_id.clone(),
        });
    }
    let mut staged = Vec::new();
    if let Removals::Stage(_) = request.removals {
        // Members leave at the end of the unit of work, or are held then. What is not a
        // membership (only entra-sync's own record of one) is forgotten now.
        let (members, records): (Vec<String>, Vec<String>) = leaving
            .into_iter()
            .partition(|user_id| is_member(candidates, team, team_id, user_id));
        for user_id in records {
            plan_leave(&mut plan, candidates, team, team_id, user_id);
        }
        staged = members
            .into_iter()
            .map(|user_id| StagedRemoval {
                team_id: team_id.to_owned(),
                entra_user_id: entra_user_of(candidates, team, &user_id),
                reason: if leaving_owners.contains(&user_id) {
                    RemovalReason::OwnershipEnded
                } else {
                    request.reason
                },
                user_id,
            })
            .collect();
        leaving = Vec::new();
    } else {
        for user_id in &leaving {
            if team.held.contains(user_id) {
                plan.drop_holds.push(user_id.clone());
            }
            plan_leave(&mut plan, candidates, team, team_id, user_id.clone());
        }
    }
    Ok(Planned {
        prepared,
        plan,
        leaving,
        arriving,
        staged,
    })
}

/// Whether the user has a trace of membership in the team: an entry, the team in their `teams`,
/// or a membership row.
fn is_member(candidates: &Candidates, team: &TeamState, team_id: &str, user_id: &str) -> bool {
    team.entries.contains_key(user_id)
        || team.rows.contains(user_id)
        || candidates
            .by_user_id(user_id)
            .is_some_and(|row| row.in_team(team_id))
}

/// The LiteLLM user of an Entra object id: its row, or a membership entra-sync made for it (the
/// row may be gone while traces remain).
fn litellm_user_of(
    candidates: &Candidates,
    team: &TeamState,
    object_id: &str,
) -> Result<Option<String>> {
    if let Some(row) = candidates.object(object_id)? {
        return Ok(Some(candidates.rows[row].user_id.clone()));
    }
    Ok(team
        .managed
        .iter()
        .find(|(_, managed)| managed.entra_user_id == object_id)
        .map(|(user_id, _)| user_id.clone()))
}

/// The Entra object id of a LiteLLM user, when entra-sync knows it.
fn entra_user_of(candidates: &Candidates, team: &TeamState, user_id: &str) -> Option<String> {
    team.managed
        .get(user_id)
        .map(|managed| managed.entra_user_id.clone())
        .or_else(|| candidates.by_user_id(user_id)?.sso_user_id.clone())
}

/// Each user once, in the order given.
fn distinct(users: &[EntraUser]) -> Vec<&EntraUser> {
    let mut seen = HashSet::new();
    users
        .iter()
        .filter(|user| seen.insert(user.id.clone()))
        .collect()
}

/// The existing user rows the batch writes (teams joined or left, links), and those whose keys
/// [`plan_keys`] locks (members leaving under a key policy, members coming back), locked before
/// the keys as the store's lock order says. Users the batch creates have no row yet.
fn locked_users<'p>(planned: &'p [Planned<'_, '_>]) -> Vec<&'p str> {
    let created: HashSet<&str> = planned
        .iter()
        .flat_map(|one| &one.plan.create)
        .map(|new| new.user_id.as_str())
        .collect();
    let mut users: Vec<&str> = planned
        .iter()
        .flat_map(|one| {
            let keys_locked = one.prepared.request.keys != RemovedMemberKeys::Keep;
            one.plan
                .add_team_to_user
                .iter()
                .chain(&one.plan.remove_team_from_user)
                .chain(one.plan.link.iter().map(|(user_id, _)| user_id))
                .chain(one.plan.sign_in.iter().map(|(user_id, _, _)| user_id))
                .chain(one.leaving.iter().filter(move |_| keys_locked))
                .chain(&one.arriving)
                .chain(&one.plan.drop_holds)
                .map(String::as_str)
        })
        .filter(|user_id| !created.contains(user_id))
        .collect();
    users.sort_unstable();
    users.dedup();
    users
}

/// Plans what happens to the keys of the members who leave (the removal policy) and of those who
/// join again (keys entra-sync blocked when they left come back), for every request at once.
/// The keys are read only when someone comes or goes, so unchanged teams cost no statement more.
async fn plan_keys(txn: &DatabaseTransaction, planned: &mut [Planned<'_, '_>]) -> Result<KeyPlan> {
    let leaving_of = |one: &Planned| -> HashSet<String> {
        match one.prepared.request.keys {
            RemovedMemberKeys::Keep => HashSet::new(),
            RemovedMemberKeys::Delete | RemovedMemberKeys::Block => {
                one.leaving.iter().cloned().collect()
            }
        }
    };
    let leaving: Vec<HashSet<String>> = planned.iter().map(leaving_of).collect();
    let pairs: Vec<(&str, &str)> = planned
        .iter()
        .zip(&leaving)
        .flat_map(|(one, leaving)| {
            leaving
                .iter()
                .chain(one.arriving.iter())
                .chain(one.plan.drop_holds.iter())
                .map(|user_id| (one.prepared.team_id.as_str(), user_id.as_str()))
        })
        .collect();
    let found = keys::lock_member_keys(txn, &pairs).await?;
    let mut keys = KeyPlan::default();
    for (one, leaving) in planned.iter_mut().zip(&leaving) {
        let team_id = one.prepared.team_id.as_str();
        let leaving: HashSet<&str> = leaving.iter().map(String::as_str).collect();
        let arriving: HashSet<&str> = one.arriving.iter().map(String::as_str).collect();
        // Staying, their held removal dropped: the keys blocked for the hold come back.
        let unheld: HashSet<&str> = one
            .plan
            .drop_holds
            .iter()
            .map(String::as_str)
            .filter(|user_id| !leaving.contains(user_id) && !arriving.contains(user_id))
            .collect();
        keys.removed(
            keys::of_members(&found, team_id, &leaving),
            one.prepared.request.keys,
        );
        keys.rejoined(keys::of_members(&found, team_id, &arriving));
        keys.unheld(keys::of_members(&found, team_id, &unheld));
        one.plan.changes.append(&mut keys.changes);
    }
    Ok(keys)
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
) -> Result<Vec<String>> {
    let mut leaving: Vec<String> = match request.leaving {
        Leaving::Nobody => Vec::new(),
        Leaving::These(leaving) => {
            let mut users = Vec::with_capacity(leaving.len());
            for id in leaving {
                users.extend(litellm_user_of(candidates, team, id.as_str())?);
            }
            users
        }
        Leaving::EveryoneElse => current_members(team).cloned().collect(),
        Leaving::AllManaged => team.managed.keys().cloned().collect(),
        Leaving::Exactly(leaving) => leaving.to_vec(),
    };
    let filtered = matches!(request.leaving, Leaving::These(_) | Leaving::EveryoneElse);
    leaving.retain(|user_id| {
        !staying.contains(user_id)
            && (!filtered
                || match request.mode {
                    RemovalMode::Managed => team.managed.contains_key(user_id),
                    RemovalMode::Mirror => true,
                })
    });
    leaving.sort();
    leaving.dedup();
    Ok(leaving)
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
) -> Result<Joined> {
    let (user_id, email, in_teams) = match candidates.find(user)? {
        Match::New => {
            let new = NewUser::from_entra(user);
            plan.changes.push(new.change(settings));
            let found = (new.user_id.clone(), new.user_email.clone(), true);
            plan.create.push(new);
            found
        }
        Match::Existing { row, link } => {
            let signed_in = signed_in(&candidates.rows[row], user);
            let row = &mut candidates.rows[row];
            if link {
                plan.link.push((row.user_id.clone(), user.id.to_string()));
                plan.changes.push(Change::UserLinked {
                    user_id: row.user_id.clone(),
                    sso_user_id: user.id.to_string(),
                });
            }
            if let Some((email, alias)) = signed_in {
                // The next team of the batch finds the row as this one leaves it.
                row.user_email = email.clone().or(row.user_email.take());
                row.user_alias = alias.clone().or(row.user_alias.take());
                plan.changes.push(Change::UserUpdated {
                    user_id: row.user_id.clone(),
                    user_email: row.user_email.clone(),
                    user_alias: row.user_alias.clone(),
                });
                plan.sign_in.push((row.user_id.clone(), email, alias));
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
    Ok(Joined { user_id, added })
}

/// What LiteLLM's own sign-in would change on an existing user's row (`upsert_sso_user`, its
/// `_build_sso_user_update_data`): the email, to Entra's; the alias only when it has none yet.
/// `None` when nothing changes; each part `None` when it stays.
fn signed_in(row: &UserRow, user: &EntraUser) -> Option<(Option<String>, Option<String>)> {
    let email = user
        .email()
        .filter(|email| row.user_email.as_deref() != Some(email.as_str()));
    let alias = match row.user_alias.as_deref() {
        Some(alias) if !alias.trim().is_empty() => None,
        _ => user
            .display_name
            .clone()
            .filter(|name| !name.trim().is_empty()),
    };
    (email.is_some() || alias.is_some()).then_some((email, alias))
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

/// Writes every plan of the batch, one statement per table and kind of write.
async fn execute(
    txn: &DatabaseTransaction,
    planned: &[Planned<'_, '_>],
    teams: &HashMap<String, TeamState>,
    settings: &LiteLlmSettings,
    now: DateTime<Utc>,
) -> Result<()> {
    let stamp = litellm_timestamp(now);
    // New users are created with every team of the batch they join already in their `teams`.
    let mut created: Vec<(&NewUser, Vec<&str>)> = Vec::new();
    let mut created_at: HashMap<&str, usize> = HashMap::new();
    let mut joining_teams: Vec<(&str, &str)> = Vec::new();
    for one in planned {
        let team_id = one.prepared.team_id.as_str();
        for new in &one.plan.create {
            created_at.insert(new.user_id.as_str(), created.len());
            created.push((new, vec![team_id]));
        }
        for user_id in &one.plan.add_team_to_user {
            match created_at.get(user_id.as_str()) {
                Some(&at) => created[at].1.push(team_id),
                None => joining_teams.push((user_id.as_str(), team_id)),
            }
        }
    }
    let links: Vec<(String, String)> = planned
        .iter()
        .flat_map(|one| one.plan.link.iter().cloned())
        .collect();
    let leaving_teams = pairs(planned, |plan| &plan.remove_team_from_user);
    users::create(txn, &created, settings, now).await?;
    users::link(txn, &links, now).await?;
    let signed_in: Vec<&(String, Option<String>, Option<String>)> =
        planned.iter().flat_map(|one| &one.plan.sign_in).collect();
    users::signed_in(txn, &signed_in, now).await?;
    if !joining_teams.is_empty() {
        let (user_ids, team_ids): (Vec<&str>, Vec<&str>) = joining_teams.into_iter().unzip();
        txn.execute(stmt(
            r#"UPDATE "LiteLLM_UserTable" AS u
               SET teams = coalesce(u.teams, '{}') || ARRAY(
                     SELECT team_id FROM unnest(x.joining) WITH ORDINALITY AS j(team_id, position)
                     WHERE NOT (team_id = ANY(coalesce(u.teams, '{}'))) ORDER BY position),
                   updated_at = $3
               FROM (SELECT user_id, array_agg(team_id ORDER BY position) AS joining
                     FROM unnest($1::text[], $2::text[]) WITH ORDINALITY
                          AS p(user_id, team_id, position)
                     GROUP BY user_id) AS x
               WHERE u.user_id = x.user_id AND NOT (coalesce(u.teams, '{}') @> x.joining)"#,
            [text_array(user_ids), text_array(team_ids), stamp.into()],
        ))
        .await?;
    }
    if !leaving_teams.0.is_empty() {
        // As `array_remove` does: every occurrence goes, the rest keep their order.
        txn.execute(stmt(
            r#"UPDATE "LiteLLM_UserTable" AS u
               SET teams = ARRAY(
                     SELECT team_id FROM unnest(u.teams) WITH ORDINALITY AS t(team_id, position)
                     WHERE team_id IS NULL OR team_id <> ALL(x.leaving) ORDER BY position),
                   updated_at = $3
               FROM (SELECT user_id, array_agg(team_id) AS leaving
                     FROM unnest($2::text[], $1::text[]) AS p(team_id, user_id)
                     GROUP BY user_id) AS x
               WHERE u.user_id = x.user_id AND u.teams && x.leaving"#,
            [
                text_array(leaving_teams.0),
                text_array(leaving_teams.1),
                stamp.into(),
            ],
        ))
        .await?;
    }
    let new_rows = pairs(planned, |plan| &plan.insert_rows);
    if !new_rows.0.is_empty() {
        // Each row gets the team's member budget (`metadata.team_member_budget_id`), as LiteLLM
        // gives it.
        txn.execute(stmt(
            r#"INSERT INTO "LiteLLM_TeamMembership" (user_id, team_id, budget_id)
               SELECT p.user_id, p.team_id, t.metadata->>'team_member_budget_id'
               FROM unnest($1::text[], $2::text[]) AS p(user_id, team_id)
               JOIN "LiteLLM_TeamTable" AS t ON t.team_id = p.team_id
               ON CONFLICT (user_id, team_id) DO NOTHING"#,
            [text_array(new_rows.0), text_array(new_rows.1)],
        ))
        .await?;
    }
    for one in planned {
        let team = &teams[&one.prepared.team_id];
        if let Some(organization_id) = &team.organization_id
            && !one.plan.organization_members.is_empty()
        {
            // After the users exist (the row's foreign key); a row LiteLLM wrote meanwhile stays.
            txn.execute(stmt(
                r#"INSERT INTO "LiteLLM_OrganizationMembership"
                     (user_id, organization_id, user_role, created_at, updated_at)
                   SELECT user_id, $1, $3, $4, $4 FROM unnest($2::text[]) AS user_id
                   ON CONFLICT (user_id, organization_id) DO NOTHING"#,
                [
                    organization_id.into(),
                    text_array(&one.plan.organization_members),
                    ORGANIZATION_MEMBER_ROLE.into(),
                    stamp.into(),
                ],
            ))
            .await?;
        }
    }
    let gone_rows = pairs(planned, |plan| &plan.delete_rows);
    if !gone_rows.0.is_empty() {
        txn.execute(stmt(
            r#"DELETE FROM "LiteLLM_TeamMembership" AS m
               USING unnest($1::text[], $2::text[]) AS p(user_id, team_id)
               WHERE m.user_id = p.user_id AND m.team_id = p.team_id"#,
            [text_array(gone_rows.0), text_array(gone_rows.1)],
        ))
        .await?;
    }
    write_entries(txn, planned, &stamp).await?;
    write_managed(txn, planned, teams, now).await?;
    let dropped = pairs(planned, |plan| &plan.drop_holds);
    if !dropped.0.is_empty() {
        txn.execute(stmt(
            "DELETE FROM entra_sync_held_removals AS h
             USING unnest($1::text[], $2::text[]) AS x(user_id, group_id)
             WHERE h.group_id = x.group_id AND h.user_id = x.user_id",
            [text_array(dropped.0), text_array(dropped.1)],
        ))
        .await?;
    }
    for one in planned {
        let team_id = one.prepared.team_id.as_str();
        if !one.plan.roles.is_empty() {
            super::owners::set_roles(txn, team_id, &one.plan.roles, now).await?;
        }
        if let Some(rows) = &one.plan.owner_rows {
            super::owners::store_owners(txn, team_id, rows, &teams[team_id].owners).await?;
        }
    }
    Ok(())
}

/// The (user, team) pairs of one list of every plan, as two parallel lists.
fn pairs<'p>(
    planned: &'p [Planned<'_, '_>],
    list: impl Fn(&'p Plan) -> &'p Vec<String>,
) -> (Vec<&'p str>, Vec<&'p str>) {
    planned
        .iter()
        .flat_map(|one| {
            list(&one.plan)
                .iter()
                .map(|user_id| (user_id.as_str(), one.prepared.team_id.as_str()))
        })
        .unzip()
}

/// Every team's `members_with_roles` in one statement: each keeps its other entries, their
/// order and their roles, drops its leaving users' entries and appends its joining ones (a `{}`
/// default counts as an empty list). The leaving users are a JSON object's keys, whose lookup is
/// a binary search, so that this stays linear for large teams.
async fn write_entries(
    txn: &DatabaseTransaction,
    planned: &[Planned<'_, '_>],
    stamp: &chrono::NaiveDateTime,
) -> Result<()> {
    #[derive(serde::Serialize)]
    struct EntryChanges<'p> {
        leaving: HashMap<&'p str, bool>,
        joining: &'p [Value],
    }
    let teams: HashMap<&str, EntryChanges> = planned
        .iter()
        .filter(|one| !one.plan.add_entries.is_empty() || !one.plan.remove_entries.is_empty())
        .map(|one| {
            let changes = EntryChanges {
                leaving: one
                    .plan
                    .remove_entries
                    .iter()
                    .map(|user_id| (user_id.as_str(), true))
                    .collect(),
                joining: &one.plan.add_entries,
            };
            (one.prepared.team_id.as_str(), changes)
        })
        .collect();
    if teams.is_empty() {
        return Ok(());
    }
    let teams = serde_json::to_string(&teams)
        .map_err(|e| sea_orm::DbErr::Custom(format!("cannot serialise team entries: {e}")))?;
    txn.execute(stmt(
        r#"WITH x AS MATERIALIZED (
             SELECT key AS team_id, value->'leaving' AS leaving, value->'joining' AS joining
             FROM jsonb_each($1::text::jsonb))
           UPDATE "LiteLLM_TeamTable" AS t
           SET members_with_roles = (
                 SELECT coalesce(jsonb_agg(entry ORDER BY position), '[]'::jsonb)
                 FROM jsonb_array_elements(
                        CASE WHEN jsonb_typeof(t.members_with_roles) = 'array'
                             THEN t.members_with_roles ELSE '[]'::jsonb END
                      ) WITH ORDINALITY AS current(entry, position)
                 WHERE entry->>'user_id' IS NULL
                    OR NOT jsonb_exists(x.leaving, entry->>'user_id')
               ) || x.joining,
               updated_at = $2
           FROM x WHERE t.team_id = x.team_id"#,
        [teams.into(), (*stamp).into()],
    ))
    .await?;
    Ok(())
}

/// Why entra-sync keeps each membership, for every team, in two statements: the reasons that
/// changed written, the memberships it no longer manages forgotten.
async fn write_managed(
    txn: &DatabaseTransaction,
    planned: &[Planned<'_, '_>],
    teams: &HashMap<String, TeamState>,
    now: DateTime<Utc>,
) -> Result<()> {
    let mut group_ids = Vec::new();
    let mut user_ids = Vec::new();
    let mut entra_ids = Vec::new();
    let mut member = Vec::new();
    let mut owner = Vec::new();
    for one in planned {
        let team_id = one.prepared.team_id.as_str();
        let stored = &teams[team_id].managed;
        for (user_id, managed) in &one.plan.managed {
            if stored.get(user_id) != Some(managed) {
                group_ids.push(team_id);
                user_ids.push(user_id.as_str());
                entra_ids.push(managed.entra_user_id.as_str());
                member.push(managed.member);
                owner.push(managed.owner);
            }
        }
    }
    if !group_ids.is_empty() {
        txn.execute(stmt(
            r#"INSERT INTO entra_sync_managed_memberships
                 (group_id, user_id, entra_user_id, created_at, member, owner)
               SELECT x.group_id, x.user_id, x.entra_user_id, $4, x.member, x.owner
               FROM unnest($1::text[], $2::text[], $3::text[], $5::bool[], $6::bool[])
                    AS x(group_id, user_id, entra_user_id, member, owner)
               ON CONFLICT (group_id, user_id)
               DO UPDATE SET member = EXCLUDED.member, owner = EXCLUDED.owner"#,
            [
                text_array(group_ids),
                text_array(user_ids),
                text_array(entra_ids),
                now.into(),
                member.into(),
                owner.into(),
            ],
        ))
        .await?;
    }
    let forgotten = pairs(planned, |plan| &plan.unmark_managed);
    if !forgotten.0.is_empty() {
        txn.execute(stmt(
            r#"DELETE FROM entra_sync_managed_memberships AS m
               USING unnest($1::text[], $2::text[]) AS x(user_id, group_id)
               WHERE m.group_id = x.group_id AND m.user_id = x.user_id"#,
            [text_array(forgotten.0), text_array(forgotten.1)],
        ))
        .await?;
    }
    Ok(())
}
