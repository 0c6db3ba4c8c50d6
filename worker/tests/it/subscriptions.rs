//! Graph subscriptions that never lapse: created, renewed, re-created, cleaned up, kept by one
//! replica at a time, and lifecycle events acted on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::graph_common;
use crate::world;

use chrono::Utc;
use entity::sync::{lease, subscription};
use graph_sim::Fault;
use sea_orm::EntityTrait;
use worker::graph::NewSubscription;
use world::*;

use graph_common::*;

/// The subscriptions graph-sim holds for the world's webhook, as `(resource, id)`, sorted.
fn live(world: &World) -> Vec<(String, String)> {
    let url = format!("{}/notifications", world.webhook_url);
    let mut live: Vec<(String, String)> = world
        .sim
        .subscriptions()
        .into_iter()
        .filter(|s| s.notification_url == url)
        .map(|s| (s.resource, s.id))
        .collect();
    live.sort();
    live
}

async fn stored(world: &World) -> Vec<(String, String)> {
    let mut rows: Vec<(String, String)> = subscription::Entity::find()
        .all(world.db.conn())
        .await
        .unwrap()
        .into_iter()
        .map(|row| (row.resource, row.id))
        .collect();
    rows.sort();
    rows
}

#[tokio::test]
async fn ensure_keeps_exactly_one_subscription_per_resource() {
    let world = World::new().await;
    let manager = world.subscription_manager();
    // The world subscribed to groups by hand: that one is ours by URL but unknown, so it goes.
    let orphan = live(&world);
    assert_eq!(orphan.len(), 1);

    let actions = manager.ensure(Utc::now()).await.unwrap();
    let names: Vec<&str> = actions.iter().map(|a| a.action).collect();
    assert_eq!(names, ["created", "created", "deleted"], "{actions:?}");
    let now_live = live(&world);
    assert_eq!(
        now_live.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(),
        ["groups", "users"]
    );
    assert!(!now_live.contains(&orphan[0]));
    assert_eq!(stored(&world).await, now_live, "stored = what Graph has");
    let sub = world.sim.subscriptions();
    assert!(sub.iter().all(|s| s.change_type == "updated,deleted"
        && s.lifecycle_notification_url.as_deref()
            == Some(format!("{}/lifecycle", world.webhook_url).as_str())));

    // Nothing to do the second time.
    assert!(manager.ensure(Utc::now()).await.unwrap().is_empty());
    assert_eq!(live(&world), now_live);
}

/// A subscription of ours that expires in a day, stored as if an earlier run had made it.
async fn near_expiry(world: &World, resource: &str) -> String {
    let (client, _) = secret_client(&world.sim);
    let created = client
        .create_subscription(&NewSubscription {
            resource: resource.into(),
            change_type: "updated,deleted".into(),
            notification_url: format!("{}/notifications", world.webhook_url),
            lifecycle_notification_url: format!("{}/lifecycle", world.webhook_url),
            client_state: CLIENT_STATE.to_owned().into(),
            expiration: Utc::now() + chrono::Duration::days(1),
        })
        .await
        .unwrap();
    subscription::Entity::insert(subscription::ActiveModel {
        id: sea_orm::Set(created.id.clone()),
        resource: sea_orm::Set(created.resource),
        change_type: sea_orm::Set(created.change_type),
        notification_url: sea_orm::Set(created.notification_url),
        lifecycle_notification_url: sea_orm::Set(created.lifecycle_notification_url),
        expires_at: sea_orm::Set(created.expiration_date_time),
        created_at: sea_orm::Set(Utc::now()),
        updated_at: sea_orm::Set(Utc::now()),
    })
    .exec_without_returning(world.db.conn())
    .await
    .unwrap();
    created.id
}

#[tokio::test]
async fn a_subscription_near_expiry_is_renewed() {
    let world = World::new().await;
    let manager = world.subscription_manager();
    manager.ensure(Utc::now()).await.unwrap();
    let groups = near_expiry(&world, "groups").await;
    // The newer, longer one made by the first ensure is kept: its twin goes.
    manager.ensure(Utc::now()).await.unwrap();
    assert!(!live(&world).iter().any(|(_, id)| *id == groups));

    // With only the near-expiry one stored, it is renewed in place, to about 29 days.
    let fresh = World::new().await;
    let manager = fresh.subscription_manager();
    let groups = near_expiry(&fresh, "groups").await;
    let users = near_expiry(&fresh, "users").await;
    let actions = manager.ensure(Utc::now()).await.unwrap();
    let renewed: Vec<&str> = actions
        .iter()
        .filter(|a| a.action == "renewed")
        .map(|a| a.id.as_str())
        .collect();
    assert_eq!(renewed.len(), 2, "{actions:?}");
    assert!(renewed.contains(&groups.as_str()) && renewed.contains(&users.as_str()));
    for s in fresh
        .sim
        .subscriptions()
        .iter()
        .filter(|s| s.id == groups || s.id == users)
    {
        assert!(
            s.expiration > Utc::now() + chrono::Duration::days(28),
            "{s:?}"
        );
    }
    let rows = subscription::Entity::find()
        .all(fresh.db.conn())
        .await
        .unwrap();
    assert!(
        rows.iter()
            .all(|r| r.expires_at > Utc::now() + chrono::Duration::days(28))
    );
}

#[tokio::test]
async fn a_404_on_renewal_re_creates_the_subscription() {
    let world = World::new().await;
    let manager = world.subscription_manager();
    let groups = near_expiry(&world, "groups").await;
    world
        .sim
        .add_fault(Fault::status(&format!("subscriptions/{groups}"), 404, 1));
    let actions = manager.ensure(Utc::now()).await.unwrap();
    let recreated = actions
        .iter()
        .find(|a| a.action == "recreated" && a.resource == "groups")
        .unwrap_or_else(|| panic!("no re-creation: {actions:?}"));
    assert_ne!(recreated.id, groups);
    let now_live = live(&world);
    assert_eq!(
        now_live.iter().filter(|(r, _)| r == "groups").count(),
        1,
        "{now_live:?}"
    );
    assert!(now_live.contains(&("groups".into(), recreated.id.clone())));
    assert_eq!(stored(&world).await, now_live);
}

/// Requests graph-sim saw whose path and query contain `fragment`.
/// Groups delta requests whose query has `fragment` (the users delta has deltaLinks too).
fn groups_delta(world: &World, fragment: &str) -> usize {
    world
        .sim
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/groups/delta") && r.query.contains(fragment))
        .count()
}

fn count(world: &World, fragment: &str) -> usize {
    world
        .sim
        .requests()
        .iter()
        .filter(|r| format!("{}?{}", r.path, r.query).contains(fragment))
        .count()
}

#[tokio::test]
async fn lifecycle_events_are_acted_on() {
    let mut world = World::new().await;
    let manager = world.subscription_manager();
    manager.ensure(Utc::now()).await.unwrap();
    let conn = world.db.conn().clone();
    world.start_worker_with(conn, "lifecycle", Some(manager));
    assert!(eventually(|| world.first_round_committed()).await);
    let id_of = |world: &World, resource: &str| {
        live(world)
            .into_iter()
            .find(|(r, _)| r == resource)
            .map(|(_, id)| id)
            .unwrap()
    };

    // reauthorizationRequired: reauthorized, then a round.
    let groups = id_of(&world, "groups");
    let rounds = groups_delta(&world, "deltatoken=");
    assert_eq!(
        world
            .sim
            .lifecycle(&groups, "reauthorizationRequired")
            .await,
        Some(202)
    );
    assert!(
        eventually(|| async { count(&world, &format!("subscriptions/{groups}/reauthorize")) == 1 })
            .await
    );
    assert!(
        eventually(|| async {
            world.pending() == 0 && groups_delta(&world, "deltatoken=") > rounds
        })
        .await
    );
    assert_eq!(
        id_of(&world, "groups"),
        groups,
        "reauthorized, not replaced"
    );

    // missed: a full resync (which starts from `$deltatoken=latest`).
    let resyncs = groups_delta(&world, "deltatoken=latest");
    world.sim.lifecycle(&groups, "missed").await;
    assert!(eventually(|| async { groups_delta(&world, "deltatoken=latest") > resyncs }).await);

    // subscriptionRemoved: Graph dropped it; a new one replaces it, and a resync follows.
    let resyncs = groups_delta(&world, "deltatoken=latest");
    world.sim.lifecycle(&groups, "subscriptionRemoved").await;
    assert!(
        eventually(|| async {
            live(&world)
                .iter()
                .any(|(r, id)| r == "groups" && *id != groups)
        })
        .await,
        "not re-created: {:?}",
        live(&world)
    );
    assert!(eventually(|| async { groups_delta(&world, "deltatoken=latest") > resyncs }).await);
    assert!(eventually(|| async { stored(&world).await == live(&world) }).await);

    // The new subscription delivers: a member added reaches LiteLLM.
    world.sim.apply(|t| t.add_member(gid(1), uid(7)));
    let mut expected = users(1..=5);
    expected.push(uid(7).to_string());
    expected.sort();
    assert!(eventually(|| async { world.members(1).await == Some(expected.clone()) }).await);
    world.stop_workers().await;
    assert!(world.dead.is_empty());
}

/// Posts a lifecycle notification to the world's webhook as Graph would (our clientState, our
/// tenant), about any subscription id.
async fn post_lifecycle(world: &World, subscription: &str, event: &str) {
    let body = serde_json::json!({ "value": [{
        "subscriptionId": subscription,
        "subscriptionExpirationDateTime": "2026-12-20T00:00:00Z",
        "tenantId": world.sim.config().tenant_id.to_string(),
        "clientState": CLIENT_STATE,
        "lifecycleEvent": event,
    }]});
    let status = reqwest::Client::new()
        .post(format!("{}/lifecycle", world.webhook_url))
        .json(&body)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 202, "{subscription} {event}");
}

/// graph-sim's requests about subscriptions, as `METHOD path`.
fn subscription_requests(world: &World) -> Vec<String> {
    world
        .sim
        .requests()
        .iter()
        .filter(|r| r.path.contains("subscriptions"))
        .map(|r| format!("{} {}?{}", r.method, r.path, r.query))
        .collect()
}

#[tokio::test]
async fn lifecycle_events_about_subscriptions_not_ours_are_never_acted_on() {
    let mut world = World::new().await;
    let manager = world.subscription_manager();
    manager.ensure(Utc::now()).await.unwrap();
    let ours = stored(&world).await;
    let conn = world.db.conn().clone();
    world.start_worker_with(conn, "foreign", Some(manager));
    assert!(eventually(|| world.first_round_committed()).await);
    let before = subscription_requests(&world);
    let resyncs = groups_delta(&world, "deltatoken=latest");

    // Another app's subscription (a GUID we never stored), and ids that are no GUIDs at all,
    // some made to steer a Graph URL elsewhere.
    let foreign = "0b1d2c3e-aaaa-4bbb-8ccc-000000000001";
    let malformed = [
        "../users",
        "x/reauthorize",
        "../../servicePrincipals?$top=1#",
        "%2e%2e",
        "",
    ];
    for subscription in std::iter::once(foreign).chain(malformed) {
        for event in ["reauthorizationRequired", "subscriptionRemoved", "missed"] {
            post_lifecycle(&world, subscription, event).await;
        }
    }
    assert!(
        eventually(|| async { world.pending() == 0 && world.unread() == 0 }).await,
        "the events were not processed"
    );
    assert_eq!(
        subscription_requests(&world),
        before,
        "Graph was asked about subscriptions that are not ours"
    );
    assert_eq!(
        groups_delta(&world, "deltatoken=latest"),
        resyncs,
        "a lifecycle event not ours made a resync"
    );
    assert_eq!(stored(&world).await, ours);
    assert_eq!(live(&world), ours);

    // Ours, as Graph sends it: acted on, so the worker was listening all along.
    let (_, groups) = ours.iter().find(|(r, _)| r == "groups").unwrap().clone();
    world
        .sim
        .lifecycle(&groups, "reauthorizationRequired")
        .await;
    assert!(
        eventually(|| async { count(&world, &format!("subscriptions/{groups}/reauthorize")) == 1 })
            .await
    );
    world.stop_workers().await;
    assert!(world.dead.is_empty());
}

async fn lease_holder(world: &World) -> Option<String> {
    lease::Entity::find_by_id("subscriptions".to_owned())
        .one(world.db.conn())
        .await
        .unwrap()
        .filter(|l| l.expires_at > Utc::now())
        .map(|l| l.holder)
}

/// The subscriptions lease row as it stands: its holder, fence, and when it runs out.
async fn lease_row(world: &World) -> Option<(String, i64, chrono::DateTime<Utc>)> {
    lease::Entity::find_by_id("subscriptions".to_owned())
        .one(world.db.conn())
        .await
        .unwrap()
        .map(|l| (l.holder, l.fence, l.expires_at))
}

/// Sessions of the test database waiting for a row lock on `entra_sync_leases`.
async fn waiting_for_the_lease_row(world: &World) -> i64 {
    world
        .count(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock' AND query LIKE '%entra_sync_leases%'",
        )
        .await
}

/// Proves that replica-b tries to take the subscriptions lease and is refused while replica-a
/// holds it. Both keepers try every second; the test holds the lease row locked until both
/// are seen waiting for it (b's attempt included), then lets them through: a extends its lease,
/// b is refused, and the fence, which grows whenever the lease changes hands, stays put.
async fn b_is_refused_while_a_holds_the_lease(world: &World) {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    // Right after a renewal, so that a's lease has most of its time to live ahead of it while
    // the row is locked (a cannot renew meanwhile).
    let (_, _, expires) = lease_row(world).await.unwrap();
    assert!(
        eventually(|| async { lease_row(world).await.is_some_and(|(_, _, e)| e > expires) }).await,
        "replica-a does not renew its lease"
    );
    let locker = world.db.connect_again().await;
    let locked = locker.begin().await.unwrap();
    let row = locked
        .query_one(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT holder, fence FROM entra_sync_leases WHERE name = 'subscriptions' FOR UPDATE",
        ))
        .await
        .unwrap()
        .unwrap();
    let holder: String = row.try_get_by_index(0).unwrap();
    let fence: i64 = row.try_get_by_index(1).unwrap();
    assert_eq!(
        holder, "replica-a",
        "replica-b took the lease from replica-a"
    );
    let both_tried = eventually(|| async { waiting_for_the_lease_row(world).await >= 2 }).await;
    locked.commit().await.unwrap();
    assert!(both_tried, "replica-b never tried to take the lease");
    assert!(eventually(|| async { waiting_for_the_lease_row(world).await == 0 }).await);
    let (holder, after, _) = lease_row(world).await.unwrap();
    assert_eq!(
        (holder.as_str(), after),
        ("replica-a", fence),
        "replica-b took the lease while replica-a held it"
    );
}

#[tokio::test]
async fn killing_the_lease_holder_hands_the_subscriptions_to_another_replica() {
    let mut world = World::new().await;
    let url = world.webhook_url.clone();
    let keeper = [
        ("ENTRA_SYNC_PUBLIC_URL", url.as_str()),
        ("ENTRA_SYNC_CLIENT_STATE", CLIENT_STATE),
        ("ENTRA_SYNC_SUBSCRIPTION_CHECK_SECONDS", "1"),
    ];
    let a = world.spawn_worker_process_with("replica-a", &keeper);
    assert!(
        eventually(|| async { lease_holder(&world).await.as_deref() == Some("replica-a") }).await
    );
    let b = world.spawn_worker_process_with("replica-b", &keeper);
    assert!(eventually(|| async { live(&world).len() == 2 }).await);
    b_is_refused_while_a_holds_the_lease(&world).await;

    world.kill_process(a);
    assert!(
        eventually(|| async { lease_holder(&world).await.as_deref() == Some("replica-b") }).await,
        "the lease did not pass to replica-b"
    );
    // b now keeps the subscriptions: one deleted behind its back comes back.
    let (client, _) = secret_client(&world.sim);
    let (_, groups) = live(&world)
        .into_iter()
        .find(|(r, _)| r == "groups")
        .unwrap();
    client.delete_subscription(&groups).await.unwrap();
    assert!(
        eventually(|| async {
            live(&world)
                .iter()
                .any(|(r, id)| r == "groups" && *id != groups)
        })
        .await,
        "replica-b did not re-create the subscription"
    );
    // ... and keeps the lease while it lives.
    assert_eq!(lease_holder(&world).await.as_deref(), Some("replica-b"));
    world.kill_process(b);
}

#[tokio::test]
async fn a_lease_longer_than_the_calendar_is_cut_to_a_year_not_a_panic() {
    use worker::store::lease::Lease;
    let db = entra_sync_testkit::TestDatabase::new().await;
    let endless = Lease::new(db.conn().clone(), "test", "me", std::time::Duration::MAX);
    assert!(endless.try_acquire().await.unwrap());
    let days: i64 = {
        use sea_orm::ConnectionTrait;
        db.conn()
            .query_one(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                "SELECT extract(day FROM expires_at - now())::bigint FROM entra_sync_leases",
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get_by_index(0)
            .unwrap()
    };
    assert!((364..=366).contains(&days), "{days}");
}
