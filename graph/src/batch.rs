//! JSON batching (`POST /$batch`): up to twenty GETs in one request, so that reading something
//! of every assigned group (its owners) costs one request per twenty groups. Graph answers each
//! inner request on its own; those it asks to retry (429, 5xx) go again in the next batch, after
//! the longest `Retry-After` they gave or the usual backoff, under the same retry budget as any
//! request.

use std::collections::HashMap;
use std::time::Duration;

use backon::BackoffBuilder;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::http::{Http, parse_retry_after};
use crate::error::{Error, Result};

/// Each path's answer, once it has one.
type Answers = Vec<Option<Result<Value>>>;

/// Graph's limit of requests in one batch.
const MOST_PER_BATCH: usize = 20;

#[derive(Deserialize)]
struct BatchAnswer {
    responses: Vec<InnerAnswer>,
}

#[derive(Deserialize)]
struct InnerAnswer {
    id: String,
    status: u16,
    #[serde(default)]
    headers: HashMap<String, String>,
    #[serde(default)]
    body: Value,
}

impl InnerAnswer {
    fn retry_after(&self) -> Option<Duration> {
        self.headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("retry-after"))
            .and_then(|(_, value)| parse_retry_after(value, chrono::Utc::now()))
    }

    fn error(self, endpoint: &'static str) -> Error {
        let detail = &self.body["error"];
        Error::Graph {
            endpoint,
            status: self.status,
            code: detail["code"].as_str().unwrap_or_default().to_owned(),
            message: detail["message"].as_str().unwrap_or_default().to_owned(),
        }
    }
}

impl Http {
    /// GETs every path (relative to the version root, e.g. `/groups/{id}/owners`), twenty to a
    /// request; the answers in the same order: each body, or Graph's error for it.
    pub async fn batch_get(
        &self,
        endpoint: &'static str,
        paths: &[String],
    ) -> Result<Vec<Result<Value>>> {
        let mut answers: Answers = paths.iter().map(|_| None).collect();
        for (batch, chunk) in paths.chunks(MOST_PER_BATCH).enumerate() {
            let first = batch * MOST_PER_BATCH;
            let pending = (first..first + chunk.len()).collect();
            self.batch_until_answered(endpoint, paths, pending, &mut answers)
                .await?;
        }
        Ok(answers
            .into_iter()
            .map(|answer| {
                answer.unwrap_or_else(|| {
                    Err(Error::GraphUnavailable {
                        endpoint,
                        reason: "no answer in the batch".into(),
                    })
                })
            })
            .collect())
    }

    /// Asks for the `pending` paths (one batch's worth) until each has its answer, or the retry
    /// budget is spent (those left then answer "unavailable").
    async fn batch_until_answered(
        &self,
        endpoint: &'static str,
        paths: &[String],
        mut pending: Vec<usize>,
        answers: &mut Answers,
    ) -> Result<()> {
        let mut delays = self.config().retry.backoff().build();
        loop {
            let wait = self.batch_once(endpoint, paths, &pending, answers).await?;
            // Those Graph asked to retry, and any it did not answer.
            pending.retain(|index| answers[*index].is_none());
            if pending.is_empty() {
                return Ok(());
            }
            let Some(delay) = delays.next() else {
                for index in pending {
                    answers[index] = Some(Err(Error::GraphUnavailable {
                        endpoint,
                        reason: "a batched request still failed after every retry".into(),
                    }));
                }
                return Ok(());
            };
            let delay = wait.unwrap_or(delay);
            self.metrics().throttled_waits.inc();
            self.metrics()
                .throttled_wait_seconds
                .inc_by(delay.as_secs_f64());
            tracing::debug!(
                endpoint,
                retried = pending.len(),
                ?delay,
                "batched requests retried"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// One `$batch` request for the `pending` paths, their answers recorded. Returns the
    /// longest wait Graph asked for before those it wants retried (left unanswered).
    async fn batch_once(
        &self,
        endpoint: &'static str,
        paths: &[String],
        pending: &[usize],
        answers: &mut Answers,
    ) -> Result<Option<Duration>> {
        let requests: Vec<Value> = pending
            .iter()
            .map(|index| json!({"id": index.to_string(), "method": "GET", "url": paths[*index]}))
            .collect();
        let body = json!({ "requests": requests });
        let answer: BatchAnswer = self
            .json(endpoint, Method::POST, &self.url("$batch"), Some(&body))
            .await?;
        let mut wait = None;
        for inner in answer.responses {
            let Some(index) = inner
                .id
                .parse::<usize>()
                .ok()
                .filter(|i| pending.contains(i))
            else {
                continue;
            };
            match inner.status {
                200..=299 => answers[index] = Some(Ok(inner.body)),
                // Left unanswered: asked again.
                429 | 500..=599 => wait = wait.max(inner.retry_after()),
                // The batch's own token was taken: refusing it inside is about the credential,
                // not about this item.
                401 => {
                    answers[index] = Some(Err(Error::Credential(format!(
                        "Graph refused the access token for a batched {endpoint} request (401)"
                    ))));
                }
                _ => answers[index] = Some(Err(inner.error(endpoint))),
            }
        }
        Ok(wait)
    }
}
