//! The HTTP handlers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{FromRequest, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::error::WebhookError;
use crate::group_commit::StoreError;
use crate::notification;
use crate::verify::Dropped;

/// The longest a request waits for Redis, whatever the deadline says (hand-built `Settings` are
/// not range-checked, and the clock's arithmetic would overflow on `Duration::MAX`).
const LONGEST_WAIT: std::time::Duration = std::time::Duration::from_secs(3600);

/// Graph's tokens are short; anything this long is not one.
const MAX_VALIDATION_TOKEN: usize = 1024;

/// `POST /notifications` and `POST /lifecycle`: the handshake, or a notification collection.
pub(crate) async fn notifications(
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Response {
    if let Some(token) = query.get("validationToken") {
        return match handshake(token) {
            Ok(response) => {
                state.metrics.outcome("handshake");
                response
            }
            Err(error) => failed(&state, error),
        };
    }
    match receive(&state, request).await {
        Ok(count) => {
            state.metrics.requests_accepted.inc();
            tracing::debug!(count, "notifications stored");
            StatusCode::ACCEPTED.into_response()
        }
        Err(error) => failed(&state, error),
    }
}

fn failed(state: &AppState, error: WebhookError) -> Response {
    state.metrics.outcome(error.outcome());
    match &error {
        WebhookError::Unavailable(_) | WebhookError::Backpressure(_) => {
            tracing::warn!(%error, "answered 503")
        }
        // Worth a look (a clientState rotation gone wrong?); the counts are in the error.
        WebhookError::Unauthorized(_) => tracing::warn!(%error, "refused"),
        _ => tracing::info!(%error, "refused"),
    }
    error.into_response()
}

/// Echo the decoded token as plain text, and nothing else (never as HTML).
fn handshake(token: &str) -> Result<Response, WebhookError> {
    if token.chars().count() > MAX_VALIDATION_TOKEN {
        return Err(WebhookError::TokenTooLong(MAX_VALIDATION_TOKEN));
    }
    let mut response = (StatusCode::OK, token.to_owned()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Ok(response)
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

/// The whole body, within the body timeout. The deadline covers all of it, not the pause
/// between two reads: a client trickling a byte a second would pass that forever.
async fn read_body(state: &AppState, request: Request) -> Result<Bytes, WebhookError> {
    let limit = state.settings.body_timeout;
    match tokio::time::timeout(limit, Bytes::from_request(request, &())).await {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(rejection)) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Err(WebhookError::TooLarge(state.settings.body_limit))
        }
        Ok(Err(rejection)) => Err(WebhookError::Malformed(rejection.body_text())),
        Err(_) => Err(WebhookError::BodyTimeout(limit)),
    }
}

/// Verifies, then stores; returns how many notifications were stored.
async fn receive(state: &AppState, request: Request) -> Result<usize, WebhookError> {
    // Read from the request rather than extracted: a `HeaderMap` extractor copies every header.
    if !is_json(request.headers()) {
        return Err(WebhookError::UnsupportedMediaType);
    }
    let body = read_body(state, request).await?;
    // Redis' deadline counts from here, once the body is in, as it did when an extractor
    // read the body before the handler ran.
    let started = Instant::now();
    let parsed = notification::parse(&body, chrono::Utc::now()).map_err(WebhookError::Malformed)?;
    let mut accepted = Vec::with_capacity(parsed.len());
    let mut dropped = Dropped::default();
    for item in parsed {
        match state
            .verifier
            .check(item.client_state.as_deref(), &item.record.tenant_id)
        {
            Ok(()) => accepted.push(item.record),
            Err(reason) => dropped.add(reason),
        }
    }
    // Counted and logged once for the whole request, never once per notification: a 1 MiB body
    // of made-up notifications is one log line.
    count_dropped(state, dropped);
    if accepted.is_empty() {
        return Err(WebhookError::Unauthorized(dropped));
    }
    if dropped.any() {
        tracing::warn!(
            client_state = dropped.client_state,
            tenant = dropped.tenant,
            accepted = accepted.len(),
            "notifications dropped"
        );
    }
    if let Some(backlog) = state.queue.backlog() {
        state.metrics.backlog.set(backlog);
        if backlog > state.settings.max_backlog {
            return Err(WebhookError::Backpressure(backlog));
        }
    }
    // What is left of the deadline. `Settings` may be built by hand with any deadline: unlike
    // `Instant + Duration`, this cannot overflow, and the wait is capped for the clock's sake.
    let left = state.settings.deadline.saturating_sub(started.elapsed());
    let entries = state.queue.entries(&accepted);
    let enqueue_started = tokio::time::Instant::now();
    let deadline = enqueue_started + left.min(LONGEST_WAIT);
    match state.commits.store(entries, deadline).await {
        Ok(()) => {
            state
                .metrics
                .enqueue_seconds
                .observe(enqueue_started.elapsed().as_secs_f64());
            state.metrics.accepted.inc_by(accepted.len() as u64);
            Ok(accepted.len())
        }
        Err(StoreError::TimedOut) => Err(WebhookError::Unavailable(format!(
            "Redis did not answer within {} ms",
            state.settings.deadline.as_millis()
        ))),
        Err(error) => Err(WebhookError::Unavailable(error.to_string())),
    }
}

fn count_dropped(state: &AppState, dropped: Dropped) {
    for (reason, count) in dropped.by_reason() {
        if count > 0 {
            state
                .metrics
                .dropped
                .get_or_create(&crate::metrics::Reason {
                    reason: reason.label(),
                })
                .inc_by(count);
        }
    }
}

pub(crate) async fn healthz() -> StatusCode {
    StatusCode::OK
}

/// Ready when Redis answers a PING within a second.
pub(crate) async fn readyz(State(state): State<Arc<AppState>>) -> StatusCode {
    match tokio::time::timeout(std::time::Duration::from_secs(1), state.queue.ping()).await {
        Ok(Ok(())) => StatusCode::OK,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

pub(crate) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    state
        .metrics
        .backlog
        .set(state.queue.backlog().unwrap_or(-1));
    state.metrics.length.set(state.queue.length().unwrap_or(-1));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}
