//! Team membership: adding, removing and replacing a group's members in one team.
//!
//! A LiteLLM membership has four traces, and the store keeps them consistent in both directions:
//! the `{"user_id", "user_email", "role"}` entry in the team's `members_with_roles`, the team id in
//! the user's `teams`, the `"LiteLLM_TeamMembership"` row, and (for memberships entra-sync
//! created) the `entra_sync_managed_memberships` row, which says why entra-sync keeps it: the
//! user is in the group, owns it, or both. This module loads a batch of teams under their locks,
//! has [`super::planning`] decide (no database access there), and writes what it decided. Every
//! statement is set-based, so a group of 50,000 members costs a handful of statements, not one
//! per member.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use entity::litellm::member_entry;

use sea_orm::{ConnectionTrait, DatabaseTransaction, FromQueryResult};
use serde_json::Value;

use super::Applied;
use super::change::Change;
use super::keys::{self, KeyPlan, RemovedMemberKeys};
use super::planning::{
    self, Managed, OwnerRow, Plan, Planned, Prepared, Request, TeamState, locked_users,
};
use super::sql::{litellm_timestamp, lock_teams, stmt, text_array};
use super::staged::StagedRemoval;
use super::users::{self, Candidates, NewUser};
use crate::error::{Error, Result};
use crate::litellm_config::LiteLlmSettings;

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
    load_managed(txn, team_ids, &mut teams).await?;
    load_owners(txn, team_ids, &mut teams).await?;
    load_held(txn, team_ids, &mut teams).await?;
    Ok(teams)
}

/// The memberships entra-sync manages in these teams.
async fn load_managed(
    txn: &DatabaseTransaction,
    team_ids: &[String],
    teams: &mut HashMap<String, TeamState>,
) -> Result<()> {
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
    Ok(())
}

/// The groups' owners as the last owners sync left them.
async fn load_owners(
    txn: &DatabaseTransaction,
    team_ids: &[String],
    teams: &mut HashMap<String, TeamState>,
) -> Result<()> {
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
    Ok(())
}

/// The members whose removal is held for a person.
async fn load_held(
    txn: &DatabaseTransaction,
    team_ids: &[String],
    teams: &mut HashMap<String, TeamState>,
) -> Result<()> {
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
    Ok(())
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

    let mut planned = planning::plan_batch(prepared, &teams, &mut candidates, settings)?;
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

/// Writes every plan of the batch, one statement per table and kind of write.
async fn execute(
    txn: &DatabaseTransaction,
    planned: &[Planned<'_, '_>],
    teams: &HashMap<String, TeamState>,
    settings: &LiteLlmSettings,
    now: DateTime<Utc>,
) -> Result<()> {
    let stamp = litellm_timestamp(now);
    write_users(txn, planned, settings, now).await?;
    write_membership_rows(txn, planned).await?;
    write_organization_members(txn, planned, teams, &stamp).await?;
    write_entries(txn, planned, &stamp).await?;
    write_managed(txn, planned, teams, now).await?;
    drop_holds(txn, planned).await?;
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

/// The users' rows: those created (with every team of the batch they join already in their
/// `teams`), linked and updated as LiteLLM's sign-in would, and the teams joined and left in the
/// others' `teams`.
async fn write_users(
    txn: &DatabaseTransaction,
    planned: &[Planned<'_, '_>],
    settings: &LiteLlmSettings,
    now: DateTime<Utc>,
) -> Result<()> {
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
    users::create(txn, &created, settings, now).await?;
    users::link(txn, &links, now).await?;
    let signed_in: Vec<&(String, Option<String>, Option<String>)> =
        planned.iter().flat_map(|one| &one.plan.sign_in).collect();
    users::signed_in(txn, &signed_in, now).await?;
    teams_joined(txn, joining_teams, now).await?;
    teams_left(txn, pairs(planned, |plan| &plan.remove_team_from_user), now).await
}

/// Each user's `teams` gains the teams they join (users, teams), in order, once each.
async fn teams_joined(
    txn: &DatabaseTransaction,
    joining: Vec<(&str, &str)>,
    now: DateTime<Utc>,
) -> Result<()> {
    if joining.is_empty() {
        return Ok(());
    }
    let (user_ids, team_ids): (Vec<&str>, Vec<&str>) = joining.into_iter().unzip();
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
        [
            text_array(user_ids),
            text_array(team_ids),
            litellm_timestamp(now).into(),
        ],
    ))
    .await?;
    Ok(())
}

/// Each user's `teams` loses the teams they leave ((users, teams) as [`pairs`] gives them): as
/// `array_remove` does, every occurrence goes, the rest keep their order.
async fn teams_left(
    txn: &DatabaseTransaction,
    (user_ids, team_ids): (Vec<&str>, Vec<&str>),
    now: DateTime<Utc>,
) -> Result<()> {
    if user_ids.is_empty() {
        return Ok(());
    }
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
            text_array(user_ids),
            text_array(team_ids),
            litellm_timestamp(now).into(),
        ],
    ))
    .await?;
    Ok(())
}

/// `"LiteLLM_TeamMembership"` rows inserted and deleted.
async fn write_membership_rows(
    txn: &DatabaseTransaction,
    planned: &[Planned<'_, '_>],
) -> Result<()> {
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
    Ok(())
}

/// Members who joined a team in an organization become its members, after the users exist (the
/// row's foreign key); a row LiteLLM wrote meanwhile stays.
async fn write_organization_members(
    txn: &DatabaseTransaction,
    planned: &[Planned<'_, '_>],
    teams: &HashMap<String, TeamState>,
    stamp: &chrono::NaiveDateTime,
) -> Result<()> {
    for one in planned {
        let team = &teams[&one.prepared.team_id];
        if let Some(organization_id) = &team.organization_id
            && !one.plan.organization_members.is_empty()
        {
            txn.execute(stmt(
                r#"INSERT INTO "LiteLLM_OrganizationMembership"
                     (user_id, organization_id, user_role, created_at, updated_at)
                   SELECT user_id, $1, $3, $4, $4 FROM unnest($2::text[]) AS user_id
                   ON CONFLICT (user_id, organization_id) DO NOTHING"#,
                [
                    organization_id.into(),
                    text_array(&one.plan.organization_members),
                    ORGANIZATION_MEMBER_ROLE.into(),
                    (*stamp).into(),
                ],
            ))
            .await?;
        }
    }
    Ok(())
}

/// Held removals that no longer stand.
async fn drop_holds(txn: &DatabaseTransaction, planned: &[Planned<'_, '_>]) -> Result<()> {
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
