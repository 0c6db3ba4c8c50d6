//! Removal revokes access, end to end: through Graph's notifications, the worker and LiteLLM's
//! real schema, a removed member's key disappears, a departed user's keys are blocked (and come
//! back when they do), LiteLLM's proxy workers hear of it on its cache channel, and a
//! reconciliation revokes what a stopped worker missed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;
use crate::graph_common;
use crate::world;

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::Utc;
use entra_sync_testkit::redis::{RedisProxy, Subscriber, redis_url};
use graph_common::*;
use graph_sim::Fault;
use prometheus_client::registry::Registry;
use sea_orm::ConnectionTrait;
use worker::litellm_cache::{CHANNEL, CacheTarget, LiteLlmCache};
use worker::metrics::{ResultLabel, WorkerMetrics};
use worker::store::{Change, KeyPolicy, RemovalMode, RemovedMemberKeys, Store};
use worker::sync::{Syncer, UnassignedPolicy};
use world::*;

const CREATED: &str = "2026-01-01 00:00:00";

async fn key(world: &World, token: &str, user: u128, team: Option<u128>) {
    let team = team.map(|t| gid(t).to_string());
    common::insert_key(
        world.db.conn(),
        token,
        &uid(user).to_string(),
        team.as_deref(),
        None,
        CREATED,
    )
    .await;
}

async fn state(world: &World, token: &str) -> Option<(Option<bool>, serde_json::Value)> {
    common::key_state(world.db.conn(), token).await
}

async fn deleted_copies(world: &World, token: &str) -> i64 {
    common::scalar_i64(
        world.db.conn(),
        &format!(
            r#"SELECT count(*) FROM "LiteLLM_DeletedVerificationToken" WHERE token = '{token}'"#
        ),
    )
    .await
}

fn blocked_for(reason: &str) -> Option<(Option<bool>, serde_json::Value)> {
    Some((
        Some(true),
        serde_json::json!({"note": "kept", "entra_sync_blocked": reason}),
    ))
}

fn untouched() -> Option<(Option<bool>, serde_json::Value)> {
    Some((None, serde_json::json!({"note": "kept"})))
}

fn syncer_with(world: &World, store: Store) -> Syncer {
    let (client, _) = secret_client(&world.sim);
    Syncer::new(client, store, UnassignedPolicy::RemoveMembers)
}

#[tokio::test]
async fn a_removed_members_key_disappears_and_litellms_proxy_workers_hear_of_it() {
    let mut world = World::new().await;
    let namespace = format!("entra-sync-test-{}", uuid::Uuid::new_v4().simple());
    let target = CacheTarget {
        client: redis::Client::open(redis_url()).unwrap(),
        namespace: Some(namespace.clone()),
    };
    let mut registry = Registry::default();
    let metrics = WorkerMetrics::register(&mut registry);
    let cache = LiteLlmCache::start(target, metrics.litellm_cache_evictions.clone());
    let conn = world.db.conn().clone();
    let store =
        Store::new(conn, Default::default(), RemovalMode::Managed).with_litellm_cache(cache);
    world.start_worker_with_store(store, metrics.clone(), "cache", None);
    assert!(eventually(|| async { world.members(1).await == Some(users(1..=5)) }).await);
    key(&world, "ada-research-key", 2, Some(1)).await;
    key(&world, "ada-personal-key", 2, None).await;
    key(&world, "grace-research-key", 3, Some(1)).await;
    let subscriber = Subscriber::subscribe(&format!("{namespace}:{CHANNEL}"));

    world.sim.apply(|t| t.remove_member(gid(1), uid(2)));

    assert!(
        eventually(|| async { state(&world, "ada-research-key").await.is_none() }).await,
        "the removed member's team key still works"
    );
    assert_eq!(deleted_copies(&world, "ada-research-key").await, 1);
    assert_eq!(state(&world, "ada-personal-key").await, untouched());
    assert_eq!(state(&world, "grace-research-key").await, untouched());
    let (team, ada) = (gid(1).to_string(), uid(2).to_string());
    let expected: BTreeSet<String> = [
        format!("team_id:{team}"),
        "team_alias:Engineering".into(),
        ada.clone(),
        format!("{team}_{ada}"),
        format!("team_membership:{ada}:{team}"),
        "ada-research-key".into(),
    ]
    .into();
    let received = subscriber.receive_until(
        |payloads| {
            let keys: BTreeSet<String> = payloads
                .iter()
                .filter_map(|p| serde_json::from_str::<serde_json::Value>(p).ok())
                .filter_map(|m| m["cache_key"].as_str().map(str::to_owned))
                .collect();
            keys.is_superset(&expected)
        },
        Duration::from_secs(20),
    );
    let keys: BTreeSet<String> = received
        .iter()
        .filter_map(|(_, p)| serde_json::from_str::<serde_json::Value>(p).ok())
        .filter_map(|m| m["cache_key"].as_str().map(str::to_owned))
        .collect();
    assert!(keys.is_superset(&expected), "{keys:?}");
    assert!(eventually(|| async { world.pending() == 0 }).await);
    world.stop_workers().await;
}

#[tokio::test]
async fn a_round_commits_and_is_acknowledged_while_litellms_cache_is_down() {
    let mut world = World::new().await;
    let proxy = RedisProxy::start().await;
    let target = CacheTarget {
        client: redis::Client::open(proxy.url()).unwrap(),
        namespace: None,
    };
    let mut registry = Registry::default();
    let metrics = WorkerMetrics::register(&mut registry);
    let evictions = metrics.litellm_cache_evictions.clone();
    let cache = LiteLlmCache::start(target, evictions.clone());
    let conn = world.db.conn().clone();
    let store =
        Store::new(conn, Default::default(), RemovalMode::Managed).with_litellm_cache(cache);
    proxy.cut();
    world.start_worker_with_store(store, metrics, "cache-down", None);
    assert!(eventually(|| async { world.members(1).await == Some(users(1..=5)) }).await);
    key(&world, "ada-research-key", 2, Some(1)).await;

    world.sim.apply(|t| t.remove_member(gid(1), uid(2)));

    assert!(
        eventually(|| async {
            world.members(1).await
                == Some(
                    users(1..=5)
                        .into_iter()
                        .filter(|u| *u != uid(2).to_string())
                        .collect(),
                )
        })
        .await
    );
    assert_eq!(state(&world, "ada-research-key").await, None);
    assert!(
        eventually(|| async { world.pending() == 0 && world.unread() == 0 }).await,
        "the round was not acknowledged"
    );
    let failed = || {
        evictions
            .get_or_create(&ResultLabel { result: "failed" })
            .get()
    };
    assert!(
        eventually(|| async { failed() >= 6 }).await,
        "the failures were not counted: {}",
        failed()
    );
    assert_eq!(
        evictions
            .get_or_create(&ResultLabel {
                result: "published"
            })
            .get(),
        0
    );
    world.stop_workers().await;
}

#[tokio::test]
async fn users_notifications_block_a_departed_users_keys_and_re_enabling_unblocks_them() {
    let mut world = World::new().await;
    world
        .subscription_manager()
        .ensure(Utc::now())
        .await
        .unwrap();
    world.start_worker();
    assert!(eventually(|| async { world.members(1).await == Some(users(1..=5)) }).await);
    key(&world, "three-team", 3, Some(1)).await;
    key(&world, "three-personal", 3, None).await;
    key(&world, "four-personal", 4, None).await;
    key(&world, "five-personal", 5, None).await;
    // An admin blocked one of user 3's keys by hand.
    key(&world, "three-hand-blocked", 3, None).await;
    world
        .db
        .conn()
        .execute_unprepared(
            r#"UPDATE "LiteLLM_VerificationToken" SET blocked = true WHERE token = 'three-hand-blocked'"#,
        )
        .await
        .unwrap();
    let hand_blocked = Some((Some(true), serde_json::json!({"note": "kept"})));

    // Disabled: the membership goes with its key; the remaining keys are blocked.
    world.sim.apply(|t| t.upsert_user(user(3, false)));
    assert!(
        eventually(|| async {
            state(&world, "three-personal").await == blocked_for("user_departed")
        })
        .await,
        "a disabled user's key still works: {:?}",
        state(&world, "three-personal").await
    );
    // Every key is blocked at once (never held); the team key is then deleted with the
    // membership, when the unit of work settles its removals.
    assert!(
        eventually(|| async { state(&world, "three-team").await.is_none() }).await,
        "the departed member's team key survived: {:?}",
        state(&world, "three-team").await
    );
    assert_eq!(deleted_copies(&world, "three-team").await, 1);
    assert_eq!(state(&world, "three-hand-blocked").await, hand_blocked);
    assert_eq!(state(&world, "four-personal").await, untouched());

    // Enabled again: the key entra-sync blocked works again; the admin's stays blocked.
    world.sim.apply(|t| t.upsert_user(user(3, true)));
    assert!(
        eventually(|| async {
            state(&world, "three-personal").await
                == Some((Some(false), serde_json::json!({"note": "kept"})))
        })
        .await,
        "a re-enabled user's key stayed blocked"
    );
    assert_eq!(state(&world, "three-hand-blocked").await, hand_blocked);
    assert_eq!(
        state(&world, "three-team").await,
        None,
        "deleted stays deleted"
    );

    // Deleted: one answer of Graph's is not proof (its reads are eventually consistent), so
    // the user is read again until an answer a minute later confirms it (tests/it/sync.rs, and
    // fault 19) and keeps their keys meanwhile.
    world.sim.apply(|t| t.delete_user(uid(4)));
    let waiting = || async {
        let row = world
            .db
            .conn()
            .query_one(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                format!(
                    "SELECT count(*) AS waiting FROM entra_sync_failed_items
                     WHERE kind = 'user' AND id = '{}' AND error LIKE '%does not find%'",
                    uid(4)
                ),
            ))
            .await
            .unwrap()
            .unwrap();
        row.try_get::<i64>("", "waiting").unwrap() == 1
    };
    assert!(
        eventually(waiting).await,
        "the deleted user is not waiting for a second answer"
    );
    assert_eq!(state(&world, "four-personal").await, untouched());
    assert_eq!(state(&world, "five-personal").await, untouched());
    world.stop_workers().await;
    assert!(world.dead.is_empty());
}

#[tokio::test]
async fn reconciliation_revokes_what_a_worker_stopped_during_a_removal_missed() {
    let mut world = World::new().await;
    let doomed = world.spawn_worker_process("doomed");
    assert!(eventually(|| async { world.members(1).await == Some(users(1..=5)) }).await);
    assert!(eventually(|| async { world.first_round_committed().await }).await);
    key(&world, "two-team", 2, Some(1)).await;
    key(&world, "five-personal", 5, None).await;
    key(&world, "four-team", 4, Some(1)).await;

    // The removal's round hangs in Graph; the worker dies in the middle of it, and user 5 is
    // disabled meanwhile (no worker hears of it).
    world
        .sim
        .add_fault(Fault::delay("/groups/delta", 20_000, 1));
    world.sim.apply(|t| t.remove_member(gid(1), uid(2)));
    assert!(
        eventually(|| async { world.pending() >= 1 }).await,
        "the entry was not read"
    );
    world.kill_process(doomed);
    world.sim.set_delivery(|d| d.enabled = false);
    world.sim.apply(|t| t.upsert_user(user(5, false)));
    assert_eq!(
        state(&world, "two-team").await,
        untouched(),
        "nothing applied yet"
    );

    // A dry run lists the revocations and writes nothing.
    let syncer = world.syncer();
    let planned = syncer
        .clone()
        .dry_run()
        .reconcile(Utc::now())
        .await
        .unwrap();
    let revocations = |changes: &[Change]| -> BTreeSet<String> {
        changes
            .iter()
            .filter(|c| c.kind().starts_with("key_"))
            .map(|c| serde_json::to_string(c).unwrap())
            .collect()
    };
    assert_eq!(
        revocations(planned.changes.list()),
        [
            serde_json::to_string(&Change::KeyBlocked {
                token: "five-personal".into(),
                user_id: uid(5).to_string(),
                team_id: None,
                reason: worker::store::BlockReason::UserDeparted,
            })
            .unwrap(),
            serde_json::to_string(&Change::KeyDeleted {
                token: "two-team".into(),
                user_id: uid(2).to_string(),
                team_id: Some(gid(1).to_string()),
                key_alias: Some("alias-two-team".into()),
            })
            .unwrap(),
        ]
        .into()
    );
    assert_eq!(state(&world, "two-team").await, untouched());

    let made = syncer.reconcile(Utc::now()).await.unwrap();
    assert_eq!(
        revocations(made.changes.list()),
        revocations(planned.changes.list())
    );
    assert_eq!(state(&world, "two-team").await, None);
    assert_eq!(deleted_copies(&world, "two-team").await, 1);
    assert_eq!(
        state(&world, "five-personal").await,
        blocked_for("user_departed")
    );
    assert_eq!(state(&world, "four-team").await, untouched());
}

#[tokio::test]
async fn reconciliation_revokes_keys_that_outlived_an_earlier_removal() {
    let world = World::new().await;
    // An entra-sync that kept keys (as versions before this one did) synced and removed user 2.
    let keeping = Store::new(
        world.db.conn().clone(),
        Default::default(),
        RemovalMode::Managed,
    )
    .with_key_policy(KeyPolicy {
        removed_member: RemovedMemberKeys::Keep,
        ..KeyPolicy::default()
    });
    let earlier = syncer_with(&world, keeping);
    earlier.poll_assignments(Utc::now()).await.unwrap();
    earlier.delta_round(Utc::now()).await.unwrap();
    key(&world, "two-team", 2, Some(1)).await;
    world.sim.apply(|t| t.remove_member(gid(1), uid(2)));
    earlier.delta_round(Utc::now()).await.unwrap();
    assert!(
        !world
            .members(1)
            .await
            .unwrap()
            .contains(&uid(2).to_string())
    );
    assert_eq!(state(&world, "two-team").await, untouched());

    // Today's worker, with the default policy: the key that survived goes.
    let report = world.syncer().reconcile(Utc::now()).await.unwrap();
    assert!(
        report
            .changes
            .list()
            .iter()
            .any(|c| matches!(c, Change::KeyDeleted { token, .. } if token == "two-team")),
        "{:?}",
        report.changes
    );
    assert_eq!(state(&world, "two-team").await, None);
    assert_eq!(deleted_copies(&world, "two-team").await, 1);
}
