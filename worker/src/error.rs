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
    /// Graph lists the user as a member of the group but cannot read the user yet (directory
    /// replication lag): the member stays as they are, and the group is read again soon.
    #[error("Graph lists user {user} in group {group} but cannot read the user yet")]
    MemberUnreadable { group: String, user: String },
    /// Graph answered once that the user does not exist; a deletion counts only when a second
    /// answer, at least a minute later, says so too. Read again meanwhile (with the usual
    /// backoff), so that a user only lagging comes back within seconds.
    #[error(
        "Graph does not find user {user}: read again until an answer from {confirm_after} on confirms the deletion"
    )]
    DeletionUnconfirmed {
        user: String,
        confirm_after: chrono::DateTime<chrono::Utc>,
    },
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
    /// Another replica holds the lease for this work; it runs again later.
    #[error("the {lease} lease is held by {holder}; trying again later")]
    LeaseBusy { lease: &'static str, holder: String },
    /// The work's lease passed to another replica before the work committed; nothing was
    /// written, and the other replica's work stands.
    #[error("the {lease} lease was lost before the commit; nothing was written")]
    LeaseLost { lease: &'static str },
    /// The notification stream's Redis failed.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// An id taken from outside (a notification, a stored row) that would go into a Graph URL
    /// is not a GUID: Graph is not asked.
    #[error("{what} {id:?} is not a GUID; Graph is not asked about it")]
    NotAGuid { what: &'static str, id: String },
    /// One of `run`'s tasks ended before the shutdown (it panicked).
    #[error("the worker's {0}")]
    TaskEnded(String),
    /// The task that read or wrote one item (a group, a batch's groups) in parallel with others
    /// panicked or was cancelled: that item's failure, retried as any other; the rest goes on.
    #[error("its task failed: {0}")]
    ItemTaskFailed(String),
    /// LiteLLM's tables are not as entra-sync needs them (a table or column it relies on is
    /// missing): every item would fail alike.
    #[error("LiteLLM's schema: {0}")]
    LiteLlmSchema(String),
    /// The HTTP client could not be built (its TLS setup failed).
    #[error("the HTTP client: {0}")]
    HttpClient(String),
    /// A command's output could not be written (stdout closed, say).
    #[error("output: {0}")]
    Output(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Resolves with the first error that must stop the worker: a database error no retry mends,
/// noted wherever it was met (see `entra_sync_litellm::error::must_stop`).
pub async fn must_stop() -> Error {
    entra_sync_litellm::error::must_stop().await.into()
}

impl From<entra_sync_graph::Error> for Error {
    /// Each of the Graph client's errors is the worker's error of the same name.
    fn from(error: entra_sync_graph::Error) -> Self {
        use entra_sync_graph::Error as Graph;
        match error {
            Graph::Graph {
                endpoint,
                status,
                code,
                message,
            } => Self::Graph {
                endpoint,
                status,
                code,
                message,
            },
            Graph::GraphUnavailable { endpoint, reason } => {
                Self::GraphUnavailable { endpoint, reason }
            }
            Graph::DeltaExpired => Self::DeltaExpired,
            Graph::Credential(problem) => Self::Credential(problem),
            Graph::Settings(problem) => Self::Settings(problem),
            Graph::HttpClient(problem) => Self::HttpClient(problem),
            Graph::NotAGuid { what, id } => Self::NotAGuid { what, id },
        }
    }
}

impl From<DbErr> for Error {
    /// As the LiteLLM crate's error does, so that a lost prepared statement met here stops the
    /// worker too.
    fn from(error: DbErr) -> Self {
        entra_sync_litellm::Error::from(error).into()
    }
}

impl From<entra_sync_litellm::Error> for Error {
    /// Each of the LiteLLM crate's errors is the worker's error of the same name.
    fn from(error: entra_sync_litellm::Error) -> Self {
        use entra_sync_litellm::Error as LiteLlm;
        match error {
            LiteLlm::Config { path, key, problem } => Self::Config { path, key, problem },
            LiteLlm::TeamRule { position, problem } => Self::TeamRule { position, problem },
            LiteLlm::Database(error) => Self::Database(error),
            LiteLlm::TeamNotFound(team) => Self::TeamNotFound(team),
            LiteLlm::UserNotFound(user) => Self::UserNotFound(user),
            LiteLlm::AmbiguousUser {
                object_id,
                user_ids,
            } => Self::AmbiguousUser {
                object_id,
                user_ids,
            },
            LiteLlm::Settings(problem) => Self::Settings(problem),
            LiteLlm::ConcurrentChange(what) => Self::ConcurrentChange(what),
            LiteLlm::LeaseBusy { lease, holder } => Self::LeaseBusy { lease, holder },
            LiteLlm::LeaseLost { lease } => Self::LeaseLost { lease },
            LiteLlm::LiteLlmSchema(problem) => Self::LiteLlmSchema(problem),
        }
    }
}

impl Error {
    /// Whether the error says the service itself is unwell (the database or Graph unreachable,
    /// the credential refused, the lease lost), rather than something about one group or user.
    /// A systemic error fails the whole unit of work, which is retried as a whole; any other
    /// error is the item's own, and the rest of the work goes on without it.
    pub fn is_systemic(&self) -> bool {
        match self {
            Self::Database(error) => database_error_is_systemic(error),
            Self::GraphUnavailable { .. }
            | Self::Credential(_)
            | Self::Settings(_)
            | Self::Config { .. }
            | Self::TeamRule { .. }
            | Self::DeltaExpired
            | Self::LeaseBusy { .. }
            | Self::LeaseLost { .. }
            | Self::Redis(_)
            | Self::TaskEnded(_)
            | Self::LiteLlmSchema(_)
            | Self::HttpClient(_)
            | Self::Output(_) => true,
            Self::Graph { .. }
            | Self::TeamNotFound(_)
            | Self::UserNotFound(_)
            | Self::AmbiguousUser { .. }
            | Self::MemberUnreadable { .. }
            | Self::DeletionUnconfirmed { .. }
            | Self::ConcurrentChange(_)
            | Self::ItemTaskFailed(_)
            | Self::NotAGuid { .. } => false,
        }
    }
}

/// Connection trouble, or the server refusing work (SQLSTATE classes 08 connection exception,
/// 53 insufficient resources, 57 operator intervention such as a restart, 58 system error), is
/// systemic; an error in one statement (a constraint, a deadlock with LiteLLM) is the item's.
fn database_error_is_systemic(error: &DbErr) -> bool {
    use sea_orm::RuntimeErr;
    let runtime = match error {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => return true,
        DbErr::Exec(runtime) | DbErr::Query(runtime) => runtime,
        _ => return false,
    };
    let RuntimeErr::SqlxError(sqlx) = runtime else {
        return false;
    };
    match sqlx {
        sqlx::Error::Database(database) => database.code().is_some_and(|code| {
            ["08", "53", "57", "58"]
                .iter()
                .any(|class| code.starts_with(class))
        }),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}
