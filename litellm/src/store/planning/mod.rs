//! Membership planning, as pure functions: a team as loaded (its entries, membership rows,
//! managed memberships, owners and held removals), the candidate user rows, and a request (who
//! joins, who leaves, the owners, the removal mode) in; the plan out: the rows to create, link,
//! insert, update and delete, the members who leave and come back (whose keys the store then
//! revokes or restores), the removals left to the unit of work, and the audit entries. Nothing
//! here reads or writes the database: [`super::members`] loads, calls [`plan_batch`], and writes.
//!
//! - [`members`]: who joins and who leaves one team;
//! - [`join`]: one user joining (shared by members and owners);
//! - [`owners`]: the group's owners as the team's admins (`ENTRA_SYNC_OWNERS_AS_ADMINS`).

mod join;
mod members;
mod owners;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};

use entity::{GroupId, UserId};
use serde_json::Value;

use super::RemovalMode;
use super::change::{Change, RemovalReason};
use super::keys::RemovedMemberKeys;
use super::staged::{Removals, StagedRemoval};
use super::users::{Candidates, NewUser};
use crate::directory::EntraUser;
use crate::error::{Error, Result};
use crate::litellm_config::LiteLlmSettings;

pub(in crate::store) use members::locked_users;
use members::{current_members, distinct};

/// Which members leave the team.
#[derive(Clone, Copy, Debug)]
pub(in crate::store) enum Leaving<'a> {
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
pub(in crate::store) enum Owners<'a> {
    /// As last read: they stay in the team whatever happens to the members.
    Kept,
    /// These, now (an owners sync): owners become team admins, former owners go back to being
    /// members, or leave when they were in the team only as owners.
    Now(&'a [EntraUser]),
    /// Nobody stays for owning the group (a departed user, an unassigned group).
    Ignored,
}

/// One membership intention for one team.
pub(in crate::store) struct Request<'a> {
    pub(in crate::store) group: &'a GroupId,
    pub(in crate::store) joining: &'a [EntraUser],
    pub(in crate::store) leaving: Leaving<'a>,
    pub(in crate::store) owners: Owners<'a>,
    pub(in crate::store) mode: RemovalMode,
    /// What happens to the keys of members who leave.
    pub(in crate::store) keys: RemovedMemberKeys,
    /// Members the group lists whose user objects Graph could not read (replication lag): they
    /// stay exactly as they are, never taken for leavers.
    pub(in crate::store) unreadable: &'a [UserId],
    /// Whether those who leave leave now, or are staged for the unit of work to decide.
    pub(in crate::store) removals: Removals,
    /// What Graph said that makes them leave (recorded with a held removal).
    pub(in crate::store) reason: RemovalReason,
}

/// Why entra-sync keeps a membership it established.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(in crate::store) struct Managed {
    pub(in crate::store) entra_user_id: String,
    /// The user is in the group.
    pub(in crate::store) member: bool,
    /// The user owns the group.
    pub(in crate::store) owner: bool,
}

/// An owner of the group as the last owners sync left them.
#[derive(Clone, Debug)]
pub(in crate::store) struct OwnerRow {
    pub(in crate::store) entra_user_id: String,
    /// entra-sync gave them the `admin` role (it was `user`, or they joined as owners).
    pub(in crate::store) made_admin: bool,
}

/// The team as the store found it, under LiteLLM's team lock.
#[derive(Clone)]
pub(in crate::store) struct TeamState {
    /// Users with an entry in `members_with_roles`, and the entry's role.
    pub(in crate::store) entries: HashMap<String, String>,
    /// Users with a `"LiteLLM_TeamMembership"` row, among those this request looks at
    /// (see [`load_membership_rows`]).
    pub(in crate::store) rows: HashSet<String>,
    /// Memberships entra-sync created, by LiteLLM user id.
    pub(in crate::store) managed: HashMap<String, Managed>,
    /// The group's owners, by LiteLLM user id.
    pub(in crate::store) owners: HashMap<String, OwnerRow>,
    /// Members whose removal is held for a person (`entra_sync_held_removals`).
    pub(in crate::store) held: HashSet<String>,
    /// LiteLLM caches the team under its alias too.
    pub(in crate::store) alias: Option<String>,
    /// The team's organization: members who join become its members too.
    pub(in crate::store) organization_id: Option<String>,
}

/// Everything one request will write, decided before anything is written.
#[derive(Default)]
pub(in crate::store) struct Plan {
    pub(in crate::store) create: Vec<NewUser>,
    pub(in crate::store) link: Vec<(String, String)>,
    pub(in crate::store) add_team_to_user: Vec<String>,
    pub(in crate::store) insert_rows: Vec<String>,
    pub(in crate::store) add_entries: Vec<Value>,
    pub(in crate::store) remove_entries: Vec<String>,
    pub(in crate::store) remove_team_from_user: Vec<String>,
    pub(in crate::store) delete_rows: Vec<String>,
    /// Why entra-sync keeps each membership this request establishes or changes the reasons of.
    pub(in crate::store) managed: HashMap<String, Managed>,
    pub(in crate::store) unmark_managed: Vec<String>,
    /// Existing entries whose role changes: user id -> the new role.
    pub(in crate::store) roles: Vec<(String, &'static str)>,
    /// The group's owners after an owners sync: user id -> the row.
    pub(in crate::store) owner_rows: Option<HashMap<String, OwnerRow>>,
    /// Users this request makes full members (as members or as owners).
    pub(in crate::store) joined: Vec<String>,
    /// Users who become members of the team's organization.
    pub(in crate::store) organization_members: Vec<String>,
    /// Members whose held removal goes: they stay (Graph lists them again), or they left now.
    pub(in crate::store) drop_holds: Vec<String>,
    /// Existing users whose email (and empty alias) follow Entra, as LiteLLM's sign-in does:
    /// (user id, new email, new alias).
    pub(in crate::store) sign_in: Vec<(String, Option<String>, Option<String>)>,
    pub(in crate::store) changes: Vec<Change>,
}

impl Plan {
    /// The reasons entra-sync keeps `user_id`'s membership, to change: those already planned,
    /// else those stored; a membership entra-sync does not manage has none (`None`).
    pub(in crate::store) fn managed_mut(
        &mut self,
        team: &TeamState,
        user_id: &str,
    ) -> Option<&mut Managed> {
        if !self.managed.contains_key(user_id) {
            let stored = team.managed.get(user_id)?.clone();
            self.managed.insert(user_id.to_owned(), stored);
        }
        self.managed.get_mut(user_id)
    }
}

/// One request, with the users it names (each once) and the ids and emails of the user rows it
/// may touch.
pub(in crate::store) struct Prepared<'r, 'a> {
    pub(in crate::store) request: &'r Request<'a>,
    pub(in crate::store) team_id: String,
    pub(in crate::store) joining: Vec<&'a EntraUser>,
    pub(in crate::store) owners_now: Option<Vec<&'a EntraUser>>,
    pub(in crate::store) ids: Vec<String>,
    /// The joining users' and owners' emails, with their object ids.
    pub(in crate::store) emails: Vec<(String, String)>,
}

impl<'r, 'a> Prepared<'r, 'a> {
    pub(in crate::store) fn new(request: &'r Request<'a>, team: &TeamState) -> Self {
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
    pub(in crate::store) fn looked_at<'t>(
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
pub(in crate::store) struct Planned<'r, 'a> {
    pub(in crate::store) prepared: Prepared<'r, 'a>,
    pub(in crate::store) plan: Plan,
    pub(in crate::store) leaving: Vec<String>,
    pub(in crate::store) arriving: HashSet<String>,
    pub(in crate::store) staged: Vec<StagedRemoval>,
}

/// A user a request brought into the team.
pub(in crate::store) struct Joined {
    /// LiteLLM's user id.
    pub(in crate::store) user_id: String,
    /// They were not a full member before.
    pub(in crate::store) added: bool,
}

/// Plans requests for several teams (each team once) in order, each as if planned alone after
/// the ones before it were applied: what one request creates, links and joins, the next ones
/// find in `candidates`. `teams` are the teams as loaded under their locks, with the membership
/// rows of the users each request looks at ([`Prepared::looked_at`]).
pub(in crate::store) fn plan_batch<'r, 'a>(
    prepared: Vec<Prepared<'r, 'a>>,
    teams: &HashMap<String, TeamState>,
    candidates: &mut Candidates,
    settings: &LiteLlmSettings,
) -> Result<Vec<Planned<'r, 'a>>> {
    let mut planned = Vec::with_capacity(prepared.len());
    let mut created = HashSet::new();
    for prepared in prepared {
        let team = teams
            .get(&prepared.team_id)
            .ok_or_else(|| Error::TeamNotFound(prepared.team_id.clone()))?;
        let mut one = members::plan_request(prepared, candidates, team, settings)?;
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
    Ok(planned)
}
