//! The worker's one-shot commands: `sync`, `subscriptions` and `status`. Each prints for a human
//! on stderr and, where a machine may read it, JSON on stdout.

use std::io::Write;

use chrono::{DateTime, Utc};
use prometheus_client::registry::Registry;
use secrecy::ExposeSecret;
use serde::Serialize;

use crate::config::WorkerConfig;
use crate::error::{Error, Result};
use crate::graph::{GraphClient, GraphMetrics};
use crate::subscriptions::{self, SubscriptionManager};

fn graph(config: &WorkerConfig) -> Result<GraphClient> {
    GraphClient::new(
        config.graph.clone().resolve()?,
        GraphMetrics::register(&mut Registry::default()),
    )
}

fn print_json_line(value: &impl Serialize) -> Result<()> {
    let line = serde_json::to_string(value)
        .map_err(|e| Error::Settings(format!("cannot print as JSON: {e}")))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").map_err(|e| Error::Settings(format!("cannot write to stdout: {e}")))
}

/// `sync --full [--dry-run]`: a full reconciliation, its changes printed as JSON lines; a dry
/// run then adds a `team_differs_from_rule` line for each team whose parameters differ from its
/// team rule's (see [`crate::team_rules::RuleDrift`]). Without `--full`: the assignments polled
/// and one delta round.
pub async fn sync(config: &WorkerConfig, full: bool, dry_run: bool) -> Result<()> {
    let settings = config.litellm_settings()?;
    config.team_rules()?;
    let db = crate::serve::open_database(config).await?;
    let rules = crate::serve::team_rules(config, &db).await?;
    let store = crate::serve::store(config, db.clone(), settings, rules, Default::default())?;
    let cache = store.litellm_cache().cloned();
    let reporter = store.clone();
    let mut syncer = crate::serve::syncer(config, graph(config)?, store);
    if dry_run {
        syncer = syncer.dry_run();
    }
    let now = Utc::now();
    let changes = if full {
        syncer.reconcile(now).await?.changes
    } else {
        let mut changes = syncer.poll_assignments(now).await?.changes;
        changes.merge(syncer.delta_round(now).await?.changes);
        changes
    };
    if let Some(cache) = cache {
        cache.flush(std::time::Duration::from_secs(3)).await;
    }
    for change in changes.list() {
        print_json_line(change)?;
    }
    let verb = if dry_run { "would make" } else { "made" };
    eprintln!(
        "{} {verb} {} changes",
        if full { "reconciliation" } else { "sync" },
        changes.total()
    );
    if full && dry_run {
        // Reported, never changed: rules apply when a team is created, and an admin's edit since
        // stands; the operator decides.
        let drift = reporter.rule_drift().await?;
        for team in &drift {
            print_json_line(team)?;
        }
        if !drift.is_empty() {
            eprintln!("{} teams differ from their team rule", drift.len());
        }
    }
    Ok(())
}

/// `subscriptions list|ensure|delete`.
pub async fn subscriptions(config: &WorkerConfig, action: &str) -> Result<()> {
    let target = config.subscription_target()?.ok_or_else(|| {
        Error::Settings("ENTRA_SYNC_PUBLIC_URL is required to manage subscriptions".into())
    })?;
    let manager = SubscriptionManager::new(
        graph(config)?,
        crate::serve::open_database(config).await?,
        target,
    );
    let now = Utc::now();
    match action {
        "list" => {
            for view in manager.list().await? {
                print_json_line(&view)?;
            }
        }
        "ensure" => {
            let actions = manager.ensure(now).await?;
            for action in &actions {
                print_json_line(action)?;
            }
            if actions.is_empty() {
                eprintln!("subscriptions are in place; nothing to do");
            }
        }
        "delete" => {
            for action in manager.delete_all().await? {
                print_json_line(&action)?;
            }
        }
        other => {
            return Err(Error::Settings(format!(
                "unknown subscriptions action {other:?}: list, ensure or delete"
            )));
        }
    }
    Ok(())
}

/// Everything `status` reports.
#[derive(Debug, Serialize)]
pub struct Status {
    pub subscriptions: Vec<StoredSubscription>,
    pub subscription_keeper: Option<String>,
    pub last_delta_round: Option<DateTime<Utc>>,
    pub assigned_groups: u64,
    pub stream: Option<crate::stream::StreamStatus>,
    pub stream_error: Option<String>,
    pub last_reconciliation: Option<ReconciliationStatus>,
    /// Groups and users whose sync failed on their own, waiting for a retry (at most 100).
    pub failed_items: Vec<FailedItem>,
}

#[derive(Debug, Serialize)]
pub struct FailedItem {
    pub kind: String,
    pub id: String,
    pub attempts: i32,
    pub error: String,
    pub first_failed_at: DateTime<Utc>,
    pub retry_at: DateTime<Utc>,
}

#[derive(Debug, Serialize)]
pub struct StoredSubscription {
    pub id: String,
    pub resource: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Serialize)]
pub struct ReconciliationStatus {
    pub finished_at: DateTime<Utc>,
    pub drift: i64,
    pub error: Option<String>,
}

/// Reads the status from the database and Redis (Graph is not asked).
pub async fn read_status(config: &WorkerConfig) -> Result<Status> {
    let db = crate::serve::open_database(config).await?;
    let subscriptions = crate::store::subscriptions::stored(&db)
        .await?
        .into_iter()
        .map(|row| StoredSubscription {
            id: row.id,
            resource: row.resource,
            expires_at: row.expires_at,
        })
        .collect();
    let keeper = crate::store::lease::held(&db, subscriptions::LEASE)
        .await?
        .map(|(holder, _)| holder);
    let last_delta_round = crate::store::last_delta_round(&db).await?;
    let assigned_groups = crate::store::assigned_group_count(&db).await?;
    let (stream, stream_error) = match crate::stream::stream_status(
        config.stream.redis_url.expose_secret(),
        &config.stream.stream,
        &config.dead_letter_stream(),
    )
    .await
    {
        Ok(status) => (Some(status), None),
        Err(error) => (None, Some(error.to_string())),
    };
    let last_reconciliation =
        crate::store::last_reconciliation(&db)
            .await?
            .map(|run| ReconciliationStatus {
                finished_at: run.finished_at,
                drift: run.changes,
                error: run.error,
            });
    let failed_items = crate::store::failed_items(&db)
        .await?
        .into_iter()
        .map(|item| FailedItem {
            kind: item.kind,
            id: item.id,
            attempts: item.attempts,
            error: item.error,
            first_failed_at: item.first_failed_at,
            retry_at: item.retry_at,
        })
        .collect();
    Ok(Status {
        failed_items,
        subscriptions,
        subscription_keeper: keeper,
        last_delta_round,
        assigned_groups,
        stream,
        stream_error,
        last_reconciliation,
    })
}

/// `status [--json]`.
pub async fn status(config: &WorkerConfig, json: bool) -> Result<()> {
    let status = read_status(config).await?;
    if json {
        return print_json_line(&status);
    }
    let now = Utc::now();
    let ago = |at: DateTime<Utc>| human_duration(now - at);
    let mut rows: Vec<(String, String)> = Vec::new();
    if status.subscriptions.is_empty() {
        rows.push(("subscriptions".into(), "none".into()));
    }
    for s in &status.subscriptions {
        rows.push((
            format!("subscription {}", s.resource),
            format!(
                "{} expires {} (in {})",
                s.id,
                s.expires_at.format("%Y-%m-%d %H:%M UTC"),
                human_duration(s.expires_at - now)
            ),
        ));
    }
    rows.push((
        "subscription keeper".into(),
        status
            .subscription_keeper
            .clone()
            .unwrap_or_else(|| "nobody".into()),
    ));
    rows.push((
        "last delta round".into(),
        status
            .last_delta_round
            .map_or("never".into(), |at| format!("{} ago", ago(at))),
    ));
    rows.push(("assigned groups".into(), status.assigned_groups.to_string()));
    match (&status.stream, &status.stream_error) {
        (Some(s), _) => {
            rows.push(("stream lag".into(), s.lag.to_string()));
            rows.push(("stream pending".into(), s.pending.to_string()));
            rows.push(("dead letters".into(), s.dead_letters.to_string()));
        }
        (None, error) => rows.push((
            "stream".into(),
            format!("unreadable: {}", error.as_deref().unwrap_or("?")),
        )),
    }
    rows.push((
        "last reconciliation".into(),
        match &status.last_reconciliation {
            None => "never".into(),
            Some(r) => match &r.error {
                Some(error) => format!("{} ago, failed: {error}", ago(r.finished_at)),
                None => format!("{} ago, drift fixed: {}", ago(r.finished_at), r.drift),
            },
        },
    ));
    if status.failed_items.is_empty() {
        rows.push(("failed items".into(), "none".into()));
    }
    for item in &status.failed_items {
        rows.push((
            format!("failed {} {}", item.kind, item.id),
            format!(
                "{} attempts since {} ago, next in {}: {}",
                item.attempts,
                ago(item.first_failed_at),
                human_duration(item.retry_at - now),
                item.error
            ),
        ));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = std::io::stdout().lock();
    for (key, value) in rows {
        writeln!(out, "{key:<width$}  {value}")
            .map_err(|e| Error::Settings(format!("cannot write to stdout: {e}")))?;
    }
    Ok(())
}

fn human_duration(d: chrono::Duration) -> String {
    let seconds = d.num_seconds();
    let sign = if seconds < 0 { "-" } else { "" };
    let s = seconds.unsigned_abs();
    match s {
        0..=119 => format!("{sign}{s}s"),
        120..=7199 => format!("{sign}{}m", s / 60),
        7200..=172_799 => format!("{sign}{}h", s / 3600),
        _ => format!("{sign}{}d", s / 86_400),
    }
}
