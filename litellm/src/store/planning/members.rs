//! Who joins and who leaves one team: each trace of a membership planned for every user a
//! request names, as LiteLLM's own sign-in and `team_member_delete` leave them.

use std::collections::{HashMap, HashSet};

use entity::UserId;
use entity::litellm::member_entry;

use super::join::plan_join;
use super::{Leaving, Owners, Plan, Planned, Prepared, Request, TeamState};
use crate::directory::EntraUser;
use crate::error::Result;
use crate::litellm_config::LiteLlmSettings;
use crate::store::RemovalMode;
use crate::store::change::{Change, RemovalReason};
use crate::store::keys::RemovedMemberKeys;
use crate::store::staged::{Removals, StagedRemoval};
use crate::store::users::Candidates;

/// Plans one request against its team as found, with the batch's candidates, in named steps:
/// the members who join, those Graph could not read (who stay), the owners, who leaves, the
/// holds that no longer stand, and the leavers removed now or staged for the unit of work.
pub(in crate::store) fn plan_request<'r, 'a>(
    prepared: Prepared<'r, 'a>,
    candidates: &mut Candidates,
    team: &TeamState,
    settings: &LiteLlmSettings,
) -> Result<Planned<'r, 'a>> {
    let request = prepared.request;
    let mut planning = Planning {
        plan: Plan::default(),
        candidates,
        team,
        team_id: prepared.team_id.as_str(),
        settings,
        staying: HashSet::new(),
        arriving: HashSet::new(),
    };
    let owner_ids: HashSet<&UserId> = prepared
        .owners_now
        .iter()
        .flatten()
        .map(|u| &u.id)
        .collect();
    let joined = planning.join_members(&prepared.joining, &owner_ids)?;
    planning.keep_unreadable(request, &owner_ids)?;
    let leaving_owners = match &prepared.owners_now {
        Some(owners) => planning.plan_owners(owners, &joined)?,
        None => HashSet::new(),
    };
    // Users created just now have no keys to bring back.
    for new in &planning.plan.create {
        planning.arriving.remove(&new.user_id);
    }
    let leaving = planning.leavers(request, &leaving_owners)?;
    planning.drop_standing_holds(&leaving);
    let (leaving, staged) = planning.leave_or_stage(request, leaving, &leaving_owners);
    let Planning { plan, arriving, .. } = planning;
    Ok(Planned {
        prepared,
        plan,
        leaving,
        arriving,
        staged,
    })
}

/// One request being planned: the plan so far, and who stays and who arrives.
struct Planning<'p> {
    plan: Plan,
    candidates: &'p mut Candidates,
    team: &'p TeamState,
    team_id: &'p str,
    settings: &'p LiteLlmSettings,
    /// LiteLLM users who stay in the team whatever the leaving rule says.
    staying: HashSet<String>,
    /// Users who were not full members before (whose keys blocked when they left come back).
    arriving: HashSet<String>,
}

impl Planning<'_> {
    /// The members who join (an owner joining as a member joins as the team's admin); returns
    /// their LiteLLM user ids by Entra id.
    fn join_members(
        &mut self,
        joining: &[&EntraUser],
        owner_ids: &HashSet<&UserId>,
    ) -> Result<HashMap<UserId, String>> {
        let mut joined_members = HashMap::new();
        for user in joining {
            let role = if owner_ids.contains(&user.id) {
                member_entry::ROLE_ADMIN
            } else {
                member_entry::ROLE_USER
            };
            let joined = plan_join(
                &mut self.plan,
                self.candidates,
                self.team,
                self.team_id,
                user,
                self.settings,
                role,
            )?;
            if let Some(managed) = self.plan.managed_mut(self.team, &joined.user_id) {
                managed.member = true;
            }
            if joined.added {
                self.arriving.insert(joined.user_id.clone());
            }
            joined_members.insert(user.id.clone(), joined.user_id.clone());
            self.staying.insert(joined.user_id);
        }
        Ok(joined_members)
    }

    /// Those the group lists but Graph could not read: not evidence of leaving, so they stay as
    /// they are.
    fn keep_unreadable(
        &mut self,
        request: &Request<'_>,
        owner_ids: &HashSet<&UserId>,
    ) -> Result<()> {
        let mut unidentified = false;
        for id in request.unreadable {
            match litellm_user_of(self.candidates, self.team, id.as_str())? {
                Some(user_id) => {
                    self.staying.insert(user_id);
                }
                // Read as one of the group's owners: she joins as such.
                None if owner_ids.contains(id) => {}
                None => unidentified = true,
            }
        }
        if unidentified && matches!(request.leaving, Leaving::EveryoneElse) {
            // One the group lists may be a member LiteLLM knows by email only (its SCIM's rows,
            // found by the email Graph did not give): nobody who could be her leaves until she
            // is read. Members known as other Entra users still do.
            let unknown: Vec<String> = current_members(self.team)
                .filter(|user_id| entra_id_of(self.candidates, self.team, user_id).is_none())
                .cloned()
                .collect();
            self.staying.extend(unknown);
        }
        Ok(())
    }

    /// The group's owners as the team's admins; returns the former owners who were in the team
    /// only as its owners (they leave).
    fn plan_owners(
        &mut self,
        owners: &[&EntraUser],
        joined: &HashMap<UserId, String>,
    ) -> Result<HashSet<String>> {
        let planned = super::owners::plan(
            &mut self.plan,
            self.candidates,
            self.team,
            self.team_id,
            owners,
            joined,
            self.settings,
        )?;
        self.arriving.extend(planned.arriving);
        self.staying.extend(planned.staying);
        Ok(planned.leaving.into_iter().collect())
    }

    /// Who leaves, sorted: the request's leavers after the removal mode, but not the group's
    /// owners (they stay while they own it, members no more), and the former owners who were in
    /// the team only as its owners.
    fn leavers(
        &mut self,
        request: &Request<'_>,
        leaving_owners: &HashSet<String>,
    ) -> Result<Vec<String>> {
        let mut leaving = leaving_users(request, self.candidates, self.team, &self.staying)?;
        let kept_owners: HashSet<&String> = match request.owners {
            Owners::Kept => self.team.owners.keys().collect(),
            Owners::Now(_) => self
                .plan
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
            if let Some(managed) = self.plan.managed_mut(self.team, user_id) {
                managed.member = false;
            }
        }
        leaving.extend(leaving_owners.iter().cloned());
        leaving.sort();
        leaving.dedup();
        Ok(leaving)
    }

    /// A member who stays, whose removal a unit of work held: the hold no longer stands.
    fn drop_standing_holds(&mut self, leaving: &[String]) {
        let mut standing: Vec<String> = self
            .staying
            .iter()
            .filter(|user_id| self.team.held.contains(*user_id) && !leaving.contains(*user_id))
            .cloned()
            .collect();
        standing.sort();
        for user_id in &standing {
            self.plan.changes.push(Change::RemovalDropped {
                team_id: self.team_id.to_owned(),
                user_id: user_id.clone(),
            });
        }
        self.plan.drop_holds = standing;
    }

    /// The leavers removed now, or staged for the unit of work, which applies or holds them at
    /// its end (what is not a membership, only entra-sync's own record of one, is forgotten
    /// now). Returns those who leave now and those staged.
    fn leave_or_stage(
        &mut self,
        request: &Request<'_>,
        leaving: Vec<String>,
        leaving_owners: &HashSet<String>,
    ) -> (Vec<String>, Vec<StagedRemoval>) {
        let (team, team_id) = (self.team, self.team_id);
        if let Removals::Stage(_) = request.removals {
            let (members, records): (Vec<String>, Vec<String>) = leaving
                .into_iter()
                .partition(|user_id| is_member(self.candidates, team, team_id, user_id));
            for user_id in records {
                plan_leave(&mut self.plan, self.candidates, team, team_id, user_id);
            }
            let staged = members
                .into_iter()
                .map(|user_id| StagedRemoval {
                    team_id: team_id.to_owned(),
                    entra_user_id: entra_user_of(self.candidates, team, &user_id),
                    reason: if leaving_owners.contains(&user_id) {
                        RemovalReason::OwnershipEnded
                    } else {
                        request.reason
                    },
                    user_id,
                })
                .collect();
            return (Vec::new(), staged);
        }
        for user_id in &leaving {
            if team.held.contains(user_id) {
                self.plan.drop_holds.push(user_id.clone());
            }
            plan_leave(
                &mut self.plan,
                self.candidates,
                team,
                team_id,
                user_id.clone(),
            );
        }
        (leaving, Vec::new())
    }
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

/// The Entra object id a LiteLLM user is known by: a membership entra-sync made, the row's
/// `sso_user_id`, or a `user_id` that is an object id (LiteLLM's sign-in uses it as one).
fn entra_id_of(candidates: &Candidates, team: &TeamState, user_id: &str) -> Option<String> {
    entra_user_of(candidates, team, user_id).or_else(|| {
        candidates
            .by_user_id(user_id)
            .and_then(|row| UserId::parse(&row.user_id).ok())
            .map(|id| id.to_string())
    })
}

/// Each user once, in the order given.
pub(in crate::store) fn distinct(users: &[EntraUser]) -> Vec<&EntraUser> {
    let mut seen = HashSet::new();
    users
        .iter()
        .filter(|user| seen.insert(user.id.clone()))
        .collect()
}

/// The existing user rows the batch writes (teams joined or left, links), and those whose keys
/// [`plan_keys`] locks (members leaving under a key policy, members coming back), locked before
/// the keys as the store's lock order says. Users the batch creates have no row yet.
pub(in crate::store) fn locked_users<'p>(planned: &'p [Planned<'_, '_>]) -> Vec<&'p str> {
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
pub(in crate::store) fn current_members(team: &TeamState) -> impl Iterator<Item = &String> {
    let mut seen = HashSet::new();
    team.entries
        .keys()
        .chain(team.managed.keys())
        .filter(move |user_id| seen.insert(*user_id))
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
