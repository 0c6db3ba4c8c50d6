//! The Microsoft Graph client: every call entra-sync makes, with tokens, paging, throttling and
//! retries handled in one place ([`http`]).

mod batch;
mod credential;
mod delta;
mod directory;
mod endpoint;
mod http;
mod metrics;
pub mod model;
mod settings;
mod subscriptions;
mod token;
mod users_delta;

pub use credential::Credential;
pub use delta::{DeltaRound, DeltaStart, GroupDelta, MemberChange};
pub use http::RetryPolicy;
pub use metrics::GraphMetrics;
pub use settings::{GraphArgs, GraphConfig, checked_url};
pub use subscriptions::NewSubscription;
pub use users_delta::UsersDelta;

use std::sync::Arc;

use crate::error::Result;

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
