//! Group commit: the requests waiting at the same moment share one MULTI/EXEC.
//!
//! A request hands its entries to the committer over a bounded channel, with a oneshot for the
//! answer and its deadline, and waits for that answer (or its deadline). One task takes whatever
//! is queued (up to [`MAX_BATCH_ENTRIES`]), writes it in one transaction, and answers each
//! request. While one transaction is in flight the next requests queue up, so the batches grow
//! with the load and a lone request still goes out at once: nothing waits for a batch to fill.
//!
//! What each request can rely on, as before group commit:
//! - an `Ok` means Redis has stored all of its entries (MULTI/EXEC: the batch is all or none);
//! - a failed transaction answers every request in it with the error (503: Graph retries);
//! - a request that gave up (its deadline passed) is left out of every later transaction, so
//!   what was answered 503 is not stored behind its back (one already sent to Redis may still
//!   land, as a single request's could before: a duplicate, which the worker absorbs);
//! - a full channel answers at once: a slow Redis cannot make the queue grow without bound.

use std::sync::Arc;

use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::queue::{Entries, Queue};

/// Requests that may wait for the committer; one more is refused at once.
pub const CHANNEL_CAPACITY: usize = 4096;

/// Entries per transaction: more go out in the next one. A single request larger than this
/// still goes out whole, alone.
pub const MAX_BATCH_ENTRIES: usize = 1024;

/// Why a request's entries were not stored.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    #[error("Redis: {0}")]
    Redis(Arc<str>),
    /// The committer has this many requests waiting already.
    #[error("{0} requests are already waiting for Redis")]
    Busy(usize),
    #[error("Redis did not answer in time")]
    TimedOut,
    /// The committer has stopped (the server is shutting down).
    #[error("the webhook is stopping")]
    Stopped,
}

/// One request's entries on their way to Redis.
struct Job {
    entries: Entries,
    deadline: Instant,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

impl Job {
    /// Nobody is waiting for this answer any more: leave the entries out.
    fn abandoned(&self, now: Instant) -> bool {
        self.reply.is_closed() || self.deadline <= now
    }
}

/// The requests' side of the committer. Dropping every clone stops the committer once it has
/// answered what was queued.
#[derive(Clone)]
pub struct GroupCommit {
    jobs: mpsc::Sender<Job>,
}

impl GroupCommit {
    /// Starts the committer task, writing to `queue`; each transaction's number of requests is
    /// observed in `batch_sizes`.
    pub fn start(queue: Arc<Queue>, batch_sizes: Histogram) -> Self {
        Self::with_limits(queue, batch_sizes, CHANNEL_CAPACITY, MAX_BATCH_ENTRIES)
    }

    pub fn with_limits(
        queue: Arc<Queue>,
        batch_sizes: Histogram,
        capacity: usize,
        max_batch_entries: usize,
    ) -> Self {
        let (jobs, receiver) = mpsc::channel(capacity.max(1));
        let committer = Committer {
            queue,
            batch_sizes,
            max_entries: max_batch_entries.max(1),
        };
        tokio::spawn(committer.run(receiver));
        Self { jobs }
    }

    /// Stores `entries`, answering once Redis has them, or with the reason it does not by
    /// `deadline`.
    pub async fn store(&self, entries: Entries, deadline: Instant) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            entries,
            deadline,
            reply,
        };
        self.jobs.try_send(job).map_err(|refused| match refused {
            mpsc::error::TrySendError::Full(_) => StoreError::Busy(self.jobs.max_capacity()),
            mpsc::error::TrySendError::Closed(_) => StoreError::Stopped,
        })?;
        // Dropping `answer` at the deadline closes the oneshot: the committer sees it and leaves
        // these entries out if they have not gone to Redis yet.
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(StoreError::Stopped),
            Err(_) => Err(StoreError::TimedOut),
        }
    }
}

/// The one task that talks to Redis for the requests.
struct Committer {
    queue: Arc<Queue>,
    batch_sizes: Histogram,
    max_entries: usize,
}

impl Committer {
    /// Takes what is queued, commits it, answers; until every sender is gone.
    async fn run(self, mut receiver: mpsc::Receiver<Job>) {
        let mut batch = Vec::new();
        while let Some(first) = receiver.recv().await {
            let mut entries = first.entries.len();
            batch.push(first);
            while entries < self.max_entries {
                match receiver.try_recv() {
                    Ok(job) => {
                        entries += job.entries.len();
                        batch.push(job);
                    }
                    Err(_) => break,
                }
            }
            self.commit(&mut batch).await;
        }
    }

    /// Writes the batch's live jobs in one transaction and answers each; empties `batch`.
    async fn commit(&self, batch: &mut Vec<Job>) {
        let now = Instant::now();
        for job in batch.extract_if(.., |job| job.abandoned(now)) {
            // Said, rather than left to a dropped sender, which would read as a stopped
            // committer. Whoever still listens had its deadline pass; a closed oneshot makes
            // this a no-op.
            let _ = job.reply.send(Err(StoreError::TimedOut));
        }
        // Past the last deadline nobody waits for the transaction: a hanging Redis must not
        // hold the committer (and every request queued behind it) any longer.
        let Some(latest) = batch.iter().map(|job| job.deadline).max() else {
            return;
        };
        self.batch_sizes.observe(batch.len() as f64);
        let mut transaction = redis::pipe();
        transaction.atomic();
        for job in batch.iter_mut() {
            job.entries.add_to(&mut transaction);
        }
        let written = tokio::time::timeout_at(latest, self.queue.commit(&transaction)).await;
        let result = match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(StoreError::Redis(error.to_string().into())),
            Err(_) => Err(StoreError::TimedOut),
        };
        for job in batch.drain(..) {
            // A request that gave up meanwhile has no one to answer: its send fails, silently.
            let _ = job.reply.send(result.clone());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use entra_sync_core::record::{Kind, StreamRecord};
    use entra_sync_testkit::redis::{RedisProxy, TestStream};

    use super::*;

    fn record(id: &str) -> StreamRecord {
        StreamRecord {
            subscription_id: "s".into(),
            tenant_id: "t".into(),
            kind: Kind::Change {
                change_type: "updated".into(),
                resource: format!("Groups/{id}"),
                resource_id: Some(id.into()),
                odata_type: None,
            },
            subscription_expires: None,
            received_at: chrono::Utc::now(),
        }
    }

    fn queue(url: &str, stream: &TestStream) -> Arc<Queue> {
        Arc::new(Queue::new(url, stream.key().to_owned()).unwrap())
    }

    fn in_a_second() -> Instant {
        Instant::now() + Duration::from_secs(1)
    }

    #[tokio::test]
    async fn a_request_that_gave_up_is_left_out_of_later_transactions() {
        let stream = TestStream::new();
        let queue = queue(stream.server().url(), &stream);
        let commits = GroupCommit::start(queue.clone(), Histogram::new([1.0].into_iter()));
        // Its deadline has passed before the committer sees it.
        let late = commits
            .store(queue.entries(&[record("late")]), Instant::now())
            .await;
        assert!(matches!(late, Err(StoreError::TimedOut)), "{late:?}");
        // The committer takes requests in order: once this one is stored, the late one was seen.
        commits
            .store(queue.entries(&[record("on-time")]), in_a_second())
            .await
            .unwrap();
        let ids: Vec<String> = stream
            .entries()
            .iter()
            .map(|e| e["resource_id"].clone())
            .collect();
        assert_eq!(ids, ["on-time"]);
    }

    #[tokio::test]
    async fn a_full_channel_refuses_at_once() {
        let stream = TestStream::new();
        let proxy = RedisProxy::start().await;
        proxy.stall();
        let queue = queue(&proxy.url(), &stream);
        let commits = GroupCommit::with_limits(
            queue.clone(),
            Histogram::new([1.0].into_iter()),
            1,
            MAX_BATCH_ENTRIES,
        );
        let deadline = Instant::now() + Duration::from_secs(2);
        // One in flight (Redis hangs), one waiting in the channel: the channel is full.
        let in_flight = tokio::spawn({
            let (commits, entries) = (commits.clone(), queue.entries(&[record("a")]));
            async move { commits.store(entries, deadline).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let waiting = tokio::spawn({
            let (commits, entries) = (commits.clone(), queue.entries(&[record("b")]));
            async move { commits.store(entries, deadline).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        let refused = commits.store(queue.entries(&[record("c")]), deadline).await;
        assert!(matches!(refused, Err(StoreError::Busy(1))), "{refused:?}");
        // At once: long before the 2-second deadline it would otherwise wait for.
        assert!(started.elapsed() < Duration::from_millis(500));
        // The others get their answers (failures: Redis hangs), none of them a success.
        assert!(in_flight.await.unwrap().is_err());
        assert!(waiting.await.unwrap().is_err());
        assert!(stream.is_empty());
    }
}
