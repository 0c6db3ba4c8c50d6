//! The notification stream, read as a consumer group.
//!
//! Entries are triggers: a batch of them asks for one sync round. An entry is acknowledged only
//! after the round that covered it committed. Entries a dead consumer left pending are claimed
//! once they have been idle long enough. An entry that cannot be read (not a record this version
//! understands) stays unacknowledged, so it is delivered again; after `max_deliveries` it moves
//! to the dead-letter stream with its error, and it never holds back the others. The stream is
//! trimmed only below its oldest unacknowledged entry.

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::ConnectionManager;
use webhook::record::{CONSUMER_GROUP, StreamRecord};

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
    connection: ConnectionManager,
    settings: StreamSettings,
}

type Fields = HashMap<String, String>;
/// An entry as Redis returns it: id and fields.
type RawEntry = (String, Fields);
/// XREADGROUP's reply: per stream, its entries.
type ReadReply = Option<Vec<(String, Vec<RawEntry>)>>;

fn to_entries(raw: Vec<(String, Fields)>, deliveries: &HashMap<String, u64>) -> Vec<Entry> {
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
    /// Connects and makes sure the consumer group exists (reading from the stream's start).
    pub async fn connect(redis_url: &str, settings: StreamSettings) -> redis::RedisResult<Self> {
        let client = redis::Client::open(redis_url)?;
        // Reads block for up to a few seconds; the response timeout must be longer than that.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(30)));
        let mut connection = ConnectionManager::new_with_config(client, config).await?;
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
            connection,
            settings,
        })
    }

    pub fn settings(&self) -> &StreamSettings {
        &self.settings
    }

    /// The next batch: first entries claimed from dead consumers, then new ones, waiting up to
    /// `block` for any to arrive.
    pub async fn next_batch(&mut self, block: Duration) -> redis::RedisResult<Vec<Entry>> {
        let mut entries = self.claim_idle().await?;
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
            let reply: ReadReply = read
                .arg("STREAMS")
                .arg(&self.settings.stream)
                .arg(">")
                .query_async(&mut self.connection)
                .await?;
            for (_, raw) in reply.unwrap_or_default() {
                entries.extend(to_entries(raw, &HashMap::new()));
            }
        }
        Ok(entries)
    }

    /// Takes over entries other consumers left pending for longer than `claim_idle`.
    async fn claim_idle(&mut self) -> redis::RedisResult<Vec<Entry>> {
        let (_next, raw, _deleted): (String, Vec<(String, Fields)>, Vec<String>) =
            redis::cmd("XAUTOCLAIM")
                .arg(&self.settings.stream)
                .arg(CONSUMER_GROUP)
                .arg(&self.settings.consumer)
                .arg(self.settings.claim_idle.as_millis() as u64)
                .arg("0-0")
                .arg("COUNT")
                .arg(self.settings.batch)
                .query_async(&mut self.connection)
                .await?;
        if raw.is_empty() {
            return Ok(Vec::new());
        }
        let deliveries = self.delivery_counts(&raw).await?;
        Ok(to_entries(raw, &deliveries))
    }

    async fn delivery_counts(
        &mut self,
        raw: &[(String, Fields)],
    ) -> redis::RedisResult<HashMap<String, u64>> {
        let (Some(first), Some(last)) = (raw.first(), raw.last()) else {
            return Ok(HashMap::new());
        };
        let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg(&self.settings.stream)
            .arg(CONSUMER_GROUP)
            .arg(&first.0)
            .arg(&last.0)
            .arg(raw.len())
            .query_async(&mut self.connection)
            .await?;
        Ok(pending
            .into_iter()
            .map(|(id, _consumer, _idle, deliveries)| (id, deliveries))
            .collect())
    }

    /// Acknowledges entries whose effect is committed.
    pub async fn ack(&mut self, ids: &[String]) -> redis::RedisResult<()> {
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
    /// or, with none pending, everything the group has read.
    pub async fn trim(&mut self) -> redis::RedisResult<u64> {
        let summary: (u64, Option<String>, Option<String>, redis::Value) = redis::cmd("XPENDING")
            .arg(&self.settings.stream)
            .arg(CONSUMER_GROUP)
            .query_async(&mut self.connection)
            .await?;
        let keep_from = match summary {
            (count, Some(oldest), _, _) if count > 0 => oldest,
            _ => match self.last_delivered().await? {
                Some(last) => next_id(&last),
                None => return Ok(0),
            },
        };
        redis::cmd("XTRIM")
            .arg(&self.settings.stream)
            .arg("MINID")
            .arg(keep_from)
            .query_async(&mut self.connection)
            .await
    }

    async fn last_delivered(&mut self) -> redis::RedisResult<Option<String>> {
        let groups: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&self.settings.stream)
            .query_async(&mut self.connection)
            .await?;
        Ok(groups
            .iter()
            .find(|g| matches!(g.get("name"), Some(redis::Value::BulkString(n)) if n == CONSUMER_GROUP.as_bytes()))
            .and_then(|g| match g.get("last-delivered-id") {
                Some(redis::Value::BulkString(id)) => String::from_utf8(id.clone()).ok(),
                _ => None,
            })
            .filter(|id| id != "0-0"))
    }

    /// The group's unread entries and pending entries: (lag, pending).
    pub async fn lag(&mut self) -> redis::RedisResult<(i64, i64)> {
        group_lag(&mut self.connection, &self.settings.stream).await
    }
}

/// The consumer group's lag (entries no worker has read) and pending count (read, not yet
/// acknowledged); zero when the group does not exist yet.
async fn group_lag(
    connection: &mut impl redis::aio::ConnectionLike,
    stream: &str,
) -> redis::RedisResult<(i64, i64)> {
    let groups: redis::RedisResult<Vec<HashMap<String, redis::Value>>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(connection)
        .await;
    let groups = match groups {
        Ok(groups) => groups,
        // No stream yet: nothing waits.
        Err(error) if error.code() == Some("ERR") => Vec::new(),
        Err(error) => return Err(error),
    };
    let group = groups
        .iter()
        .find(|g| matches!(g.get("name"), Some(redis::Value::BulkString(n)) if n == CONSUMER_GROUP.as_bytes()));
    let number = |key: &str| match group.and_then(|g| g.get(key)) {
        Some(redis::Value::Int(n)) => *n,
        _ => 0,
    };
    Ok((number("lag"), number("pending")))
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
    let (lag, pending) = group_lag(&mut connection, stream).await?;
    let dead_letters: i64 = redis::cmd("XLEN")
        .arg(dead_letter)
        .query_async(&mut connection)
        .await?;
    Ok(StreamStatus {
        lag,
        pending,
        dead_letters,
    })
}

/// The smallest stream id after `id` (`ms-seq` -> `ms-(seq+1)`, or `(ms+1)-0` after the last
/// sequence number; the largest id has none after it and stays itself).
fn next_id(id: &str) -> String {
    let Some((ms, seq)) = id.split_once('-') else {
        return id.to_owned();
    };
    match (ms.parse::<u64>(), seq.parse::<u64>()) {
        (_, Ok(seq)) if seq < u64::MAX => format!("{ms}-{}", seq + 1),
        (Ok(ms), Ok(_)) if ms < u64::MAX => format!("{}-0", ms + 1),
        _ => id.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn next_id_increments_the_sequence() {
        assert_eq!(super::next_id("1700000000000-0"), "1700000000000-1");
        assert_eq!(super::next_id("5-41"), "5-42");
    }

    #[test]
    fn next_id_never_overflows() {
        let max = u64::MAX;
        assert_eq!(super::next_id(&format!("5-{max}")), "6-0");
        assert_eq!(
            super::next_id(&format!("{max}-{max}")),
            format!("{max}-{max}")
        );
        assert_eq!(super::next_id("5-x"), "5-x");
        assert_eq!(super::next_id("5"), "5");
    }
}
