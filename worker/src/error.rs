//! The worker's one error type.

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
    /// Another writer changed the same rows between our read and our write; nothing was applied
    /// and applying the same intention again is safe.
    #[error("{0} changed concurrently; nothing was applied and the change can be retried")]
    ConcurrentChange(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
