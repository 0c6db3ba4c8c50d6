//! The stream task: a reader that keeps reading the stream whatever else the worker is doing,
//! and a worker that turns what it read into committed rounds.
//!
//! The reader puts readable entries in the [`Inbox`]; unreadable ones are delivered again until
//! `max_deliveries`, then dead-lettered. The worker takes everything waiting as one piece of
//! work: its lifecycle events, one delta round (a full resync after a `missed` or
//! `subscriptionRemoved` event), and a re-read of the users it names. Its entries are
//! acknowledged only after that committed; when it fails (PostgreSQL or Graph away), the same
//! work is tried again with backoff while the reader goes on reading. On shutdown the reader's
//! last read is finished, and the work in progress, and what was read, gets one last attempt.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use tokio_util::sync::CancellationToken;

use super::Context;
use super::inbox::Work;
use crate::error::{Error, Result};
use crate::metrics::ResultLabel;
use crate::stream::{Entry, StreamConsumer};

/// Between attempts of failing work or failing reads: from a quarter of a second, doubling, to
/// at most ten seconds (an outage's end is noticed within that), with jitter so that replicas do
/// not retry in step.
fn retry_policy() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times()
}

/// Sleeps for `delay`, or until the stop.
async fn pause(stop: &CancellationToken, delay: Duration) {
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        () = stop.cancelled() => {}
    }
}

/// Runs until the stop: reads on `reader`'s connection, acknowledges on `writer`'s.
pub(super) async fn run(context: Context, reader: StreamConsumer, writer: StreamConsumer) {
    let reading = tokio::spawn(read(context.clone(), reader));
    let mut writer = writer;
    loop {
        let work = tokio::select! {
            work = context.inbox.take() => work,
            () = context.stop.cancelled() => break,
        };
        context.complete(work, &mut writer).await;
    }
    // The reader's last read is in the inbox once it ends.
    if let Err(failure) = reading.await {
        tracing::error!(%failure, "the stream reader failed");
    }
    let rest = context.inbox.take_now();
    if !rest.ids.is_empty() {
        context.complete(rest, &mut writer).await;
    }
}

/// Reads until the stop. A read is never cancelled: Redis may already have handed the entries
/// to this consumer, and they must not be left pending.
async fn read(context: Context, mut reader: StreamConsumer) {
    let mut delays = retry_policy().build();
    while !context.stop.is_cancelled() {
        tokio::select! {
            () = context.inbox.room_for(context.settings.read_ahead) => {}
            () = context.stop.cancelled() => break,
        }
        let read = reader.next_batch(context.settings.block).await;
        context.readiness.stream_read(read.is_ok());
        match read {
            Ok(batch) => {
                delays = retry_policy().build();
                let readable = context.dead_letter_unreadable(batch, &mut reader).await;
                context.inbox.put(&readable);
            }
            Err(error) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(10));
                tracing::warn!(%error, ?delay, "cannot read the stream");
                pause(&context.stop, delay).await;
            }
        }
    }
}

impl Context {
    /// Does the work, trying again until it commits or the worker stops, then acknowledges it.
    async fn complete(&self, work: Work, writer: &mut StreamConsumer) {
        let stop = self.stop.clone();
        let done = (|| self.process(&work))
            .retry(retry_policy())
            .sleep(move |delay| {
                let stop = stop.clone();
                async move { pause(&stop, delay).await }
            })
            .when(|_| !self.stop.is_cancelled())
            .notify(|error, delay| self.work_failed(error, delay))
            .await;
        match done {
            Ok(()) => {
                self.readiness.round(true);
                self.metrics.failed_rounds.set(0);
                if let Err(error) = writer.ack(&work.ids).await {
                    // Not acknowledged: delivered again, and the round repeats harmlessly.
                    tracing::warn!(%error, "cannot acknowledge; the entries will come again");
                }
            }
            Err(error) => {
                tracing::warn!(%error, entries = work.ids.len(), "stopping with work undone; its entries stay pending");
            }
        }
    }

    fn work_failed(&self, error: &Error, delay: Duration) {
        if let Error::LeaseBusy { holder, .. } = error {
            // Not a failure: another replica's work comes first, and this one follows.
            tracing::debug!(holder, "another replica is syncing; waiting for it");
            return;
        }
        let failed = self.readiness.round(false);
        self.metrics.failed_rounds.set(i64::from(failed));
        tracing::warn!(%error, ?delay, failed_in_a_row = failed, "round failed; entries stay pending, retrying");
    }

    /// A piece of work: lifecycle events first, then one round, then the users it named.
    async fn process(&self, work: &Work) -> Result<()> {
        let now = chrono::Utc::now();
        let mut resync = false;
        for (subscription, event) in &work.lifecycle {
            resync |= self.lifecycle_event(subscription, event, now).await?;
        }
        self.round(resync).await?;
        if resync {
            // Notifications were lost: users' renames and departures too.
            self.metrics
                .count_changes(self.syncer.refresh_all_users(now).await?.by_kind());
        } else if !work.users.is_empty() {
            let users: Vec<_> = work.users.iter().cloned().collect();
            let changes = self
                .syncer
                .refresh_users(&users, &work.deleted, now)
                .await?;
            self.metrics.count_changes(changes.by_kind());
        }
        Ok(())
    }

    async fn round(&self, resync: bool) -> Result<()> {
        let started = std::time::Instant::now();
        let now = chrono::Utc::now();
        let result = if resync {
            self.syncer.resync_round(now).await
        } else {
            self.syncer.delta_round(now).await
        };
        self.metrics
            .round_seconds
            .observe(started.elapsed().as_secs_f64());
        let label = ResultLabel {
            result: if result.is_ok() { "ok" } else { "error" },
        };
        self.metrics.rounds.get_or_create(&label).inc();
        let report = result?;
        self.metrics.count_changes(report.changes.by_kind());
        tracing::info!(
            groups = report.groups_seen,
            applied = report.groups_applied,
            changes = report.changes.total(),
            resynced = report.resynced,
            took_ms = started.elapsed().as_millis() as u64,
            "round committed"
        );
        Ok(())
    }

    /// Leaves out the entries that cannot be read: each is delivered again until
    /// `max_deliveries`, then moved to the dead-letter stream.
    async fn dead_letter_unreadable(
        &self,
        batch: Vec<Entry>,
        reader: &mut StreamConsumer,
    ) -> Vec<Entry> {
        let mut readable = Vec::with_capacity(batch.len());
        for entry in batch {
            let Err(error) = &entry.record else {
                readable.push(entry);
                continue;
            };
            if entry.deliveries < self.settings.max_deliveries {
                tracing::warn!(id = entry.id, deliveries = entry.deliveries, %error, "unreadable entry");
                continue;
            }
            match reader.dead_letter(&entry, error).await {
                Ok(()) => {
                    self.metrics.dead_letters.inc();
                    tracing::error!(id = entry.id, %error, "entry moved to the dead-letter stream");
                }
                Err(e) => tracing::warn!(%e, "cannot dead-letter an entry"),
            }
        }
        readable
    }
}
