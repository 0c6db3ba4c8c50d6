//! The LiteLLM crate's one error type. The worker turns each into its own error of the same name
//! (`worker::Error`), where whether it is an item's or the whole unit's is decided.

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
    /// A team rule (`ENTRA_SYNC_TEAM_RULES`) cannot be used; `position` is the rule's, 1-based.
    #[error("ENTRA_SYNC_TEAM_RULES rule {position}: {problem}")]
    TeamRule { position: usize, problem: String },
    /// Made by `From<DbErr>`, which turns a lost prepared statement into a [`Self::Settings`]
    /// error that stops the worker (see [`must_stop`]).
    #[error("database: {0}")]
    Database(DbErr),
    #[error("team {0} does not exist in LiteLLM: ensure the team before changing its members")]
    TeamNotFound(String),
    #[error("user {0} does not exist in LiteLLM")]
    UserNotFound(String),
    /// Two LiteLLM users go by one Entra object id, one as its `user_id` and the other as its
    /// `sso_user_id`: entra-sync writes neither until an admin merges or relinks them.
    #[error(
        "Entra user {object_id} matches two LiteLLM users, {} (by user_id) and {} (by sso_user_id): merge or relink them in LiteLLM",
        user_ids[0], user_ids[1]
    )]
    AmbiguousUser {
        object_id: String,
        user_ids: [String; 2],
    },
    /// A setting is missing or wrong; the message names it.
    #[error("configuration: {0}")]
    Settings(String),
    /// Another writer changed the same rows between our read and our write; nothing was applied
    /// and applying the same intention again is safe.
    #[error("{0} changed concurrently; nothing was applied and the change can be retried")]
    ConcurrentChange(String),
    /// Another replica holds the lease for this work; it runs again later.
    #[error("the {lease} lease is held by {holder}; trying again later")]
    LeaseBusy { lease: &'static str, holder: String },
    /// The work's lease passed to another replica before the work committed; nothing was
    /// written, and the other replica's work stands.
    #[error("the {lease} lease was lost before the commit; nothing was written")]
    LeaseLost { lease: &'static str },
    /// LiteLLM's tables are not as entra-sync needs them (a table or column it relies on is
    /// missing): every item would fail alike.
    #[error("LiteLLM's schema: {0}")]
    LiteLlmSchema(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The first error met anywhere in the process that no retry mends and that must stop the
/// worker, whatever the code that met it did next: an item's error is recorded and retried
/// later, a unit's is retried, and either would go on for ever. Today there is one such error, a
/// prepared statement lost behind PgBouncer without `pgbouncer=true` (see
/// [`migration::database::PGBOUNCER_FIX`]); every database error passes through
/// `From<DbErr>`, which notes it here.
static MUST_STOP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
static MUST_STOP_NOTED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Resolves with the first error that must stop the worker (see [`MUST_STOP`]).
pub async fn must_stop() -> Error {
    loop {
        // Created before the check: a note made in between still wakes it.
        let noted = MUST_STOP_NOTED.notified();
        if let Some(message) = MUST_STOP.get() {
            return Error::Settings(message.clone());
        }
        noted.await;
    }
}

impl From<DbErr> for Error {
    fn from(error: DbErr) -> Self {
        if !migration::database::is_lost_prepared_statement(&error) {
            return Self::Database(error);
        }
        let message = format!(
            "{} (PostgreSQL answered: {error})",
            migration::database::PGBOUNCER_FIX
        );
        if MUST_STOP.set(message.clone()).is_ok() {
            MUST_STOP_NOTED.notify_waiters();
        }
        Self::Settings(message)
    }
}
