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
//! The keys per change are in [`cache_keys`]. The work is best effort and never holds up a round:
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

use crate::metrics::ResultLabel;
use crate::store::Change;

/// LiteLLM's invalidation channel (`AUTH_CACHE_INVALIDATION_CHANNEL`).
pub const CHANNEL: &str = "litellm_proxy.auth_cache_invalidation";

/// How long one batch may take, connecting included (LiteLLM's `_BULK_EVICTION_WAIT_SECONDS`).
const BATCH_TIMEOUT: Duration = Duration::from_secs(2);
/// Keys sent in one round trip at most.
const MAX_BATCH: usize = 10_000;
/// Batches waiting for the task; beyond this, evictions are dropped (and counted as failed).
const QUEUE: usize = 4_096;

/// The cache keys LiteLLM stores the objects a change touched under (litellm 1.110.2):
/// - a team: `team_id:<id>` and `team_alias:<alias>` (`delete_cache_team_object`);
/// - a user: its `user_id` (`evict_and_broadcast` in the user and member endpoints);
/// - a membership: `<team_id>_<user_id>` and `team_membership:<user_id>:<team_id>`
///   (`invalidate_team_member_spend_state`), besides the team and the user;
/// - a key: its hashed token (`delete_cache_key_objects`); a blocked or unblocked key also its
///   `budget_windows_absent:key:<token>` marker (`delete_cache_key_object`, which SCIM's
///   `_set_user_keys_blocked` calls).
///
/// A membership change also makes the team's alias key stale; the change does not carry the
/// alias, so the store adds that key itself.
pub fn cache_keys(change: &Change) -> Vec<String> {
    let team = |id: &str| format!("team_id:{id}");
    let alias = |alias: &str| format!("team_alias:{alias}");
    match change {
        Change::TeamCreated {
            team_id,
            team_alias,
        } => vec![team(team_id), alias(team_alias)],
        Change::TeamRenamed { team_id, from, to } => {
            let mut keys = vec![team(team_id), alias(to)];
            keys.extend(from.as_deref().map(alias));
            keys
        }
        Change::TeamBlocked { team_id } => vec![team(team_id)],
        Change::TeamUnblocked {
            team_id,
            team_alias,
        } => {
            let mut keys = vec![team(team_id)];
            keys.extend(team_alias.as_deref().map(alias));
            keys
        }
        Change::UserCreated { user_id, .. }
        | Change::UserLinked { user_id, .. }
        | Change::UserUpdated { user_id, .. }
        | Change::RoleChanged { user_id, .. }
        // LiteLLM caches the user object with its organization memberships.
        | Change::OrganizationMemberAdded { user_id, .. } => vec![user_id.clone()],
        Change::MemberAdded { team_id, user_id }
        | Change::MemberRemoved { team_id, user_id }
        | Change::MemberRoleChanged {
            team_id, user_id, ..
        } => {
            vec![
                team(team_id),
                user_id.clone(),
                format!("{team_id}_{user_id}"),
                format!("team_membership:{user_id}:{team_id}"),
            ]
        }
        Change::KeyDeleted { token, .. } => vec![token.clone()],
        Change::KeyBlocked { token, .. } | Change::KeyUnblocked { token, .. } => {
            vec![token.clone(), format!("budget_windows_absent:key:{token}")]
        }
        // Holding or dropping a removal changes no LiteLLM row (its keys' changes evict theirs).
        Change::RemovalHeld { .. } | Change::RemovalDropped { .. } => Vec::new(),
    }
}

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
    use crate::store::BlockReason;

    #[test]
    fn each_change_names_the_keys_litellm_caches_its_objects_under() {
        let member = |removed: bool| {
            let (team_id, user_id) = ("t1".to_owned(), "u1".to_owned());
            if removed {
                Change::MemberRemoved { team_id, user_id }
            } else {
                Change::MemberAdded { team_id, user_id }
            }
        };
        for change in [member(true), member(false)] {
            assert_eq!(
                cache_keys(&change),
                ["team_id:t1", "u1", "t1_u1", "team_membership:u1:t1"]
            );
        }
        assert_eq!(
            cache_keys(&Change::TeamRenamed {
                team_id: "t1".into(),
                from: Some("Old".into()),
                to: "New".into()
            }),
            ["team_id:t1", "team_alias:New", "team_alias:Old"]
        );
        assert_eq!(
            cache_keys(&Change::TeamCreated {
                team_id: "t1".into(),
                team_alias: "New".into()
            }),
            ["team_id:t1", "team_alias:New"]
        );
        assert_eq!(
            cache_keys(&Change::RoleChanged {
                user_id: "u1".into(),
                from: Some("proxy_admin".into()),
                to: "internal_user".into()
            }),
            ["u1"]
        );
        assert_eq!(
            cache_keys(&Change::KeyDeleted {
                token: "abc".into(),
                user_id: "u1".into(),
                team_id: Some("t1".into()),
                key_alias: None
            }),
            ["abc"]
        );
        assert_eq!(
            cache_keys(&Change::KeyBlocked {
                token: "abc".into(),
                user_id: "u1".into(),
                team_id: None,
                reason: BlockReason::UserDeparted
            }),
            ["abc", "budget_windows_absent:key:abc"]
        );
    }

    #[test]
    fn the_message_is_litellms() {
        assert_eq!(message("team_id:t1"), r#"{"cache_key":"team_id:t1"}"#);
    }
}
