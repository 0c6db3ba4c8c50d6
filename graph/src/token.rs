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

/// Entra's access tokens live about an hour (at most a day). A longer `expires_in` is not
/// believed: a broken or hostile answer must not keep a token cached for ever, nor overflow the
/// clock arithmetic below.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// When to fetch a new token: five minutes before expiry, or halfway for short-lived tokens.
fn refresh_after(expires_in: u64) -> Duration {
    let lifetime = Duration::from_secs(expires_in).min(MAX_TOKEN_LIFETIME);
    let margin = Duration::from_secs(300).min(lifetime / 2);
    lifetime.saturating_sub(margin)
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
        let now = Instant::now();
        let fresh = Cached {
            token: SecretString::from(response.access_token),
            // Unreachable with the lifetime capped; if the clock still could not add it, the
            // token serves this call and the next one fetches another.
            refresh_at: now
                .checked_add(refresh_after(response.expires_in))
                .unwrap_or(now),
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
        assert_eq!(refresh_after(0), Duration::ZERO);
    }

    #[test]
    fn an_absurd_lifetime_is_capped_at_a_day() {
        let day_less_five_minutes = Duration::from_secs(24 * 3600 - 300);
        assert_eq!(refresh_after(u64::MAX), day_less_five_minutes);
        assert_eq!(refresh_after(u64::MAX / 2 + 1), day_less_five_minutes);
        assert_eq!(refresh_after(10 * 365 * 86_400), day_less_five_minutes);
    }

    #[tokio::test]
    async fn a_token_claiming_to_live_for_ever_is_cached_without_overflow() {
        let cache = TokenCache::default();
        let fetches = std::sync::atomic::AtomicUsize::new(0);
        let fetch = || async {
            fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok::<_, crate::Error>(TokenResponse {
                access_token: "token".into(),
                expires_in: u64::MAX,
            })
        };
        let first = cache.get(fetch).await.unwrap();
        let second = cache.get(fetch).await.unwrap();
        assert_eq!(first.expose_secret(), "token");
        assert_eq!(second.expose_secret(), "token");
        assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
