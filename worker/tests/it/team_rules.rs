//! Team rules (`ENTRA_SYNC_TEAM_RULES`) against real PostgreSQL (LiteLLM's schema), Redis and
//! graph-sim: which rule a new team follows, the fallback to default_team_params, organizations
//! and their memberships as LiteLLM writes them, an admin's later edit kept, every bad rule
//! stopping the worker at start, and the dry run reporting teams that differ from their rule.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::graph_common;
use crate::world;

use std::path::PathBuf;
use std::time::Duration;

use chrono::Utc;
use entity::litellm::team;
use sea_orm::{ConnectionTrait, DbBackend, EntityTrait, Statement};
use serde_json::{Value, json};
use uuid::Uuid;
use worker::litellm_config::LiteLlmSettings;
use worker::store::{Change, RemovalMode, Store};
use worker::sync::{Syncer, UnassignedPolicy};
use worker::team_rules::TeamRules;
use world::*;

use graph_common::*;

const ORG: &str = "research-org";

/// LiteLLM's config for these tests: default_team_params that rules fall back to.
const LITELLM_CONFIG: &str = "litellm_settings:
  default_team_params:
    max_budget: 10
    models: [cheap]
    tpm_limit: 1234
    rpm_limit: 7
";

/// Four rules; Engineering (group 1) matches the first two, by id and by glob.
fn rules_yaml() -> String {
    format!(
        r#"rules:
  - match: {{ group_id: "{g1}" }}
    team: {{ max_budget: 5000, budget_duration: 30d, models: [gpt-4o, o3], tpm_limit: 100000, rpm_limit: 500, team_member_budget: 200 }}
    organization_id: {ORG}
  - match: {{ name_glob: "E*" }}
    team: {{ max_budget: 1 }}
  - match: {{ name_glob: "Interns*" }}
    team: {{ max_budget: 50, budget_duration: 30d }}
  - match: {{ name_regex: "^Res(earch|ources)$" }}
    team: {{ models: [gpt-4o-mini] }}
"#,
        g1 = gid(1)
    )
}

/// A file under the system's temporary directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(text: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("entra-sync-team-rules-{}.yaml", Uuid::new_v4()));
        std::fs::write(&path, text).unwrap();
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Group 1 (Engineering, users 1-5) is assigned already; group 2 (Research, users 3-8), group 3
/// (Interns 2026, users 9-10) and group 4 (Sales, user 10) are assigned too.
fn assign_more_groups(world: &World) {
    world
        .sim
        .apply(|t| t.upsert_group(gid(3), "Interns 2026", None));
    world.sim.apply(|t| t.add_member(gid(3), uid(9)));
    world.sim.apply(|t| t.add_member(gid(3), uid(10)));
    world.sim.apply(|t| t.upsert_group(gid(4), "Sales", None));
    world.sim.apply(|t| t.add_member(gid(4), uid(10)));
    world.sim.change(|t| {
        for n in 2..=4 {
            t.assign(gid(n), Uuid::nil()).unwrap();
        }
        ((), Vec::new())
    });
}

/// The organization, as LiteLLM's /organization/new leaves it (its budget row first).
async fn create_organization(world: &World, id: &str) {
    world
        .db
        .conn()
        .execute_unprepared(&format!(
            r#"INSERT INTO "LiteLLM_BudgetTable" (budget_id, created_by, updated_by)
                 VALUES ('{id}-budget', 'admin', 'admin');
               INSERT INTO "LiteLLM_OrganizationTable"
                 (organization_id, organization_alias, budget_id, models, created_by, updated_by)
                 VALUES ('{id}', 'Research', '{id}-budget', ARRAY[]::text[], 'admin', 'admin');"#
        ))
        .await
        .unwrap();
}

fn syncer(world: &World, rules: &str) -> Syncer {
    let settings = LiteLlmSettings::parse(LITELLM_CONFIG, "test config", &|_| None).unwrap();
    let rules = TeamRules::parse(rules, "rules.yaml", &|_| None).unwrap();
    let store =
        Store::new(world.worker_db.clone(), settings, RemovalMode::Managed).with_team_rules(rules);
    let (client, _) = secret_client(&world.sim);
    Syncer::new(client, store, UnassignedPolicy::RemoveMembers)
}

async fn team(world: &World, n: u128) -> team::Model {
    team::Entity::find_by_id(gid(n).to_string())
        .one(world.db.conn())
        .await
        .unwrap()
        .expect("the team exists")
}

/// Rows of a query, each as a JSON object.
async fn rows(world: &World, sql: &str) -> Vec<Value> {
    world
        .db
        .conn()
        .query_all(Statement::from_string(
            DbBackend::Postgres,
            format!("SELECT coalesce(to_jsonb(q), 'null') AS row FROM ({sql}) q"),
        ))
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.try_get::<Value>("", "row").unwrap())
        .collect()
}

fn strings(items: &[&str]) -> Option<Vec<String>> {
    Some(items.iter().map(|s| (*s).to_owned()).collect())
}

async fn organization_members(world: &World) -> Vec<Value> {
    rows(
        world,
        &format!(
            r#"SELECT user_id, user_role FROM "LiteLLM_OrganizationMembership"
               WHERE organization_id = '{ORG}' ORDER BY user_id"#
        ),
    )
    .await
}

#[tokio::test]
async fn each_new_team_follows_its_first_matching_rule_over_the_defaults() {
    let world = World::new().await;
    create_organization(&world, ORG).await;
    assign_more_groups(&world);
    let syncer = syncer(&world, &rules_yaml());
    syncer.poll_assignments(Utc::now()).await.unwrap();

    // Engineering: rule 1 (by id) wins over rule 2 (by glob), every field the rule gives.
    let engineering = team(&world, 1).await;
    assert_eq!(
        engineering.max_budget,
        Some(5000.0),
        "rule 1, not rule 2's 1"
    );
    assert_eq!(engineering.budget_duration.as_deref(), Some("30d"));
    assert_eq!(engineering.models, strings(&["gpt-4o", "o3"]));
    assert_eq!(engineering.tpm_limit, Some(100_000));
    assert_eq!(engineering.rpm_limit, Some(500));
    assert_eq!(engineering.organization_id.as_deref(), Some(ORG));
    assert!(engineering.budget_reset_at.is_some());

    // Interns 2026: rule 3 (glob); what it does not give comes from default_team_params.
    let interns = team(&world, 3).await;
    assert_eq!(interns.max_budget, Some(50.0));
    assert_eq!(interns.budget_duration.as_deref(), Some("30d"));
    assert_eq!(interns.models, strings(&["cheap"]));
    assert_eq!(interns.tpm_limit, Some(1234));
    assert_eq!(interns.rpm_limit, Some(7));
    assert_eq!(interns.organization_id, None);

    // Research: rule 4 (regex), models only.
    let research = team(&world, 2).await;
    assert_eq!(research.models, strings(&["gpt-4o-mini"]));
    assert_eq!(research.max_budget, Some(10.0));
    assert_eq!(research.rpm_limit, Some(7));
    assert_eq!(research.budget_duration, None);

    // Sales: no rule, default_team_params alone.
    let sales = team(&world, 4).await;
    assert_eq!(sales.max_budget, Some(10.0));
    assert_eq!(sales.models, strings(&["cheap"]));
    assert_eq!(sales.tpm_limit, Some(1234));
    assert_eq!(sales.budget_duration, None);
    assert_eq!(sales.metadata, json!({}));
    for other in [&interns, &research] {
        assert!(other.metadata.get("team_member_budget_id").is_none());
    }

    // Engineering's member budget: a LiteLLM_BudgetTable row as LiteLLM's new_team makes it,
    // named in the team's metadata and given to every membership row.
    let budget_id = engineering.metadata["team_member_budget_id"]
        .as_str()
        .expect("metadata names the member budget")
        .to_owned();
    assert!(
        budget_id.starts_with("team-Engineering-budget-"),
        "{budget_id}"
    );
    let budget = rows(
        &world,
        &format!(
            r#"SELECT max_budget, budget_duration, tpm_limit, rpm_limit, created_by, updated_by,
                      budget_reset_at = (SELECT budget_reset_at FROM "LiteLLM_TeamTable"
                                         WHERE team_id = '{}') AS resets_with_team
               FROM "LiteLLM_BudgetTable" WHERE budget_id = '{budget_id}'"#,
            gid(1)
        ),
    )
    .await;
    assert_eq!(
        budget,
        [json!({
            "max_budget": 200, "budget_duration": "30d", "tpm_limit": null, "rpm_limit": null,
            "created_by": "default_user_id", "updated_by": "default_user_id",
            "resets_with_team": true
        })]
    );
    let memberships = rows(
        &world,
        &format!(
            r#"SELECT user_id, budget_id FROM "LiteLLM_TeamMembership"
               WHERE team_id = '{}' ORDER BY user_id"#,
            gid(1)
        ),
    )
    .await;
    assert_eq!(memberships.len(), 5);
    assert!(
        memberships
            .iter()
            .all(|m| m["budget_id"] == budget_id.as_str()),
        "{memberships:?}"
    );
    let other_budgets = world
        .count(&format!(
            r#"SELECT count(*) FROM "LiteLLM_TeamMembership"
               WHERE team_id <> '{}' AND budget_id IS NOT NULL"#,
            gid(1)
        ))
        .await;
    assert_eq!(other_budgets, 0);
}

#[tokio::test]
async fn members_of_a_team_in_an_organization_become_its_members_as_litellm_makes_them() {
    let world = World::new().await;
    create_organization(&world, ORG).await;
    // User 1 is an org admin already (an admin's doing): their membership and role stay.
    world
        .db
        .conn()
        .execute_unprepared(&format!(
            r#"INSERT INTO "LiteLLM_UserTable" (user_id, user_email, teams, metadata)
                 VALUES ('{u1}', 'user1@contoso.example', ARRAY[]::text[], '{{}}');
               INSERT INTO "LiteLLM_OrganizationMembership" (user_id, organization_id, user_role)
                 VALUES ('{u1}', '{ORG}', 'org_admin');"#,
            u1 = uid(1)
        ))
        .await
        .unwrap();
    let syncer = syncer(&world, &rules_yaml());
    let report = syncer.poll_assignments(Utc::now()).await.unwrap();
    let org_changes: Vec<&Change> = report
        .changes
        .list()
        .iter()
        .filter(|c| matches!(c, Change::OrganizationMemberAdded { .. }))
        .collect();
    assert_eq!(org_changes.len(), 4, "users 2-5: {org_changes:?}");
    let expected = |users: &[u128]| -> Vec<Value> {
        let mut rows: Vec<Value> = users
            .iter()
            .map(|n| {
                let role = if *n == 1 {
                    "org_admin"
                } else {
                    "internal_user"
                };
                json!({"user_id": uid(*n).to_string(), "user_role": role})
            })
            .collect();
        rows.sort_by_key(|row| row["user_id"].as_str().unwrap().to_owned());
        rows
    };
    assert_eq!(
        organization_members(&world).await,
        expected(&[1, 2, 3, 4, 5])
    );
    // The user rows' own organization_id is not set: LiteLLM's add_member_to_organization
    // writes the membership row only.
    assert_eq!(
        world
            .count(r#"SELECT count(*) FROM "LiteLLM_UserTable" WHERE organization_id IS NOT NULL"#)
            .await,
        0
    );

    // Applied again: nothing new, no duplicate.
    let again = syncer.reconcile(Utc::now()).await.unwrap();
    assert!(
        !again
            .changes
            .list()
            .iter()
            .any(|c| matches!(c, Change::OrganizationMemberAdded { .. })),
        "{:?}",
        again.changes.list()
    );
    assert_eq!(
        organization_members(&world).await,
        expected(&[1, 2, 3, 4, 5])
    );

    // A member who joins becomes an organization member; one who leaves the team stays one
    // (LiteLLM's team_member_delete leaves organization memberships alone).
    world.sim.apply(|t| t.add_member(gid(1), uid(6)));
    world.sim.apply(|t| t.remove_member(gid(1), uid(2)));
    syncer.reconcile(Utc::now()).await.unwrap();
    assert_eq!(
        world.members(1).await,
        Some(
            users(1..=6)
                .into_iter()
                .filter(|u| *u != uid(2).to_string())
                .collect()
        )
    );
    assert_eq!(
        organization_members(&world).await,
        expected(&[1, 2, 3, 4, 5, 6])
    );
    let audited = world
        .count("SELECT count(*) FROM entra_sync_audit_log WHERE kind = 'organization_member_added'")
        .await;
    assert_eq!(audited, 5);
}

#[tokio::test]
async fn an_admins_later_edit_is_kept_and_the_dry_run_reports_the_difference() {
    let world = World::new().await;
    create_organization(&world, ORG).await;
    assign_more_groups(&world);
    let rules = TempFile::new(&rules_yaml());
    let config = TempFile::new(LITELLM_CONFIG);
    let env = |world: &World| {
        let mut env = world.worker_env("team-rules");
        env.push(("ENTRA_SYNC_TEAM_RULES".into(), rules.path().to_owned()));
        env.push(("LITELLM_CONFIG".into(), config.path().to_owned()));
        env
    };
    // A real sync creates the teams by their rules.
    let (ok, _, stderr) = sync_command(&env(&world), false).await;
    assert!(ok, "{stderr}");
    assert_eq!(team(&world, 3).await.max_budget, Some(50.0));

    // An admin edits Engineering and Interns in LiteLLM, and Sales (which has no rule).
    let budget_id = team(&world, 1).await.metadata["team_member_budget_id"]
        .as_str()
        .unwrap()
        .to_owned();
    world
        .db
        .conn()
        .execute_unprepared(&format!(
            r#"UPDATE "LiteLLM_TeamTable" SET max_budget = 4000, models = ARRAY['gpt-4o', 'gpt-5'],
                 organization_id = NULL, rpm_limit = 1 WHERE team_id = '{g1}';
               UPDATE "LiteLLM_BudgetTable" SET max_budget = 250 WHERE budget_id = '{budget_id}';
               UPDATE "LiteLLM_TeamTable" SET budget_duration = 'monthly', tpm_limit = 9
                 WHERE team_id = '{g3}';
               UPDATE "LiteLLM_TeamTable" SET max_budget = 99 WHERE team_id = '{g4}';"#,
            g1 = gid(1),
            g3 = gid(3),
            g4 = gid(4)
        ))
        .await
        .unwrap();
    let edited = team(&world, 1).await;

    // A reconciliation keeps every edit.
    let (ok, _, stderr) = sync_command(&env(&world), false).await;
    assert!(ok, "{stderr}");
    assert_eq!(team(&world, 1).await, edited);
    assert_eq!(team(&world, 4).await.max_budget, Some(99.0));

    // The dry run reports Engineering's differences from rule 1, field by field, and nothing
    // for Interns (monthly is 30d; tpm_limit is not the rule's field), Research or Sales.
    let (ok, stdout, stderr) = sync_command(&env(&world), true).await;
    assert!(ok, "{stderr}");
    let reports: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|line| line["kind"] == "team_differs_from_rule")
        .collect();
    assert_eq!(
        reports,
        [json!({
            "kind": "team_differs_from_rule",
            "team_id": gid(1).to_string(),
            "team_alias": "Engineering",
            "rule": 1,
            "fields": [
                {"field": "max_budget", "team": 4000.0, "rule": 5000.0},
                {"field": "models", "team": ["gpt-4o", "gpt-5"], "rule": ["gpt-4o", "o3"]},
                {"field": "rpm_limit", "team": 1, "rule": 500},
                {"field": "organization_id", "team": null, "rule": ORG},
                {"field": "team_member_budget", "team": 250.0, "rule": 200.0},
            ]
        })],
        "{stdout}"
    );
    assert!(
        stderr.contains("1 teams differ from their team rule"),
        "{stderr}"
    );
    // Reported, never changed.
    assert_eq!(team(&world, 1).await, edited);
}

/// `entra-sync-worker sync --full [--dry-run]` to its exit: success, stdout, stderr.
async fn sync_command(env: &[(String, String)], dry_run: bool) -> (bool, String, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_entra-sync-worker"));
    command.args(["sync", "--full"]);
    if dry_run {
        command.arg("--dry-run");
    }
    worker_output(command, env).await
}

async fn worker_output(
    mut command: tokio::process::Command,
    env: &[(String, String)],
) -> (bool, String, String) {
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        command.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("the worker exits")
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `entra-sync-worker run` with these rules as rule 2, after a good rule 1.
async fn run_with_rule(env: &[(String, String)], rule: &str) -> (bool, String) {
    let file = TempFile::new(&format!(
        "rules:\n  - match: {{name_glob: 'A*'}}\n    team: {{max_budget: 1}}\n{rule}"
    ));
    let mut env = env.to_vec();
    env.push(("ENTRA_SYNC_TEAM_RULES".into(), file.path().to_owned()));
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_entra-sync-worker"));
    command.arg("run");
    let (ok, _, stderr) = worker_output(command, &env).await;
    (ok, stderr)
}

#[tokio::test]
async fn every_bad_rule_stops_the_worker_at_start_with_its_position_and_reason() {
    // Checked before anything connects: nothing here needs to be reachable.
    let unreachable: Vec<(String, String)> = [
        ("DATABASE_URL", "postgres://postgres@127.0.0.1:9/nowhere"),
        ("REDIS_URL", "redis://127.0.0.1:9"),
        ("AZURE_TENANT_ID", "tenant"),
        ("AZURE_CLIENT_ID", "client"),
        ("AZURE_CLIENT_SECRET", "secret"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let cases = [
        (
            "unknown key",
            "  - match: {name_glob: 'B*'}\n    teams: {max_budget: 1}\n",
            "unknown field `teams`, expected one of `match`, `team`, `organization_id`",
        ),
        (
            "unknown team field",
            "  - match: {name_glob: 'B*'}\n    team: {max_budgett: 1}\n",
            "team.max_budgett: unknown field",
        ),
        (
            "no matcher",
            "  - team: {max_budget: 1}\n",
            "no match: match needs exactly one of group_id, name_glob, name_regex",
        ),
        (
            "two matchers",
            "  - match: {group_id: '6c1f0d2e-8a4b-4c55-9e21-3f7a1b2c3d4e', name_glob: 'B*'}\n",
            "match needs exactly one of group_id, name_glob, name_regex; group_id and name_glob given",
        ),
        (
            "invalid regex",
            "  - match: {name_regex: '^('}\n",
            "name_regex \"^(\": regex parse error: unclosed group",
        ),
        (
            "invalid glob",
            "  - match: {name_glob: 'eng-[a'}\n",
            "name_glob \"eng-[a\": Pattern syntax error",
        ),
        (
            "bad value",
            "  - match: {name_glob: 'B*'}\n    team: {budget_duration: 30x}\n",
            "team.budget_duration: \"30x\" is not a duration",
        ),
    ];
    for (name, rule, reason) in cases {
        let (ok, stderr) = run_with_rule(&unreachable, rule).await;
        assert!(!ok, "{name}: the worker ran");
        let expected = format!("ENTRA_SYNC_TEAM_RULES rule 2: {reason}");
        assert!(
            stderr.contains(&expected),
            "{name}: expected {expected:?} in {stderr}"
        );
    }

    // An unknown organization is found in the database, by `run` and by `sync`.
    let world = World::new().await;
    create_organization(&world, ORG).await;
    let env = world.worker_env("bad-rules");
    let rule = "  - match: {name_glob: 'B*'}\n    organization_id: no-such-org\n";
    let expected = "ENTRA_SYNC_TEAM_RULES rule 2: organization_id \"no-such-org\" does not exist in LiteLLM_OrganizationTable";
    let (ok, stderr) = run_with_rule(&env, rule).await;
    assert!(!ok);
    assert!(stderr.contains(expected), "{stderr}");

    let file = TempFile::new(&format!(
        "rules:\n  - match: {{name_glob: 'A*'}}\n    organization_id: {ORG}\n{rule}"
    ));
    let mut env = env.clone();
    env.push(("ENTRA_SYNC_TEAM_RULES".into(), file.path().to_owned()));
    let (ok, stdout, stderr) = sync_command(&env, true).await;
    assert!(!ok);
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains(expected), "{stderr}");
    assert_eq!(
        world
            .count(r#"SELECT count(*) FROM "LiteLLM_TeamTable""#)
            .await,
        0
    );
}
