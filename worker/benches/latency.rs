//! Latency benchmark (not a test): from a membership change in graph-sim to the committed row in
//! LiteLLM's table, through the whole chain (Graph's notification, the webhook, Redis, the worker's
//! delta round, PostgreSQL), for members added one at a time. Prints p50, p99 and max.
//!
//! Run: `cargo bench -p worker --bench latency`

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

#[path = "../tests/it/graph_common/mod.rs"]
mod graph_common;

use entra_sync_testkit::TestDatabase;
use entra_sync_testkit::redis::{TestStream, redis_url};
use graph_sim::tenant::TenantFile;
use graph_sim::{GraphSim, SimConfig};
use prometheus_client::registry::Registry;
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use uuid::Uuid;
use worker::graph::NewSubscription;
use worker::metrics::WorkerMetrics;
use worker::run::{RunSettings, Worker};
use worker::store::{RemovalMode, Store};
use worker::stream::{StreamConsumer, StreamSettings};
use worker::sync::{Syncer, UnassignedPolicy};

const CHANGES: usize = 100;
const CLIENT_STATE: &str = entra_sync_testkit::CLIENT_STATE;

fn user(n: u128) -> Uuid {
    Uuid::from_u128(0x5b00_0000_0000_4000_8000_0000_0000_0000 + n)
}

fn group(n: u128) -> Uuid {
    Uuid::from_u128(0x9a00_0000_0000_4000_8000_0000_0000_0000 + n)
}

async fn scalar(db: &sea_orm::DatabaseConnection, sql: &str) -> i64 {
    db.query_one(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .unwrap()
        .and_then(|row| row.try_get_by_index::<i64>(0).ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    // One assigned group of 100 members; 200 users in all.
    let config = SimConfig::default();
    let sim = GraphSim::start(config.clone(), TenantFile::generate(1, 200, 100))
        .await
        .unwrap();
    let db = TestDatabase::new().await;
    let stream = TestStream::new();
    let dead = TestStream::new();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(webhook::serve(
        listener,
        webhook::Settings {
            redis_url: redis_url().into(),
            stream: stream.key().to_owned(),
            client_state: CLIENT_STATE.to_owned().into(),
            client_state_previous: Vec::new(),
            tenant_id: config.tenant_id.to_string(),
            deadline: Duration::from_secs(2),
            body_limit: 1024 * 1024,
            header_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(10),
            max_backlog: 1_000_000,
            backlog_interval: Duration::from_millis(500),
        },
        std::future::pending(),
    ));
    let (client, _) = graph_common::default_retry_client(&sim);
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

    let store = Store::new(db.conn().clone(), Default::default(), RemovalMode::Managed);
    let syncer = Syncer::new(client, store, UnassignedPolicy::RemoveMembers);
    let consumer = StreamConsumer::connect(
        &redis_url(),
        StreamSettings {
            stream: stream.key().to_owned(),
            dead_letter: dead.key().to_owned(),
            consumer: "latency".into(),
            batch: 500,
            claim_idle: Duration::from_secs(60),
            max_deliveries: 5,
        },
    )
    .await
    .unwrap();
    let worker = Worker {
        syncer,
        consumer,
        metrics: WorkerMetrics::register(&mut Registry::default()),
        settings: RunSettings {
            poll_interval: Duration::from_secs(3600),
            reconcile_interval: None,
            ..RunSettings::default()
        },
        subscriptions: None,
        readiness: Default::default(),
    };
    tokio::spawn(worker.run(std::future::pending()));
    while scalar(
        db.conn(),
        "SELECT count(*) FROM entra_sync_delta_links WHERE resource = 'groups'",
    )
    .await
        == 0
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let team = group(0);
    let mut latencies = Vec::with_capacity(CHANGES);
    for i in 0..CHANGES {
        let member = user(100 + i as u128);
        let started = Instant::now();
        sim.apply(|t| t.add_member(team, member));
        let query = format!(
            r#"SELECT count(*) FROM "LiteLLM_TeamMembership" WHERE team_id = '{team}' AND user_id = '{member}'"#
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while scalar(db.conn(), &query).await != 1 {
            assert!(Instant::now() < deadline, "change {i} never arrived");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "notification to commit, {CHANGES} members added one after another: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        at(0.50).as_secs_f64() * 1000.0,
        at(0.99).as_secs_f64() * 1000.0,
        latencies.last().unwrap().as_secs_f64() * 1000.0,
    );
    sim.shutdown();
}
