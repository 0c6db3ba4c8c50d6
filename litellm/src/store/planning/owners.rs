//! A group's owners as its team's admins (`ENTRA_SYNC_OWNERS_AS_ADMINS`), planned within a
//! membership request:
//! - an owner becomes a member with role `admin`; one who is not in the group still gets the
//!   membership, which entra-sync keeps for as long as they own the group;
//! - a member with role `user` who owns the group becomes `admin`; an `admin` role set by hand
//!   stays as it is, and stays when the ownership ends;
//! - a former owner goes back to `user` if entra-sync made them admin, or leaves the team (with
//!   the usual rules for their keys) if they were in it only as its owner.

use std::collections::{HashMap, HashSet};

use entity::UserId;
use entity::litellm::member_entry;

use super::join::plan_join;
use super::{OwnerRow, Plan, TeamState};
use crate::directory::EntraUser;
use crate::error::Result;
use crate::litellm_config::LiteLlmSettings;
use crate::store::change::Change;
use crate::store::users::Candidates;

/// What the owners add to a membership request.
#[derive(Default)]
pub(in crate::store) struct Planned {
    /// Owners who were not full members before.
    pub(in crate::store) arriving: Vec<String>,
    /// Owners who stay in the team (LiteLLM user ids).
    pub(in crate::store) staying: Vec<String>,
    /// Former owners who were in the team only as its owners.
    pub(in crate::store) leaving: Vec<String>,
}

/// Plans the team's admins from the group's `owners`; `joined` are the users this request adds
/// as members (Entra id -> LiteLLM user id), whose entries already have their role.
pub(in crate::store) fn plan(
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
        let made_admin = plan_admin(plan, team, team_id, &user_id);
        rows.insert(
            user_id,
            OwnerRow {
                entra_user_id: owner.id.to_string(),
                made_admin,
            },
        );
    }
    plan_former_owners(plan, team, team_id, &rows, joined, &mut planned);
    plan.owner_rows = Some(rows);
    Ok(planned)
}

/// An owner's entry made `admin` where it was `user`. Returns whether entra-sync made them
/// admin (and so may take it back when the ownership ends).
fn plan_admin(plan: &mut Plan, team: &TeamState, team_id: &str, user_id: &str) -> bool {
    match team.entries.get(user_id).map(String::as_str) {
        // A new entry, made with role admin.
        None => true,
        Some(member_entry::ROLE_USER) => {
            plan.roles
                .push((user_id.to_owned(), member_entry::ROLE_ADMIN));
            plan.changes.push(role_change(
                team_id,
                user_id,
                member_entry::ROLE_USER,
                member_entry::ROLE_ADMIN,
            ));
            true
        }
        // Admin already: by hand, or by entra-sync at an earlier sync.
        Some(_) => team.owners.get(user_id).is_some_and(|row| row.made_admin),
    }
}

/// Owners no longer in `rows`: one in the team only as its owner leaves it; one entra-sync made
/// admin goes back to `user`.
fn plan_former_owners(
    plan: &mut Plan,
    team: &TeamState,
    team_id: &str,
    rows: &HashMap<String, OwnerRow>,
    joined: &HashMap<UserId, String>,
    planned: &mut Planned,
) {
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
}

fn role_change(team_id: &str, user_id: &str, from: &str, to: &str) -> Change {
    Change::MemberRoleChanged {
        team_id: team_id.to_owned(),
        user_id: user_id.to_owned(),
        from: Some(from.to_owned()),
        to: to.to_owned(),
    }
}
