//! Graph request metrics, registered into the worker's Prometheus registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Which call: `groups_delta`, `group_members`, `token`, ...
    pub endpoint: &'static str,
    /// The HTTP status, or `error` when no answer came.
    pub status: String,
}

#[derive(Clone, Debug, Default)]
pub struct GraphMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub throttled_waits: Counter,
    pub throttled_wait_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
}

impl GraphMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "entra_sync_graph_requests",
            "Graph and token requests by endpoint and status",
            metrics.requests.clone(),
        );
        registry.register(
            "entra_sync_graph_throttled_waits",
            "Waits because Graph answered 429 Too Many Requests",
            metrics.throttled_waits.clone(),
        );
        registry.register(
            "entra_sync_graph_throttled_wait_seconds",
            "Time spent waiting on Graph's Retry-After",
            metrics.throttled_wait_seconds.clone(),
        );
        metrics
    }

    pub(super) fn request(&self, endpoint: &'static str, status: Option<u16>) {
        let status = status.map_or_else(|| "error".to_owned(), |s| s.to_string());
        self.requests
            .get_or_create(&RequestLabels { endpoint, status })
            .inc();
    }
}
