//! The tasks that run on a clock: polling the app's assignments, reconciling, looking for failed
//! items due for another attempt, and housekeeping (the stream's gauges and trimming). Each does
//! its sync work through the syncer, which takes it in turn with the stream's rounds; none of
//! them holds the stream's reader back.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::Context;
use crate::metrics::{KindLabel, ResourceLabel, ResultLabel};
use crate::stream::StreamConsumer;

/// Waits `first`, then runs `tick` every `interval` (measured from the end of the last one)
/// until the stop. A tick in progress is never cut short.
async fn every<F, Fut>(context: &Context, first: Duration, interval: Duration, mut tick: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut wait = first;
    while context.waited(wait).await {
        tick().await;
        wait = interval;
    }
}

/// Polls the app's assignments at start and every `poll_interval`, each poll followed by a
/// round, so that a lost notification costs at most one interval.
pub(super) async fn poll(context: Context) {
    every(
        &context,
        Duration::ZERO,
        context.settings.poll_interval,
        || context.poll(),
    )
    .await;
}

/// Looks every `retry_check` for failed items due for another attempt, which the next round
/// makes.
pub(super) async fn retry_failed_items(context: Context) {
    let check = context.settings.retry_check;
    every(&context, check, check, || async {
        match context.syncer.failures_due(chrono::Utc::now()).await {
            Ok(true) => context.inbox.ask_for_round(),
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, "cannot read the failed items"),
        }
    })
    .await;
}

/// Runs a full reconciliation whenever the last successful one finished `interval` ago,
/// checked every minute at most (`reconcile_check`; the first check after the first poll
/// interval): one that fails is tried again at the next check.
pub(super) async fn reconcile(context: Context, interval: Duration) {
    let check = interval.min(context.settings.reconcile_check);
    every(&context, context.settings.poll_interval, check, || {
        context.reconcile_if_due(interval, check)
    })
    .await;
}

/// The time `wait` from now, as the log says when something comes next.
fn from_now(wait: Duration) -> String {
    chrono::Duration::from_std(wait)
        .ok()
        .and_then(|wait| chrono::Utc::now().checked_add_signed(wait))
        .map_or_else(
            || "never".to_owned(),
            |at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        )
}

/// Reads the users entra-sync holds as departed again every `interval` (the first time after
/// one interval): one enabled again whose notification was lost comes back within it.
pub(super) async fn recheck_departed(context: Context, interval: Duration) {
    every(&context, interval, interval, || async {
        match context.syncer.recheck_departed(chrono::Utc::now()).await {
            Ok(changes) => context.metrics.count_changes(changes.by_kind()),
            Err(crate::Error::LeaseBusy { .. }) => {}
            Err(error) => {
                tracing::warn!(%error, ?interval, "cannot read the departed users again; trying at the next interval")
            }
        }
    })
    .await;
}

/// How often audit entries past their retention are looked for.
const AUDIT_PURGE_INTERVAL: Duration = Duration::from_secs(3600);

/// Deletes the audit entries older than `retention` every hour (the first time after the first
/// poll interval), on one replica at a time.
pub(super) async fn audit_retention(context: Context, retention: Duration) {
    let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    every(
        &context,
        context.settings.poll_interval,
        AUDIT_PURGE_INTERVAL,
        || async {
            match context
                .syncer
                .purge_audit_log(chrono::Utc::now(), retention)
                .await
            {
                Ok(Some(0) | None) => {}
                Ok(Some(purged)) => {
                    tracing::info!(purged, "audit entries past their retention deleted")
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot delete old audit entries; next hour retries")
                }
            }
        },
    )
    .await;
}

/// Keeps the stream's and the failed items' gauges current, and trims the stream every
/// `trim_interval`.
pub(super) async fn housekeeping(context: Context, mut stream: StreamConsumer) {
    let mut last_trim = Instant::now();
    while context.waited(context.settings.block).await {
        context.update_gauges(&mut stream).await;
        if last_trim.elapsed() >= context.settings.trim_interval {
            last_trim = Instant::now();
            if let Err(error) = stream.trim().await {
                tracing::warn!(%error, "cannot trim the stream");
            }
        }
    }
}

impl Context {
    async fn poll(&self) {
        let started = std::time::Instant::now();
        let result = self.syncer.poll_assignments(chrono::Utc::now()).await;
        let label = ResultLabel {
            result: if result.is_ok() { "ok" } else { "error" },
        };
        self.metrics.polls.get_or_create(&label).inc();
        match result {
            Ok(report) => {
                self.metrics.count_changes(report.changes.by_kind());
                tracing::info!(
                    assigned = report.assigned_groups,
                    new = report.newly_assigned,
                    unassigned = report.unassigned,
                    changes = report.changes.total(),
                    took_ms = started.elapsed().as_millis() as u64,
                    "assignments polled"
                );
            }
            Err(error) => {
                tracing::warn!(%error, "polling the app's assignments failed; next interval retries");
            }
        }
        self.inbox.ask_for_round();
    }

    async fn reconcile_if_due(&self, interval: Duration, check: Duration) {
        let result = self
            .syncer
            .reconcile_if_due(
                chrono::Utc::now(),
                chrono::Duration::from_std(interval).unwrap_or(chrono::Duration::MAX),
            )
            .await;
        let report = match result {
            Ok(None) => return,
            Ok(Some(report)) => report,
            Err(error) => {
                self.metrics
                    .reconciliations
                    .get_or_create(&ResultLabel { result: "error" })
                    .inc();
                tracing::warn!(
                    %error,
                    next_attempt = from_now(check),
                    "reconciliation failed; retried at the next check"
                );
                return;
            }
        };
        self.metrics
            .reconciliations
            .get_or_create(&ResultLabel { result: "ok" })
            .inc();
        self.metrics.count_changes(report.changes.by_kind());
        let drift = report.changes.total();
        self.metrics
            .reconciliation_drift
            .set(i64::try_from(drift).unwrap_or(i64::MAX));
        tracing::info!(
            drift,
            groups = report.assigned_groups,
            next = from_now(interval),
            "reconciliation done"
        );
    }

    async fn update_gauges(&self, stream: &mut StreamConsumer) {
        if let Ok((lag, pending)) = stream.lag().await {
            self.metrics.stream_lag.set(lag);
            self.metrics.stream_pending.set(pending);
        }
        if let Ok(in_a_row) = self.syncer.reconciliations_with_drift().await {
            self.metrics
                .reconciliations_with_drift
                .set(i64::try_from(in_a_row).unwrap_or(i64::MAX));
        }
        if let Some(subscriptions) = &self.subscriptions
            && let Ok(expiries) = subscriptions.expiries().await
        {
            for (resource, expires_at) in expiries {
                self.metrics
                    .subscription_expiry
                    .get_or_create(&ResourceLabel { resource })
                    .set(expires_at.map_or(0, |at| at.timestamp()));
            }
        }
        if let Ok(held) = self.syncer.held_removals().await {
            self.metrics.removals_held.set(held);
        }
        if let Ok((groups, users)) = self.syncer.failing_counts().await {
            for (kind, count) in [("group", groups), ("user", users)] {
                self.metrics
                    .failed_items
                    .get_or_create(&KindLabel { kind })
                    .set(count);
            }
        }
    }
}
