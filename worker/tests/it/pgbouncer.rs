//! Through PgBouncer in transaction mode (1.18, which tracks no prepared statements), as Azure
//! Database for PostgreSQL's built-in pooler runs it: a `DATABASE_URL` with `pgbouncer=true`.
//! Without it, concurrent work through this pooler fails with "prepared statement sqlx_s_1
//! already exists" or "does not exist". `.ci/run` also runs the end-to-end suites a second time
//! with their workers behind PgBouncer (`ENTRA_SYNC_TEST_THROUGH_PGBOUNCER=1`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;
use crate::graph_common;
use crate::world;

use std::time::Duration;

use common::{commit, group, insert_key, key_state, scalar_i64, user_id};
use entra_sync_testkit::TestDatabase;
use graph_common::{gid, uid};
use migration::database::Db;
use worker::store::{Change, RemovalMode, Store};
use world::*;

async fn through_pgbouncer(db: &TestDatabase) -> Db {
    let db = migration::database::connect(&db.url_through_pgbouncer(), |options| {
        options.max_connections(8).sqlx_logging(false);
    })
    .await
    .unwrap();
    assert!(db.behind_pgbouncer());
    db
}

/// Through PgBouncer too a resync compares before it writes (its tables are the database's, not
/// a session's, which the next transaction might not find): the same test as directly.
#[tokio::test]
async fn a_resync_through_pgbouncer_reads_again_only_the_teams_that_may_differ() {
    let db = TestDatabase::new().await;
    let through = through_pgbouncer(&db).await;
    crate::sync::resync_reads_again_only_what_differs(&db, through).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_store_works_under_concurrency_through_pgbouncer() {
    let db = TestDatabase::new().await;
    let store = Store::new(
        through_pgbouncer(&db).await,
        Default::default(),
        RemovalMode::Managed,
    );
    // 40 teams at once, more than the pooler's server connections: each transaction may land
    // on any of them.
    let mut tasks = Vec::new();
    for t in 0..40u32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut changes = store.ensure_team(&group(t), "Team", commit()).await?;
            changes.extend(
                store
                    .add_members(&group(t), &common::users(t * 10..t * 10 + 10), commit())
                    .await?,
            );
            changes.extend(
                store
                    .remove_members(&group(t), &[user_id(t * 10)], commit())
                    .await?,
            );
            Ok::<_, worker::Error>(changes)
        }));
    }
    let mut added = 0;
    for task in tasks {
        added += task
            .await
            .unwrap()
            .unwrap()
            .iter()
            .filter(|c| matches!(c, Change::MemberAdded { .. }))
            .count();
    }
    assert_eq!(added, 400);
    assert_eq!(
        scalar_i64(
            db.conn(),
            r#"SELECT count(*) FROM "LiteLLM_TeamMembership""#
        )
        .await,
        360
    );
    assert_eq!(
        scalar_i64(db.conn(), "SELECT count(*) FROM entra_sync_audit_log").await,
        40 + 400 + 400 + 40
    );
}

#[tokio::test]
async fn two_worker_processes_through_pgbouncer_sync_revoke_and_take_turns() {
    let mut world = World::new().await;
    let url = world.db.url_through_pgbouncer();
    let a = world.spawn_worker_process_with("pooled-a", &[("DATABASE_URL", &url)]);
    let b = world.spawn_worker_process_with("pooled-b", &[("DATABASE_URL", &url)]);
    assert!(eventually(|| async { world.members(1).await == Some(users(1..=5)) }).await);
    insert_key(
        world.db.conn(),
        "pooled-key",
        &uid(2).to_string(),
        Some(&gid(1).to_string()),
        None,
        "2026-01-01 00:00:00",
    )
    .await;

    world.sim.apply(|t| t.add_member(gid(1), uid(6)));
    world.sim.apply(|t| t.remove_member(gid(1), uid(2)));
    world
        .sim
        .apply(|t| t.upsert_group(gid(1), "Platform", None));

    let expected: Vec<String> = users(1..=6)
        .into_iter()
        .filter(|id| *id != uid(2).to_string())
        .collect();
    assert!(
        eventually(|| async { world.members(1).await == Some(expected.clone()) }).await,
        "{:?}",
        world.members(1).await
    );
    assert!(eventually(|| async { world.alias(1).await.as_deref() == Some("Platform") }).await);
    assert_eq!(key_state(world.db.conn(), "pooled-key").await, None);
    assert!(eventually(|| async { world.pending() == 0 && world.unread() == 0 }).await);
    // Both replicas took turns under the sync lease: each polled the assignments (a unit of
    // work under the lease) at start, and the fence moved on with every unit.
    for replica in [a, b] {
        let metrics = world.metrics_url(replica).await;
        assert!(
            eventually(|| async {
                metric(
                    &scrape_url(&metrics).await,
                    r#"entra_sync_assignment_polls_total{result="ok"}"#,
                ) >= Some(1.0)
            })
            .await,
            "replica {replica} never held the sync lease: {}",
            scrape_url(&metrics).await
        );
    }
    assert!(
        scalar_i64(
            world.db.conn(),
            "SELECT coalesce(max(fence), 0) FROM entra_sync_leases WHERE name = 'sync'"
        )
        .await
            >= 2
    );
    assert!(world.dead.is_empty());
}

#[tokio::test]
async fn without_pgbouncer_true_the_first_lost_prepared_statement_stops_the_worker_naming_the_fix()
{
    let world = World::new().await;
    // The URL an operator might copy from a direct connection, pointed at PgBouncer.
    let url = world
        .db
        .url_through_pgbouncer()
        .replace("?pgbouncer=true", "");
    assert!(!url.contains("pgbouncer"), "{url}");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_entra-sync-worker"))
        .arg("run")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(world.worker_env("unpooled"))
        .env("DATABASE_URL", &url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("entra-sync-worker starts")
        .wait_with_output();
    tokio::pin!(output);
    // Busy, as in production: each change is a notification, and a round's statements on
    // several of the worker's connections, which PgBouncer hands server connections of its
    // choosing. It may take a few statements before PostgreSQL says one went missing.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut next_user = 10;
    let out = loop {
        tokio::select! {
            out = &mut output => break out.unwrap(),
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the worker kept running through PgBouncer without pgbouncer=true"
                );
                world.sim.apply(|t| t.add_member(gid(1), uid(next_user)));
                next_user += 1;
            }
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    // 1: a clean stop; a panic would exit with 101.
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("add pgbouncer=true to DATABASE_URL"),
        "{stderr}"
    );
    assert!(stderr.contains("prepared statement"), "{stderr}");
}

#[tokio::test]
async fn a_lost_prepared_statement_while_running_stops_run_with_the_fix_whichever_task_met_it() {
    // What it provokes stops every worker's `run` in its process (worker::error::must_stop), as
    // it should in production: it runs apart from the other tests' workers.
    if !entra_sync_testkit::own_process::run_here(
        module_path!(),
        "a_lost_prepared_statement_while_running_stops_run_with_the_fix_whichever_task_met_it",
    ) {
        return;
    }
    use worker::metrics::WorkerMetrics;
    use worker::readiness::Readiness;
    use worker::run::Worker;
    use worker::stream::{StreamConsumer, StreamSettings};
    use worker::sync::{Syncer, UnassignedPolicy};

    // Past the start-up checks (which usually meet the error first, see the test above): the
    // worker's tasks meet it, each handling its errors its own way (a poll logs and waits for
    // the next, an item is recorded and retried, a round is retried).
    let world = World::new().await;
    let url = world
        .db
        .url_through_pgbouncer()
        .replace("?pgbouncer=true", "");
    let db = migration::database::connect(&url, |options| {
        options.max_connections(8).sqlx_logging(false);
    })
    .await
    .unwrap();
    assert!(!db.behind_pgbouncer());
    let (client, _) = graph_common::secret_client(&world.sim);
    let store = Store::new(db, Default::default(), RemovalMode::Managed);
    let consumer = StreamConsumer::connect(
        world.redis.url(),
        StreamSettings {
            stream: world.stream.key().to_owned(),
            dead_letter: world.dead.key().to_owned(),
            consumer: "unpooled".into(),
            batch: 500,
            claim_idle: Duration::from_secs(1),
            max_deliveries: 3,
        },
    )
    .await
    .unwrap();
    let worker = Worker {
        syncer: Syncer::new(client, store, UnassignedPolicy::RemoveMembers),
        consumer,
        metrics: WorkerMetrics::register(&mut prometheus_client::registry::Registry::default()),
        settings: world.run_settings.clone(),
        subscriptions: None,
        readiness: Readiness::new(),
    };
    let run = worker.run(std::future::pending());
    tokio::pin!(run);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut next_user = 10;
    let result = loop {
        tokio::select! {
            result = &mut run => break result,
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the worker kept running through PgBouncer without pgbouncer=true"
                );
                world.sim.apply(|t| t.add_member(gid(1), uid(next_user)));
                next_user += 1;
            }
        }
    };
    let error = result
        .expect_err("run stopped without an error")
        .to_string();
    assert!(
        error.contains("add pgbouncer=true to DATABASE_URL"),
        "{error}"
    );
    assert!(error.contains("prepared statement"), "{error}");
}
