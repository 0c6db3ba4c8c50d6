//! Fault tests, end to end: a worker killed with entries pending, PostgreSQL away, Graph
//! throttling, an unreadable entry, duplicated and reordered notifications, two replicas, Redis
//! away (not ready until it is back).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod graph_common;
mod world;

use std::time::Duration;

use entra_sync_testkit::proxy::TcpProxy;
use entra_sync_testkit::redis::RedisProxy;
use graph_common::*;
use graph_sim::Fault;
use sea_orm::{ConnectOptions, ConnectionTrait, Database};
use world::*;

fn without(mut ids: Vec<String>, n: u128) -> Vec<String> {
    ids.retain(|id| *id != uid(n).to_string());
    ids
}

fn with(mut ids: Vec<String>, n: u128) -> Vec<String> {
    ids.push(uid(n).to_string());
    ids.sort();
    ids
}

#[tokio::test]
async fn a_killed_workers_pending_entries_are_claimed_by_another() {
    let mut world = World::new().await;
    let first = world.spawn_worker_process("doomed");
    assert!(eventually(|| async { world.members(1).await == Some(users(1..=5)) }).await);
    assert!(eventually(|| async { world.first_round_committed().await }).await);

    // The next round hangs in Graph; the worker has read the entry and not acknowledged it.
    world
        .sim
        .add_fault(Fault::delay("/groups/delta", 20_000, 1));
    world.sim.apply(|t| t.add_member(gid(1), uid(6)));
    assert!(
        eventually(|| async { world.pending() >= 1 }).await,
        "the entry was not read"
    );
    world.kill_process(first);
    assert_eq!(
        world.members(1).await,
        Some(users(1..=5)),
        "nothing applied yet"
    );

    world.spawn_worker_process("heir");
    assert!(
        eventually(|| async { world.members(1).await == Some(users(1..=6)) }).await,
        "the heir did not finish the dead worker's work"
    );
    assert!(
        eventually(|| async { world.pending() == 0 }).await,
        "entries left unacknowledged"
    );
}

#[tokio::test]
async fn with_postgresql_away_nothing_is_acknowledged_until_it_is_back() {
    let mut world = World::new().await;
    let proxy = TcpProxy::start(entra_sync_testkit::server_addr()).await;
    let mut options = ConnectOptions::new(world.db.url_via(proxy.addr()));
    options
        .max_connections(4)
        .connect_timeout(Duration::from_secs(2))
        .acquire_timeout(Duration::from_secs(2))
        .sqlx_logging(false);
    let conn = Database::connect(options).await.unwrap();
    world.start_worker_on(conn, "through-proxy");
    assert!(eventually(|| async { world.members(1).await == Some(users(1..=5)) }).await);

    proxy.cut();
    world.sim.apply(|t| t.add_member(gid(1), uid(7)));
    assert!(
        eventually(|| async { !world.stream.is_empty() }).await,
        "the notification was not stored"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Read and pending, or not read yet while the round retries: either way not acknowledged.
    assert!(
        world.pending() + world.unread().max(0) >= 1,
        "acknowledged although nothing could be committed"
    );
    assert_eq!(world.members(1).await, Some(users(1..=5)));

    proxy.restore();
    assert!(eventually(|| async { world.members(1).await == Some(with(users(1..=5), 7)) }).await);
    assert!(eventually(|| async { world.pending() == 0 }).await);
}

#[tokio::test]
async fn a_throttling_storm_and_an_expired_token_still_converge() {
    let mut world = World::new().await;
    world.start_worker();
    assert!(eventually(|| async { world.members(1).await == Some(users(1..=5)) }).await);

    world.sim.add_fault(Fault::throttle("/groups/delta", 1, 3));
    world.sim.apply(|t| t.remove_member(gid(1), uid(3)));
    assert!(
        eventually(|| async { world.members(1).await == Some(without(users(1..=5), 3)) }).await
    );

    world.sim.change(|t| {
        t.expire_delta_tokens();
        ((), Vec::new())
    });
    world.sim.apply(|t| t.add_member(gid(1), uid(8)));
    assert!(
        eventually(|| async { world.members(1).await == Some(with(without(users(1..=5), 3), 8)) })
            .await
    );
    assert!(world.sim.requests().iter().any(|r| r.status == 429));
    assert!(world.sim.requests().iter().any(|r| r.status == 410));
}

#[tokio::test]
async fn an_unreadable_entry_is_dead_lettered_and_the_rest_go_on() {
    let mut world = World::new().await;
    world.start_worker();
    assert!(eventually(|| async { world.members(1).await == Some(users(1..=5)) }).await);

    world
        .stream
        .command(&["XADD", world.stream.key(), "*", "v", "99", "garbage", "yes"]);
    world.sim.apply(|t| t.add_member(gid(1), uid(10)));

    assert!(eventually(|| async { world.members(1).await == Some(with(users(1..=5), 10)) }).await);
    assert!(
        eventually(|| async { world.dead.len() == 1 }).await,
        "the poison entry was not dead-lettered"
    );
    let letter = &world.dead.entries()[0];
    assert_eq!(letter["field.garbage"], "yes");
    assert_eq!(letter["deliveries"], "3");
    assert!(eventually(|| async { world.pending() == 0 }).await);
}

#[tokio::test]
async fn duplicated_and_reordered_notifications_end_in_the_same_rows() {
    let mut world = World::new().await;
    world.sim.set_delivery(|d| {
        d.duplicates = 4;
        d.reorder = true;
        d.delay_millis = 300;
    });
    world.start_worker();
    assert!(eventually(|| async { world.first_round_committed().await }).await);
    assert_eq!(world.members(1).await, Some(users(1..=5)));

    world.sim.apply(|t| t.add_member(gid(1), uid(6)));
    world.sim.apply(|t| t.remove_member(gid(1), uid(6)));
    world.sim.apply(|t| t.add_member(gid(1), uid(7)));
    world.sim.apply(|t| t.remove_member(gid(1), uid(1)));
    world.sim.apply(|t| t.upsert_group(gid(1), "Renamed", None));

    let expected = with(without(users(1..=5), 1), 7);
    assert!(
        eventually(|| async { world.stream.len() >= 25 }).await,
        "five copies of every notification arrive"
    );
    assert!(eventually(|| async { world.unread() == 0 && world.pending() == 0 }).await);
    assert_eq!(world.members(1).await, Some(expected.clone()));
    assert_eq!(world.alias(1).await.as_deref(), Some("Renamed"));
    world.stop_workers().await;
    assert_eq!(world.members(1).await, Some(expected));
}

#[tokio::test]
async fn two_replicas_share_the_work_and_agree() {
    let mut world = World::new().await;
    let first = world.db.connect_again().await;
    let second = world.db.connect_again().await;
    world.start_worker_on(first, "replica-1");
    world.start_worker_on(second, "replica-2");
    assert!(eventually(|| async { world.members(1).await == Some(users(1..=5)) }).await);

    for n in 6..=10 {
        world.sim.apply(|t| t.add_member(gid(1), uid(n)));
    }
    world.sim.apply(|t| t.remove_member(gid(1), uid(2)));

    let expected = without(users(1..=10), 2);
    assert!(eventually(|| async { world.members(1).await == Some(expected.clone()) }).await);
    assert!(eventually(|| async { world.unread() == 0 && world.pending() == 0 }).await);
    world.stop_workers().await;
    let rows = world
        .db
        .conn()
        .query_one(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            r#"SELECT count(*) FROM "LiteLLM_TeamMembership""#,
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index::<i64>(0)
        .unwrap();
    assert_eq!(rows, 9);
}

#[tokio::test]
async fn readyz_fails_while_redis_is_away_and_recovers_when_it_is_back() {
    let mut world = World::new().await;
    let redis = RedisProxy::start().await;
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    world.spawn_worker_process_with(
        "readiness",
        &[
            ("REDIS_URL", &redis.url()),
            ("ENTRA_SYNC_METRICS_LISTEN", &listen),
        ],
    );
    let http = reqwest::Client::new();
    let readyz = || async {
        match http.get(format!("http://{listen}/readyz")).send().await {
            Ok(response) => response.status().as_u16(),
            Err(_) => 0,
        }
    };
    assert!(eventually(|| async { world.first_round_committed().await }).await);
    assert!(eventually(|| async { readyz().await == 200 }).await);

    redis.cut();
    assert!(
        eventually(|| async { readyz().await == 503 }).await,
        "still ready without Redis"
    );

    redis.restore();
    assert!(
        eventually(|| async { readyz().await == 200 }).await,
        "not ready again once Redis is back"
    );
    // And it works again: a change made now arrives.
    world.sim.apply(|t| t.add_member(gid(1), uid(6)));
    assert!(eventually(|| async { world.members(1).await == Some(with(users(1..=5), 6)) }).await);
    assert!(eventually(|| async { world.pending() == 0 }).await);
}
