//! `entra-sync-worker run`: named tasks that share one syncer and stop together.
//!
//! - [`stream`]: reads notifications and turns them into committed rounds;
//! - [`periodic`]: polls the app's assignments, reconciles, retries failed items, keeps gauges;
//! - [`subscriptions`]: keeps Graph's subscriptions alive.
//!
//! The syncer takes their sync work in turn (within the process, and across replicas through
//! the sync lease), so a slow poll delays the next round but never the reading of the stream.

mod inbox;
mod periodic;
mod stream;
mod subscriptions;

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::metrics::WorkerMetrics;
use crate::readiness::Readiness;
use crate::stream::StreamConsumer;
use crate::subscriptions::SubscriptionManager;
use crate::sync::Syncer;
use inbox::Inbox;

#[derive(Clone, Debug)]
pub struct RunSettings {
    pub poll_interval: Duration,
    /// How long one read waits for new entries; also how often the gauges are updated.
    pub block: Duration,
    pub max_deliveries: u64,
    /// How many entries the reader reads ahead of the work; beyond that it waits, so that
    /// memory stays bounded while PostgreSQL or Graph is away (what is not read stays in Redis,
    /// and shows as the stream's lag).
    pub read_ahead: usize,
    /// How often the stream is trimmed below its oldest unacknowledged entry.
    pub trim_interval: Duration,
    /// Full reconciliations; `None`: never (only on demand).
    pub reconcile_interval: Option<Duration>,
    /// How often the worker looks whether a reconciliation is due (no more often than the
    /// interval): a failed one is tried again this long after.
    pub reconcile_check: Duration,
    /// How often the worker looks for failed items due for another attempt.
    pub retry_check: Duration,
    /// How often the users entra-sync holds as departed are read again; `None`: never.
    pub departed_recheck: Option<Duration>,
    /// How long audit entries are kept; `None`: for ever.
    pub audit_retention: Option<Duration>,
    /// How often the subscription keeper checks the subscriptions, and how long its lease lasts
    /// without renewal; `None`: no keeper (lifecycle events are still handled).
    pub subscription_keeper: Option<KeeperSettings>,
}

#[derive(Clone, Copy, Debug)]
pub struct KeeperSettings {
    pub check: Duration,
    pub lease: Duration,
}

impl Default for RunSettings {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(30),
            block: Duration::from_secs(2),
            max_deliveries: 5,
            read_ahead: 10_000,
            trim_interval: Duration::from_secs(60),
            reconcile_interval: Some(Duration::from_secs(6 * 3600)),
            reconcile_check: Duration::from_secs(60),
            // Failed items are first retried 5 s after they failed.
            retry_check: Duration::from_secs(5),
            departed_recheck: Some(Duration::from_secs(300)),
            audit_retention: Some(Duration::from_secs(365 * 86_400)),
            subscription_keeper: None,
        }
    }
}

pub struct Worker {
    pub syncer: Syncer,
    pub consumer: StreamConsumer,
    pub metrics: WorkerMetrics,
    pub settings: RunSettings,
    /// Handles lifecycle events (and keeps the subscriptions, with a keeper configured); `None`
    /// when the worker manages no subscriptions.
    pub subscriptions: Option<SubscriptionManager>,
    /// What `/readyz` reports; the stream task records its reads and rounds in it.
    pub readiness: Readiness,
}

/// What the tasks share.
#[derive(Clone)]
struct Context {
    syncer: Syncer,
    metrics: WorkerMetrics,
    settings: RunSettings,
    subscriptions: Option<SubscriptionManager>,
    readiness: Readiness,
    inbox: Inbox,
    stop: CancellationToken,
}

impl Context {
    /// Waits `delay`; false if the worker is stopping instead.
    async fn waited(&self, delay: Duration) -> bool {
        tokio::select! {
            // `sleep` saturates: a delay too long for the clock means never.
            () = tokio::time::sleep(delay) => !self.stop.is_cancelled(),
            () = self.stop.cancelled() => false,
        }
    }
}

impl Worker {
    /// Runs until `shutdown` resolves; then each task finishes what it is doing (the stream's
    /// work is acknowledged) before this returns. A task that ends early is an error, and so
    /// is an error that must stop the worker wherever it happened
    /// ([`crate::error::must_stop`]): the tasks stop the same way, and it is returned.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let writer = self.consumer.another().await?;
        let housekeeper = self.consumer.another().await?;
        let keeper = self
            .settings
            .subscription_keeper
            .zip(self.subscriptions.clone());
        let holder = self.consumer.settings().consumer.clone();
        let context = Context {
            syncer: self.syncer.counting_only(),
            metrics: self.metrics,
            settings: self.settings,
            subscriptions: self.subscriptions,
            readiness: self.readiness,
            inbox: Inbox::default(),
            stop: CancellationToken::new(),
        };

        let mut tasks = JoinSet::new();
        tasks.spawn(stream::run(context.clone(), self.consumer, writer));
        tasks.spawn(periodic::poll(context.clone()));
        tasks.spawn(periodic::retry_failed_items(context.clone()));
        if let Some(interval) = context.settings.reconcile_interval {
            tasks.spawn(periodic::reconcile(context.clone(), interval));
        }
        if let Some(interval) = context.settings.departed_recheck {
            tasks.spawn(periodic::recheck_departed(context.clone(), interval));
        }
        tasks.spawn(periodic::housekeeping(context.clone(), housekeeper));
        if let Some(retention) = context.settings.audit_retention {
            tasks.spawn(periodic::audit_retention(context.clone(), retention));
        }
        if let Some((settings, manager)) = keeper {
            let lease = manager.keeper_lease(&holder, settings.lease);
            tasks.spawn(subscriptions::keep(
                context.clone(),
                manager,
                lease,
                settings.check,
            ));
        }

        let (early, stopping) = tokio::select! {
            () = shutdown => (None, None),
            ended = tasks.join_next() => (ended, None),
            error = crate::error::must_stop() => (None, Some(error)),
        };
        context.stop.cancel();
        while tasks.join_next().await.is_some() {}
        if let Some(error) = stopping {
            return Err(error);
        }
        match early {
            None => Ok(()),
            Some(Ok(())) => Err(Error::TaskEnded("task ended early".into())),
            Some(Err(failure)) => Err(Error::TaskEnded(format!("task failed: {failure}"))),
        }
    }
}
