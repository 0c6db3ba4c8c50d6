//! The story: changes made in Entra (graph-sim), and LiteLLM's teams and members after each.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use graph_sim::GraphSim;
use sea_orm::{ConnectionTrait, DbBackend, Statement};

use entra_sync_testkit::litellm_proxy::LiteLlmProxy;
use reqwest::StatusCode;

use crate::access;
use crate::tenant::*;
use crate::world::{Demo, PATIENCE};

/// A team as LiteLLM's tables show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Team {
    pub alias: String,
    pub id: String,
    /// Sorted by email.
    pub members: Vec<Member>,
    /// The team's virtual keys that work (not blocked): alias and owner's email, sorted.
    pub keys: Vec<String>,
    /// `max_budget` and `budget_duration`, e.g. `5000 per 30d`, or `none`.
    pub budget: String,
}

/// A member of a team: the user's email, LiteLLM role, and role in the team.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Member {
    pub email: String,
    pub role: String,
    /// `user` or `admin` (`members_with_roles`).
    pub team_role: String,
}

/// One change in Entra (or, first, by someone in LiteLLM) and what LiteLLM must show after it.
pub struct Step {
    pub title: &'static str,
    pub change: fn(&GraphSim),
    /// What happens to Linus's key in this step.
    pub linus_key: Option<LinusKey>,
    /// Every team, sorted by alias.
    pub expected: Vec<Team>,
}

/// The story of Linus's key for Engineering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinusKey {
    /// He makes it in LiteLLM, before the step's change: with LiteLLM's proxy through its
    /// `/key/generate`, without it as the row `/key/generate` stores.
    Made,
    /// The step's change removes him from the key's team: with LiteLLM's proxy, the key is asked
    /// before the change and until the proxy refuses it.
    OwnerRemoved,
}

/// What LiteLLM's proxy answered Linus's key, when the demo runs with it (`--with-proxy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyAnswers {
    /// Just before he is removed in Entra (the request also puts the key in the proxy's cache).
    pub before: StatusCode,
    /// Once the proxy stopped accepting it.
    pub after: StatusCode,
    /// How long after the change in Entra the proxy first refused it.
    pub refused_after: Duration,
}

/// The alias of the key Linus makes for Engineering.
pub const LINUS_KEY: &str = "linus-laptop";

/// Linus makes a key for Engineering in LiteLLM's UI (`/key/generate` stores its hash).
fn linus_key_row() -> String {
    format!(
        r#"INSERT INTO "LiteLLM_VerificationToken" (token, key_alias, user_id, team_id, models)
           VALUES (md5('sk-linus-laptop'), '{LINUS_KEY}', '{}', '{}', ARRAY[]::text[])"#,
        user_id(LINUS),
        group_id(ENGINEERING)
    )
}

/// LiteLLM's role for a user it creates without a role from Entra (LiteLLM's default).
const DEFAULT_ROLE: &str = "internal_user_viewer";

fn team(group: u128, alias: &str, members: &[(usize, &str)]) -> Team {
    let mut members: Vec<Member> = members
        .iter()
        .map(|&(person, role)| Member {
            email: email(person),
            role: role.to_owned(),
            team_role: "user".to_owned(),
        })
        .collect();
    members.sort();
    Team {
        alias: alias.to_owned(),
        id: group_id(group).to_string(),
        members,
        keys: Vec::new(),
        budget: "none".to_owned(),
    }
}

impl Team {
    /// The same team, with a working key of `owner`'s.
    fn with_key(mut self, alias: &str, owner: usize) -> Self {
        self.keys.push(format!("{alias} ({})", email(owner)));
        self
    }

    /// The same team, with `person` as one of its admins.
    fn with_admin(mut self, person: usize) -> Self {
        for member in &mut self.members {
            if member.email == email(person) {
                member.team_role = "admin".to_owned();
            }
        }
        self
    }

    /// The same team, with this budget (`5000 per 30d`).
    fn with_budget(mut self, budget: &str) -> Self {
        self.budget = budget.to_owned();
        self
    }
}

/// The worker's first sync: the group assigned from the start.
/// The demo's team rules (`ENTRA_SYNC_TEAM_RULES`): Research's team gets a budget of its own;
/// other teams get LiteLLM's `default_team_params` (none in the demo).
pub const TEAM_RULES: &str = r#"rules:
  - match: { name_glob: "Research*" }
    team: { max_budget: 5000, budget_duration: 30d }
"#;

/// Research's budget from [`TEAM_RULES`], as the table shows it.
const RESEARCH_BUDGET: &str = "5000 per 30d";

fn research() -> Team {
    team(
        RESEARCH,
        "Research",
        &[(ALAN, DEFAULT_ROLE), (BARBARA, DEFAULT_ROLE)],
    )
    .with_budget(RESEARCH_BUDGET)
}

pub fn start() -> Step {
    let research = research();
    Step {
        title: "The worker starts: Research, assigned to the app already, becomes a team with its rule's budget",
        change: |_| {},
        linus_key: None,
        expected: vec![research],
    }
}

pub fn steps() -> Vec<Step> {
    let research = research();
    let with_research = |engineering: Team| {
        let mut teams = vec![engineering, research.clone()];
        teams.sort_by(|a, b| a.alias.cmp(&b.alias));
        teams
    };
    let engineering =
        |alias: &str, members: &[(usize, &str)]| with_research(team(ENGINEERING, alias, members));
    let iu = INTERNAL_USER;
    let platform_engineering = team(
        ENGINEERING,
        "Platform Engineering",
        &[(ADA, iu), (GRACE, PROXY_ADMIN), (MARGARET, iu)],
    );
    let research_with_katherine = team(
        RESEARCH,
        "Research",
        &[
            (ALAN, DEFAULT_ROLE),
            (BARBARA, DEFAULT_ROLE),
            (KATHERINE, DEFAULT_ROLE),
        ],
    )
    .with_budget(RESEARCH_BUDGET);
    vec![
        Step {
            title: "Engineering is assigned to the app, with the app role internal_user",
            change: |sim| {
                sim.change(|t| {
                    (
                        t.assign(group_id(ENGINEERING), role_id(INTERNAL_USER)),
                        Vec::new(),
                    )
                });
            },
            linus_key: None,
            expected: engineering("Engineering", &[(ADA, iu), (GRACE, iu), (LINUS, iu)]),
        },
        Step {
            title: "Margaret Hamilton is added to Engineering (and Linus makes a key for it in LiteLLM)",
            change: |sim| sim.apply(|t| t.add_member(group_id(ENGINEERING), user_id(MARGARET))),
            linus_key: Some(LinusKey::Made),
            expected: with_research(
                team(
                    ENGINEERING,
                    "Engineering",
                    &[(ADA, iu), (GRACE, iu), (LINUS, iu), (MARGARET, iu)],
                )
                .with_key(LINUS_KEY, LINUS),
            ),
        },
        Step {
            title: "Linus Torvalds is removed from Engineering: his key for it goes too",
            change: |sim| sim.apply(|t| t.remove_member(group_id(ENGINEERING), user_id(LINUS))),
            linus_key: Some(LinusKey::OwnerRemoved),
            expected: engineering("Engineering", &[(ADA, iu), (GRACE, iu), (MARGARET, iu)]),
        },
        Step {
            title: "Engineering is renamed Platform Engineering",
            change: |sim| {
                sim.apply(|t| t.upsert_group(group_id(ENGINEERING), "Platform Engineering", None))
            },
            linus_key: None,
            expected: engineering(
                "Platform Engineering",
                &[(ADA, iu), (GRACE, iu), (MARGARET, iu)],
            ),
        },
        Step {
            title: "Grace Hopper is given the app role proxy_admin",
            change: |sim| {
                sim.change(|t| (t.assign(user_id(GRACE), role_id(PROXY_ADMIN)), Vec::new()));
            },
            linus_key: None,
            expected: engineering(
                "Platform Engineering",
                &[(ADA, iu), (GRACE, PROXY_ADMIN), (MARGARET, iu)],
            ),
        },
        Step {
            title: "Machine Learning (Katherine Johnson) is nested into Research: she joins its team",
            change: |sim| {
                sim.apply(|t| t.add_member(group_id(RESEARCH), group_id(MACHINE_LEARNING)))
            },
            linus_key: None,
            expected: vec![
                platform_engineering.clone(),
                research_with_katherine.clone(),
            ],
        },
        Step {
            title: "Barbara Liskov is made an owner of Research: she becomes its team admin",
            change: |sim| sim.apply(|t| t.add_owner(group_id(RESEARCH), user_id(BARBARA))),
            linus_key: None,
            expected: vec![
                platform_engineering,
                research_with_katherine.with_admin(BARBARA),
            ],
        },
    ]
}

/// What playing the story showed.
#[derive(Clone, Debug)]
pub struct Played {
    /// How long each step (the start first) took to appear in LiteLLM's tables.
    pub took: Vec<Duration>,
    /// What LiteLLM's proxy answered Linus's key, when it ran.
    pub linus_key: Option<KeyAnswers>,
}

/// Plays the story: the worker's first sync, then each step; after each, waits until LiteLLM's
/// tables show what Entra says and prints them. With LiteLLM's proxy, Linus's key is made
/// through it and asked before and after he is removed, and the answers are printed too.
pub async fn play(
    demo: &mut Demo,
    proxy: Option<&LiteLlmProxy>,
    out: &mut dyn Write,
) -> Result<Played> {
    let steps = steps();
    let total = steps.len();
    let mut played = Played {
        took: Vec::new(),
        linus_key: None,
    };
    let mut linus_key = None;
    let all = std::iter::once(("Start".to_owned(), start()))
        .chain((1..).map(|n| format!("{n}/{total}")).zip(steps));
    for (label, step) in all {
        writeln!(out, "\n{label:<5}  {}", step.title)?;
        let asked = match (step.linus_key, proxy, &linus_key) {
            (Some(LinusKey::Made), Some(proxy), _) => {
                linus_key = Some(access::make_linus_key(proxy).await?);
                None
            }
            (Some(LinusKey::Made), None, _) => {
                demo.db.conn().execute_unprepared(&linus_key_row()).await?;
                None
            }
            (Some(LinusKey::OwnerRemoved), Some(proxy), Some(key)) => {
                let before = access::ask(proxy, key).await;
                writeln!(
                    out,
                    "      LiteLLM's proxy, Linus's key {LINUS_KEY}: {before} before the change"
                )?;
                Some((proxy, key, before))
            }
            _ => None,
        };
        let started = Instant::now();
        (step.change)(&demo.sim);
        let (teams, refused) = match asked {
            None => (wait_for(demo, &step.expected).await?, None),
            Some((proxy, key, before)) => {
                // Both at once, so that each is timed from the change, not after the other.
                let (teams, refused) = tokio::join!(
                    wait_for(demo, &step.expected),
                    access::wait_refused(proxy, key, started)
                );
                (teams?, Some((before, refused?)))
            }
        };
        let elapsed = started.elapsed();
        writeln!(
            out,
            "      in LiteLLM after {:.1} s:",
            elapsed.as_secs_f64()
        )?;
        write_table(out, &teams)?;
        if let Some((before, (after, refused_after))) = refused {
            writeln!(
                out,
                "      LiteLLM's proxy, Linus's key {LINUS_KEY}: {after}, {:.1} s after the change in Entra",
                refused_after.as_secs_f64()
            )?;
            played.linus_key = Some(KeyAnswers {
                before,
                after,
                refused_after,
            });
        }
        played.took.push(elapsed);
    }
    Ok(played)
}

/// Polls LiteLLM's tables every 100 ms until they show `expected`.
async fn wait_for(demo: &mut Demo, expected: &[Team]) -> Result<Vec<Team>> {
    let started = Instant::now();
    loop {
        let teams = teams(demo).await?;
        if teams == expected {
            return Ok(teams);
        }
        demo.check_processes()?;
        if started.elapsed() > PATIENCE {
            let mut text = Vec::new();
            writeln!(text, "expected:")?;
            write_table(&mut text, expected)?;
            writeln!(text, "found:")?;
            write_table(&mut text, &teams)?;
            bail!(
                "LiteLLM's tables did not show the change within {} s\n{}",
                PATIENCE.as_secs(),
                String::from_utf8_lossy(&text)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every team in `"LiteLLM_TeamTable"` with the members of its `members_with_roles`, their
/// email and role from `"LiteLLM_UserTable"`, and its keys that work.
pub async fn teams(demo: &Demo) -> Result<Vec<Team>> {
    const SQL: &str = r#"
        SELECT t.team_id, coalesce(t.team_alias, '') AS team_alias,
               coalesce(t.max_budget::text || ' per ' || coalesce(t.budget_duration, 'ever'),
                        'none') AS budget,
               coalesce(u.user_email, m->>'user_email', m->>'user_id') AS email,
               coalesce(u.user_role, '') AS user_role,
               coalesce(m->>'role', '') AS team_role
        FROM "LiteLLM_TeamTable" t
        LEFT JOIN LATERAL jsonb_array_elements(
            CASE jsonb_typeof(t.members_with_roles)
                WHEN 'array' THEN t.members_with_roles ELSE '[]'::jsonb END) m ON true
        LEFT JOIN "LiteLLM_UserTable" u ON u.user_id = m->>'user_id'
        ORDER BY t.team_id"#;
    let rows = demo
        .db
        .conn()
        .query_all(Statement::from_string(DbBackend::Postgres, SQL))
        .await?;
    let mut teams: Vec<Team> = Vec::new();
    for row in rows {
        let id: String = row.try_get("", "team_id")?;
        let alias: String = row.try_get("", "team_alias")?;
        let email: Option<String> = row.try_get("", "email")?;
        let role: String = row.try_get("", "user_role")?;
        let team_role: String = row.try_get("", "team_role")?;
        let budget: String = row.try_get("", "budget")?;
        if teams.last().is_none_or(|last| last.id != id) {
            teams.push(Team {
                alias,
                id,
                members: Vec::new(),
                keys: Vec::new(),
                budget,
            });
        }
        if let (Some(email), Some(team)) = (email, teams.last_mut()) {
            team.members.push(Member {
                email,
                role,
                team_role,
            });
        }
    }
    const KEYS: &str = r#"
        SELECT k.team_id, coalesce(k.key_alias, k.token) || ' ('
                 || coalesce(u.user_email, k.user_id, 'no owner') || ')' AS key
        FROM "LiteLLM_VerificationToken" k
        LEFT JOIN "LiteLLM_UserTable" u ON u.user_id = k.user_id
        WHERE k.team_id IS NOT NULL AND k.blocked IS NOT TRUE"#;
    for row in demo
        .db
        .conn()
        .query_all(Statement::from_string(DbBackend::Postgres, KEYS))
        .await?
    {
        let team_id: String = row.try_get("", "team_id")?;
        let key: String = row.try_get("", "key")?;
        if let Some(team) = teams.iter_mut().find(|t| t.id == team_id) {
            team.keys.push(key);
        }
    }
    teams.sort_by(|a, b| (&a.alias, &a.id).cmp(&(&b.alias, &b.id)));
    for team in &mut teams {
        team.members.sort();
        team.keys.sort();
    }
    Ok(teams)
}

/// The teams as a small table: team_alias, team_id, then one line a member.
pub fn write_table(out: &mut dyn Write, teams: &[Team]) -> std::io::Result<()> {
    if teams.is_empty() {
        return writeln!(out, "      (no teams)");
    }
    let width = |header: &str, cells: &mut dyn Iterator<Item = usize>| {
        cells.chain([header.len()]).max().unwrap_or_default()
    };
    let alias_w = width("team_alias", &mut teams.iter().map(|t| t.alias.len()));
    let id_w = width("team_id", &mut teams.iter().map(|t| t.id.len()));
    let email_w = width(
        "member",
        &mut teams.iter().flat_map(|t| &t.members).map(|m| m.email.len()),
    );
    let role_w = width(
        "user_role",
        &mut teams.iter().flat_map(|t| &t.members).map(|m| m.role.len()),
    );
    let line = |out: &mut dyn Write, cells: [&str; 5]| {
        let [alias, id, email, role, team_role] = cells;
        let text = format!(
            "      {alias:alias_w$}  {id:id_w$}  {email:email_w$}  {role:role_w$}  {team_role}"
        );
        writeln!(out, "{}", text.trim_end())
    };
    line(
        out,
        ["team_alias", "team_id", "member", "user_role", "team role"],
    )?;
    for team in teams {
        if team.members.is_empty() {
            line(out, [&team.alias, &team.id, "(no members)", "", ""])?;
        }
        for (n, member) in team.members.iter().enumerate() {
            let (alias, id) = if n == 0 {
                (team.alias.as_str(), team.id.as_str())
            } else {
                ("", "")
            };
            line(
                out,
                [alias, id, &member.email, &member.role, &member.team_role],
            )?;
        }
        let keys = if team.keys.is_empty() {
            "none".to_owned()
        } else {
            team.keys.join(", ")
        };
        line(out, ["", "", &format!("keys: {keys}"), "", ""])?;
        line(out, ["", "", &format!("budget: {}", team.budget), "", ""])?;
    }
    Ok(())
}
