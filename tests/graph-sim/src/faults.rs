//! Fault injection and the request log, applied to the token and Graph endpoints.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::api::graph_error;
use crate::state::{Inner, lock};

/// What a fault does to a matching request.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum FaultKind {
    /// Answers with this status and Graph's error body; for 429 and 503 with `Retry-After`
    /// as seconds, or as an HTTP date when `retryAfterDate` is set.
    Status {
        status: u16,
        #[serde(default)]
        retry_after_seconds: Option<u64>,
        #[serde(default)]
        retry_after_date: bool,
    },
    /// Answers normally, after a delay.
    Delay { millis: u64 },
    /// Answers normally once the faults are cleared: a request kept in flight for as long as a
    /// test needs (see `GraphSim::held_requests`).
    Hold,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Fault {
    /// Applies to requests whose path contains this.
    pub path_contains: String,
    #[serde(flatten)]
    pub kind: FaultKind,
    /// How many requests it applies to; `None`: until cleared.
    #[serde(default)]
    pub times: Option<u32>,
}

impl Fault {
    pub fn status(path_contains: &str, status: u16, times: u32) -> Self {
        Self {
            path_contains: path_contains.into(),
            kind: FaultKind::Status {
                status,
                retry_after_seconds: None,
                retry_after_date: false,
            },
            times: Some(times),
        }
    }

    pub fn throttle(path_contains: &str, retry_after_seconds: u64, times: u32) -> Self {
        Self {
            path_contains: path_contains.into(),
            kind: FaultKind::Status {
                status: 429,
                retry_after_seconds: Some(retry_after_seconds),
                retry_after_date: false,
            },
            times: Some(times),
        }
    }

    /// Keeps every matching request waiting until the faults are cleared.
    pub fn hold(path_contains: &str) -> Self {
        Self {
            path_contains: path_contains.into(),
            kind: FaultKind::Hold,
            times: None,
        }
    }

    pub fn delay(path_contains: &str, millis: u64, times: u32) -> Self {
        Self {
            path_contains: path_contains.into(),
            kind: FaultKind::Delay { millis },
            times: Some(times),
        }
    }
}

/// One request the simulator served.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    pub query: String,
    pub status: u16,
    pub millis: u64,
    /// The client's address: a new port means a new connection.
    pub peer: Option<std::net::SocketAddr>,
    /// One request of a JSON batch (`POST /$batch`), answered inside the batch's answer: a
    /// logical read, not an HTTP request of its own (the batch itself is logged as one).
    pub batch: bool,
}

/// Marks a request as one part of a JSON batch, for the request log.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BatchPart;

fn take_fault(inner: &Inner, path: &str) -> Option<FaultKind> {
    let mut faults = lock(&inner.faults);
    let index = faults
        .iter()
        .position(|f| path.contains(&f.path_contains))?;
    let kind = faults[index].kind.clone();
    if let Some(times) = faults[index].times.as_mut() {
        *times = times.saturating_sub(1);
        if *times == 0 {
            faults.remove(index);
        }
    }
    Some(kind)
}

pub(crate) async fn middleware(
    State(inner): State<Arc<Inner>>,
    request: Request<Body>,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let peer = request
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0);
    let batch = request.extensions().get::<BatchPart>().is_some();
    // Taken before the fault: a `hold` fault cleared from here on lets this request go.
    let mut release = inner.release.subscribe();
    let response = match take_fault(&inner, &path) {
        Some(FaultKind::Status {
            status,
            retry_after_seconds,
            retry_after_date,
        }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let code = match status {
                StatusCode::TOO_MANY_REQUESTS => "TooManyRequests",
                StatusCode::SERVICE_UNAVAILABLE => "serviceNotAvailable",
                StatusCode::GATEWAY_TIMEOUT => "GatewayTimeout",
                _ => "generalException",
            };
            let mut response = graph_error(status, code, "Injected by graph-sim.");
            if let Some(seconds) = retry_after_seconds {
                let value = if retry_after_date {
                    let at = chrono::Utc::now() + chrono::Duration::seconds(seconds as i64);
                    at.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
                } else {
                    seconds.to_string()
                };
                if let Ok(value) = HeaderValue::from_str(&value) {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
            }
            response
        }
        Some(FaultKind::Delay { millis }) => {
            tokio::time::sleep(Duration::from_millis(millis)).await;
            next.run(request).await
        }
        Some(FaultKind::Hold) => {
            inner.held.fetch_add(1, Ordering::SeqCst);
            let _ = release.changed().await;
            inner.held.fetch_sub(1, Ordering::SeqCst);
            next.run(request).await
        }
        None => next.run(request).await,
    };
    lock(&inner.requests).push(RequestRecord {
        method,
        path,
        query,
        status: response.status().as_u16(),
        millis: started.elapsed().as_millis() as u64,
        peer,
        batch,
    });
    response.into_response()
}
