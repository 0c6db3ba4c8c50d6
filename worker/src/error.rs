//! The worker's one error type.
//!
//! Where an error is logged, and at which level, is its handler's decision: a failure the run
//! loop retries is a warning, one that ends a command is an error, logged once by `main`. The
//! instrumented functions that return one record it only at debug level
//! (`#[tracing::instrument(err(level = "debug"))]`), with their span's context; their default,
//! ERROR, made a concurrent change that was then retried, an expired delta token that meant a
//! resync, or a subscription Graph had already dropped look like failures.

use sea_orm::DbErr;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// LiteLLM's config.yaml could not be used; `key` names the offending setting.
    #[error("LiteLLM config {path}: {key}: {problem}")]
    Config {
        path: String,
        key: String,
        problem: String,
    },
    #[error("database: {0}")]
    Database(#[from] DbErr),
    #[error("team {0} does not exist in LiteLLM: ensure the team before changing its members")]
    TeamNotFound(String),
    #[error("user {0} does not exist in LiteLLM")]
    UserNotFound(String),
    /// A setting is missing or wrong; the message names it.
    #[error("configuration: {0}")]
    Settings(String),
    /// The credential could not be used (unreadable file, bad key, refused by the token endpoint).
    #[error("credential: {0}")]
    Credential(String),
    /// Graph answered with an error that retrying does not fix; `code` and `message` are Graph's.
    #[error("Graph {endpoint}: {status} {code}: {message}")]
    Graph {
        endpoint: &'static str,
        status: u16,
        code: String,
        message: String,
    },
    /// Graph could not be reached, or kept failing until the retry budget ran out.
    #[error("Graph {endpoint} unavailable: {reason}")]
    GraphUnavailable {
        endpoint: &'static str,
        reason: String,
    },
    /// The stored delta token expired (Graph keeps them 7 days): a full resync is needed.
    #[error("the delta token expired: a full resync is needed")]
    DeltaExpired,
    /// Another writer changed the same rows between our read and our write; nothing was applied
    /// and applying the same intention again is safe.
    #[error("{0} changed concurrently; nothing was applied and the change can be retried")]
    ConcurrentChange(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
