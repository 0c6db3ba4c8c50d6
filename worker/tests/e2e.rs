//! End to end, in one process: graph-sim -> webhook -> Redis -> worker -> PostgreSQL with
//! LiteLLM's real schema. Every assertion is on rows, HTTP answers or stream contents.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod graph_common;

use std::time::Duration;

use entity::litellm::team;
use entra_sync_testkit::TestDatabase;
use entra_sync_testkit::redis::{TestStream, redis_url};
use graph_common::*;
use graph_sim::GraphSim;
use prometheus_client::registry::Registry;
use sea_orm::EntityTrait;
use tokio::sync::oneshot;
use worker::graph::NewSubscription;
use worker::metrics::WorkerMetrics;
use worker::run::{RunSettings, Worker};
use worker::store::{RemovalMode, Store};
use worker::stream::{StreamConsumer, StreamSettings};
use worker::sync::{Syncer, UnassignedPolicy};

const CLIENT_STATE: &str = "e2e-client-state";

struct World {
    sim: GraphSim,
    db: TestDatabase,
    stream: TestStream,
    dead: TestStream,
    stop_webhook: Option<oneshot::Sender<()>>,
    stop_worker: Option<oneshot::Sender<()>>,
    worker: Option<tokio::task::JoinHandle<worker::Result<()>>>,
}

impl World {
    /// graph-sim with its tenant, the webhook subscribed to groups, a fresh database; the worker
    /// is started separately.
    async fn new() -> Self {
        let sim = sim(|_| {}).await;
        let db = TestDatabase::new().await;
        let stream = TestStream::new();
        let dead = TestStream::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop_webhook, stop) = oneshot::channel::<()>();
        tokio::spawn(webhook::serve(
            listener,
            webhook::Settings {
                redis_url: redis_url().into(),
                stream: stream.key().to_owned(),
                client_state: CLIENT_STATE.to_owned().into(),
                client_state_previous: Vec::new(),
                tenant_id: sim.config().tenant_id.to_string(),
                deadline: Duration::from_secs(2),
                body_limit: 1024 * 1024,
                max_backlog: 1_000_000,
                backlog_interval: Duration::from_millis(200),
            },
            async {
                let _ = stop.await;
            },
        ));
        let (client, _) = secret_client(&sim);
        client
            .create_subscription(&NewSubscription {
                resource: "groups".into(),
                change_type: "updated,deleted".into(),
                notification_url: format!("{url}/notifications"),
                lifecycle_notification_url: format!("{url}/lifecycle"),
                client_state: CLIENT_STATE.to_owned().into(),
                expiration: chrono::Utc::now() + chrono::Duration::days(1),
            })
            .await
            .unwrap();
        Self {
            sim,
            db,
            stream,
            dead,
            stop_webhook: Some(stop_webhook),
            stop_worker: None,
            worker: None,
        }
    }

    fn start_worker(&mut self) {
        let (client, _) = secret_client(&self.sim);
        let store = Store::new(
            self.db.conn().clone(),
            Default::default(),
            RemovalMode::Managed,
        );
        let syncer = Syncer::new(
            client,
            store,
            self.db.conn().clone(),
            UnassignedPolicy::RemoveMembers,
        );
        let settings = StreamSettings {
            stream: self.stream.key().to_owned(),
            dead_letter: self.dead.key().to_owned(),
            consumer: "e2e".into(),
            batch: 500,
            claim_idle: Duration::from_secs(1),
            max_deliveries: 3,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        self.stop_worker = Some(stop);
        self.worker = Some(tokio::spawn(async move {
            let consumer = StreamConsumer::connect(&redis_url(), settings)
                .await
                .unwrap();
            let worker = Worker {
                syncer,
                consumer,
                metrics: WorkerMetrics::register(&mut Registry::default()),
                settings: RunSettings {
                    poll_interval: Duration::from_secs(3600),
                    block: Duration::from_millis(200),
                    max_deliveries: 3,
                    trim_interval: Duration::from_secs(3600),
                },
            };
            worker
                .run(async {
                    let _ = stopped.await;
                })
                .await
        }));
    }

    async fn stop_worker(&mut self) {
        if let Some(stop) = self.stop_worker.take() {
            let _ = stop.send(());
        }
        if let Some(worker) = self.worker.take() {
            worker.await.unwrap().unwrap();
        }
    }

    async fn members(&self, n: u128) -> Option<Vec<String>> {
        let team = team::Entity::find_by_id(gid(n).to_string())
            .one(self.db.conn())
            .await
            .unwrap()?;
        let mut ids: Vec<String> = team
            .members_with_roles
            .as_array()?
            .iter()
            .map(|e| e["user_id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        Some(ids)
    }

    async fn alias(&self, n: u128) -> Option<String> {
        team::Entity::find_by_id(gid(n).to_string())
            .one(self.db.conn())
            .await
            .unwrap()
            .and_then(|t| t.team_alias)
    }

    /// Entries not yet read by the workers' group (all of them before it exists).
    fn unread(&self) -> i64 {
        let Ok(redis::Value::Array(groups)) =
            self.stream
                .try_command(&["XINFO", "GROUPS", self.stream.key()])
        else {
            return -1;
        };
        for group in groups {
            let fields = match group {
                redis::Value::Array(fields) => fields,
                redis::Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
                _ => continue,
            };
            let mut lag = -1;
            for pair in fields.chunks(2) {
                if let [redis::Value::BulkString(key), value] = pair
                    && key == b"lag"
                {
                    lag = match value {
                        redis::Value::Int(n) => *n,
                        _ => -1,
                    };
                }
            }
            return lag;
        }
        -1
    }

    fn pending(&self) -> i64 {
        match self
            .stream
            .try_command(&["XPENDING", self.stream.key(), "entra-sync-workers"])
        {
            Ok(redis::Value::Array(items)) => match items.first() {
                Some(redis::Value::Int(n)) => *n,
                _ => 0,
            },
            _ => -1,
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(stop) = self.stop_webhook.take() {
            let _ = stop.send(());
        }
        if let Some(stop) = self.stop_worker.take() {
            let _ = stop.send(());
        }
    }
}

fn users(range: std::ops::RangeInclusive<u128>) -> Vec<String> {
    let mut ids: Vec<String> = range.map(|n| uid(n).to_string()).collect();
    ids.sort();
    ids
}

/// Waits (up to 20 s) until `check` holds; returns whether it did.
async fn eventually<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..400 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

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

    // A group not assigned to the app never becomes a team.
    world.sim.apply(|t| t.add_member(gid(2), uid(10)));
    assert!(eventually(|| async { world.pending() == 0 && !world.stream.is_empty() }).await);
    assert!(world.members(2).await.is_none());

    world.stop_worker().await;
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
    world.stop_worker().await;

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
