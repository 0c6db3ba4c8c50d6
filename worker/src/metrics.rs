//! The worker's Prometheus metrics (Graph's own are in [`crate::graph::GraphMetrics`]).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

pub use entra_sync_litellm::litellm_cache::ResultLabel;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabel {
    pub resource: &'static str,
}

#[derive(Clone, Debug)]
pub struct WorkerMetrics {
    pub stream_lag: Gauge,
    pub stream_pending: Gauge,
    pub rounds: Family<ResultLabel, Counter>,
    pub round_seconds: Histogram,
    pub changes: Family<KindLabel, Counter>,
    pub dead_letters: Counter,
    pub polls: Family<ResultLabel, Counter>,
    pub reconciliations: Family<ResultLabel, Counter>,
    /// Drift the last reconciliation found and fixed.
    pub reconciliation_drift: Gauge,
    /// Reconciliations in a row, up to the newest, that found drift (from the database, so that
    /// every replica says the same).
    pub reconciliations_with_drift: Gauge,
    /// When each resource's subscription expires, Unix seconds; 0: there is none. Set only
    /// where subscriptions are kept (`ENTRA_SYNC_PUBLIC_URL`).
    pub subscription_expiry: Family<ResourceLabel, Gauge>,
    /// Subscriptions created, renewed, reauthorized, re-created or deleted.
    pub subscription_actions: Family<KindLabel, Counter>,
    /// Cache keys evicted from LiteLLM's Redis and published to its proxy workers, or not.
    pub litellm_cache_evictions: Family<ResultLabel, Counter>,
    /// Rounds that failed as a whole since the last one that committed.
    pub failed_rounds: Gauge,
    /// Groups and users whose sync failed on their own and waits for a retry, by kind.
    pub failed_items: Family<KindLabel, Gauge>,
    /// Removals held for a person (`ENTRA_SYNC_REMOVAL_THRESHOLD`), from the database.
    pub removals_held: Gauge,
}

impl WorkerMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            stream_lag: Gauge::default(),
            stream_pending: Gauge::default(),
            rounds: Family::default(),
            // 10 ms to about 80 s.
            round_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            changes: Family::default(),
            dead_letters: Counter::default(),
            polls: Family::default(),
            reconciliations: Family::default(),
            reconciliation_drift: Gauge::default(),
            reconciliations_with_drift: Gauge::default(),
            subscription_expiry: Family::default(),
            subscription_actions: Family::default(),
            litellm_cache_evictions: Family::default(),
            failed_rounds: Gauge::default(),
            failed_items: Family::default(),
            removals_held: Gauge::default(),
        };
        registry.register(
            "entra_sync_removals_held",
            "Removals held for a person because one unit of work would have removed more than ENTRA_SYNC_REMOVAL_THRESHOLD (entra-sync-worker removals list)",
            metrics.removals_held.clone(),
        );
        registry.register(
            "entra_sync_failed_rounds_in_a_row",
            "Rounds that failed as a whole (the database or Graph away) since the last that committed",
            metrics.failed_rounds.clone(),
        );
        registry.register(
            "entra_sync_failed_items",
            "Groups and users whose sync failed on their own, waiting for a retry (entra-sync-worker status lists them)",
            metrics.failed_items.clone(),
        );
        registry.register(
            "entra_sync_litellm_cache_evictions",
            "LiteLLM cache keys evicted after a commit: published, or failed (LiteLLM serves them until their TTL)",
            metrics.litellm_cache_evictions.clone(),
        );
        registry.register(
            "entra_sync_reconciliations",
            "Full reconciliations by result",
            metrics.reconciliations.clone(),
        );
        registry.register(
            "entra_sync_reconciliation_drift",
            "Changes the last reconciliation made (drift notifications missed)",
            metrics.reconciliation_drift.clone(),
        );
        registry.register(
            "entra_sync_reconciliations_with_drift_in_a_row",
            "Reconciliations in a row, up to the newest that finished, that found and fixed drift",
            metrics.reconciliations_with_drift.clone(),
        );
        registry.register(
            "entra_sync_subscription_expiry_timestamp_seconds",
            "When the Graph subscription for each resource expires (Unix seconds); 0 when there is none",
            metrics.subscription_expiry.clone(),
        );
        registry.register(
            "entra_sync_subscription_actions",
            "Graph subscriptions created, renewed, reauthorized or deleted",
            metrics.subscription_actions.clone(),
        );
        registry.register(
            "entra_sync_stream_lag",
            "Stream entries no worker has read yet",
            metrics.stream_lag.clone(),
        );
        registry.register(
            "entra_sync_stream_pending",
            "Stream entries read but not yet acknowledged",
            metrics.stream_pending.clone(),
        );
        registry.register(
            "entra_sync_rounds",
            "Delta rounds by result",
            metrics.rounds.clone(),
        );
        registry.register(
            "entra_sync_round_seconds",
            "Duration of delta rounds",
            metrics.round_seconds.clone(),
        );
        registry.register(
            "entra_sync_changes",
            "Changes applied to LiteLLM's tables, by kind (keys deleted, blocked and unblocked among them)",
            metrics.changes.clone(),
        );
        registry.register(
            "entra_sync_dead_letters",
            "Stream entries moved to the dead-letter stream",
            metrics.dead_letters.clone(),
        );
        registry.register(
            "entra_sync_assignment_polls",
            "Polls of the app's assignments by result",
            metrics.polls.clone(),
        );
        metrics
    }

    /// Counts changes by kind (`Changes::by_kind`).
    pub fn count_changes(&self, by_kind: impl IntoIterator<Item = (&'static str, u64)>) {
        for (kind, count) in by_kind {
            self.changes
                .get_or_create(&KindLabel { kind })
                .inc_by(count);
        }
    }
}
