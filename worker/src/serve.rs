//! Starting `entra-sync-worker run` from its configuration: every check first, with a clear
//! error, then the health and metrics endpoint ([`crate::health`]), then the tasks
//! ([`crate::run`]).

use migration::database::Db;
use std::time::Duration;

use prometheus_client::registry::Registry;
use secrecy::ExposeSecret;

use crate::config::{Intervals, WorkerConfig};
use crate::error::{Error, Result};
use crate::graph::{GraphClient, GraphMetrics};
use crate::litellm_cache::LiteLlmCache;
use crate::litellm_config::{CacheSettings, LiteLlmSettings};
use crate::metrics::{ResultLabel, WorkerMetrics};
use crate::readiness::Readiness;
use crate::run::{KeeperSettings, RunSettings, Worker};
use crate::store::Store;
use crate::stream::{StreamConsumer, StreamSettings};
use crate::subscriptions::SubscriptionManager;
use crate::sync::{LeaseSettings, Syncer};
use crate::team_rules::TeamRules;

/// Connects to LiteLLM's database with a clear error, which never holds the URL's password;
/// first refuses a URL whose password a man in the middle could read, unless
/// `ENTRA_SYNC_ALLOW_UNVERIFIED_TLS` allows it.
pub async fn connect_database(config: &WorkerConfig) -> Result<Db> {
    let url = config.database_url.expose_secret();
    let transport = migration::database::check_transport(url, config.allow_unverified_tls)
        .map_err(Error::Settings)?;
    if let migration::database::Transport::Unverified { host } = transport {
        tracing::warn!(
            host,
            "connecting to DATABASE_URL without verifying the server's certificate ({}=true)",
            migration::database::ALLOW_UNVERIFIED_TLS
        );
    }
    migration::database::connect(url, |options| {
        options
            .max_connections(16)
            .connect_timeout(Duration::from_secs(10))
            .sqlx_logging(false);
    })
    .await
    .map_err(Error::Settings)
}

/// Connects to LiteLLM's database and checks LiteLLM's tables and entra-sync's migrations.
pub async fn open_database(config: &WorkerConfig) -> Result<Db> {
    let db = connect_database(config).await?;
    crate::startup::check_database(&db).await?;
    Ok(db)
}

/// The team rules, read and checked: every rule, then its organization against LiteLLM's
/// database (`db`). A bad rule stops the command with the rule's position.
pub async fn team_rules(config: &WorkerConfig, db: &Db) -> Result<TeamRules> {
    let rules = config.team_rules()?;
    rules.check_organizations(db).await?;
    if !rules.is_empty() {
        tracing::info!(rules = rules.rules().len(), "team rules read");
    }
    Ok(rules)
}

/// The store as configured: its removal mode, key policy, team rules and LiteLLM cache (whose
/// evictions are counted in `evictions`).
pub fn store(
    config: &WorkerConfig,
    db: Db,
    settings: LiteLlmSettings,
    rules: TeamRules,
    evictions: prometheus_client::metrics::family::Family<
        ResultLabel,
        prometheus_client::metrics::counter::Counter,
    >,
) -> Result<Store> {
    let cache = config
        .litellm_cache_target(&settings)?
        .map(|target| LiteLlmCache::start(target, evictions));
    let store = Store::new(db, settings, config.removal_mode)
        .with_key_policy(config.key_policy())
        .with_team_rules(rules);
    Ok(match cache {
        Some(cache) => store.with_litellm_cache(cache),
        None => store,
    })
}

/// The syncer as configured: its policies and how it counts membership.
pub fn syncer(config: &WorkerConfig, graph: GraphClient, store: Store) -> Syncer {
    Syncer::new(graph, store, config.unassigned_policy)
        .with_departed_users(config.departed_user_policy)
        .with_membership(config.membership)
        .with_owners_as_admins(config.owners_as_admins)
        .with_removal_threshold(config.removal_threshold)
}

/// What an operator should know about LiteLLM's caches, said once at start.
pub fn cache_advice(configured: bool, caches: &CacheSettings) -> Vec<String> {
    if configured {
        return Vec::new();
    }
    let ttl = caches
        .ttl_seconds
        .unwrap_or(CacheSettings::DEFAULT_TTL_SECONDS);
    let mut advice = vec![format!(
        "ENTRA_SYNC_LITELLM_REDIS_URL is unset: LiteLLM may serve removed access (keys, teams, \
         memberships, roles) from its caches for up to its cache TTL, {ttl} s"
    )];
    if let Some(setting) = caches.redis_from {
        advice.push(format!(
            "LiteLLM's config.yaml gives its proxy a Redis cache ({setting}) that entra-sync was \
             not given: set ENTRA_SYNC_LITELLM_REDIS_URL to it so that removals take effect at once"
        ));
    }
    advice
}

/// The notification stream's consumer group, as this replica reads it.
async fn connect_stream(config: &WorkerConfig, intervals: &Intervals) -> Result<StreamConsumer> {
    StreamConsumer::connect(
        config.stream.redis_url.expose_secret(),
        StreamSettings {
            stream: config.stream.stream.clone(),
            dead_letter: config.dead_letter_stream(),
            consumer: config.consumer_name(),
            batch: 500,
            claim_idle: intervals.claim_idle,
            max_deliveries: config.max_deliveries,
        },
    )
    .await
    .map_err(|e| Error::Settings(format!("Redis at REDIS_URL is not reachable: {e}")))
}

/// How often the run loop's periodic tasks come, from the configuration.
fn run_settings(config: &WorkerConfig, intervals: &Intervals) -> RunSettings {
    RunSettings {
        poll_interval: intervals.poll,
        max_deliveries: config.max_deliveries,
        reconcile_interval: intervals.reconcile,
        departed_recheck: intervals.departed_recheck,
        audit_retention: config.audit_retention(),
        subscription_keeper: Some(KeeperSettings {
            check: intervals.subscription_check,
            lease: intervals.subscription_lease,
        }),
        ..RunSettings::default()
    }
}

/// `entra-sync-worker run`.
pub async fn run(config: WorkerConfig) -> Result<()> {
    let intervals = config.intervals()?;
    let settings = config.litellm_settings()?;
    // The rules file is read before anything connects, so that a mistake in it shows first.
    config.team_rules()?;
    let graph_config = config.graph.clone().resolve()?;
    let target = config.subscription_target()?;
    let db = open_database(&config).await?;
    let rules = team_rules(&config, &db).await?;

    let mut registry = Registry::default();
    let graph_metrics = GraphMetrics::register(&mut registry);
    let metrics = WorkerMetrics::register(&mut registry);
    let graph = GraphClient::new(graph_config, graph_metrics)?;
    let consumer = connect_stream(&config, &intervals).await?;

    let readiness = Readiness::new();
    crate::health::serve(
        config.metrics_listen,
        db.clone(),
        registry,
        readiness.clone(),
    )
    .await?;

    for advice in cache_advice(config.litellm_redis_url.is_some(), &settings.caches) {
        tracing::warn!("{advice}");
    }
    let store = store(
        &config,
        db.clone(),
        settings,
        rules,
        metrics.litellm_cache_evictions.clone(),
    )?;
    let cache = store.litellm_cache().cloned();
    let consumer_name = consumer.settings().consumer.clone();
    let subscriptions = target.map(|t| {
        SubscriptionManager::new(graph.clone(), db.clone(), t)
            .with_lease_ttl(Duration::from_secs(config.lease_seconds))
    });
    if subscriptions.is_none() {
        tracing::warn!(
            "ENTRA_SYNC_PUBLIC_URL is unset: no Graph subscriptions, so changes arrive by polling and reconciliation only"
        );
    }
    let worker = Worker {
        syncer: syncer(&config, graph, store).with_lease(LeaseSettings {
            holder: consumer_name,
            ttl: Duration::from_secs(config.lease_seconds),
            ..LeaseSettings::default()
        }),
        consumer,
        metrics,
        settings: run_settings(&config, &intervals),
        subscriptions,
        readiness,
    };
    tracing::info!(
        stream = config.stream.stream,
        consumer = worker.consumer.settings().consumer,
        metrics = %config.metrics_listen,
        "worker running"
    );
    let result = worker.run(entra_sync_core::shutdown_signal()).await;
    if let Some(cache) = cache {
        // The last round's evictions go out before the process ends.
        cache.flush(Duration::from_secs(3)).await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_litellms_redis_the_worker_says_how_long_removed_access_may_last() {
        let none = CacheSettings::default();
        let advice = cache_advice(false, &none);
        assert_eq!(advice.len(), 1);
        assert!(
            advice[0].contains("up to its cache TTL, 60 s"),
            "{advice:?}"
        );

        let configured = CacheSettings {
            redis_from: Some("litellm_settings.cache"),
            namespace: None,
            ttl_seconds: Some(300.0),
        };
        let advice = cache_advice(false, &configured);
        assert_eq!(advice.len(), 2);
        assert!(advice[0].contains("300 s"), "{advice:?}");
        assert!(advice[1].contains("litellm_settings.cache"), "{advice:?}");

        assert!(cache_advice(true, &configured).is_empty());
    }
}
