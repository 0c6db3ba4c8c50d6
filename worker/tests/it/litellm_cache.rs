//! LiteLLM's caches: after a commit, the objects it changed leave LiteLLM's Redis and their keys
//! reach LiteLLM's invalidation channel, as a real subscriber sees them. A cache that is down
//! costs counted failures, never a commit.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use entra_sync_testkit::TestDatabase;
use entra_sync_testkit::redis::{RedisProxy, Subscriber, query, redis_url};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use worker::litellm_cache::{CHANNEL, CacheTarget, LiteLlmCache};
use worker::metrics::ResultLabel;
use worker::store::Store;

type Evictions = Family<ResultLabel, Counter>;

fn counted(evictions: &Evictions, result: &'static str) -> u64 {
    evictions.get_or_create(&ResultLabel { result }).get()
}

/// A namespace of its own, so that tests running in parallel never see each other's messages.
fn namespace() -> String {
    format!("entra-sync-test-{}", uuid::Uuid::new_v4().simple())
}

fn cached_store(db: &TestDatabase, url: &str, namespace: &str, evictions: &Evictions) -> Store {
    let target = CacheTarget {
        client: redis::Client::open(url).unwrap(),
        namespace: Some(namespace.to_owned()),
    };
    plain_store(db).with_litellm_cache(LiteLlmCache::start(target, evictions.clone()))
}

/// The cache keys in the messages, each checked to be exactly LiteLLM's message shape.
fn cache_keys(payloads: &[String]) -> BTreeSet<String> {
    payloads
        .iter()
        .map(|payload| {
            let message: serde_json::Value = serde_json::from_str(payload).unwrap();
            let fields = message.as_object().unwrap();
            assert_eq!(fields.len(), 1, "{payload}");
            fields["cache_key"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[tokio::test]
async fn a_removal_a_rename_and_a_role_change_are_evicted_from_litellms_redis_and_published() {
    let db = TestDatabase::new().await;
    let ns = namespace();
    let evictions = Evictions::default();
    let store = cached_store(&db, &redis_url(), &ns, &evictions);
    let g = group(1);
    let (team, u1, u2) = (
        g.to_string(),
        user_id(1).to_string(),
        user_id(2).to_string(),
    );
    store.ensure_team(&g, "Research", commit()).await.unwrap();
    store.add_members(&g, &users(1..3), commit()).await.unwrap();
    insert_key(
        db.conn(),
        "hashed-key-1",
        &u1,
        Some(&team),
        None,
        "2026-11-28 11:00:00",
    )
    .await;
    let cache = store.litellm_cache().unwrap().clone();
    assert!(cache.flush(Duration::from_secs(10)).await);

    // What LiteLLM's proxy cached meanwhile, under its namespace; and one object nobody changed.
    let expected: BTreeSet<String> = [
        format!("team_id:{team}"),
        "team_alias:Research".to_owned(),
        "team_alias:Research Labs".to_owned(),
        u1.clone(),
        format!("{team}_{u1}"),
        format!("team_membership:{u1}:{team}"),
        "hashed-key-1".to_owned(),
        u2.clone(),
    ]
    .into();
    for key in expected.iter().chain([&"team_id:unchanged".to_owned()]) {
        query(&["SET", &format!("{ns}:{key}"), "cached", "EX", "60"]).unwrap();
    }
    let subscriber = Subscriber::subscribe(&format!("{ns}:{CHANNEL}"));
    let published_before = counted(&evictions, "published");

    store
        .remove_members(&g, std::slice::from_ref(&user_id(1)), commit())
        .await
        .unwrap();
    store
        .ensure_team(&g, "Research Labs", commit())
        .await
        .unwrap();
    store
        .set_role(&user_id(2), &["proxy_admin".to_owned()], commit())
        .await
        .unwrap();
    assert!(cache.flush(Duration::from_secs(10)).await);

    let received = subscriber.receive_until(
        |payloads| cache_keys(payloads).is_superset(&expected),
        Duration::from_secs(10),
    );
    let payloads: Vec<String> = received.into_iter().map(|(_, p)| p).collect();
    assert_eq!(cache_keys(&payloads), expected);
    for key in &expected {
        assert_eq!(
            query(&["EXISTS", &format!("{ns}:{key}")]).unwrap(),
            redis::Value::Int(0),
            "{key} is still cached"
        );
    }
    assert_eq!(
        query(&["EXISTS", &format!("{ns}:team_id:unchanged")]).unwrap(),
        redis::Value::Int(1)
    );
    // Removal: the team, its alias, the user, both membership keys and the key; rename: the
    // team and both aliases; role: the user.
    assert_eq!(counted(&evictions, "published") - published_before, 10);
    assert_eq!(counted(&evictions, "failed"), 0);
    let _ = query(&["DEL", &format!("{ns}:team_id:unchanged")]);
}

#[tokio::test]
async fn without_a_namespace_keys_and_channel_are_litellms_plain_ones() {
    let target = CacheTarget {
        client: redis::Client::open(redis_url()).unwrap(),
        namespace: None,
    };
    assert_eq!(target.channel(), "litellm_proxy.auth_cache_invalidation");
    assert_eq!(target.redis_key("team_id:t"), "team_id:t");
    let namespaced = CacheTarget {
        namespace: Some("prod".into()),
        ..target
    };
    assert_eq!(
        namespaced.channel(),
        "prod:litellm_proxy.auth_cache_invalidation"
    );
    assert_eq!(namespaced.redis_key("team_id:t"), "prod:team_id:t");
    // LiteLLM's check_and_fix_namespace does not prefix a key twice.
    assert_eq!(namespaced.redis_key("prod:team_id:t"), "prod:team_id:t");
}

#[tokio::test]
async fn a_cache_that_is_down_costs_counted_failures_and_never_the_commit() {
    let db = TestDatabase::new().await;
    let proxy = RedisProxy::start().await;
    let evictions = Evictions::default();
    let store = cached_store(&db, &proxy.url(), &namespace(), &evictions);
    let g = group(1);
    store.ensure_team(&g, "Research", commit()).await.unwrap();
    store.add_members(&g, &users(1..3), commit()).await.unwrap();
    let cache = store.litellm_cache().unwrap().clone();
    assert!(cache.flush(Duration::from_secs(10)).await);
    let failed_before = counted(&evictions, "failed");

    proxy.cut();
    store
        .remove_members(&g, std::slice::from_ref(&user_id(1)), commit())
        .await
        .unwrap();
    assert!(cache.flush(Duration::from_secs(10)).await);
    assert_eq!(entry_ids(db.conn(), &g).await, [user_id(2).to_string()]);
    // The team, its alias, the user and both membership keys.
    assert_eq!(counted(&evictions, "failed") - failed_before, 5);

    // A hung Redis costs a bounded wait, then the same.
    proxy.stall();
    store
        .remove_members(&g, std::slice::from_ref(&user_id(2)), commit())
        .await
        .unwrap();
    assert!(cache.flush(Duration::from_secs(10)).await);
    assert!(entry_ids(db.conn(), &g).await.is_empty());
    assert_eq!(counted(&evictions, "failed") - failed_before, 10);

    // Back: the next commit's evictions go out again.
    proxy.restore();
    let published = counted(&evictions, "published");
    store
        .ensure_team(&g, "Research Labs", commit())
        .await
        .unwrap();
    assert!(cache.flush(Duration::from_secs(10)).await);
    assert_eq!(counted(&evictions, "published") - published, 3);
}
