//! The end-to-end world: graph-sim, the webhook subscribed to groups, Redis, a fresh database
//! with LiteLLM's schema, and workers in-process or as processes.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use entity::litellm::team;
use entra_sync_testkit::TestDatabase;
use entra_sync_testkit::listen::ProcessLog;
use entra_sync_testkit::redis::{RedisServer, TestStream};
use graph_sim::GraphSim;
use migration::database::Db;
use prometheus_client::registry::Registry;
use sea_orm::EntityTrait;
use tokio::sync::oneshot;
use worker::graph::NewSubscription;
use worker::metrics::WorkerMetrics;
use worker::readiness::Readiness;
use worker::run::{RunSettings, Worker};
use worker::store::{RemovalMode, Store};
use worker::stream::{StreamConsumer, StreamSettings};
use worker::subscriptions::{SubscriptionManager, Target};
use worker::sync::{LeaseSettings, Syncer, UnassignedPolicy};

use crate::graph_common::*;

pub const CLIENT_STATE: &str = entra_sync_testkit::CLIENT_STATE;

pub struct World {
    pub sim: GraphSim,
    /// The Redis the webhook writes to and the workers read.
    pub redis: RedisServer,
    pub db: TestDatabase,
    /// How the workers reach the database: directly, or through PgBouncer in transaction mode
    /// when `ENTRA_SYNC_TEST_THROUGH_PGBOUNCER=1`.
    pub worker_db: Db,
    worker_database_url: String,
    pub stream: TestStream,
    pub dead: TestStream,
    /// The webhook's base URL (what `ENTRA_SYNC_PUBLIC_URL` would be).
    pub webhook_url: String,
    stop_webhook: Option<oneshot::Sender<()>>,
    /// Settings of the syncers this world makes (its workers' and [`Self::syncer`]'s), e.g.
    /// `|s| s.with_membership(Membership::Transitive)`.
    pub syncer_settings: fn(Syncer) -> Syncer,
    workers: Vec<(
        oneshot::Sender<()>,
        tokio::task::JoinHandle<worker::Result<()>>,
    )>,
    processes: Vec<WorkerProcess>,
    /// How the in-process workers started from now on run.
    pub run_settings: RunSettings,
}

/// `entra-sync-worker run` as a process, and what it logs.
struct WorkerProcess {
    child: Child,
    log: ProcessLog,
}

impl World {
    /// graph-sim with its tenant, the webhook subscribed to groups, a fresh database; the worker
    /// is started separately.
    pub async fn new() -> Self {
        Self::on(RedisServer::machine()).await
    }

    /// Like [`Self::new`], with the stream on `redis`.
    pub async fn on(redis: RedisServer) -> Self {
        let sim = sim(|_| {}).await;
        let db = TestDatabase::new().await;
        let (worker_db, worker_database_url) = if entra_sync_testkit::through_pgbouncer() {
            let url = db.url_through_pgbouncer();
            let worker_db = migration::database::connect(&url, |options| {
                options.max_connections(8).sqlx_logging(false);
            })
            .await
            .unwrap();
            (worker_db, url)
        } else {
            (Db::from(db.conn().clone()), db.url().to_owned())
        };
        let stream = TestStream::on(&redis);
        let dead = TestStream::on(&redis);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop_webhook, stop) = oneshot::channel::<()>();
        tokio::spawn(webhook::serve(
            listener,
            webhook::Settings {
                redis_url: redis.url().to_owned().into(),
                stream: stream.key().to_owned(),
                client_state: CLIENT_STATE.to_owned().into(),
                client_state_previous: Vec::new(),
                tenant_id: sim.config().tenant_id.to_string(),
                deadline: Duration::from_secs(2),
                body_limit: 1024 * 1024,
                header_timeout: Duration::from_secs(5),
                body_timeout: Duration::from_secs(10),
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
            redis,
            db,
            worker_db,
            worker_database_url,
            stream,
            dead,
            webhook_url: url,
            stop_webhook: Some(stop_webhook),
            syncer_settings: |syncer| syncer,
            workers: Vec::new(),
            processes: Vec::new(),
            run_settings: RunSettings {
                poll_interval: Duration::from_secs(3600),
                block: Duration::from_millis(200),
                max_deliveries: 3,
                trim_interval: Duration::from_secs(3600),
                reconcile_interval: None,
                retry_check: Duration::from_millis(200),
                ..RunSettings::default()
            },
        }
    }

    /// A worker in this process, on the test database.
    pub fn start_worker(&mut self) {
        let conn = self.worker_db.clone();
        self.start_worker_on(conn, "e2e");
    }

    /// A worker in this process, named `consumer`, on the given connection.
    pub fn start_worker_on(&mut self, conn: impl Into<Db>, consumer: &str) {
        self.start_worker_with(conn, consumer, None);
    }

    /// The syncer a worker of this world uses.
    pub fn syncer(&self) -> Syncer {
        let (client, _) = secret_client(&self.sim);
        let conn = self.worker_db.clone();
        let store = Store::new(conn.clone(), Default::default(), RemovalMode::Managed);
        (self.syncer_settings)(Syncer::new(client, store, UnassignedPolicy::RemoveMembers))
    }

    /// The subscription manager a worker with `ENTRA_SYNC_PUBLIC_URL` = the webhook would use.
    pub fn subscription_manager(&self) -> SubscriptionManager {
        let (client, _) = secret_client(&self.sim);
        let public_url = worker::graph::checked_url("test", &self.webhook_url).unwrap();
        let target = Target::new(&public_url, CLIENT_STATE.to_owned().into()).unwrap();
        SubscriptionManager::new(client, self.worker_db.clone(), target)
    }

    /// A worker in this process that also handles lifecycle events with `subscriptions`.
    pub fn start_worker_with(
        &mut self,
        conn: impl Into<Db>,
        consumer: &str,
        subscriptions: Option<SubscriptionManager>,
    ) {
        let store = Store::new(conn, Default::default(), RemovalMode::Managed);
        let metrics = WorkerMetrics::register(&mut Registry::default());
        self.start_worker_with_store(store, metrics, consumer, subscriptions);
    }

    /// A worker in this process writing through `store` (its database), counting in `metrics`.
    pub fn start_worker_with_store(
        &mut self,
        store: Store,
        metrics: WorkerMetrics,
        consumer: &str,
        subscriptions: Option<SubscriptionManager>,
    ) {
        let (client, _) = secret_client(&self.sim);
        let syncer = (self.syncer_settings)(
            Syncer::new(client, store, UnassignedPolicy::RemoveMembers).with_lease(LeaseSettings {
                holder: consumer.to_owned(),
                ttl: Duration::from_secs(3),
                ..LeaseSettings::default()
            }),
        );
        let settings = StreamSettings {
            stream: self.stream.key().to_owned(),
            dead_letter: self.dead.key().to_owned(),
            consumer: consumer.into(),
            batch: 500,
            claim_idle: Duration::from_secs(1),
            max_deliveries: 3,
        };
        let run_settings = self.run_settings.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let redis_url = self.redis.url().to_owned();
        let handle = tokio::spawn(async move {
            let consumer = StreamConsumer::connect(&redis_url, settings).await.unwrap();
            let worker = Worker {
                syncer,
                consumer,
                metrics,
                settings: run_settings,
                subscriptions,
                readiness: Readiness::new(),
            };
            worker
                .run(async {
                    let _ = stopped.await;
                })
                .await
        });
        self.workers.push((stop, handle));
    }

    /// Stops the in-process workers (each finishes its round) and waits for them.
    pub async fn stop_workers(&mut self) {
        for (stop, handle) in self.workers.drain(..) {
            let _ = stop.send(());
            handle.await.unwrap().unwrap();
        }
    }

    /// `entra-sync-worker run` as a process of its own, configured as an operator would.
    pub fn spawn_worker_process(&mut self, consumer: &str) -> usize {
        self.spawn_worker_process_with(consumer, &[])
    }

    /// The environment an operator would give `entra-sync-worker` for this world.
    pub fn worker_env(&self, consumer: &str) -> Vec<(String, String)> {
        [
            ("DATABASE_URL", self.worker_database_url.clone()),
            ("REDIS_URL", self.redis.url().to_owned()),
            ("ENTRA_SYNC_STREAM", self.stream.key().to_owned()),
            ("ENTRA_SYNC_DEAD_LETTER_STREAM", self.dead.key().to_owned()),
            ("ENTRA_SYNC_CONSUMER", consumer.to_owned()),
            ("ENTRA_SYNC_METRICS_LISTEN", "127.0.0.1:0".to_owned()),
            ("ENTRA_SYNC_CLAIM_IDLE_SECONDS", "1".to_owned()),
            ("ENTRA_SYNC_MAX_DELIVERIES", "3".to_owned()),
            ("ENTRA_SYNC_POLL_SECONDS", "3600".to_owned()),
            // A killed worker's lease passes on quickly.
            ("ENTRA_SYNC_LEASE_SECONDS", "3".to_owned()),
            // Warnings, and the line that says where the health and metrics endpoint listens.
            ("RUST_LOG", "warn,worker::health=info".to_owned()),
        ]
        .into_iter()
        .chain(self.sim.client_env())
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Like [`Self::spawn_worker_process`], with some variables changed.
    pub fn spawn_worker_process_with(
        &mut self,
        consumer: &str,
        overrides: &[(&str, &str)],
    ) -> usize {
        let mut command = Command::new(env!("CARGO_BIN_EXE_entra-sync-worker"));
        command
            .arg("run")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        for (key, value) in self.worker_env(consumer) {
            command.env(key, value);
        }
        for (key, value) in overrides {
            command.env(key, value);
        }
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("entra-sync-worker starts");
        // Read for the address the worker listens on; ENTRA_SYNC_TEST_WORKER_LOGS=1 also shows
        // the workers' logs.
        let echo = std::env::var_os("ENTRA_SYNC_TEST_WORKER_LOGS").is_some();
        let stderr = child.stderr.take().expect("the worker's stderr is a pipe");
        let log = ProcessLog::capture(&format!("entra-sync-worker {consumer}"), stderr, echo);
        self.processes.push(WorkerProcess { child, log });
        self.processes.len() - 1
    }

    /// The base URL of a worker process's health and metrics endpoint (`http://127.0.0.1:port`),
    /// once the worker says which port it bound (`ENTRA_SYNC_METRICS_LISTEN` is `127.0.0.1:0`
    /// unless a test says otherwise).
    pub async fn metrics_url(&self, index: usize) -> String {
        let address = self.processes[index]
            .log
            .listen_address(Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        format!("http://{address}")
    }

    /// Whether a worker has committed its first round (the deltaLink is stored).
    pub async fn first_round_committed(&self) -> bool {
        use sea_orm::ConnectionTrait;
        self.db
            .conn()
            .query_one(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                "SELECT count(*) FROM entra_sync_delta_links WHERE resource = 'groups'",
            ))
            .await
            .ok()
            .flatten()
            .and_then(|row| row.try_get_by_index::<i64>(0).ok())
            == Some(1)
    }

    /// The process id of a worker process.
    pub fn process_id(&self, index: usize) -> u32 {
        self.processes[index].child.id()
    }

    /// Waits for a worker process to exit, up to `limit`, without blocking the test's runtime
    /// (graph-sim and the webhook run on it).
    pub async fn wait_process(
        &mut self,
        index: usize,
        limit: Duration,
    ) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.processes[index].child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// SIGKILL: no chance to finish the round or acknowledge anything.
    pub fn kill_process(&mut self, index: usize) {
        let child = &mut self.processes[index].child;
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// A number the test database answers, e.g. `SELECT count(*) ...`.
    pub async fn count(&self, sql: &str) -> i64 {
        use sea_orm::ConnectionTrait;
        self.db
            .conn()
            .query_one(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                sql,
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get_by_index::<i64>(0)
            .unwrap()
    }

    pub async fn members(&self, n: u128) -> Option<Vec<String>> {
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

    pub async fn alias(&self, n: u128) -> Option<String> {
        team::Entity::find_by_id(gid(n).to_string())
            .one(self.db.conn())
            .await
            .unwrap()
            .and_then(|t| t.team_alias)
    }

    /// The workers' consumer group as `XINFO GROUPS` describes it; `None` before it exists.
    fn workers_group(&self) -> Option<redis::streams::StreamInfoGroup> {
        let groups = self
            .stream
            .try_command(&["XINFO", "GROUPS", self.stream.key()])
            .ok()?;
        let groups: redis::streams::StreamInfoGroupsReply =
            redis::FromRedisValue::from_redis_value(groups).ok()?;
        groups
            .groups
            .into_iter()
            .find(|g| g.name == entra_sync_core::record::CONSUMER_GROUP)
    }

    /// Entries not yet read by the workers' group; -1 before the group exists, or where the
    /// server does not tell (before 7.0).
    pub fn unread(&self) -> i64 {
        self.workers_group()
            .and_then(|g| g.lag)
            .map_or(-1, |lag| lag as i64)
    }

    /// The id of the last entry the workers' group was given.
    pub fn last_delivered(&self) -> Option<String> {
        self.workers_group().map(|g| g.last_delivered_id)
    }

    pub fn pending(&self) -> i64 {
        match self.stream.try_command(&[
            "XPENDING",
            self.stream.key(),
            entra_sync_core::record::CONSUMER_GROUP,
        ]) {
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
        for (stop, _) in self.workers.drain(..) {
            let _ = stop.send(());
        }
        for process in &mut self.processes {
            let _ = process.child.kill();
            let _ = process.child.wait();
        }
    }
}

/// The value of one series in a Prometheus scrape, e.g.
/// `entra_sync_rounds_total{result="ok"}`; `None` when the scrape does not have it.
pub fn metric(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// A worker process's `/metrics`, or nothing while it does not answer.
pub async fn scrape_url(metrics_url: &str) -> String {
    match reqwest::get(format!("{metrics_url}/metrics")).await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

pub fn users(range: std::ops::RangeInclusive<u128>) -> Vec<String> {
    let mut ids: Vec<String> = range.map(|n| uid(n).to_string()).collect();
    ids.sort();
    ids
}

/// Waits up to `limit` until `check` holds; returns whether it did.
pub async fn eventually_within<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (up to 20 s) until `check` holds; returns whether it did.
pub async fn eventually<F, Fut>(mut check: F) -> bool
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
