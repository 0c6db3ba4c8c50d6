//! End to end, in one process: graph-sim -> webhook -> Redis -> worker -> PostgreSQL with
//! LiteLLM's real schema. Every assertion is on rows, HTTP answers or stream contents.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod graph_common;
mod world;

use entra_sync_testkit::redis::RedisServer;
use graph_common::*;
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
    assert!(eventually(|| async { world.unread() == 0 && world.pending() == 0 }).await);
    assert_eq!(world.members(1).await.map(|m| m.len()), Some(6));
    world.stop_workers().await;

    // Start-up: one poll (a full read of the group) and a first round (a resync, which takes
    // `$deltatoken=latest`); then the 41 notifications cost one delta round, not 41.
    let rounds = world
        .sim
        .requests()
        .iter()
        .filter(|r| {
            r.path.ends_with("/groups/delta")
                && r.query.contains("deltatoken")
                && !r.query.contains("latest")
        })
        .count();
    assert_eq!(rounds, 1, "41 notifications, one round");
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
