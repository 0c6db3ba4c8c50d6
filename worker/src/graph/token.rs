//! Access tokens: cached, refreshed before they expire, and fetched by one caller at a time
//! while the others wait for the same token.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::settings::GraphConfig;

#[derive(Clone)]
struct Cached {
    token: SecretString,
    refresh_at: Instant,
}

#[derive(Default)]
pub(super) struct TokenCache {
    cached: Mutex<Option<Cached>>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenCache")
    }
}

#[derive(Deserialize)]
pub(super) struct TokenResponse {
    pub access_token: String,
    pub expires_in: u64,
}

/// When to fetch a new token: five minutes before expiry, or halfway for short-lived tokens.
fn refresh_after(expires_in: u64) -> Duration {
    let lifetime = Duration::from_secs(expires_in);
    let margin = Duration::from_secs(300).min(lifetime / 2);
    lifetime - margin
}

impl TokenCache {
    /// Returns a valid token, calling `fetch` when there is none. Holding the lock across the
    /// fetch makes concurrent callers share one refresh.
    pub async fn get<F, Fut, E>(&self, fetch: F) -> Result<SecretString, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<TokenResponse, E>>,
    {
        let mut cached = self.cached.lock().await;
        if let Some(current) = cached.as_ref()
            && Instant::now() < current.refresh_at
        {
            return Ok(current.token.clone());
        }
        let response = fetch().await?;
        let fresh = Cached {
            token: SecretString::from(response.access_token),
            refresh_at: Instant::now() + refresh_after(response.expires_in),
        };
        let token = fresh.token.clone();
        *cached = Some(fresh);
        Ok(token)
    }

    /// Forgets a token Graph refused, unless another caller already replaced it.
    pub async fn invalidate(&self, refused: &SecretString) {
        let mut cached = self.cached.lock().await;
        if cached
            .as_ref()
            .is_some_and(|c| c.token.expose_secret() == refused.expose_secret())
        {
            *cached = None;
        }
    }
}

/// The token request form for the configured credential; `scope` names the Graph the token is
/// for (see [`super::endpoint::GraphEndpoint::scope`]).
pub(super) fn token_form(
    config: &GraphConfig,
    scope: String,
) -> crate::Result<Vec<(&'static str, String)>> {
    let mut form = vec![
        ("client_id", config.client_id.clone()),
        ("scope", scope),
        ("grant_type", "client_credentials".to_owned()),
    ];
    form.extend(config.credential.form(
        config.token_url.as_str(),
        &config.client_id,
        chrono::Utc::now().timestamp(),
    )?);
    Ok(form)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refreshes_five_minutes_early_or_halfway() {
        assert_eq!(refresh_after(3599), Duration::from_secs(3299));
        assert_eq!(refresh_after(4), Duration::from_secs(2));
    }
}
