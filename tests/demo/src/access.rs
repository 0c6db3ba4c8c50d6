//! LiteLLM's proxy as the demo's judge of access (`--with-proxy`): the real proxy runs on the
//! demo's database, and Linus's key is asked whether it still works.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use entra_sync_testkit::litellm_proxy::{LiteLlmProxy, MASTER_KEY, ProxySettings};
use reqwest::StatusCode;
use serde_json::json;

use crate::story::LINUS_KEY;
use crate::tenant::{ENGINEERING, LINUS, group_id, user_id};
use crate::world::PATIENCE;

/// The proxy's one model, answered by LiteLLM's `mock_response` (no upstream is called).
const MODEL: &str = "gpt-demo";

/// How long the proxy keeps a key in its cache: far longer than the demo, so that a refusal
/// within it is entra-sync's eviction through LiteLLM's Redis, not the cache running out.
const CACHE_TTL: Duration = Duration::from_secs(3600);

/// Starts LiteLLM's proxy (installed by tests/litellm-proxy/install under target/ first, when
/// needed) on `database_url`, with its coordination Redis under `redis_namespace`, the one the
/// worker evicts from.
pub async fn start_proxy(database_url: &str, redis_namespace: &str) -> LiteLlmProxy {
    LiteLlmProxy::start(&ProxySettings {
        database_url: database_url.to_owned(),
        redis_namespace: redis_namespace.to_owned(),
        cache_ttl: CACHE_TTL,
        models: vec![(MODEL.to_owned(), format!("openai/{MODEL}"))],
    })
    .await
}

/// Linus makes his key for Engineering with the proxy's `/key/generate`, as LiteLLM's UI does.
pub async fn make_linus_key(proxy: &LiteLlmProxy) -> Result<String> {
    let body = json!({
        "team_id": group_id(ENGINEERING).to_string(),
        "user_id": user_id(LINUS).to_string(),
        "key_alias": LINUS_KEY,
    });
    let (status, answer) = proxy.post("/key/generate", MASTER_KEY, &body).await;
    match answer["key"].as_str() {
        Some(key) if status == StatusCode::OK => Ok(key.to_owned()),
        _ => bail!("LiteLLM's proxy did not make Linus's key ({status}): {answer}"),
    }
}

/// The proxy's answer to a chat completion with `key`.
pub async fn ask(proxy: &LiteLlmProxy, key: &str) -> StatusCode {
    proxy.chat(key, MODEL).await.0
}

/// Asks with `key` until the proxy refuses it, returning its answer and how long after `since`.
pub async fn wait_refused(
    proxy: &LiteLlmProxy,
    key: &str,
    since: Instant,
) -> Result<(StatusCode, Duration)> {
    loop {
        let status = ask(proxy, key).await;
        if !status.is_success() {
            return Ok((status, since.elapsed()));
        }
        if since.elapsed() > PATIENCE {
            bail!(
                "LiteLLM's proxy still accepted Linus's key {} s after he was removed",
                PATIENCE.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
