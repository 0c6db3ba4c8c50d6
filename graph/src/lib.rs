//! entra-sync's Microsoft Graph client: every call entra-sync makes, with tokens, paging,
//! throttling and retries handled in one place ([`http`]). Exports the client
//! ([`GraphClient`]: directory reads, groups and users delta, JSON batching, subscriptions), its
//! settings and credentials, the users as Graph describes them ([`user`]), Graph's objects
//! ([`model`]), its metrics and its error type ([`Error`]). It knows nothing of LiteLLM.

mod batch;
mod credential;
mod delta;
mod directory;
mod endpoint;
pub mod error;
mod http;
mod metrics;
pub mod model;
mod retry;
mod settings;
mod subscriptions;
mod token;
pub mod user;
mod users_delta;

pub use credential::Credential;
pub use delta::{DeltaRound, DeltaStart, GroupDelta, MemberChange};
pub use error::{Error, Result};
pub use metrics::GraphMetrics;
pub use retry::RetryPolicy;
pub use settings::{GraphArgs, GraphConfig, checked_url};
pub use subscriptions::NewSubscription;
pub use users_delta::UsersDelta;

use std::sync::Arc;

/// A Graph client for one app registration in one tenant. Cheap to clone.
#[derive(Clone, Debug)]
pub struct GraphClient {
    inner: Arc<http::Http>,
}

impl GraphClient {
    pub fn new(config: GraphConfig, metrics: GraphMetrics) -> Result<Self> {
        Ok(Self {
            inner: Arc::new(http::Http::new(config, metrics)?),
        })
    }

    pub fn config(&self) -> &GraphConfig {
        self.inner.config()
    }
}
