//! Team membership: adding, removing and replacing a group's members in one team.
//!
//! A LiteLLM membership has four traces, and the store keeps them consistent in both directions:
//! the `{"user_id", "user_email", "role"}` entry in the team's `members_with_roles`, the team id in
//! the user's `teams`, the `"LiteLLM_TeamMembership"` row, and (for memberships entra-sync
//! created) the `entra_sync_managed_memberships` row. Every statement is set-based, so a group of
//! 50,000 members costs a handful of statements, not one per member.

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

/// One membership intention for one team.
pub(super) struct Request<'a> {
    pub group: &'a GroupId,
    pub joining: &'a [EntraUser],
    pub leaving: Leaving<'a>,
    pub mode: RemovalMode,
    /// What happens to the keys of members who leave.
    pub keys: RemovedMemberKeys,
}

/// The team as the store found it, under LiteLLM's team lock.
struct TeamState {
    /// Users with an entry in `members_with_roles`.
    entries: HashSet<String>,
    /// Users with a `"LiteLLM_TeamMembership"` row, among those this request looks at
    /// (see [`load_membership_rows`]).
    rows: HashSet<String>,
    /// Memberships entra-sync created: LiteLLM user id -> Entra object id.
    managed: HashMap<String, String>,
    /// `metadata.team_member_budget_id`, given to new membership rows as LiteLLM does.
    member_budget_id: Option<String>,
    /// LiteLLM caches the team under its alias too.
    alias: Option<String>,
}

#[derive(FromQueryResult)]
struct TeamRow {
    members_with_roles: Value,
    member_budget_id: Option<String>,
    team_alias: Option<String>,
}

#[derive(FromQueryResult)]
struct UserIdRow {
    user_id: String,
}

#[derive(FromQueryResult)]
struct ManagedRow {
    user_id: String,
    entra_user_id: String,
}

async fn load_team(txn: &DatabaseTransaction, team_id: &str) -> Result<TeamState> {
    let team = TeamRow::find_by_statement(stmt(
        r#"SELECT members_with_roles, metadata->>'team_member_budget_id' AS member_budget_id,
                  team_alias
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
            .filter_map(|item| item.get(member_entry::USER_ID)?.as_str())
            .map(str::to_owned)
            .collect(),
        _ => HashSet::new(),
    };
    let managed = ManagedRow::find_by_statement(stmt(
        "SELECT user_id, entra_user_id FROM entra_sync_managed_memberships WHERE group_id = $1",
        [team_id.into()],
    ))
    .all(txn)
    .await?
    .into_iter()
    .map(|row| (row.user_id, row.entra_user_id))
    .collect();
    Ok(TeamState {
        entries,
        rows: HashSet::new(),
        managed,
        member_budget_id: team.member_budget_id,
        alias: team.team_alias,
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

/// Everything one request will write, decided before anything is written (a dry run stops here).
#[derive(Default)]
struct Plan {
    create: Vec<NewUser>,
    link: Vec<(String, String)>,
    add_team_to_user: Vec<String>,
    insert_rows: Vec<String>,
    add_entries: Vec<Value>,
    mark_managed: Vec<(String, String)>,
    remove_entries: Vec<String>,
    remove_team_from_user: Vec<String>,
    delete_rows: Vec<String>,
    unmark_managed: Vec<String>,
    /// What happens to the keys of the members who leave, and of those who come back.
    keys: KeyPlan,
    changes: Vec<Change>,
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
    let mut joining_seen = HashSet::new();
    let joining: Vec<&EntraUser> = request
        .joining
        .iter()
        .filter(|user| joining_seen.insert(user.id.clone()))
        .collect();
    let mut ids: Vec<String> = joining.iter().map(|u| u.id.to_string()).collect();
    match request.leaving {
        Leaving::Nobody => {}
        Leaving::These(leaving) => ids.extend(leaving.iter().map(ToString::to_string)),
        Leaving::EveryoneElse => ids.extend(current_members(&team).cloned()),
        Leaving::AllManaged => ids.extend(team.managed.keys().cloned()),
    }
    let emails: Vec<String> = joining.iter().filter_map(|u| u.email()).collect();
    let mut candidates = Candidates::new(users::lock_candidates(txn, &ids, &emails).await?);
    let mut looked_at: HashSet<&str> = candidates.rows.iter().map(|r| r.user_id.as_str()).collect();
    looked_at.extend(team.managed.keys().map(String::as_str));
    if matches!(request.leaving, Leaving::EveryoneElse | Leaving::AllManaged) {
        looked_at.extend(team.entries.iter().map(String::as_str));
    }
    let looked_at: Vec<&str> = looked_at.into_iter().collect();
    team.rows = load_membership_rows(txn, &team_id, &looked_at).await?;

    let mut plan = Plan::default();
    let mut staying = HashSet::new();
    let mut arriving = HashSet::new();
    for user in joining {
        let (user_id, added) =
            plan_join(&mut plan, &mut candidates, &team, &team_id, user, settings);
        if added {
            arriving.insert(user_id.clone());
        }
        staying.insert(user_id);
    }
    // Users created just now have no keys to bring back.
    for new in &plan.create {
        arriving.remove(&new.user_id);
    }
    let leaving = leaving_users(&request, &candidates, &team, &staying);
    for user_id in &leaving {
        plan_leave(&mut plan, &candidates, &team, &team_id, user_id.clone());
    }
    plan_keys(txn, &mut plan, &team_id, &leaving, &arriving, request.keys).await?;
    let mut stale = Vec::new();
    if !plan.changes.is_empty() {
        stale.extend(
            team.alias
                .as_deref()
                .map(|alias| format!("team_alias:{alias}")),
        );
    }
    execute(
        txn,
        &plan,
        &team_id,
        team.member_budget_id.as_deref(),
        settings,
        now,
    )
    .await?;
    stale.extend(plan.keys.execute(txn, now).await?);
    Ok(Applied {
        changes: plan.changes,
        stale,
    })
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
                .map(|(user_id, entra_id)| (entra_id.as_str(), user_id))
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
        .iter()
        .chain(team.managed.keys())
        .filter(move |user_id| seen.insert(*user_id))
}

/// Plans whatever is missing for one joining user; returns the LiteLLM user id, and whether they
/// were not a full member before.
fn plan_join(
    plan: &mut Plan,
    candidates: &mut Candidates,
    team: &TeamState,
    team_id: &str,
    user: &EntraUser,
    settings: &LiteLlmSettings,
) -> (String, bool) {
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
    let has_entry = team.entries.contains(&user_id);
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
            member_entry::ROLE: member_entry::ROLE_USER,
        }));
        // Only a membership entra-sync established is entra-sync's to remove later.
        if !team.managed.contains_key(&user_id) {
            plan.mark_managed
                .push((user_id.clone(), user.id.to_string()));
        }
    }
    let added = !(in_teams && has_row && has_entry);
    if added {
        plan.changes.push(Change::MemberAdded {
            team_id: team_id.to_owned(),
            user_id: user_id.clone(),
        });
    }
    (user_id, added)
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
    let has_entry = team.entries.contains(&user_id);
    let has_row = team.rows.contains(&user_id);
    let managed = team.managed.contains_key(&user_id);
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
    team_id: &str,
    member_budget_id: Option<&str>,
    settings: &LiteLlmSettings,
    now: DateTime<Utc>,
) -> Result<()> {
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
    if !plan.mark_managed.is_empty() {
        let (user_ids, entra_ids): (Vec<_>, Vec<_>) = plan.mark_managed.iter().cloned().unzip();
        txn.execute(stmt(
            r#"INSERT INTO entra_sync_managed_memberships (group_id, user_id, entra_user_id, created_at)
               SELECT $1, x.user_id, x.entra_user_id, $4
               FROM unnest($2::text[], $3::text[]) AS x(user_id, entra_user_id)
               ON CONFLICT (group_id, user_id) DO NOTHING"#,
            [team_id.into(), text_array(user_ids), text_array(entra_ids), now.into()],
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
    Ok(())
}
