//! JSON batching (`POST /v1.0/$batch`): up to twenty requests in one, each answered on its own.
//!
//! Each inner request goes through the same router as a request of its own (authentication,
//! faults, the request log, Graph's errors), marked as a batch part: a throttle fault on
//! `/owners` answers that one inner request with 429 and `Retry-After` in its headers while the
//! batch itself is a 200, and the log tells HTTP requests from logical reads.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Extensions, HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tower::ServiceExt;

use crate::api::{graph_error, graph_router, json_ok};
use crate::faults::BatchPart;
use crate::state::Inner;

/// Graph's limit of requests in one batch.
const MOST_REQUESTS: usize = 20;

#[derive(Deserialize)]
struct Batch {
    requests: Vec<InnerRequest>,
}

#[derive(Deserialize)]
struct InnerRequest {
    id: String,
    method: String,
    /// Relative to the version root: `/groups/{id}/owners?...` (the leading `/` optional).
    url: String,
    #[serde(default)]
    headers: HashMap<String, String>,
    #[serde(default)]
    body: Option<Value>,
}

fn batch_error(message: &str) -> Response {
    graph_error(StatusCode::BAD_REQUEST, "BadRequest", message)
}

/// Answers a batch: 400 for a malformed one or one over the limit, otherwise 200 with every
/// inner request's own answer, in the order they were asked.
pub(crate) async fn answer(
    inner: &Arc<Inner>,
    headers: &HeaderMap,
    extensions: &Extensions,
    body: &[u8],
) -> Response {
    let Ok(batch) = serde_json::from_slice::<Batch>(body) else {
        return batch_error("Invalid batch payload format.");
    };
    if batch.requests.len() > MOST_REQUESTS {
        return batch_error(&format!(
            "Number of requests exceeds the limit of {MOST_REQUESTS}."
        ));
    }
    let ids: HashSet<&str> = batch.requests.iter().map(|r| r.id.as_str()).collect();
    if ids.len() < batch.requests.len() {
        return batch_error("Batch request contains duplicate request ids.");
    }
    let router = graph_router(inner.clone());
    let peer = extensions.get::<ConnectInfo<SocketAddr>>().copied();
    let mut responses = Vec::with_capacity(batch.requests.len());
    for request in &batch.requests {
        let response = match http_request(headers, peer, request) {
            Ok(http) => match router.clone().oneshot(http).await {
                Ok(response) => response,
                Err(never) => match never {},
            },
            Err(response) => response,
        };
        responses.push(inner_answer(&request.id, response).await);
    }
    json_ok(json!({ "responses": responses }))
}

/// An inner request as a request of its own: the batch's credentials, its own method, URL,
/// headers and body, marked as a batch part and coming from the batch's connection.
fn http_request(
    outer: &HeaderMap,
    peer: Option<ConnectInfo<SocketAddr>>,
    request: &InnerRequest,
) -> Result<Request<Body>, Response> {
    let method = Method::from_bytes(request.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| batch_error(&format!("Invalid method '{}'.", request.method)))?;
    let relative = request.url.trim_start_matches('/');
    if relative.starts_with("$batch") {
        return Err(batch_error("A batch cannot contain another batch."));
    }
    // Clients write `$filter=id eq '...'` with its spaces as they are.
    let uri = format!("/v1.0/{}", relative.replace(' ', "%20"));
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(authorization) = outer.get(header::AUTHORIZATION) {
        builder = builder.header(header::AUTHORIZATION, authorization);
    }
    for (name, value) in &request.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let body = match &request.body {
        Some(body) => Body::from(body.to_string()),
        None => Body::empty(),
    };
    let mut http = builder
        .body(body)
        .map_err(|e| batch_error(&format!("Invalid request '{}': {e}", request.id)))?;
    http.extensions_mut().insert(BatchPart);
    if let Some(peer) = peer {
        http.extensions_mut().insert(peer);
    }
    Ok(http)
}

/// One entry of the batch's `responses`: id, status, headers (as Graph names them, e.g.
/// `Retry-After`) and the JSON body, if any.
async fn inner_answer(id: &str, response: Response) -> Value {
    let status = response.status().as_u16();
    let headers: Map<String, Value> = response
        .headers()
        .iter()
        .filter(|(name, _)| *name != header::CONTENT_LENGTH)
        .filter_map(|(name, value)| header_text(value).map(|v| (title_case(name.as_str()), v)))
        .collect();
    let bytes = axum::body::to_bytes(response.into_response().into_body(), usize::MAX)
        .await
        .unwrap_or_default();
    let mut answer = json!({ "id": id, "status": status, "headers": headers });
    if !bytes.is_empty() {
        answer["body"] = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    }
    answer
}

fn header_text(value: &HeaderValue) -> Option<Value> {
    value.to_str().ok().map(|v| Value::String(v.to_owned()))
}

/// `retry-after` as Graph writes it: `Retry-After`.
fn title_case(name: &str) -> String {
    name.split('-')
        .map(|word| {
            let mut chars = word.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join("-")
}
