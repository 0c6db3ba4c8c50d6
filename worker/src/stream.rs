//! The notification stream, read as a consumer group.
//!
//! Entries are triggers: a batch of them asks for one sync round. An entry is acknowledged only
//! after the round that covered it committed. Entries a dead consumer left pending are claimed
//! once they have been idle long enough. An entry that cannot be read (not a record this version
//! understands) stays unacknowledged, so it is delivered again; after `max_deliveries` it moves
//! to the dead-letter stream with its error, and it never holds back the others. The stream is
//! trimmed only below its oldest unacknowledged entry.
//!
//! The commands differ with the server's version (6.0, 6.2, 7.0 and newer, Valkey): what is used
//! where is decided once, by [`RedisCapabilities`], detected when the consumer connects.

use std::collections::HashMap;
use std::time::Duration;

use entra_sync_core::record::{CONSUMER_GROUP, StreamRecord};
use entra_sync_core::redis_server::{
    ClaimMethod, RedisCapabilities, TrimMethod, fields_as_strings, group_progress, id_after,
    workers_group,
};
use redis::aio::ConnectionManager;
use redis::streams::{
    StreamAutoClaimReply, StreamId, StreamPendingCountReply, StreamPendingReply, StreamRangeReply,
    StreamReadReply,
};

/// One entry read from the stream.
#[derive(Clone, Debug)]
pub struct Entry {
    pub id: String,
    /// How many times it has been delivered, this time included.
    pub deliveries: u64,
    pub record: Result<StreamRecord, String>,
    pub fields: HashMap<String, String>,
}

#[derive(Clone, Debug)]
pub struct StreamSettings {
    pub stream: String,
    pub dead_letter: String,
    /// This worker's name in the consumer group (unique per replica).
    pub consumer: String,
    pub batch: usize,
    /// Pending entries idle this long belong to a consumer that died: claim them.
    pub claim_idle: Duration,
    pub max_deliveries: u64,
}

pub struct StreamConsumer {
    client: redis::Client,
    connection: ConnectionManager,
    settings: StreamSettings,
    capabilities: RedisCapabilities,
}

type Fields = HashMap<String, String>;
/// An entry as Redis returns it: id and fields.
type RawEntry = (String, Fields);

/// How many pending entries one claim looks at, per entry it may claim: as `XAUTOCLAIM` does
/// (it scans at most ten times its `COUNT`), so that both paths see the same entries.
const CLAIM_SCAN_FACTOR: usize = 10;
/// Entries deleted per `XDEL` when trimming without `XTRIM MINID` (6.0), and how many such
/// batches one trim may delete: the rest waits for the next trim, so that a long backlog of
/// acknowledged entries never makes one trim long.
const TRIM_BATCH: usize = 1000;
const TRIM_BATCHES: usize = 10;

fn raw_entry(entry: StreamId) -> RawEntry {
    (entry.id, fields_as_strings(entry.map))
}

fn to_entries(raw: Vec<RawEntry>, deliveries: &HashMap<String, u64>) -> Vec<Entry> {
    raw.into_iter()
        .map(|(id, fields)| Entry {
            deliveries: deliveries.get(&id).copied().unwrap_or(1),
            record: StreamRecord::from_fields(&fields).map_err(|e| e.to_string()),
            id,
            fields,
        })
        .collect()
}

impl StreamConsumer {
    /// Connects, asks the server what it can do, and makes sure the consumer group exists
    /// (reading from the stream's start).
    pub async fn connect(redis_url: &str, settings: StreamSettings) -> redis::RedisResult<Self> {
        let client = redis::Client::open(redis_url)?;
        let mut connection = Self::open(&client).await?;
        let capabilities = RedisCapabilities::detect(&mut connection).await?;
        tracing::info!(%capabilities, "the stream's server");
        Self::start(client, connection, settings, capabilities).await
    }

    /// Like [`Self::connect`], with the capabilities given rather than detected: tests take a
    /// newer server down an older server's path with it.
    pub async fn connect_assuming(
        redis_url: &str,
        settings: StreamSettings,
        capabilities: RedisCapabilities,
    ) -> redis::RedisResult<Self> {
        let client = redis::Client::open(redis_url)?;
        let connection = Self::open(&client).await?;
        Self::start(client, connection, settings, capabilities).await
    }

    /// The same consumer on a connection of its own: a blocking read holds up every command
    /// behind it on its connection, so the worker reads on one and acknowledges on another.
    pub async fn another(&self) -> redis::RedisResult<Self> {
        Ok(Self {
            client: self.client.clone(),
            connection: Self::open(&self.client).await?,
            settings: self.settings.clone(),
            capabilities: self.capabilities,
        })
    }

    async fn open(client: &redis::Client) -> redis::RedisResult<ConnectionManager> {
        // Reads block for up to a few seconds; the response timeout must be longer than that.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(30)));
        ConnectionManager::new_with_config(client.clone(), config).await
    }

    async fn start(
        client: redis::Client,
        mut connection: ConnectionManager,
        settings: StreamSettings,
        capabilities: RedisCapabilities,
    ) -> redis::RedisResult<Self> {
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&settings.stream)
            .arg(CONSUMER_GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut connection)
            .await;
        if let Err(error) = created
            && error.code() != Some("BUSYGROUP")
        {
            return Err(error);
        }
        Ok(Self {
            client,
            connection,
            settings,
            capabilities,
        })
    }

    pub fn settings(&self) -> &StreamSettings {
        &self.settings
    }

    pub fn capabilities(&self) -> &RedisCapabilities {
        &self.capabilities
    }

    /// The next batch: first entries claimed from dead consumers, then new ones, waiting up to
    /// `block` for any to arrive.
    pub async fn next_batch(&mut self, block: Duration) -> redis::RedisResult<Vec<Entry>> {
        let mut entries = match self.capabilities.claim {
            ClaimMethod::AutoClaim => self.auto_claim().await?,
            ClaimMethod::PendingThenClaim => self.claim_pending().await?,
        };
        let room = self.settings.batch.saturating_sub(entries.len());
        if room > 0 {
            let mut read = redis::cmd("XREADGROUP");
            read.arg("GROUP")
                .arg(CONSUMER_GROUP)
                .arg(&self.settings.consumer)
                .arg("COUNT")
                .arg(room);
            // Wait only when there is nothing to do yet (BLOCK 0 would wait forever).
            let wait = block.as_millis() as u64;
            if entries.is_empty() && wait > 0 {
                read.arg("BLOCK").arg(wait);
            }
            // Nil when BLOCK ran out with nothing new.
            let reply: Option<StreamReadReply> = read
                .arg("STREAMS")
                .arg(&self.settings.stream)
                .arg(">")
                .query_async(&mut self.connection)
                .await?;
            let raw = reply
                .into_iter()
                .flat_map(|reply| reply.keys)
                .flat_map(|key| key.ids)
                .map(raw_entry)
                .collect();
            // New entries: delivered for the first time.
            entries.extend(to_entries(raw, &HashMap::new()));
        }
        Ok(entries)
    }

    /// Takes over entries other consumers left pending for longer than `claim_idle`, with
    /// `XAUTOCLAIM` (6.2 and newer).
    async fn auto_claim(&mut self) -> redis::RedisResult<Vec<Entry>> {
        // `StreamAutoClaimReply` reads both of XAUTOCLAIM's replies: 7.0's three elements (next
        // id, entries, deleted ids) and 6.2's two.
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(&self.settings.stream)
            .arg(CONSUMER_GROUP)
            .arg(&self.settings.consumer)
            .arg(self.claim_idle_ms())
            .arg("0-0")
            .arg("COUNT")
            .arg(self.settings.batch)
            .query_async(&mut self.connection)
            .await?;
        // 7.0 drops entries deleted from the stream from the pending list itself and lists them
        // in `deleted_ids`, which need nothing more. 6.2 answers nil for them and keeps them
        // pending, now as ours: they would be claimed again forever, and hold back trimming.
        if reply.invalid_entries {
            self.acknowledge_vanished().await?;
        }
        let raw: Vec<RawEntry> = reply.claimed.into_iter().map(raw_entry).collect();
        self.with_delivery_counts(raw).await
    }

    /// Takes over entries other consumers left pending for longer than `claim_idle`, without
    /// `XAUTOCLAIM` (6.0): lists the oldest pending entries (6.0's `XPENDING` cannot filter by
    /// idle time), keeps the idle ones, and claims those.
    async fn claim_pending(&mut self) -> redis::RedisResult<Vec<Entry>> {
        let claim_idle = self.claim_idle_ms();
        let pending: StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(&self.settings.stream)
            .arg(CONSUMER_GROUP)
            .arg("-")
            .arg("+")
            .arg(self.settings.batch.saturating_mul(CLAIM_SCAN_FACTOR))
            .query_async(&mut self.connection)
            .await?;
        let idle: Vec<String> = pending
            .ids
            .into_iter()
            .filter(|entry| entry.last_delivered_ms as u64 >= claim_idle)
            .take(self.settings.batch)
            .map(|entry| entry.id)
            .collect();
        if idle.is_empty() {
            return Ok(Vec::new());
        }
        // XCLAIM checks the idle time again, so an entry another replica claimed meanwhile is
        // left to it. Not `StreamClaimReply`: it turns the nil that 6.x answers for an entry
        // deleted from the stream into nothing, and such an entry must be acknowledged.
        let claimed: Vec<Option<(String, HashMap<String, redis::Value>)>> = redis::cmd("XCLAIM")
            .arg(&self.settings.stream)
            .arg(CONSUMER_GROUP)
            .arg(&self.settings.consumer)
            .arg(claim_idle)
            .arg(&idle)
            .query_async(&mut self.connection)
            .await?;
        if claimed.iter().any(Option::is_none) {
            self.acknowledge_vanished().await?;
        }
        let raw: Vec<RawEntry> = claimed
            .into_iter()
            .flatten()
            .map(|(id, fields)| (id, fields_as_strings(fields)))
            .collect();
        self.with_delivery_counts(raw).await
    }

    fn claim_idle_ms(&self) -> u64 {
        u64::try_from(self.settings.claim_idle.as_millis()).unwrap_or(u64::MAX)
    }

    /// Acknowledges this consumer's pending entries that are no longer in the stream (deleted
    /// by someone else: entra-sync's own trimming never goes past a pending entry). There is
    /// nothing left of them to process.
    async fn acknowledge_vanished(&mut self) -> redis::RedisResult<()> {
        let mine: StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(&self.settings.stream)
            .arg(CONSUMER_GROUP)
            .arg("-")
            .arg("+")
            .arg(self.settings.batch)
            .arg(&self.settings.consumer)
            .query_async(&mut self.connection)
            .await?;
        if mine.ids.is_empty() {
            return Ok(());
        }
        let mut lookups = redis::pipe();
        for entry in &mine.ids {
            lookups
                .cmd("XRANGE")
                .arg(&self.settings.stream)
                .arg(&entry.id)
                .arg(&entry.id);
        }
        let found: Vec<StreamRangeReply> = lookups.query_async(&mut self.connection).await?;
        let vanished: Vec<&str> = mine
            .ids
            .iter()
            .zip(&found)
            .filter(|(_, range)| range.ids.is_empty())
            .map(|(entry, _)| entry.id.as_str())
            .collect();
        if !vanished.is_empty() {
            tracing::warn!(
                count = vanished.len(),
                "pending entries were deleted from the stream; acknowledged"
            );
            self.ack_ids(&vanished).await?;
        }
        Ok(())
    }

    /// The claimed entries, with how many times each has been delivered (the claim included).
    async fn with_delivery_counts(&mut self, raw: Vec<RawEntry>) -> redis::RedisResult<Vec<Entry>> {
        let (Some(first), Some(last)) = (raw.first(), raw.last()) else {
            return Ok(Vec::new());
        };
        // Only this consumer's entries: other consumers' between the first and the last would
        // take the places of ours within the count. Ours in between, besides the claimed ones,
        // are at most a batch whose acknowledgement failed.
        let pending: StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(&self.settings.stream)
            .arg(CONSUMER_GROUP)
            .arg(&first.0)
            .arg(&last.0)
            .arg(raw.len() + self.settings.batch)
            .arg(&self.settings.consumer)
            .query_async(&mut self.connection)
            .await?;
        let deliveries = pending
            .ids
            .into_iter()
            .map(|entry| (entry.id, entry.times_delivered as u64))
            .collect();
        Ok(to_entries(raw, &deliveries))
    }

    /// Acknowledges entries whose effect is committed.
    pub async fn ack(&mut self, ids: &[String]) -> redis::RedisResult<()> {
        self.ack_ids(ids).await
    }

    async fn ack_ids(&mut self, ids: &[impl redis::ToRedisArgs]) -> redis::RedisResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        redis::cmd("XACK")
            .arg(&self.settings.stream)
            .arg(CONSUMER_GROUP)
            .arg(ids)
            .query_async::<u64>(&mut self.connection)
            .await?;
        Ok(())
    }

    /// Moves an entry that keeps failing to the dead-letter stream, with its error, and
    /// acknowledges it, in one transaction.
    pub async fn dead_letter(&mut self, entry: &Entry, error: &str) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        let add = pipe.cmd("XADD").arg(&self.settings.dead_letter).arg("*");
        add.arg("original_id").arg(&entry.id);
        add.arg("deliveries").arg(entry.deliveries);
        add.arg("error").arg(error);
        for (field, value) in &entry.fields {
            add.arg(format!("field.{field}")).arg(value);
        }
        pipe.cmd("XACK")
            .arg(&self.settings.stream)
            .arg(CONSUMER_GROUP)
            .arg(&entry.id);
        pipe.query_async::<()>(&mut self.connection).await
    }

    /// Removes the entries below the oldest one not yet acknowledged: the oldest pending entry,
    /// or, with none pending, everything the group has read. Returns how many went.
    pub async fn trim(&mut self) -> redis::RedisResult<u64> {
        let Some(keep_from) = self.oldest_unacknowledged().await? else {
            return Ok(0);
        };
        match self.capabilities.trim {
            TrimMethod::MinId => {
                redis::cmd("XTRIM")
                    .arg(&self.settings.stream)
                    .arg("MINID")
                    .arg(keep_from)
                    .query_async(&mut self.connection)
                    .await
            }
            TrimMethod::DeleteBelow => self.delete_below(&keep_from).await,
        }
    }

    /// The id from which entries must stay; `None` when the group has read nothing.
    async fn oldest_unacknowledged(&mut self) -> redis::RedisResult<Option<String>> {
        let summary: StreamPendingReply = redis::cmd("XPENDING")
            .arg(&self.settings.stream)
            .arg(CONSUMER_GROUP)
            .query_async(&mut self.connection)
            .await?;
        if let StreamPendingReply::Data(pending) = summary {
            return Ok(Some(pending.start_id));
        }
        Ok(workers_group(&mut self.connection, &self.settings.stream)
            .await?
            .map(|group| group.last_delivered_id)
            .filter(|id| id != "0-0")
            .map(|id| id_after(&id)))
    }

    /// `XTRIM MINID` for servers without it: the entries below `keep_from`, deleted by id. Every
    /// entry below `keep_from` has been delivered and acknowledged, and new deliveries are all
    /// above it, so nothing can become pending below it meanwhile.
    async fn delete_below(&mut self, keep_from: &str) -> redis::RedisResult<u64> {
        let mut deleted = 0;
        for _ in 0..TRIM_BATCHES {
            let range: StreamRangeReply = redis::cmd("XRANGE")
                .arg(&self.settings.stream)
                .arg("-")
                .arg(keep_from)
                .arg("COUNT")
                .arg(TRIM_BATCH)
                .query_async(&mut self.connection)
                .await?;
            let full = range.ids.len() == TRIM_BATCH;
            // The range is inclusive (`(` bounds came with 6.2): `keep_from` itself stays.
            let ids: Vec<String> = range
                .ids
                .into_iter()
                .map(|entry| entry.id)
                .filter(|id| id != keep_from)
                .collect();
            if !ids.is_empty() {
                deleted += redis::cmd("XDEL")
                    .arg(&self.settings.stream)
                    .arg(&ids)
                    .query_async::<u64>(&mut self.connection)
                    .await?;
            }
            if !full {
                break;
            }
        }
        Ok(deleted)
    }

    /// The group's unread entries and pending entries: (lag, pending).
    pub async fn lag(&mut self) -> redis::RedisResult<(i64, i64)> {
        let progress = group_progress(
            &mut self.connection,
            &self.settings.stream,
            &self.capabilities,
        )
        .await?;
        let progress = progress.unwrap_or_default();
        Ok((progress.lag, progress.pending))
    }
}

/// The stream as `status` shows it, read without joining the consumer group.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct StreamStatus {
    pub lag: i64,
    pub pending: i64,
    pub dead_letters: i64,
}

pub async fn stream_status(
    redis_url: &str,
    stream: &str,
    dead_letter: &str,
) -> redis::RedisResult<StreamStatus> {
    let client = redis::Client::open(redis_url)?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    let capabilities = RedisCapabilities::detect(&mut connection).await?;
    // No stream or group yet: nothing waits.
    let progress = group_progress(&mut connection, stream, &capabilities)
        .await?
        .unwrap_or_default();
    let dead_letters: i64 = redis::cmd("XLEN")
        .arg(dead_letter)
        .query_async(&mut connection)
        .await?;
    Ok(StreamStatus {
        lag: progress.lag,
        pending: progress.pending,
        dead_letters,
    })
}
