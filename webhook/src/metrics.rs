//! The webhook's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

pub struct Metrics {
    pub registry: Registry,
    pub requests: Family<Outcome, Counter>,
    /// `requests{outcome="accepted"}`, resolved once: the busiest label is counted without
    /// looking it up in the family (a lock and a hash) on every request.
    pub requests_accepted: Counter,
    pub accepted: Counter,
    pub dropped: Family<Reason, Counter>,
    pub enqueue_seconds: Histogram,
    /// Requests per Redis transaction: how much group commit is sharing.
    pub commit_requests: Histogram,
    pub backlog: Gauge,
    pub length: Gauge,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<Outcome, Counter>::default();
        let requests_accepted = requests
            .get_or_create(&Outcome {
                outcome: "accepted",
            })
            .clone();
        let accepted = Counter::default();
        let dropped = Family::<Reason, Counter>::default();
        // 0.5 ms to about 4 s.
        let enqueue_seconds = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 14),
        );
        // 1 to 4096 (the committer's channel capacity).
        let commit_requests = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(1.0, 2.0, 13),
        );
        let backlog = Gauge::default();
        let length = Gauge::default();
        registry.register(
            "entra_sync_webhook_requests",
            "Notification and handshake requests by outcome",
            requests.clone(),
        );
        registry.register(
            "entra_sync_webhook_notifications_accepted",
            "Notifications stored on the stream",
            accepted.clone(),
        );
        registry.register(
            "entra_sync_webhook_notifications_dropped",
            "Notifications refused, by reason",
            dropped.clone(),
        );
        registry.register(
            "entra_sync_webhook_enqueue_seconds",
            "Time for Redis to store one request's notifications",
            enqueue_seconds.clone(),
        );
        registry.register(
            "entra_sync_webhook_commit_requests",
            "Requests whose notifications one Redis transaction stored (group commit)",
            commit_requests.clone(),
        );
        registry.register(
            "entra_sync_stream_backlog",
            "Stream entries the workers have not finished (-1: unknown)",
            backlog.clone(),
        );
        registry.register(
            "entra_sync_stream_length",
            "Entries on the notification stream (XLEN; -1: unknown)",
            length.clone(),
        );
        Self {
            registry,
            requests,
            requests_accepted,
            accepted,
            dropped,
            enqueue_seconds,
            commit_requests,
            backlog,
            length,
        }
    }

    pub fn outcome(&self, outcome: &'static str) {
        self.requests.get_or_create(&Outcome { outcome }).inc();
    }

    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
