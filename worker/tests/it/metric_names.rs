//! The alert rules and the Grafana dashboard (deploy/monitoring/) name only metrics that the
//! binaries export: a real webhook and a real `entra-sync-worker run` are started, made to do
//! some work, and their `/metrics` scraped; every `entra_sync_*` name in `rules.yaml` and
//! `dashboard.json` must be a series one of them exports (a counter's `_total`, a histogram's
//! `_bucket`, `_sum` and `_count`), so a renamed metric or a typo in a rule fails here rather than
//! in an alert that never fires.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::graph_common;
use crate::world;

use std::collections::BTreeSet;

use graph_common::*;
use world::*;

/// A file of deploy/monitoring/, as text.
fn monitoring_file(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/monitoring")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every metric name a PromQL query can select from a Prometheus text or OpenMetrics scrape:
/// each sample's name, and what each `# TYPE` line's family exposes even before its first
/// sample (a labelled family has none until a label set is first used).
fn exported_series(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in scrape.lines() {
        if let Some(family) = line.strip_prefix("# TYPE ") {
            let mut words = family.split_whitespace();
            let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                panic!("a # TYPE line without a name and a type: {line:?}");
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["", "_sum", "_count"],
                _ => &[""],
            };
            for suffix in suffixes {
                names.insert(format!("{name}{suffix}"));
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

/// The `entra_sync_*` names a text uses.
fn used_names(text: &str) -> BTreeSet<String> {
    regex::Regex::new(r"entra_sync_[a-z0-9_]+")
        .unwrap()
        .find_iter(text)
        .map(|m| m.as_str().to_owned())
        .collect()
}

#[tokio::test]
async fn the_alert_rules_and_the_dashboard_name_only_exported_metrics() {
    let mut world = World::new().await;
    let public_url = world.webhook_url.clone();
    let litellm_namespace = format!("metric-names-{}", uuid::Uuid::new_v4().simple());
    let redis_url = world.redis.url().to_owned();
    // A labelled family shows in a scrape only once a label set is used, so the worker is set up
    // to do everything the rules and the dashboard watch: keep the subscriptions (a public URL),
    // evict LiteLLM's cache (in a namespace of this test's own), and reconcile at its first check
    // (which comes after one poll interval).
    let worker = world.spawn_worker_process_with(
        "metric-names",
        &[
            ("ENTRA_SYNC_PUBLIC_URL", public_url.as_str()),
            ("ENTRA_SYNC_CLIENT_STATE", CLIENT_STATE),
            ("ENTRA_SYNC_POLL_SECONDS", "2"),
            ("ENTRA_SYNC_LITELLM_REDIS_URL", redis_url.as_str()),
            (
                "ENTRA_SYNC_LITELLM_REDIS_NAMESPACE",
                litellm_namespace.as_str(),
            ),
        ],
    );
    let worker_url = world.metrics_url(worker).await;
    assert!(
        eventually(|| async { world.first_round_committed().await }).await,
        "the worker never committed its first round"
    );
    assert!(
        eventually(|| async {
            world
                .sim
                .subscriptions()
                .iter()
                .any(|s| s.resource == "users")
        })
        .await,
        "the worker's subscription keeper never subscribed to users"
    );
    // A change in Entra goes through the webhook (a notification stored) and the worker (a
    // round that adds the member, and evicts what it changed from LiteLLM's cache).
    world.sim.apply(|t| t.add_member(gid(1), uid(6)));
    assert!(
        eventually(|| async { world.members(1).await == Some(users(1..=6)) }).await,
        "the member added in Entra never reached LiteLLM"
    );
    // And a notification the webhook refuses: another clientState.
    let tenant = world.sim.config().tenant_id.to_string();
    let forged = serde_json::json!({ "value": [{
        "subscriptionId": "0b1d2c3e-aaaa-4bbb-8ccc-000000000001",
        "subscriptionExpirationDateTime": "2026-12-20T00:00:00Z",
        "tenantId": tenant,
        "clientState": "not-the-client-state",
        "changeType": "updated",
        "resource": format!("Groups/{}", gid(1)),
        "resourceData": {
            "@odata.type": "#Microsoft.Graph.Group",
            "@odata.id": format!("Groups/{}", gid(1)),
            "id": gid(1).to_string(),
            "organizationId": tenant,
        }
    }]});
    let refused = reqwest::Client::new()
        .post(format!("{}/notifications", world.webhook_url))
        .json(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    // Every family the rules and the dashboard watch has its first sample.
    let webhook_series = [
        "entra_sync_webhook_notifications_accepted_total",
        r#"entra_sync_webhook_notifications_dropped_total{reason="client_state"}"#,
        r#"entra_sync_webhook_requests_total{outcome="unauthorized"}"#,
        "entra_sync_webhook_enqueue_seconds_count",
    ];
    let worker_series = [
        r#"entra_sync_changes_total{kind="member_added"}"#,
        r#"entra_sync_rounds_total{result="ok"}"#,
        r#"entra_sync_assignment_polls_total{result="ok"}"#,
        r#"entra_sync_reconciliations_total{result="ok"}"#,
        r#"entra_sync_litellm_cache_evictions_total{result="published"}"#,
        r#"entra_sync_subscription_actions_total{kind="created"}"#,
        // When the subscriptions the keeper made expire (0 would mean none).
        r#"entra_sync_subscription_expiry_timestamp_seconds{resource="groups"}"#,
        r#"entra_sync_subscription_expiry_timestamp_seconds{resource="users"}"#,
    ];
    let missing = || async {
        let webhook = scrape_url(&world.webhook_url).await;
        let worker = scrape_url(&worker_url).await;
        let uncounted = |scrape: &str, series: &[&'static str]| -> Vec<&'static str> {
            series
                .iter()
                .copied()
                .filter(|s| metric(scrape, s) < Some(1.0))
                .collect()
        };
        let mut missing = uncounted(&webhook, &webhook_series);
        missing.extend(uncounted(&worker, &worker_series));
        // A gauge the worker's housekeeping sets, 0 here.
        let failed_items = r#"entra_sync_failed_items{kind="group"}"#;
        if metric(&worker, failed_items).is_none() {
            missing.push(failed_items);
        }
        missing
    };
    assert!(
        eventually(|| async { missing().await.is_empty() }).await,
        "never counted: {:?}\nworker:\n{}",
        missing().await,
        scrape_url(&worker_url).await
    );

    let webhook_scrape = scrape_url(&world.webhook_url).await;
    let worker_scrape = scrape_url(&worker_url).await;
    let from_webhook = exported_series(&webhook_scrape);
    let from_worker = exported_series(&worker_scrape);
    // Each scrape is its binary's own: the test would prove nothing against an empty answer.
    assert!(
        from_webhook.contains("entra_sync_webhook_requests_total"),
        "not the webhook's metrics:\n{webhook_scrape}"
    );
    assert!(
        from_worker.contains("entra_sync_rounds_total"),
        "not the worker's metrics:\n{worker_scrape}"
    );
    let exported: BTreeSet<String> = from_webhook.union(&from_worker).cloned().collect();

    let mut offenders = Vec::new();
    for file in ["rules.yaml", "dashboard.json"] {
        let names = used_names(&monitoring_file(file));
        assert!(
            names.len() >= 10,
            "deploy/monitoring/{file} names only {names:?}: is it the file it should be?"
        );
        for name in &names {
            if !exported.contains(name) {
                offenders.push(format!("deploy/monitoring/{file}: {name}"));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "metric names that neither entra-sync-webhook nor entra-sync-worker exports:\n  {}\n\
         exported:\n  {}",
        offenders.join("\n  "),
        exported.iter().cloned().collect::<Vec<_>>().join("\n  ")
    );
}

#[test]
fn a_scrape_exposes_counters_with_total_and_histograms_with_their_series() {
    let scrape = "# HELP entra_sync_rounds Delta rounds by result.\n\
                  # TYPE entra_sync_rounds counter\n\
                  # HELP entra_sync_round_seconds Duration of delta rounds.\n\
                  # TYPE entra_sync_round_seconds histogram\n\
                  entra_sync_round_seconds_sum 0.0\n\
                  entra_sync_round_seconds_count 0\n\
                  entra_sync_round_seconds_bucket{le=\"0.01\"} 0\n\
                  # TYPE entra_sync_stream_lag gauge\n\
                  entra_sync_stream_lag 3\n\
                  # EOF\n";
    let names = exported_series(scrape);
    let expected: BTreeSet<String> = [
        "entra_sync_rounds_total",
        "entra_sync_round_seconds_bucket",
        "entra_sync_round_seconds_sum",
        "entra_sync_round_seconds_count",
        "entra_sync_stream_lag",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    // A counter's family name and a histogram's are not series a query can select.
    assert_eq!(names, expected);
    assert_eq!(
        used_names("rate(entra_sync_rounds_total{result=\"ok\"}[5m]) # EntraSyncNoRoundCommitted"),
        BTreeSet::from(["entra_sync_rounds_total".to_owned()])
    );
}
