//! Sending Graph requests: the bearer token, paging, and what to do with failures.
//!
//! 429 waits for `Retry-After` (seconds or an HTTP date); 503, 504, other 5xx and connection
//! errors back off exponentially with jitter, 503 and 504 on a new connection; a 401 drops the
//! token and the next attempt fetches a new one, for as many attempts as the policy allows
//! (Graph refusing every fresh token is a credential error). Everything else is Graph's answer
//! and surfaces with Graph's code and message.
//! Retries are bounded in count and in time, and every request has a timeout.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use backon::Retryable;
use reqwest::{Method, StatusCode, header};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::endpoint::GraphEndpoint;
use super::metrics::GraphMetrics;
use super::retry::RetryPolicy;
use super::settings::GraphConfig;
use super::token::{TokenCache, TokenResponse, token_form};
use crate::error::{Error, Result};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A longer Retry-After than this is capped: the retry budget stays bounded.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// Why one attempt failed.
#[derive(Debug)]
enum Failure {
    Throttled {
        retry_after: Option<Duration>,
    },
    Unavailable {
        status: u16,
        retry_after: Option<Duration>,
    },
    Connection(String),
    Unauthorized,
    Final(Error),
}

impl Failure {
    fn retryable(&self) -> bool {
        !matches!(self, Self::Final(_))
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Throttled { retry_after } | Self::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    fn into_error(self, endpoint: &'static str) -> Error {
        match self {
            Self::Final(error) => error,
            Self::Throttled { .. } => Error::GraphUnavailable {
                endpoint,
                reason: "still throttled (429) after every retry".into(),
            },
            Self::Unavailable { status, .. } => Error::GraphUnavailable {
                endpoint,
                reason: format!("still answering {status} after every retry"),
            },
            Self::Connection(reason) => Error::GraphUnavailable { endpoint, reason },
            Self::Unauthorized => Error::Credential(format!(
                "Graph refused fresh access tokens for {endpoint} (401)"
            )),
        }
    }
}

/// `Retry-After`: delay-seconds or an HTTP date, at most [`MAX_RETRY_AFTER`] (a number too large
/// for any integer type included), never negative.
pub(super) fn parse_retry_after(
    value: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        let seconds = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = at
        .with_timezone(&chrono::Utc)
        .signed_duration_since(now)
        .to_std()
        .unwrap_or(Duration::ZERO);
    Some(wait.min(MAX_RETRY_AFTER))
}

fn retry_after(headers: &header::HeaderMap) -> Option<Duration> {
    headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, chrono::Utc::now()))
}

#[derive(Deserialize)]
struct GraphErrorBody {
    error: GraphErrorDetail,
}

#[derive(Deserialize)]
struct GraphErrorDetail {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct OAuthErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

/// One page of a Graph collection.
#[derive(Deserialize)]
pub(super) struct Page<T> {
    #[serde(default = "Vec::new")]
    pub value: Vec<T>,
    #[serde(rename = "@odata.nextLink")]
    pub next_link: Option<String>,
    #[serde(rename = "@odata.deltaLink")]
    pub delta_link: Option<String>,
}

pub(super) struct Http {
    config: GraphConfig,
    /// `config.graph_endpoint`, parsed: the token's scope and where links may lead.
    endpoint: GraphEndpoint,
    client: reqwest::Client,
    tokens: TokenCache,
    metrics: GraphMetrics,
    retry: RetryPolicy,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn new_client(timeout: Duration) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(concat!("entra-sync/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::HttpClient(format!("cannot be built: {e}")))
}

impl Http {
    pub fn new(config: GraphConfig, metrics: GraphMetrics) -> Result<Self> {
        Ok(Self {
            client: new_client(config.retry.request_timeout)?,
            endpoint: GraphEndpoint::parse(&config.graph_endpoint)?,
            retry: config.retry,
            config,
            tokens: TokenCache::default(),
            metrics,
        })
    }

    pub fn config(&self) -> &GraphConfig {
        &self.config
    }

    pub(super) fn metrics(&self) -> &GraphMetrics {
        &self.metrics
    }

    /// `{graph}/{path}`.
    pub fn url(&self, path: &str) -> String {
        format!(
            "{}/{}",
            self.config.graph_endpoint,
            path.trim_start_matches('/')
        )
    }

    /// Links Graph returns (next, delta) must point at Graph: the bearer token goes with them.
    pub fn check_link(&self, link: &str, endpoint: &'static str) -> Result<()> {
        if self.endpoint.contains(link) {
            Ok(())
        } else {
            Err(Error::Graph {
                endpoint,
                status: 200,
                code: "unexpectedLink".into(),
                message: format!(
                    "a paging link leaves {}: {link}",
                    self.config.graph_endpoint
                ),
            })
        }
    }

    async fn token(&self) -> Result<SecretString> {
        self.tokens.get(|| self.fetch_token()).await
    }

    async fn fetch_token(&self) -> Result<TokenResponse> {
        const ENDPOINT: &str = "token";
        let attempt = || async {
            let form = token_form(&self.config, self.endpoint.scope()).map_err(Failure::Final)?;
            let request = self.client.post(self.config.token_url.clone()).form(&form);
            let response = self.counted(ENDPOINT, request).await?;
            let status = response.status();
            if status.is_success() {
                return response.json::<TokenResponse>().await.map_err(|e| {
                    Failure::Final(Error::Credential(format!("unreadable token response: {e}")))
                });
            }
            if let Some(failure) = transient(status, response.headers()) {
                return Err(failure);
            }
            let body: OAuthErrorBody = response.json().await.unwrap_or(OAuthErrorBody {
                error: status.to_string(),
                error_description: String::new(),
            });
            Err(Failure::Final(Error::Credential(format!(
                "the token endpoint refused: {} {}",
                body.error, body.error_description
            ))))
        };
        self.retrying(ENDPOINT, attempt).await
    }

    /// Sends one request and counts its outcome; any answer is returned, only a request that
    /// got none (connection refused, timeout) fails.
    async fn counted(
        &self,
        endpoint: &'static str,
        request: reqwest::RequestBuilder,
    ) -> std::result::Result<reqwest::Response, Failure> {
        match request.send().await {
            Ok(response) => {
                self.metrics
                    .request(endpoint, Some(response.status().as_u16()));
                Ok(response)
            }
            Err(e) => {
                self.metrics.request(endpoint, None);
                Err(Failure::Connection(e.to_string()))
            }
        }
    }

    async fn retrying<T, F, Fut>(&self, endpoint: &'static str, attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, Failure>>,
    {
        attempt
            .retry(self.retry.backoff())
            .when(Failure::retryable)
            .adjust(|failure, planned| planned.map(|d| failure.retry_after().unwrap_or(d)))
            .notify(|failure, wait| match failure {
                // Graph asking us to slow down is expected under load, and counted.
                Failure::Throttled { .. } => {
                    self.metrics.throttled_waits.inc();
                    self.metrics
                        .throttled_wait_seconds
                        .inc_by(wait.as_secs_f64());
                    tracing::debug!(endpoint, ?wait, "Graph throttled the request; retrying");
                }
                // A token Graph refused is replaced; only a fresh one refused is a failure.
                Failure::Unauthorized => {
                    tracing::debug!(endpoint, "Graph refused the token; retrying with a new one");
                }
                _ => tracing::warn!(endpoint, ?failure, ?wait, "Graph request failed; retrying"),
            })
            .await
            .map_err(|failure| failure.into_error(endpoint))
    }

    /// Sends a request with retries; returns the successful response.
    pub async fn send(
        &self,
        endpoint: &'static str,
        method: Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<reqwest::Response> {
        let fresh_connection = AtomicBool::new(false);
        let attempt = || async {
            let token = self.token().await.map_err(Failure::Final)?;
            let client = if fresh_connection.swap(false, Ordering::Relaxed) {
                new_client(self.retry.request_timeout).map_err(Failure::Final)?
            } else {
                self.client.clone()
            };
            let mut request = client
                .request(method.clone(), url)
                .bearer_auth(token.expose_secret());
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = self.counted(endpoint, request).await?;
            let status = response.status();
            if status.is_success() {
                return Ok(response);
            }
            if status == StatusCode::UNAUTHORIZED {
                self.tokens.invalidate(&token).await;
                return Err(Failure::Unauthorized);
            }
            if let Some(failure) = transient(status, response.headers()) {
                if matches!(
                    status,
                    StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
                ) {
                    fresh_connection.store(true, Ordering::Relaxed);
                }
                return Err(failure);
            }
            let (code, message) = match response.json::<GraphErrorBody>().await {
                Ok(body) => (body.error.code, body.error.message),
                Err(_) => (status.to_string(), String::new()),
            };
            Err(Failure::Final(Error::Graph {
                endpoint,
                status: status.as_u16(),
                code,
                message,
            }))
        };
        self.retrying(endpoint, attempt).await
    }

    pub async fn get_json<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        url: &str,
    ) -> Result<T> {
        self.json(endpoint, Method::GET, url, None).await
    }

    pub async fn json<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        method: Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<T> {
        let response = self.send(endpoint, method, url, body).await?;
        response.json::<T>().await.map_err(|e| Error::Graph {
            endpoint,
            status: 200,
            code: "unreadableResponse".into(),
            message: e.to_string(),
        })
    }

    /// Follows `@odata.nextLink` to the end of a collection.
    pub async fn get_all<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        first: &str,
    ) -> Result<Vec<T>> {
        let mut items = Vec::new();
        let mut url = first.to_owned();
        loop {
            let page: Page<T> = self.get_json(endpoint, &url).await?;
            items.extend(page.value);
            match page.next_link {
                Some(next) => {
                    self.check_link(&next, endpoint)?;
                    url = next;
                }
                None => return Ok(items),
            }
        }
    }
}

/// 429 and 5xx are worth another try.
fn transient(status: StatusCode, headers: &header::HeaderMap) -> Option<Failure> {
    if status == StatusCode::TOO_MANY_REQUESTS {
        Some(Failure::Throttled {
            retry_after: retry_after(headers),
        })
    } else if status.is_server_error() {
        Some(Failure::Unavailable {
            status: status.as_u16(),
            retry_after: retry_after(headers),
        })
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http_for(graph_endpoint: &str) -> Http {
        let config = super::super::GraphArgs {
            azure_tenant_id: Some("contoso.onmicrosoft.com".into()),
            microsoft_tenant: None,
            azure_client_id: Some("client".into()),
            microsoft_client_id: None,
            azure_client_secret: Some("secret".to_owned().into()),
            microsoft_client_secret: None,
            azure_client_certificate_path: None,
            azure_federated_token_file: None,
            azure_authority_host: "https://login.microsoftonline.us".into(),
            microsoft_graph_endpoint: graph_endpoint.into(),
            microsoft_service_principal_id: None,
        }
        .resolve()
        .unwrap();
        let metrics = GraphMetrics::register(&mut prometheus_client::registry::Registry::default());
        Http::new(config, metrics).unwrap()
    }

    #[test]
    fn the_token_is_asked_for_the_configured_graph() {
        for (graph, scope) in [
            (
                "https://graph.microsoft.com/v1.0",
                "https://graph.microsoft.com/.default",
            ),
            (
                "https://graph.microsoft.us/v1.0",
                "https://graph.microsoft.us/.default",
            ),
            (
                "https://microsoftgraph.chinacloudapi.cn/v1.0",
                "https://microsoftgraph.chinacloudapi.cn/.default",
            ),
        ] {
            let http = http_for(graph);
            let form = token_form(&http.config, http.endpoint.scope()).unwrap();
            let asked: Vec<&str> = form
                .iter()
                .filter(|(name, _)| *name == "scope")
                .map(|(_, value)| value.as_str())
                .collect();
            assert_eq!(asked, [scope], "{graph}");
        }
    }

    #[test]
    fn paging_links_must_stay_on_the_configured_graph() {
        let http = http_for("https://graph.microsoft.us/v1.0");
        assert!(
            http.check_link("https://graph.microsoft.us/v1.0/groups?$skiptoken=1", "t")
                .is_ok()
        );
        for bad in [
            "https://graph.microsoft.com/v1.0/groups?$skiptoken=1",
            "https://graph.microsoft.us.evil.example/v1.0/groups",
            "https://graph.microsoft.us@evil.example/v1.0/groups",
        ] {
            let error = http.check_link(bad, "groups_delta").unwrap_err();
            assert!(
                matches!(&error, Error::Graph { code, .. } if code == "unexpectedLink"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-28T12:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Sat, 28 Nov 2026 12:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sat, 28 Nov 2026 11:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn an_absurd_retry_after_waits_two_minutes_at_most() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-28T12:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let max = Some(MAX_RETRY_AFTER);
        assert_eq!(parse_retry_after(&u64::MAX.to_string(), now), max);
        // Beyond u64: still a number of seconds, still capped.
        assert_eq!(parse_retry_after("18446744073709551616", now), max);
        assert_eq!(parse_retry_after(&"9".repeat(400), now), max);
        assert_eq!(parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now), max);
        assert_eq!(
            parse_retry_after("Mon, 01 Jan 1900 00:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("", now), None);
    }
}
