//! `entra-sync-worker run`: the loop that turns notifications into committed sync rounds.
//!
//! A batch of stream entries asks for one delta round (a full resync after a `missed` or
//! `subscriptionRemoved` lifecycle event), plus a re-read of the users that `users`
//! notifications named. The entries are acknowledged only after that work committed; when it
//! fails (PostgreSQL or Graph away), they stay pending and the work is retried with backoff.
//! Unreadable entries are delivered again until `max_deliveries`, then dead-lettered. Assignments
//! are polled at start and every `poll_interval`, each poll followed by a round, so that a lost
//! notification costs at most one interval; a full reconciliation runs every
//! `reconcile_interval`. On shutdown the work in progress finishes and is acknowledged before the
//! loop ends.

use std::future::Future;
use std::time::Duration;

use entity::UserId;
use entra_sync_core::record::Kind;
use tokio::time::Instant;

use crate::error::Result;
use crate::metrics::{KindLabel, ResultLabel, WorkerMetrics};
use crate::readiness::Readiness;
use crate::stream::{Entry, StreamConsumer};
use crate::subscriptions::{Action, SubscriptionManager};
use crate::sync::Syncer;

#[derive(Clone, Debug)]
pub struct RunSettings {
    pub poll_interval: Duration,
    /// How long one read waits for new entries.
    pub block: Duration,
    pub max_deliveries: u64,
    /// How often the stream is trimmed below its oldest unacknowledged entry.
    pub trim_interval: Duration,
    /// Full reconciliations; `None`: never (only on demand).
    pub reconcile_interval: Option<Duration>,
    /// How often the loop looks for failed items due for another attempt.
    pub retry_check: Duration,
}

impl Default for RunSettings {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(300),
            block: Duration::from_secs(2),
            max_deliveries: 5,
            trim_interval: Duration::from_secs(60),
            reconcile_interval: Some(Duration::from_secs(6 * 3600)),
            retry_check: Duration::from_secs(15),
        }
    }
}

pub struct Worker {
    pub syncer: Syncer,
    pub consumer: StreamConsumer,
    pub metrics: WorkerMetrics,
    pub settings: RunSettings,
    /// Handles lifecycle events; `None` when the worker manages no subscriptions.
    pub subscriptions: Option<SubscriptionManager>,
    /// What `/readyz` reports; the loop records each read of the stream in it.
    pub readiness: Readiness,
}

/// What a batch of entries asks for.
#[derive(Debug, Default)]
struct Work {
    /// `(subscription id, event)`.
    lifecycle: Vec<(String, String)>,
    /// Users named by `users` notifications.
    users: Vec<UserId>,
}

impl Work {
    fn from_entries(entries: &[Entry]) -> Self {
        let mut work = Self::default();
        for record in entries.iter().filter_map(|e| e.record.as_ref().ok()) {
            match &record.kind {
                Kind::Lifecycle { event } => work
                    .lifecycle
                    .push((record.subscription_id.clone(), event.clone())),
                Kind::Change {
                    resource,
                    resource_id,
                    ..
                } => {
                    let is_user = resource
                        .get(..6)
                        .is_some_and(|p| p.eq_ignore_ascii_case("users/"));
                    if is_user
                        && let Some(id) = resource_id
                            .as_deref()
                            .or_else(|| resource.get(6..))
                            .and_then(|id| UserId::parse(id).ok())
                    {
                        work.users.push(id);
                    }
                }
            }
        }
        work
    }
}

/// The longest wait between attempts of a failing round: an outage's end is noticed within it.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What an interval too long for the clock is cut to: as good as never, without overflowing.
const FAR_FUTURE: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The instant `interval` from now. `RunSettings` may come from anywhere, so an interval the
/// clock cannot add (`Duration::MAX`) is cut to [`FAR_FUTURE`] instead of panicking.
fn instant_after(interval: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(interval)
        .or_else(|| now.checked_add(FAR_FUTURE))
        .unwrap_or(now)
}

impl Worker {
    /// Runs until `shutdown` resolves (between rounds).
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut next_poll = Instant::now();
        let mut next_trim = instant_after(self.settings.trim_interval);
        let mut held: Vec<Entry> = Vec::new();
        let mut round_due = false;
        let mut backoff = Duration::from_millis(250);
        let mut next_reconcile_check = instant_after(self.settings.poll_interval);
        let mut next_retry_check = instant_after(self.settings.retry_check);
        loop {
            if Instant::now() >= next_retry_check {
                // Failed items are retried at the end of a round: run one when some are due.
                match self.syncer.failures_due(chrono::Utc::now()).await {
                    Ok(due) => round_due |= due,
                    Err(error) => tracing::warn!(%error, "cannot read the failed items"),
                }
                next_retry_check = instant_after(self.settings.retry_check);
            }
            if Instant::now() >= next_poll {
                self.poll().await;
                next_poll = instant_after(self.settings.poll_interval);
                round_due = true;
            }
            if let Some(interval) = self.settings.reconcile_interval
                && Instant::now() >= next_reconcile_check
            {
                self.reconcile_if_due(interval).await;
                next_reconcile_check = instant_after(interval.min(Duration::from_secs(60)));
            }
            if held.is_empty() && !round_due {
                // Stop between rounds. The read itself is never cancelled: Redis may already have
                // handed the entries to this consumer, and they must not be left pending.
                if stop_requested(&mut shutdown).await {
                    return Ok(());
                }
                let wait = self
                    .settings
                    .block
                    .min(next_poll.saturating_duration_since(Instant::now()));
                let read = self.consumer.next_batch(wait).await;
                self.readiness.stream_read(read.is_ok());
                match read {
                    Ok(batch) => {
                        held = batch;
                        // Redis is back: a failure from now on starts waiting afresh.
                        backoff = Duration::from_millis(250);
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot read the stream");
                        if sleep_or_stop(&mut shutdown, backoff).await {
                            return Ok(());
                        }
                        backoff = backoff.saturating_mul(2).min(MAX_BACKOFF);
                        continue;
                    }
                }
                self.dead_letter_poison(&mut held).await;
                if held.is_empty() {
                    self.housekeeping(&mut next_trim).await;
                    continue;
                }
            }
            match self.process(Work::from_entries(&held)).await {
                Ok(()) => {
                    let ids: Vec<String> = held.iter().map(|e| e.id.clone()).collect();
                    if let Err(error) = self.consumer.ack(&ids).await {
                        // Not acknowledged: delivered again, and the round repeats harmlessly.
                        tracing::warn!(%error, "cannot acknowledge; the entries will come again");
                    }
                    held.clear();
                    round_due = false;
                    backoff = Duration::from_millis(250);
                }
                Err(crate::Error::LeaseBusy { holder, .. }) => {
                    // Not a failure: another replica's work comes first, and this one follows.
                    tracing::debug!(holder, "another replica is syncing; waiting for it");
                    if sleep_or_stop(&mut shutdown, Duration::from_millis(250)).await {
                        return Ok(());
                    }
                }
                Err(error) => {
                    let failed = self.readiness.round(false);
                    self.metrics.failed_rounds.set(i64::from(failed));
                    tracing::warn!(%error, ?backoff, failed_in_a_row = failed, "round failed; entries stay pending, retrying");
                    if sleep_or_stop(&mut shutdown, backoff).await {
                        return Ok(());
                    }
                    backoff = backoff.saturating_mul(2).min(MAX_BACKOFF);
                    continue;
                }
            }
            self.readiness.round(true);
            self.metrics.failed_rounds.set(0);
            self.housekeeping(&mut next_trim).await;
        }
    }

    async fn poll(&self) {
        let started = std::time::Instant::now();
        let sunk = self.syncer.sunk();
        match self.syncer.poll_assignments(chrono::Utc::now()).await {
            Ok(report) => {
                self.metrics
                    .polls
                    .get_or_create(&ResultLabel { result: "ok" })
                    .inc();
                self.metrics.count_changes(&report.changes);
                tracing::info!(
                    assigned = report.assigned_groups,
                    new = report.newly_assigned,
                    unassigned = report.unassigned,
                    changes = report.changes.len() as u64 + (self.syncer.sunk() - sunk),
                    took_ms = started.elapsed().as_millis() as u64,
                    "assignments polled"
                );
            }
            Err(error) => {
                self.metrics
                    .polls
                    .get_or_create(&ResultLabel { result: "error" })
                    .inc();
                tracing::warn!(%error, "polling the app's assignments failed; next interval retries");
            }
        }
    }

    /// A batch's work: lifecycle events first, then one round, then the users it named.
    async fn process(&self, work: Work) -> Result<()> {
        let now = chrono::Utc::now();
        let mut resync = false;
        for (subscription, event) in &work.lifecycle {
            tracing::info!(subscription, event, "lifecycle event");
            match event.as_str() {
                "reauthorizationRequired" => {
                    self.keep_subscriptions(event, |m| async move {
                        m.reauthorize(subscription, now).await
                    })
                    .await;
                }
                "subscriptionRemoved" => {
                    self.keep_subscriptions(event, |m| async move {
                        m.recreate(subscription, now).await
                    })
                    .await;
                    resync = true;
                }
                "missed" => resync = true,
                other => tracing::warn!(event = other, "unknown lifecycle event; ignored"),
            }
        }
        self.round(resync).await?;
        if resync {
            // Notifications were lost: users' renames and departures too.
            self.metrics
                .count_changes(&self.syncer.refresh_all_users(now).await?);
        } else if !work.users.is_empty() {
            self.metrics
                .count_changes(&self.syncer.refresh_users(&work.users, now).await?);
        }
        Ok(())
    }

    /// Runs a subscription action. A failure is logged, not fatal: the subscription keeper
    /// checks every subscription again within its interval.
    async fn keep_subscriptions<'a, F, Fut>(&'a self, event: &str, action: F)
    where
        F: FnOnce(&'a SubscriptionManager) -> Fut,
        Fut: Future<Output = Result<Vec<Action>>>,
    {
        let Some(manager) = &self.subscriptions else {
            tracing::warn!(
                event,
                "lifecycle event, but ENTRA_SYNC_PUBLIC_URL is unset: no subscriptions to keep"
            );
            return;
        };
        match action(manager).await {
            Ok(actions) => self.count_subscription_actions(&actions),
            Err(error) => {
                tracing::warn!(%error, event, "cannot act on the lifecycle event; the subscription keeper will retry")
            }
        }
    }

    fn count_subscription_actions(&self, actions: &[Action]) {
        count_subscription_actions(&self.metrics, actions);
    }

    async fn reconcile_if_due(&self, interval: Duration) {
        let interval = chrono::Duration::from_std(interval).unwrap_or(chrono::Duration::MAX);
        match self
            .syncer
            .reconcile_if_due(chrono::Utc::now(), interval)
            .await
        {
            Ok(None) => {}
            Ok(Some(report)) => {
                self.metrics
                    .reconciliations
                    .get_or_create(&ResultLabel { result: "ok" })
                    .inc();
                self.metrics.count_changes(&report.changes);
                self.metrics
                    .reconciliation_drift
                    .set(i64::try_from(report.total()).unwrap_or(i64::MAX));
                tracing::info!(
                    drift = report.total(),
                    groups = report.assigned_groups,
                    "reconciliation done"
                );
            }
            Err(error) => {
                self.metrics
                    .reconciliations
                    .get_or_create(&ResultLabel { result: "error" })
                    .inc();
                tracing::warn!(%error, "reconciliation failed; retried at the next check");
            }
        }
    }

    async fn round(&self, resync: bool) -> Result<()> {
        let started = std::time::Instant::now();
        let sunk = self.syncer.sunk();
        let now = chrono::Utc::now();
        let result = if resync {
            self.syncer.resync_round(now).await
        } else {
            self.syncer.delta_round(now).await
        };
        self.metrics
            .round_seconds
            .observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(report) => {
                self.metrics
                    .rounds
                    .get_or_create(&ResultLabel { result: "ok" })
                    .inc();
                self.metrics.count_changes(&report.changes);
                tracing::info!(
                    groups = report.groups_seen,
                    applied = report.groups_applied,
                    changes = report.changes.len() as u64 + (self.syncer.sunk() - sunk),
                    resynced = report.resynced,
                    took_ms = started.elapsed().as_millis() as u64,
                    "round committed"
                );
            }
            Err(_) => {
                self.metrics
                    .rounds
                    .get_or_create(&ResultLabel { result: "error" })
                    .inc();
            }
        }
        result.map(|_| ())
    }

    /// Unreadable entries leave the batch: delivered again until `max_deliveries`, then moved
    /// to the dead-letter stream.
    async fn dead_letter_poison(&mut self, held: &mut Vec<Entry>) {
        let mut kept = Vec::with_capacity(held.len());
        for entry in held.drain(..) {
            let Err(error) = &entry.record else {
                kept.push(entry);
                continue;
            };
            if entry.deliveries >= self.settings.max_deliveries {
                match self.consumer.dead_letter(&entry, error).await {
                    Ok(()) => {
                        self.metrics.dead_letters.inc();
                        tracing::error!(id = entry.id, %error, "entry moved to the dead-letter stream");
                    }
                    Err(e) => tracing::warn!(%e, "cannot dead-letter an entry"),
                }
            } else {
                tracing::warn!(id = entry.id, deliveries = entry.deliveries, %error, "unreadable entry");
            }
        }
        *held = kept;
    }

    async fn housekeeping(&mut self, next_trim: &mut Instant) {
        if let Ok((lag, pending)) = self.consumer.lag().await {
            self.metrics.stream_lag.set(lag);
            self.metrics.stream_pending.set(pending);
        }
        if let Ok((groups, users)) = self.syncer.failing_counts().await {
            self.metrics
                .failed_items
                .get_or_create(&KindLabel { kind: "group" })
                .set(groups);
            self.metrics
                .failed_items
                .get_or_create(&KindLabel { kind: "user" })
                .set(users);
        }
        if Instant::now() >= *next_trim {
            if let Err(error) = self.consumer.trim().await {
                tracing::warn!(%error, "cannot trim the stream");
            }
            *next_trim = instant_after(self.settings.trim_interval);
        }
    }
}

/// Counts what the subscription manager did.
pub fn count_subscription_actions(metrics: &WorkerMetrics, actions: &[Action]) {
    for action in actions {
        metrics
            .subscription_actions
            .get_or_create(&KindLabel {
                kind: action.action,
            })
            .inc();
    }
}

/// Whether shutdown was asked for, without waiting.
async fn stop_requested(shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>) -> bool {
    tokio::select! {
        biased;
        () = shutdown.as_mut() => true,
        () = std::future::ready(()) => false,
    }
}

/// Sleeps, unless shutdown comes first: then returns true.
async fn sleep_or_stop(
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    delay: Duration,
) -> bool {
    tokio::select! {
        () = shutdown.as_mut() => true,
        () = tokio::time::sleep(delay) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_too_long_for_the_clock_are_cut_not_overflowed() {
        let before = Instant::now();
        for interval in [
            Duration::MAX,
            Duration::from_secs(u64::MAX),
            Duration::from_secs(u64::MAX / 2),
        ] {
            let at = instant_after(interval);
            assert!(at > before, "{interval:?}");
            assert!(at <= Instant::now() + FAR_FUTURE, "{interval:?}");
        }
        let minute = instant_after(Duration::from_secs(60));
        assert!(minute >= before + Duration::from_secs(60));
        assert!(minute <= Instant::now() + Duration::from_secs(60));
    }
}
