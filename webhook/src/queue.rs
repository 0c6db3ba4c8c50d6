//! The Redis stream: appending accepted notifications, and watching how many wait.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{Mutex, OnceCell};

use entra_sync_core::record::StreamRecord;
use entra_sync_core::redis_server::{RedisCapabilities, group_progress};

/// How long connecting to Redis may take; requests have their own, shorter, deadline.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// One request's stream entries, encoded, not yet stored.
pub struct Entries {
    commands: Vec<redis::Cmd>,
}

impl Entries {
    pub fn len(&self) -> usize {
        self.commands.len()
    }

    /// Moves the commands into `transaction`.
    pub fn add_to(&mut self, transaction: &mut redis::Pipeline) {
        for command in self.commands.drain(..) {
            transaction.add_command(command);
        }
    }
}

/// The stream and a connection to Redis that is made on first use and remade after failures.
pub struct Queue {
    client: redis::Client,
    stream: String,
    connection: Mutex<Option<ConnectionManager>>,
    /// What the server can do, asked once, by the first measurement: requests never wait for it.
    capabilities: OnceCell<RedisCapabilities>,
    /// Entries not yet processed by the workers, as last measured; -1: unknown.
    backlog: AtomicI64,
    /// The stream's length (XLEN), as last measured; -1: unknown.
    length: AtomicI64,
}

impl Queue {
    pub fn new(redis_url: &str, stream: String) -> Result<Self, redis::RedisError> {
        Ok(Self {
            client: redis::Client::open(redis_url)?,
            stream,
            connection: Mutex::new(None),
            capabilities: OnceCell::new(),
            backlog: AtomicI64::new(-1),
            length: AtomicI64::new(-1),
        })
    }

    async fn connection(&self) -> redis::RedisResult<ConnectionManager> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let connection = ConnectionManager::new_with_config(self.client.clone(), config).await?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    /// One XADD per record, ready for [`Queue::commit`]. Built by the request, so that the
    /// encoding runs on the request's own task and not on the one committer.
    pub fn entries(&self, records: &[StreamRecord]) -> Entries {
        let commands = records
            .iter()
            .map(|record| {
                // Sized for a typical record (11 fields), so that it is allocated once.
                let mut command = redis::Cmd::with_capacity(24, 512);
                command.arg("XADD").arg(&self.stream).arg("*");
                record.each_field(|field, value| {
                    command.arg(field).arg(value);
                });
                command
            })
            .collect();
        Entries { commands }
    }

    /// Runs `transaction` (MULTI/EXEC: all or none), in one round trip.
    pub async fn commit(&self, transaction: &redis::Pipeline) -> redis::RedisResult<()> {
        let mut connection = self.connection().await?;
        transaction.query_async(&mut connection).await
    }

    pub async fn ping(&self) -> redis::RedisResult<()> {
        let mut connection = self.connection().await?;
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await?;
        Ok(())
    }

    /// The stream's length, and the entries the workers have not finished: the consumer group's
    /// lag plus its pending entries (see [`group_progress`] for servers that do not report the
    /// lag), or the whole stream before any worker created the group.
    async fn measure(&self) -> redis::RedisResult<(i64, i64)> {
        let mut connection = self.connection().await?;
        let capabilities = self
            .capabilities
            .get_or_try_init(|| {
                let mut connection = connection.clone();
                async move { RedisCapabilities::detect(&mut connection).await }
            })
            .await?;
        let length: i64 = redis::cmd("XLEN")
            .arg(&self.stream)
            .query_async(&mut connection)
            .await?;
        let backlog = match group_progress(&mut connection, &self.stream, capabilities).await? {
            Some(progress) => progress.lag.saturating_add(progress.pending),
            None => length,
        };
        Ok((length, backlog))
    }

    /// The last measured backlog, if known.
    pub fn backlog(&self) -> Option<i64> {
        let value = self.backlog.load(Ordering::Relaxed);
        (value >= 0).then_some(value)
    }

    /// The last measured stream length, if known.
    pub fn length(&self) -> Option<i64> {
        let value = self.length.load(Ordering::Relaxed);
        (value >= 0).then_some(value)
    }

    /// Measures the backlog every `interval` until the queue is dropped, so that requests read
    /// it without a round trip.
    pub fn watch_backlog(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let queue = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(q) = queue.upgrade() else { return };
                let measured = tokio::time::timeout(interval.saturating_mul(4), q.measure()).await;
                let (length, backlog) = match measured {
                    Ok(Ok(values)) => values,
                    _ => (-1, -1),
                };
                q.length.store(length, Ordering::Relaxed);
                q.backlog.store(backlog, Ordering::Relaxed);
                drop(q);
                tokio::time::sleep(interval).await;
            }
        })
    }
}
