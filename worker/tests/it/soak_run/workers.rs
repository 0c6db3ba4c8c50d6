//! The soak's two workers: one in this process, which runs throughout (its knobs are
//! [`RunSettings`]'), and one `entra-sync-worker run` process, configured as an operator would,
//! which the soak kills with SIGKILL and starts again. They share the stream's consumer group
//! and take turns under the sync lease, as replicas do.

use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::sync::oneshot;
use worker::metrics::WorkerMetrics;
use worker::readiness::Readiness;
use worker::run::{RunSettings, Worker};
use worker::store::{RemovalMode, Store};
use worker::stream::{StreamConsumer, StreamSettings};
use worker::sync::{LeaseSettings, Syncer};

use super::Setup;
use crate::graph_common::secret_client;
use crate::world::World;

/// Polls of the assignments (each followed by a delta round): what catches a lost groups
/// notification.
const POLL: Duration = Duration::from_secs(1);
/// Deliveries before an entry is dead-lettered: above what kills can add, since an entry
/// that is not poisonous must never be.
const MAX_DELIVERIES: u64 = 20;
/// The removal threshold (the default): the soak's tenant cannot reach it in one unit.
pub const REMOVAL_THRESHOLD: u64 = 500;
const IN_PROCESS: &str = "soak-in-process";

type Running = (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<worker::Result<()>>,
);

pub struct Workers {
    setup: Setup,
    in_process: Option<Running>,
    /// The running process's index in the world, if one runs.
    process: Option<usize>,
    started: usize,
}

impl Workers {
    pub fn start(world: &mut World, setup: Setup) -> Self {
        let mut workers = Self {
            setup,
            in_process: None,
            process: None,
            started: 0,
        };
        workers.in_process = Some(in_process(world, setup));
        workers.start_process(world);
        workers
    }

    pub fn process_running(&self) -> bool {
        self.process.is_some()
    }

    /// Starts the worker process (a new one, with a new consumer name, as a restarted pod).
    pub fn start_process(&mut self, world: &mut World) {
        if self.process.is_some() {
            return;
        }
        self.started += 1;
        let consumer = format!("soak-process-{}", self.started);
        let poll = POLL.as_secs().to_string();
        let max_deliveries = MAX_DELIVERIES.to_string();
        let threshold = REMOVAL_THRESHOLD.to_string();
        let overrides = [
            ("ENTRA_SYNC_POLL_SECONDS", poll.as_str()),
            ("ENTRA_SYNC_RECONCILE_SECONDS", "0"),
            // A user enabled again whose notification was lost comes back by this recheck
            // when no read of a group of hers finds her first.
            ("ENTRA_SYNC_DEPARTED_RECHECK_SECONDS", "2"),
            ("ENTRA_SYNC_MEMBERSHIP", self.setup.membership_name()),
            ("ENTRA_SYNC_UNASSIGNED_POLICY", self.setup.unassigned_name()),
            ("ENTRA_SYNC_MAX_DELIVERIES", max_deliveries.as_str()),
            ("ENTRA_SYNC_REMOVAL_THRESHOLD", threshold.as_str()),
        ];
        self.process = Some(world.spawn_worker_process_with(&consumer, &overrides));
    }

    /// SIGKILL to the worker process; returns whether one ran.
    pub fn kill_process(&mut self, world: &mut World) -> bool {
        match self.process.take() {
            Some(index) => {
                world.kill_process(index);
                true
            }
            None => false,
        }
    }

    /// How many worker processes were started.
    pub fn processes_started(&self) -> usize {
        self.started
    }

    /// Stops the in-process worker; an error if it had stopped by itself or stops with one.
    pub async fn stop(&mut self) -> Result<(), String> {
        let Some((stop, handle)) = self.in_process.take() else {
            return Ok(());
        };
        let ended_early = handle.is_finished();
        let _ = stop.send(());
        match handle.await {
            Ok(Ok(())) if !ended_early => Ok(()),
            Ok(Ok(())) => Err("the in-process worker stopped by itself".into()),
            Ok(Err(error)) => Err(format!("the in-process worker failed: {error}")),
            Err(panic) => Err(format!("the in-process worker panicked: {panic}")),
        }
    }
}

/// The worker in this process: polls every second, looks for failed items due every 200 ms,
/// never reconciles.
fn in_process(world: &World, setup: Setup) -> Running {
    let (client, _) = secret_client(&world.sim);
    let store = Store::new(
        world.worker_db.clone(),
        Default::default(),
        RemovalMode::Managed,
    );
    let syncer = Syncer::new(client, store, setup.unassigned)
        .with_membership(setup.membership)
        .with_removal_threshold(REMOVAL_THRESHOLD)
        .with_lease(LeaseSettings {
            holder: IN_PROCESS.to_owned(),
            ttl: Duration::from_secs(3),
            ..LeaseSettings::default()
        });
    let stream = StreamSettings {
        stream: world.stream.key().to_owned(),
        dead_letter: world.dead.key().to_owned(),
        consumer: IN_PROCESS.into(),
        batch: 500,
        claim_idle: Duration::from_secs(1),
        max_deliveries: MAX_DELIVERIES,
    };
    let settings = RunSettings {
        poll_interval: POLL,
        block: Duration::from_millis(200),
        max_deliveries: MAX_DELIVERIES,
        trim_interval: Duration::from_secs(3600),
        reconcile_interval: None,
        retry_check: Duration::from_millis(200),
        departed_recheck: Some(Duration::from_secs(2)),
        ..RunSettings::default()
    };
    let metrics = WorkerMetrics::register(&mut Registry::default());
    let redis_url = world.redis.url().to_owned();
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        let consumer = StreamConsumer::connect(&redis_url, stream)
            .await
            .expect("the stream's Redis answers");
        let worker = Worker {
            syncer,
            consumer,
            metrics,
            settings,
            subscriptions: None,
            readiness: Readiness::new(),
        };
        worker
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    (stop, handle)
}
