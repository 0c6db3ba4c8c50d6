//! What LiteLLM's tables (and entra-sync's own) hold, and how it differs from what graph-sim
//! says: for every group, in the four places a membership lives, its alias and whether it is
//! blocked; every user's role.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use worker::sync::UnassignedPolicy;

use super::entra::{Entra, GROUPS, user_number};
use crate::graph_common::{gid, uid};

/// One thing that is not as graph-sim says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    /// The group, user or key.
    pub subject: String,
    /// Where: `members_with_roles`, `user.teams`, `LiteLLM_TeamMembership`,
    /// `entra_sync_managed_memberships`, `team_alias`, `blocked`, `user_role`, `key`, ...
    pub place: &'static str,
    pub expected: String,
    pub found: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: expected {}, found {}",
            self.subject, self.place, self.expected, self.found
        )
    }
}

/// A team's row.
#[derive(Debug)]
pub struct Team {
    pub alias: Option<String>,
    pub blocked: bool,
    /// `members_with_roles`' user ids, in order (a duplicate is a difference of its own).
    pub entries: Vec<String>,
}

/// A key's row.
#[derive(Debug)]
pub struct KeyRow {
    pub blocked: bool,
}

/// The rows the soak compares, read at one moment (each table by one statement).
#[derive(Debug, Default)]
pub struct Litellm {
    pub teams: BTreeMap<String, Team>,
    /// Team id to the users whose `teams` list it.
    pub user_teams: BTreeMap<String, BTreeSet<String>>,
    /// Team id to the users of its `"LiteLLM_TeamMembership"` rows.
    pub memberships: BTreeMap<String, BTreeSet<String>>,
    /// Group id to the users of its `entra_sync_managed_memberships` rows.
    pub managed: BTreeMap<String, BTreeSet<String>>,
    /// User id to `user_role`.
    pub roles: BTreeMap<String, Option<String>>,
    /// The soak's keys (`soak-...`) by token.
    pub keys: BTreeMap<String, KeyRow>,
    pub held_removals: i64,
}

async fn rows(db: &DatabaseConnection, sql: &str) -> Vec<sea_orm::QueryResult> {
    db.query_all(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn text(row: &sea_orm::QueryResult, column: &str) -> String {
    row.try_get::<String>("", column)
        .unwrap_or_else(|e| panic!("{column}: {e}"))
}

fn pairs(found: Vec<sea_orm::QueryResult>) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for row in found {
        out.entry(text(&row, "team_id"))
            .or_default()
            .insert(text(&row, "user_id"));
    }
    out
}

impl Litellm {
    pub async fn read(db: &DatabaseConnection) -> Self {
        let teams = rows(
            db,
            r#"SELECT team_id, team_alias, blocked,
                      coalesce((SELECT jsonb_agg(e->>'user_id')
                                FROM jsonb_array_elements(CASE
                                  WHEN jsonb_typeof(members_with_roles) = 'array'
                                  THEN members_with_roles ELSE '[]' END) e),
                               '[]')::text AS entries
               FROM "LiteLLM_TeamTable""#,
        )
        .await
        .into_iter()
        .map(|row| {
            let entries: Vec<Option<String>> =
                serde_json::from_str(&text(&row, "entries")).unwrap();
            let team = Team {
                alias: row.try_get::<Option<String>>("", "team_alias").unwrap(),
                blocked: row.try_get::<bool>("", "blocked").unwrap(),
                entries: entries.into_iter().flatten().collect(),
            };
            (text(&row, "team_id"), team)
        })
        .collect();
        let user_teams = pairs(
            rows(
                db,
                r#"SELECT t.team AS team_id, u.user_id
                   FROM "LiteLLM_UserTable" u, unnest(u.teams) AS t(team)"#,
            )
            .await,
        );
        let memberships = pairs(
            rows(
                db,
                r#"SELECT team_id, user_id FROM "LiteLLM_TeamMembership""#,
            )
            .await,
        );
        let managed = pairs(
            rows(
                db,
                "SELECT group_id::text AS team_id, user_id FROM entra_sync_managed_memberships
                 WHERE member",
            )
            .await,
        );
        let roles = rows(db, r#"SELECT user_id, user_role FROM "LiteLLM_UserTable""#)
            .await
            .into_iter()
            .map(|row| {
                let role = row.try_get::<Option<String>>("", "user_role").unwrap();
                (text(&row, "user_id"), role)
            })
            .collect();
        let keys = rows(
            db,
            r#"SELECT token, coalesce(blocked, false) AS blocked FROM "LiteLLM_VerificationToken"
               WHERE token LIKE 'soak-%'"#,
        )
        .await
        .into_iter()
        .map(|row| {
            let key = KeyRow {
                blocked: row.try_get::<bool>("", "blocked").unwrap(),
            };
            (text(&row, "token"), key)
        })
        .collect();
        let held_removals = rows(db, "SELECT count(*) AS n FROM entra_sync_held_removals")
            .await
            .first()
            .map_or(0, |row| row.try_get::<i64>("", "n").unwrap());
        Self {
            teams,
            user_teams,
            memberships,
            managed,
            roles,
            keys,
            held_removals,
        }
    }

    /// How LiteLLM differs from `entra` for the teams and roles (the keys are
    /// [`super::keys::Keys`]'), an unassigned group's team judged by `policy`.
    pub fn differences(&self, entra: &Entra, policy: UnassignedPolicy) -> Vec<Difference> {
        let mut out = Vec::new();
        for g in GROUPS {
            let team_id = gid(g).to_string();
            let team = self.teams.get(&team_id);
            let places = self.places(&team_id);
            match (entra.teams.get(&g), team) {
                (Some((name, _)), None) => out.push(Difference {
                    subject: format!("group {g} ({name:?})"),
                    place: "team",
                    expected: "a team".into(),
                    found: "none".into(),
                }),
                (Some((name, members)), Some(team)) => {
                    let subject = format!("group {g} ({name:?})");
                    let expected: BTreeSet<String> =
                        members.iter().map(|n| uid(*n).to_string()).collect();
                    for (place, found) in &places {
                        if *found != expected {
                            out.push(Difference {
                                subject: subject.clone(),
                                place,
                                expected: users(&expected),
                                found: users(found),
                            });
                        }
                    }
                    if team.alias.as_deref() != Some(name) {
                        out.push(Difference {
                            subject: subject.clone(),
                            place: "team_alias",
                            expected: format!("{name:?}"),
                            found: format!("{:?}", team.alias),
                        });
                    }
                    if team.blocked {
                        out.push(Difference {
                            subject,
                            place: "blocked",
                            expected: "false".into(),
                            found: "true".into(),
                        });
                    }
                }
                (None, Some(team)) => {
                    let subject = format!("unassigned group {g} ({:?})", team.alias);
                    out.extend(unassigned(subject, team, &places, policy));
                }
                (None, None) => {}
            }
            if let Some(team) = team {
                let unique: BTreeSet<&String> = team.entries.iter().collect();
                if unique.len() != team.entries.len() {
                    out.push(Difference {
                        subject: format!("group {g}"),
                        place: "members_with_roles",
                        expected: "each member once".into(),
                        found: format!("{:?}", team.entries),
                    });
                }
            }
        }
        for (user_id, role) in &self.roles {
            let Some(n) = uuid::Uuid::parse_str(user_id).ok().and_then(user_number) else {
                continue;
            };
            let expected = entra.roles[&n];
            if role.as_deref() != Some(expected) {
                out.push(Difference {
                    subject: format!("user {n}"),
                    place: "user_role",
                    expected: expected.into(),
                    found: format!("{role:?}"),
                });
            }
        }
        if self.held_removals != 0 {
            out.push(Difference {
                subject: "entra-sync".into(),
                place: "entra_sync_held_removals",
                expected: "none".into(),
                found: self.held_removals.to_string(),
            });
        }
        out
    }

    /// The users a team has in each of the four places a membership lives.
    fn places(&self, team_id: &str) -> [(&'static str, BTreeSet<String>); 4] {
        let of = |map: &BTreeMap<String, BTreeSet<String>>| {
            map.get(team_id).cloned().unwrap_or_default()
        };
        [
            (
                "members_with_roles",
                self.teams
                    .get(team_id)
                    .map(|t| t.entries.iter().cloned().collect())
                    .unwrap_or_default(),
            ),
            ("user.teams", of(&self.user_teams)),
            ("LiteLLM_TeamMembership", of(&self.memberships)),
            ("entra_sync_managed_memberships", of(&self.managed)),
        ]
    }
}

/// An unassigned group's team: `remove-members` leaves it with no member, `block` blocks it,
/// `keep` keeps it as it was. Whatever it holds, the four places agree.
fn unassigned(
    subject: String,
    team: &Team,
    places: &[(&'static str, BTreeSet<String>); 4],
    policy: UnassignedPolicy,
) -> Vec<Difference> {
    let mut out = Vec::new();
    let reference = &places[0].1;
    for (place, found) in &places[1..] {
        if found != reference {
            out.push(Difference {
                subject: subject.clone(),
                place,
                expected: format!("{} (as members_with_roles)", users(reference)),
                found: users(found),
            });
        }
    }
    match policy {
        UnassignedPolicy::RemoveMembers if !reference.is_empty() => out.push(Difference {
            subject,
            place: "members_with_roles",
            expected: "[] (remove-members)".into(),
            found: users(reference),
        }),
        UnassignedPolicy::Block if !team.blocked => out.push(Difference {
            subject,
            place: "blocked",
            expected: "true (block)".into(),
            found: "false".into(),
        }),
        _ => {}
    }
    out
}

/// User ids as the soak's user numbers, sorted (other ids as they are).
pub fn users(ids: &BTreeSet<String>) -> String {
    let mut numbers: Vec<u128> = Vec::new();
    let mut others: Vec<&str> = Vec::new();
    for id in ids {
        match uuid::Uuid::parse_str(id).ok().and_then(user_number) {
            Some(n) => numbers.push(n),
            None => others.push(id),
        }
    }
    numbers.sort_unstable();
    let mut parts: Vec<String> = numbers.iter().map(u128::to_string).collect();
    parts.extend(others.iter().map(|id| format!("{id:?}")));
    format!("[{}]", parts.join(", "))
}
