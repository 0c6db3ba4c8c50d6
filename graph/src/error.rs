//! The Graph client's one error type. The worker turns each into its own error of the same
//! name (`worker::Error`), where whether it is an item's or the whole unit's is decided.

#[derive(Debug, thiserror::Error)]
pub enum Error {
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
    /// The credential could not be used (unreadable file, bad key, refused by the token endpoint,
    /// or Graph refusing fresh access tokens).
    #[error("credential: {0}")]
    Credential(String),
    /// A Graph setting is missing or wrong; the message names it.
    #[error("configuration: {0}")]
    Settings(String),
    /// The HTTP client could not be built (its TLS setup failed).
    #[error("the HTTP client: {0}")]
    HttpClient(String),
    /// An id taken from outside (a notification, a stored row) that would go into a Graph URL
    /// is not a GUID: Graph is not asked.
    #[error("{what} {id:?} is not a GUID; Graph is not asked about it")]
    NotAGuid { what: &'static str, id: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
