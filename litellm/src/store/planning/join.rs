//! One user joining a team: whatever of the four traces of a membership is missing, the user
//! row made or linked as LiteLLM's sign-in would, and the membership marked as entra-sync's.
//! Shared by members joining ([`super::members`]) and owners joining as admins
//! ([`super::owners`]).

use entity::litellm::member_entry;
use serde_json::json;

use super::{Joined, Managed, Plan, TeamState};
use crate::directory::EntraUser;
use crate::error::Result;
use crate::litellm_config::LiteLlmSettings;
use crate::store::change::Change;
use crate::store::users::{Candidates, Match, NewUser, UserRow};

/// Plans whatever is missing for one joining user, with `role` for an entry it adds (an existing
/// entry keeps its role). A membership entra-sync establishes is marked managed, with no reason
/// yet: the caller says whether the user joins as a member or as an owner.
pub(in crate::store) fn plan_join(
    plan: &mut Plan,
    candidates: &mut Candidates,
    team: &TeamState,
    team_id: &str,
    user: &EntraUser,
    settings: &LiteLlmSettings,
    role: &'static str,
) -> Result<Joined> {
    let (user_id, email, in_teams) = plan_user_row(plan, candidates, team_id, user, settings)?;
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

/// The user's LiteLLM row: a new one, or an existing one linked to the Entra user and updated
/// as LiteLLM's sign-in would. Returns its user id, its email and whether it lists the team.
fn plan_user_row(
    plan: &mut Plan,
    candidates: &mut Candidates,
    team_id: &str,
    user: &EntraUser,
    settings: &LiteLlmSettings,
) -> Result<(String, Option<String>, bool)> {
    let (row, link) = match candidates.find(user)? {
        Match::New => {
            let new = NewUser::from_entra(user);
            plan.changes.push(new.change(settings));
            let found = (new.user_id.clone(), new.user_email.clone(), true);
            plan.create.push(new);
            return Ok(found);
        }
        Match::Existing { row, link } => (row, link),
    };
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
    Ok((
        row.user_id.clone(),
        row.user_email.clone(),
        row.in_team(team_id),
    ))
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
