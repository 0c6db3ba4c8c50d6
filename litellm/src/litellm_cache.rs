//! LiteLLM's caches: after a commit, the cached objects it made stale are evicted.
//!
//! LiteLLM's proxy serves teams, users, keys and memberships from its caches with no freshness
//! check, for `user_api_key_cache_ttl` (60 s by default): from each proxy worker's memory and, when
//! configured, from its Redis. A removal that entra-sync commits would keep working until then.
//! LiteLLM's own writers (litellm 1.110.2, `proxy/common_utils/auth_cache_invalidation_pubsub.py`,
//! `evict_and_broadcast` and `broadcast_evictions`) do two things after a commit, and so does this
//! module:
//! - delete the cache keys from LiteLLM's Redis, as `<namespace>:<key>` when the cache has a
//!   namespace (`RedisCache.check_and_fix_namespace`);
//! - publish `{"cache_key": "<key>"}` for each key on `litellm_proxy.auth_cache_invalidation`
//!   (`<namespace>:litellm_proxy.auth_cache_invalidation` with a namespace), upon which every
//!   proxy worker drops its in-memory copy.
//!
//! The keys per change are the store's to name (`Change::cache_keys`). The work is best effort and never holds up a round:
//! the store hands keys over after its commit, and one background task batches whatever has
//! accumulated into a single pipelined round trip, bounded in time. Keys that could not be sent
//! are counted; LiteLLM then serves the stale object until its TTL, as it does itself when its
//! Redis fails.

use std::collections::HashSet;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{mpsc, oneshot};

use prometheus_client::encoding::EncodeLabelSet;

/// The label of a counter by outcome (`result="published"|"failed"` for evictions); the
/// worker's metrics use it for every such counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// LiteLLM's invalidation channel (`AUTH_CACHE_INVALIDATION_CHANNEL`).
pub const CHANNEL: &str = "litellm_proxy.auth_cache_invalidation";

/// How long one batch may take, connecting included (LiteLLM's `_BULK_EVICTION_WAIT_SECONDS`).
const BATCH_TIMEOUT: Duration = Duration::from_secs(2);
/// Keys sent in one round trip at most.
const MAX_BATCH: usize = 10_000;
/// Batches waiting for the task; beyond this, evictions are dropped (and counted as failed).
const QUEUE: usize = 4_096;

/// The JSON message LiteLLM's subscribers read (`_cache_invalidation_message_json`).
pub fn message(cache_key: &str) -> String {
    serde_json::json!({ "cache_key": cache_key }).to_string()
}

/// Where LiteLLM's Redis cache is, and its namespace.
#[derive(Clone, Debug)]
pub struct CacheTarget {
    pub client: redis::Client,
    pub namespace: Option<String>,
}

impl CacheTarget {
    /// A key as LiteLLM stores it in Redis.
    pub fn redis_key(&self, key: &str) -> String {
        match &self.namespace {
            Some(ns) if !key.starts_with(&format!("{ns}:")) => format!("{ns}:{key}"),
            _ => key.to_owned(),
        }
    }

    /// The channel LiteLLM's proxy workers listen on.
    pub fn channel(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}:{CHANNEL}"),
            None => CHANNEL.to_owned(),
        }
    }
}

enum Message {
    Evict(Vec<String>),
    Flush(oneshot::Sender<()>),
}

/// A handle on the eviction task; cheap to clone, shared by every store operation.
#[derive(Clone, Debug)]
pub struct LiteLlmCache {
    sender: mpsc::Sender<Message>,
    evictions: Family<ResultLabel, Counter>,
}

impl LiteLlmCache {
    /// Starts the eviction task (on the current Tokio runtime). Nothing connects yet: a Redis
    /// that is down at start costs counted failures, never the worker.
    pub fn start(target: CacheTarget, evictions: Family<ResultLabel, Counter>) -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE);
        tokio::spawn(run(target, receiver, evictions.clone()));
        Self { sender, evictions }
    }

    /// Hands over the keys a commit made stale; never waits.
    pub fn evict(&self, keys: Vec<String>) {
        if keys.is_empty() {
            return;
        }
        let count = keys.len() as u64;
        if self.sender.try_send(Message::Evict(keys)).is_err() {
            failed(&self.evictions).inc_by(count);
            tracing::warn!(
                keys = count,
                "LiteLLM cache evictions dropped: too many waiting"
            );
        }
    }

    /// Waits, up to `limit`, until every eviction handed over before this call was sent (or
    /// failed). Returns whether that happened in time.
    pub async fn flush(&self, limit: Duration) -> bool {
        let (done, finished) = oneshot::channel();
        let sent = tokio::time::timeout(limit, self.sender.send(Message::Flush(done)));
        let Ok(Ok(())) = sent.await else {
            return false;
        };
        matches!(tokio::time::timeout(limit, finished).await, Ok(Ok(())))
    }
}

fn failed(evictions: &Family<ResultLabel, Counter>) -> Counter {
    evictions
        .get_or_create(&ResultLabel { result: "failed" })
        .clone()
}

async fn run(
    target: CacheTarget,
    mut receiver: mpsc::Receiver<Message>,
    evictions: Family<ResultLabel, Counter>,
) {
    let mut connection: Option<ConnectionManager> = None;
    while let Some(first) = receiver.recv().await {
        let mut keys = Vec::new();
        let mut seen = HashSet::new();
        let mut flushes = Vec::new();
        let mut take = |message: Message, keys: &mut Vec<String>| match message {
            Message::Evict(batch) => {
                keys.extend(batch.into_iter().filter(|k| seen.insert(k.clone())))
            }
            Message::Flush(done) => flushes.push(done),
        };
        take(first, &mut keys);
        while keys.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(message) => take(message, &mut keys),
                Err(_) => break,
            }
        }
        if !keys.is_empty() {
            let count = keys.len() as u64;
            match tokio::time::timeout(BATCH_TIMEOUT, send(&target, &mut connection, &keys)).await {
                Ok(Ok(())) => {
                    evictions
                        .get_or_create(&ResultLabel {
                            result: "published",
                        })
                        .inc_by(count);
                }
                outcome => {
                    let reason = match outcome {
                        Ok(Err(error)) => error.to_string(),
                        _ => format!("no answer within {BATCH_TIMEOUT:?}"),
                    };
                    // A connection that timed out may be wedged: start again next time.
                    connection = None;
                    failed(&evictions).inc_by(count);
                    tracing::warn!(
                        keys = count,
                        %reason,
                        "cannot evict LiteLLM's cached objects; LiteLLM serves them until their TTL"
                    );
                }
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// Deletes the keys from LiteLLM's Redis and publishes each on its channel, in one round trip.
async fn send(
    target: &CacheTarget,
    connection: &mut Option<ConnectionManager>,
    keys: &[String],
) -> redis::RedisResult<()> {
    let connection = match connection {
        Some(connection) => connection,
        None => {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(BATCH_TIMEOUT))
                .set_response_timeout(Some(BATCH_TIMEOUT))
                .set_number_of_retries(0);
            connection
                .insert(ConnectionManager::new_with_config(target.client.clone(), config).await?)
        }
    };
    let channel = target.channel();
    let mut pipe = redis::pipe();
    for chunk in keys.chunks(1_000) {
        pipe.cmd("DEL")
            .arg(
                chunk
                    .iter()
                    .map(|k| target.redis_key(k))
                    .collect::<Vec<_>>(),
            )
            .ignore();
    }
    for key in keys {
        pipe.cmd("PUBLISH").arg(&channel).arg(message(key)).ignore();
    }
    pipe.query_async::<()>(connection).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_is_litellms() {
        assert_eq!(message("team_id:t1"), r#"{"cache_key":"team_id:t1"}"#);
    }
}
