//! Through PgBouncer in transaction mode (1.18, which tracks no prepared statements), as Azure
//! Database for PostgreSQL's built-in pooler runs it: a `DATABASE_URL` with `pgbouncer=true`.
//! Without it, concurrent work through this pooler fails with "prepared statement sqlx_s_1
//! already exists" or "does not exist". `.ci/run` also runs the end-to-end suites a second time
//! with their workers behind PgBouncer (`ENTRA_SYNC_TEST_THROUGH_PGBOUNCER=1`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod graph_common;
mod world;

use common::{commit, group, insert_key, key_state, scalar_i64, user_id};
use entra_sync_testkit::TestDatabase;
use graph_common::{gid, uid};
use migration::database::Db;
use worker::store::{Change, LiteLlmWriter, RemovalMode, Store};
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
