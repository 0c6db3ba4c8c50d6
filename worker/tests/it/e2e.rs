//! End to end, in one process: graph-sim -> webhook -> Redis -> worker -> PostgreSQL with
//! LiteLLM's real schema. Every assertion is on rows, HTTP answers or stream contents.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::graph_common;
use crate::world;

use entra_sync_testkit::redis::RedisServer;
use graph_common::*;
use graph_sim::Fault;
use world::*;

#[tokio::test]
async fn notifications_drive_members_and_renames_into_litellm() {
    let mut world = World::new().await;
    world.start_worker();
    assert!(
        eventually(|| async { world.members(1).await == Some(users(1..=5)) }).await,
        "the assigned group did not become a team with its members"
    );

    world.sim.apply(|t| t.add_member(gid(1), uid(6)));
    assert!(eventually(|| async { world.members(1).await == Some(users(1..=6)) }).await);

    world.sim.apply(|t| t.remove_member(gid(1), uid(2)));
    let mut expected = users(1..=6);
    expected.retain(|id| *id != uid(2).to_string());
    assert!(eventually(|| async { world.members(1).await == Some(expected.clone()) }).await);

    world
        .sim
        .apply(|t| t.upsert_group(gid(1), "Platform", None));
    assert!(eventually(|| async { world.alias(1).await.as_deref() == Some("Platform") }).await);

    // A group not assigned to the app never becomes a team: once its notification was stored,
    // read and acknowledged (after the round that saw it committed), there is still no team.
    let stored_before = world.stream.len();
    world.sim.apply(|t| t.add_member(gid(2), uid(10)));
    assert!(
        eventually(|| async { world.stream.len() > stored_before }).await,
        "the notification for group 2 was not stored"
    );
    let last = world
        .stream
        .entries_with_ids()
        .last()
        .map(|(id, _)| id.clone());
    assert!(
        eventually(|| async { world.last_delivered() == last && world.pending() == 0 }).await,
        "the notification for group 2 was not read and acknowledged: last delivered {:?}, \
         pending {}, last stored {last:?}",
        world.last_delivered(),
        world.pending()
    );
    assert!(world.members(2).await.is_none());

    world.stop_workers().await;
    assert_eq!(world.pending(), 0, "every entry was acknowledged");
    assert!(world.dead.is_empty());
}

#[tokio::test]
async fn a_burst_of_notifications_costs_one_round() {
    let mut world = World::new().await;
    // The worker is down while 40 changes happen: their notifications wait on the stream.
    for n in 1..=4 {
        for m in 1..=10 {
            world
                .sim
                .apply(|t| t.upsert_group(gid(1), &format!("Engineering {n}.{m}"), None));
        }
    }
    world.sim.apply(|t| t.add_member(gid(1), uid(9)));
    assert!(
        eventually(|| async { world.stream.len() >= 41 }).await,
        "notifications not stored"
    );

    world.sim.clear_requests();
    world.start_worker();
    // Everything read and acknowledged, and the team made (by the poll, which may come after
    // the stream's first round).
    assert!(
        eventually(|| async {
            world.unread() == 0
                && world.pending() == 0
                && world.members(1).await.map(|m| m.len()) == Some(6)
        })
        .await
    );
    world.stop_workers().await;

    // Each round asks Graph for the delta once with a token: from the stored deltaLink, or
    // `$deltatoken=latest` when there is none yet (the first poll's starting point, or the
    // stream's round when it comes before the poll). At start-up the poll takes one, and the 41
    // notifications, read as one batch, cost one round more (or share the poll's): at most
    // three such requests whichever comes first, not 41.
    let rounds = world
        .sim
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/groups/delta") && r.query.contains("deltatoken"))
        .count();
    assert!(
        (1..=3).contains(&rounds),
        "41 notifications and a poll cost {rounds} rounds"
    );
    assert_eq!(world.alias(1).await.as_deref(), Some("Engineering 4.10"));
}

#[tokio::test]
async fn a_worker_reading_redis_6_2_applies_a_notification_and_acknowledges_it() {
    let mut world = World::on(RedisServer::redis6()).await;
    world.start_worker();
    assert!(
        eventually(|| async { world.members(1).await == Some(users(1..=5)) }).await,
        "the assigned group did not become a team with its members"
    );
    assert!(eventually(|| async { world.first_round_committed().await }).await);

    world.sim.apply(|t| t.add_member(gid(1), uid(6)));
    assert!(
        eventually(|| async { world.members(1).await == Some(users(1..=6)) }).await,
        "the notification on Redis 6.2 was not applied"
    );
    let stored = world.stream.entries_with_ids();
    assert!(!stored.is_empty(), "the webhook stored the notification");
    let last = stored.last().map(|(id, _)| id.clone());
    assert!(
        eventually(|| async { world.pending() == 0 && world.last_delivered() == last }).await,
        "read and acknowledged: pending {}, last delivered {:?}, last stored {last:?}",
        world.pending(),
        world.last_delivered()
    );
    world.stop_workers().await;
    assert!(world.dead.is_empty());
}

#[tokio::test]
async fn a_slow_poll_never_stops_the_stream_from_being_read() {
    let mut world = World::new().await;
    // The poll at start waits at Graph for as long as the test holds it.
    world.sim.add_fault(Fault::hold("appRoleAssignedTo"));
    world.start_worker();
    assert!(
        eventually(|| async { world.sim.held_requests() == 1 }).await,
        "the poll never asked Graph for the assignments"
    );

    // A notification while the poll waits: read (delivered to the worker, nothing left unread)
    // though its round must wait for the poll's turn.
    world.sim.apply(|t| t.add_member(gid(1), uid(6)));
    assert!(
        eventually(|| async { world.pending() == 1 && world.unread() == 0 }).await,
        "the stream was not read while the poll ran: pending {}, unread {}",
        world.pending(),
        world.unread()
    );
    assert_eq!(world.sim.held_requests(), 1, "the poll is still waiting");
    assert_eq!(world.members(1).await, None, "nothing is applied yet");

    world.sim.clear_faults();
    assert!(eventually(|| async { world.members(1).await == Some(users(1..=6)) }).await);
    assert!(eventually(|| async { world.pending() == 0 }).await);
    world.stop_workers().await;
}

#[tokio::test]
async fn stream_lag_shows_entries_the_reader_is_held_back_from() {
    use prometheus_client::registry::Registry;
    use worker::metrics::WorkerMetrics;
    use worker::store::{RemovalMode, Store};

    let mut world = World::new().await;
    world.run_settings.read_ahead = 1;
    let metrics = WorkerMetrics::register(&mut Registry::default());
    let store = Store::new(
        world.worker_db.clone(),
        Default::default(),
        RemovalMode::Managed,
    );
    world.start_worker_with_store(store, metrics.clone(), "lagging", None);
    assert!(eventually(|| async { world.members(1).await == Some(users(1..=5)) }).await);
    assert!(eventually(|| async { world.first_round_committed().await }).await);

    // A round that waits at Graph, then two more changes: one read ahead, one left unread.
    world.sim.add_fault(Fault::hold("/groups/delta"));
    world.sim.apply(|t| t.add_member(gid(1), uid(6)));
    assert!(eventually(|| async { world.sim.held_requests() >= 1 }).await);
    for user in [7, 8] {
        let stored = world.stream.len();
        world.sim.apply(|t| t.add_member(gid(1), uid(user)));
        assert!(eventually(|| async { world.stream.len() > stored }).await);
    }
    assert!(
        eventually(|| async { world.unread() >= 1 && metrics.stream_lag.get() >= 1 }).await,
        "unread {}, lag gauge {}",
        world.unread(),
        metrics.stream_lag.get()
    );

    world.sim.clear_faults();
    assert!(eventually(|| async { world.members(1).await == Some(users(1..=8)) }).await);
    assert!(
        eventually(|| async {
            world.unread() == 0
                && world.pending() == 0
                && metrics.stream_lag.get() == 0
                && metrics.stream_pending.get() == 0
        })
        .await
    );
    world.stop_workers().await;
}
