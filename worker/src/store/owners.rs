//! A group's owners as its team's admins (`ENTRA_SYNC_OWNERS_AS_ADMINS`), planned within a
//! membership request (see [`super::members`]):
//! - an owner becomes a member with role `admin`; one who is not in the group still gets the
//!   membership, which entra-sync keeps for as long as they own the group;
//! - a member with role `user` who owns the group becomes `admin`; an `admin` role set by hand
//!   stays as it is, and stays when the ownership ends;
//! - a former owner goes back to `user` if entra-sync made them admin, or leaves the team (with
//!   the usual rules for their keys) if they were in it only as its owner.
//!
//! `entra_sync_group_owners` remembers the owners and whether entra-sync made each admin.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use entity::UserId;
use entity::litellm::member_entry;
use sea_orm::{ConnectionTrait, DatabaseTransaction};

use super::change::Change;
use super::members::{OwnerRow, Plan, TeamState, plan_join};
use super::sql::{litellm_timestamp, stmt, text_array};
use super::users::Candidates;
use crate::directory::EntraUser;
use crate::error::Result;
use crate::litellm_config::LiteLlmSettings;

/// What the owners add to a membership request.
#[derive(Default)]
pub(super) struct Planned {
    /// Owners who were not full members before.
    pub arriving: Vec<String>,
    /// Owners who stay in the team (LiteLLM user ids).
    pub staying: Vec<String>,
    /// Former owners who were in the team only as its owners.
    pub leaving: Vec<String>,
}

/// Plans the team's admins from the group's `owners`; `joined` are the users this request adds
/// as members (Entra id -> LiteLLM user id), whose entries already have their role.
pub(super) fn plan(
    plan: &mut Plan,
    candidates: &mut Candidates,
    team: &TeamState,
    team_id: &str,
    owners: &[&EntraUser],
    joined: &HashMap<UserId, String>,
    settings: &LiteLlmSettings,
) -> Result<Planned> {
    let mut planned = Planned::default();
    let mut rows = HashMap::new();
    for owner in owners {
        let user_id = match joined.get(&owner.id) {
            Some(user_id) => user_id.clone(),
            None => {
                let joining = plan_join(
                    plan,
                    candidates,
                    team,
                    team_id,
                    owner,
                    settings,
                    member_entry::ROLE_ADMIN,
                )?;
                if joining.added {
                    planned.arriving.push(joining.user_id.clone());
                }
                planned.staying.push(joining.user_id.clone());
                joining.user_id
            }
        };
        if let Some(managed) = plan.managed_mut(team, &user_id) {
            managed.owner = true;
        }
        let made_admin = match team.entries.get(&user_id).map(String::as_str) {
            // A new entry, made with role admin.
            None => true,
            Some(member_entry::ROLE_USER) => {
                plan.roles.push((user_id.clone(), member_entry::ROLE_ADMIN));
                plan.changes.push(role_change(
                    team_id,
                    &user_id,
                    member_entry::ROLE_USER,
                    member_entry::ROLE_ADMIN,
                ));
                true
            }
            // Admin already: by hand, or by entra-sync at an earlier sync.
            Some(_) => team.owners.get(&user_id).is_some_and(|row| row.made_admin),
        };
        rows.insert(
            user_id,
            OwnerRow {
                entra_user_id: owner.id.to_string(),
                made_admin,
            },
        );
    }
    let joined_now: HashSet<&String> = joined.values().collect();
    for (user_id, former) in &team.owners {
        if rows.contains_key(user_id) {
            continue;
        }
        let member = plan.managed_mut(team, user_id).map(|managed| {
            managed.owner = false;
            managed.member
        });
        if member == Some(false) && !joined_now.contains(user_id) {
            planned.leaving.push(user_id.clone());
        } else if former.made_admin
            && team.entries.get(user_id).map(String::as_str) == Some(member_entry::ROLE_ADMIN)
        {
            plan.roles.push((user_id.clone(), member_entry::ROLE_USER));
            plan.changes.push(role_change(
                team_id,
                user_id,
                member_entry::ROLE_ADMIN,
                member_entry::ROLE_USER,
            ));
        }
    }
    plan.owner_rows = Some(rows);
    Ok(planned)
}

fn role_change(team_id: &str, user_id: &str, from: &str, to: &str) -> Change {
    Change::MemberRoleChanged {
        team_id: team_id.to_owned(),
        user_id: user_id.to_owned(),
        from: Some(from.to_owned()),
        to: to.to_owned(),
    }
}

/// Gives these members of the team their new roles in `members_with_roles`, keeping every entry,
/// its order and its other fields.
pub(super) async fn set_roles(
    txn: &DatabaseTransaction,
    team_id: &str,
    roles: &[(String, &'static str)],
    now: DateTime<Utc>,
) -> Result<()> {
    let (user_ids, roles): (Vec<&str>, Vec<&str>) = roles
        .iter()
        .map(|(user, role)| (user.as_str(), *role))
        .unzip();
    txn.execute(stmt(
        r#"UPDATE "LiteLLM_TeamTable"
           SET members_with_roles = (
                 SELECT coalesce(jsonb_agg(
                          CASE WHEN r.role IS NULL THEN entry
                               ELSE jsonb_set(entry, '{role}', to_jsonb(r.role)) END
                          ORDER BY position), '[]'::jsonb)
                 FROM jsonb_array_elements(
                        CASE WHEN jsonb_typeof(members_with_roles) = 'array'
                             THEN members_with_roles ELSE '[]'::jsonb END
                      ) WITH ORDINALITY AS current(entry, position)
                 LEFT JOIN unnest($2::text[], $3::text[]) AS r(user_id, role)
                        ON r.user_id = entry->>'user_id'
               ),
               updated_at = $4
           WHERE team_id = $1"#,
        [
            team_id.into(),
            text_array(user_ids),
            text_array(roles),
            litellm_timestamp(now).into(),
        ],
    ))
    .await?;
    Ok(())
}

/// Remembers the group's owners as `rows` say (nothing is written when they are as stored).
pub(super) async fn store_owners(
    txn: &DatabaseTransaction,
    team_id: &str,
    rows: &HashMap<String, OwnerRow>,
    stored: &HashMap<String, OwnerRow>,
) -> Result<()> {
    let same = rows.len() == stored.len()
        && rows.iter().all(|(user_id, row)| {
            stored.get(user_id).is_some_and(|old| {
                old.entra_user_id == row.entra_user_id && old.made_admin == row.made_admin
            })
        });
    if same {
        return Ok(());
    }
    let user_ids: Vec<&str> = rows.keys().map(String::as_str).collect();
    let entra_ids: Vec<&str> = rows.values().map(|r| r.entra_user_id.as_str()).collect();
    let made_admin: Vec<bool> = rows.values().map(|r| r.made_admin).collect();
    txn.execute(stmt(
        "DELETE FROM entra_sync_group_owners WHERE group_id = $1 AND NOT (user_id = ANY($2))",
        [team_id.into(), text_array(&user_ids)],
    ))
    .await?;
    if !rows.is_empty() {
        txn.execute(stmt(
            "INSERT INTO entra_sync_group_owners (group_id, user_id, entra_user_id, made_admin)
             SELECT $1, x.user_id, x.entra_user_id, x.made_admin
             FROM unnest($2::text[], $3::text[], $4::bool[]) AS x(user_id, entra_user_id, made_admin)
             ON CONFLICT (group_id, user_id)
             DO UPDATE SET entra_user_id = EXCLUDED.entra_user_id, made_admin = EXCLUDED.made_admin",
            [
                team_id.into(),
                text_array(&user_ids),
                text_array(&entra_ids),
                made_admin.into(),
            ],
        ))
        .await?;
    }
    Ok(())
}
