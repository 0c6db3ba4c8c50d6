//! `entra-sync-worker audit`: the audit log read back by user, team, time and kind, each change
//! with the unit of work that made it; and the log kept to its retention, by one replica.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::graph_common;
use crate::world;

use chrono::{Duration, Utc};
use graph_common::*;
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use uuid::Uuid;
use worker::litellm_config::LiteLlmSettings;
use worker::store::{AuditEntry, AuditFilter, RemovalMode, Store};
use world::*;

fn store(world: &World) -> Store {
    Store::new(
        world.db.conn().clone(),
        LiteLlmSettings::default(),
        RemovalMode::Managed,
    )
}

/// The audit entries `filter` finds, as (kind, cause) pairs, newest first.
async fn found(world: &World, filter: AuditFilter) -> Vec<(String, Option<String>)> {
    let entries: Vec<AuditEntry> = store(world).audit_entries(&filter).await.unwrap();
    entries.into_iter().map(|e| (e.kind, e.cause)).collect()
}

fn pair(kind: &str, cause: &str) -> (String, Option<String>) {
    (kind.to_owned(), Some(cause.to_owned()))
}

/// Runs `entra-sync-worker audit` with these arguments; returns its stdout.
fn audit_command(world: &World, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_entra-sync-worker"))
        .arg("audit")
        .args(args)
        .env_clear()
        .envs(world.worker_env("audit"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn why_a_user_lost_a_team_is_answered_by_email_and_alias_with_the_round_that_removed_them() {
    let world = World::new().await;
    world.sim.change(|t| {
        t.assign(gid(2), Uuid::nil()).unwrap();
        ((), Vec::new())
    });
    let syncer = world.syncer();
    let joined = Utc::now() - Duration::minutes(10);
    syncer.poll_assignments(joined).await.unwrap();
    world.sim.apply(|t| t.remove_member(gid(2), uid(3)));
    let removed = Utc::now();
    syncer.delta_round(removed).await.unwrap();
    let email: String = world
        .db
        .conn()
        .query_one(Statement::from_string(
            DbBackend::Postgres,
            format!(
                r#"SELECT user_email FROM "LiteLLM_UserTable" WHERE user_id = '{}'"#,
                uid(3)
            ),
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index(0)
        .unwrap();

    // By email and alias: the removal by the round, then the joining by the poll.
    let why = AuditFilter {
        user: Some(email.to_uppercase()),
        team: Some("Research".into()),
        limit: 100,
        ..AuditFilter::default()
    };
    assert_eq!(
        found(&world, why.clone()).await,
        [
            pair("member_removed", "delta_round"),
            pair("member_added", "assignment_poll")
        ]
    );
    // By ids, the same; other users' and teams' entries are not among them.
    let by_ids = AuditFilter {
        user: Some(uid(3).to_string()),
        team: Some(gid(2).to_string()),
        ..why.clone()
    };
    assert_eq!(found(&world, by_ids).await.len(), 2);
    // Each filter narrows.
    let removals = AuditFilter {
        kinds: vec!["member_removed".into()],
        ..why.clone()
    };
    assert_eq!(
        found(&world, removals).await,
        [pair("member_removed", "delta_round")]
    );
    let recent = AuditFilter {
        since: Some(removed - Duration::seconds(1)),
        ..why.clone()
    };
    assert_eq!(
        found(&world, recent).await,
        [pair("member_removed", "delta_round")]
    );
    let newest = AuditFilter { limit: 1, ..why };
    assert_eq!(found(&world, newest).await.len(), 1);
    let team_only = AuditFilter {
        team: Some("Research".into()),
        limit: 1_000,
        ..AuditFilter::default()
    };
    // Research: six members joined, one left, and the team was created.
    let research = found(&world, team_only).await;
    assert_eq!(
        research
            .iter()
            .filter(|(kind, _)| kind == "member_added")
            .count(),
        6,
        "{research:?}"
    );

    // The command: JSON lines, and a table for a human.
    let json = audit_command(&world, &["--user", &email, "--team", "Research", "--json"]);
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{json}");
    assert_eq!(lines[0]["kind"], "member_removed");
    assert_eq!(lines[0]["cause"], "delta_round");
    assert_eq!(lines[0]["team_alias"], "Research");
    assert_eq!(lines[0]["user_id"], uid(3).to_string());
    assert_eq!(lines[0]["user_email"], email);
    assert_eq!(lines[1]["cause"], "assignment_poll");
    let table = audit_command(
        &world,
        &["--user", &email, "--team", "Research", "--since", "1h"],
    );
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 3, "{table}");
    assert!(rows[0].starts_with("WHEN (UTC)"), "{table}");
    assert!(
        rows[1].contains("member_removed") && rows[1].contains("delta_round"),
        "{table}"
    );
    assert!(
        rows[1].contains(&format!("Research ({})", gid(2))),
        "{table}"
    );
    // Nothing matches: said so.
    let none = audit_command(&world, &["--team", "No such team"]);
    assert!(none.contains("(no entries)"), "{none}");
}

/// Runs `entra-sync-worker status` with these arguments; returns its stdout.
fn status_command(world: &World, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_entra-sync-worker"))
        .arg("status")
        .args(args)
        .env_clear()
        .envs(world.worker_env("status"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn audit_and_status_print_entras_names_and_errors_with_their_control_characters_escaped() {
    let world = World::new().await;
    // Clears the screen, turns red, and forges a line of the table.
    let name = "\u{1b}[2J\u{1b}[31mPayroll\nWHEN (UTC)  forged";
    let escaped = r"\u{1b}[2J\u{1b}[31mPayroll\nWHEN (UTC)  forged";
    world.sim.apply(|t| t.upsert_group(gid(1), name, None));
    world.syncer().poll_assignments(Utc::now()).await.unwrap();
    assert_eq!(world.alias(1).await.as_deref(), Some(name));

    let table = audit_command(&world, &["--team", &gid(1).to_string()]);
    assert!(!table.contains('\u{1b}'), "{table:?}");
    let rows: Vec<&str> = table.lines().collect();
    // The header, the team's creation and its five members: one line each, nothing forged.
    assert_eq!(rows.len(), 7, "{table}");
    assert_eq!(
        rows.iter()
            .filter(|row| row.starts_with("WHEN (UTC)"))
            .count(),
        1,
        "{table}"
    );
    assert!(
        rows[1..]
            .iter()
            .all(|row| row.contains(&format!("{escaped} ({})", gid(1)))),
        "{table}"
    );
    // JSON stays JSON: the name as it is, escaped by JSON's own rules.
    let json = audit_command(&world, &["--team", &gid(1).to_string(), "--json"]);
    assert!(!json.contains('\u{1b}'), "{json:?}");
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 6, "{json}");
    assert!(
        lines.iter().all(|line| line["team_alias"] == name),
        "{json}"
    );

    // An error message from Entra, as a failed item carries it.
    world
        .db
        .conn()
        .execute(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO entra_sync_failed_items \
             (kind, id, error, attempts, first_failed_at, last_failed_at, retry_at) \
             VALUES ('group', $1, $2, 1, now(), now(), now() + interval '1 minute')",
            [
                gid(9).to_string().into(),
                format!("Graph said: {name}").into(),
            ],
        ))
        .await
        .unwrap();
    let status = status_command(&world, &[]);
    assert!(!status.contains('\u{1b}'), "{status:?}");
    let failed: Vec<&str> = status
        .lines()
        .filter(|line| line.starts_with("failed group"))
        .collect();
    assert_eq!(failed.len(), 1, "{status}");
    assert!(
        failed[0].ends_with(&format!("Graph said: {escaped}")),
        "{status}"
    );
    assert!(
        !status.lines().any(|line| line.starts_with("WHEN")),
        "{status}"
    );
    let json: serde_json::Value =
        serde_json::from_str(status_command(&world, &["--json"]).trim()).unwrap();
    assert_eq!(
        json["failed_items"][0]["error"],
        format!("Graph said: {name}")
    );
}

#[tokio::test]
async fn entries_past_their_retention_are_deleted_in_batches_by_one_replica_at_a_time() {
    let world = World::new().await;
    let now = Utc::now();
    world
        .db
        .conn()
        .execute_unprepared(
            "INSERT INTO entra_sync_audit_log (recorded_at, kind, team_id, user_id, detail, cause)
             SELECT now() - n * interval '1 day', 'member_added', 't', 'u', '{}', 'delta_round'
             FROM generate_series(1, 30) AS n",
        )
        .await
        .unwrap();
    const COUNT: &str = "SELECT count(*) FROM entra_sync_audit_log";

    // Another replica is at it: this one leaves it alone.
    let store = store(&world);
    let other = store.lease(
        worker::sync::AUDIT_RETENTION_LEASE,
        "other",
        std::time::Duration::from_secs(60),
    );
    assert!(other.try_acquire().await.unwrap());
    let syncer = world.syncer();
    assert_eq!(
        syncer
            .purge_audit_log(now, Duration::days(7))
            .await
            .unwrap(),
        None
    );
    assert_eq!(world.count(COUNT).await, 30);
    other.release().await.unwrap();

    // Older than a week (days 8 to 30): gone, whatever the batch; the rest stays.
    let cutoff = now - Duration::days(7) - Duration::hours(1);
    assert_eq!(store.purge_audit_log(cutoff, 10).await.unwrap(), 23);
    assert_eq!(world.count(COUNT).await, 7);
    assert_eq!(
        syncer
            .purge_audit_log(now, Duration::days(3) + Duration::hours(1))
            .await
            .unwrap(),
        Some(4)
    );
    assert_eq!(world.count(COUNT).await, 3);
}
