//! `entra-sync-worker run`: the loop that turns notifications into committed sync rounds.
//!
//! A batch of stream entries asks for one delta round. The entries are acknowledged only after
//! that round committed; when it fails (PostgreSQL or Graph away), they stay pending and the
//! round is retried with backoff. Unreadable entries are delivered again until `max_deliveries`,
//! then dead-lettered. Assignments are polled at start and every `poll_interval`, each poll
//! followed by a round, so that a lost notification costs at most one interval. On shutdown the
//! round in progress finishes and is acknowledged before the loop ends.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Result;
use crate::metrics::{ResultLabel, WorkerMetrics};
use crate::stream::{Entry, StreamConsumer};
use crate::sync::Syncer;

#[derive(Clone, Debug)]
pub struct RunSettings {
    pub poll_interval: Duration,
    /// How long one read waits for new entries.
    pub block: Duration,
    pub max_deliveries: u64,
    /// How often the stream is trimmed below its oldest unacknowledged entry.
    pub trim_interval: Duration,
}

impl Default for RunSettings {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(300),
            block: Duration::from_secs(2),
            max_deliveries: 5,
            trim_interval: Duration::from_secs(60),
        }
    }
}

pub struct Worker {
    pub syncer: Syncer,
    pub consumer: StreamConsumer,
    pub metrics: WorkerMetrics,
    pub settings: RunSettings,
}

const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Worker {
    /// Runs until `shutdown` resolves (between rounds).
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut next_poll = Instant::now();
        let mut next_trim = Instant::now() + self.settings.trim_interval;
        let mut held: Vec<Entry> = Vec::new();
        let mut round_due = false;
        let mut backoff = Duration::from_millis(250);
        loop {
            if Instant::now() >= next_poll {
                self.poll().await;
                next_poll = Instant::now() + self.settings.poll_interval;
                round_due = true;
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
                match self.consumer.next_batch(wait).await {
                    Ok(batch) => held = batch,
                    Err(error) => {
                        tracing::warn!(%error, "cannot read the stream");
                        if sleep_or_stop(&mut shutdown, backoff).await {
                            return Ok(());
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                }
                self.dead_letter_poison(&mut held).await;
                if held.is_empty() {
                    self.housekeeping(&mut next_trim).await;
                    continue;
                }
            }
            match self.round().await {
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
                Err(error) => {
                    tracing::warn!(%error, ?backoff, "round failed; entries stay pending, retrying");
                    if sleep_or_stop(&mut shutdown, backoff).await {
                        return Ok(());
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            self.housekeeping(&mut next_trim).await;
        }
    }

    async fn poll(&self) {
        let started = std::time::Instant::now();
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
                    changes = report.changes.len(),
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

    async fn round(&self) -> Result<()> {
        let started = std::time::Instant::now();
        let result = self.syncer.delta_round(chrono::Utc::now()).await;
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
                    changes = report.changes.len(),
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
        if Instant::now() >= *next_trim {
            if let Err(error) = self.consumer.trim().await {
                tracing::warn!(%error, "cannot trim the stream");
            }
            *next_trim = Instant::now() + self.settings.trim_interval;
        }
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
