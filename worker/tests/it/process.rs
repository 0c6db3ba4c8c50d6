//! `entra-sync-worker run` as an operator runs it: start-up checks with clear errors, health
//! and metrics, and a graceful stop on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::graph_common;
use crate::world;

use std::process::Command;
use std::time::Duration;

use entra_sync_testkit::TestDatabase;
use graph_common::*;
use graph_sim::Fault;
use sea_orm::ConnectionTrait;
use world::*;

/// Runs the worker to its exit with this environment; returns its exit success and stderr.
async fn run_once(env: &[(String, String)]) -> (bool, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_entra-sync-worker"));
    command
        .arg("run")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        command.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("the worker exits")
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn set(env: &mut Vec<(String, String)>, key: &str, value: Option<&str>) {
    env.retain(|(k, _)| k != key);
    if let Some(value) = value {
        env.push((key.to_owned(), value.to_owned()));
    }
}

#[tokio::test]
async fn start_up_checks_fail_with_what_to_do() {
    let world = World::new().await;

    let mut env = world.worker_env("checks");
    set(
        &mut env,
        "DATABASE_URL",
        Some(&format!("{}/postgres", entra_sync_testkit::server_url())),
    );
    let (ok, stderr) = run_once(&env).await;
    assert!(!ok);
    assert!(
        stderr.contains("run LiteLLM's migrations first"),
        "{stderr}"
    );

    let litellm_only = TestDatabase::litellm_only().await;
    set(&mut env, "DATABASE_URL", Some(litellm_only.url()));
    let (ok, stderr) = run_once(&env).await;
    assert!(!ok);
    assert!(stderr.contains("entra-sync-migrate up"), "{stderr}");

    // A LiteLLM schema without a column entra-sync writes: named, with the supported releases.
    let lacking = TestDatabase::new().await;
    lacking
        .conn()
        .execute_unprepared(r#"ALTER TABLE "LiteLLM_TeamTable" DROP COLUMN policies"#)
        .await
        .unwrap();
    set(&mut env, "DATABASE_URL", Some(lacking.url()));
    let (ok, stderr) = run_once(&env).await;
    assert!(!ok);
    assert!(
        stderr.contains("LiteLLM_TeamTable.policies")
            && stderr.contains(migration::litellm_schema::SUPPORTED_LITELLM),
        "{stderr}"
    );

    let mut env = world.worker_env("checks");
    set(&mut env, "REDIS_URL", Some("redis://127.0.0.1:9"));
    let (ok, stderr) = run_once(&env).await;
    assert!(!ok);
    assert!(stderr.contains("REDIS_URL"), "{stderr}");

    let mut env = world.worker_env("checks");
    set(&mut env, "AZURE_CLIENT_SECRET", None);
    let (ok, stderr) = run_once(&env).await;
    assert!(!ok);
    assert!(stderr.contains("AZURE_CLIENT_SECRET"), "{stderr}");

    let mut env = world.worker_env("checks");
    set(
        &mut env,
        "DATABASE_URL",
        Some("postgres://postgres@127.0.0.1:9/nowhere"),
    );
    let (ok, stderr) = run_once(&env).await;
    assert!(!ok);
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
}

#[tokio::test]
async fn absurd_intervals_stop_the_worker_at_start_naming_the_setting() {
    // Checked before anything is connected: nothing here needs to be reachable.
    let base = [
        ("DATABASE_URL", "postgres://postgres@127.0.0.1:9/nowhere"),
        ("REDIS_URL", "redis://127.0.0.1:9"),
        ("AZURE_TENANT_ID", TENANT),
        ("AZURE_CLIENT_ID", "client"),
        ("AZURE_CLIENT_SECRET", "secret"),
    ];
    for name in [
        "ENTRA_SYNC_POLL_SECONDS",
        "ENTRA_SYNC_CLAIM_IDLE_SECONDS",
        "ENTRA_SYNC_RECONCILE_SECONDS",
        "ENTRA_SYNC_SUBSCRIPTION_CHECK_SECONDS",
    ] {
        let mut env: Vec<(String, String)> = base
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        env.push((name.to_owned(), u64::MAX.to_string()));
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_entra-sync-worker"));
        command
            .arg("run")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env);
        let out = tokio::time::timeout(Duration::from_secs(60), command.output())
            .await
            .expect("the worker exits")
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // 1: a clean refusal; a panic would exit with 101.
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(stderr.contains(name), "{name}: {stderr}");
    }
}

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

/// Runs `entra-sync-worker <args>` to its exit with this environment (and nothing else): its
/// exit code and stderr.
async fn worker_exit(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_entra-sync-worker"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("the worker exits")
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_remote_database_without_a_verified_certificate_stops_run_and_sync_before_connecting() {
    // TEST-NET-1, which no server answers for: the refusal comes from the check made before
    // any connection; with the opt-out, the worker goes on to connect, and that fails.
    let url = "postgres://litellm:s3cr3t-Pa55@192.0.2.1:5432/litellm?sslmode=require";
    let env = [
        ("DATABASE_URL", url),
        ("REDIS_URL", "redis://127.0.0.1:9"),
        ("AZURE_TENANT_ID", TENANT),
        ("AZURE_CLIENT_ID", "client"),
        ("AZURE_CLIENT_SECRET", "secret"),
        ("ENTRA_SYNC_METRICS_LISTEN", "127.0.0.1:0"),
    ];
    for args in [&["run"][..], &["sync", "--full"], &["sync"], &["status"]] {
        let (code, stderr) = worker_exit(args, &env).await;
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        for expected in [
            "DATABASE_URL reaches 192.0.2.1 without sslmode=verify-full",
            "a man in the middle could read it",
            "PostgreSQL over TLS",
            "ENTRA_SYNC_ALLOW_UNVERIFIED_TLS=true",
        ] {
            assert!(
                stderr.contains(expected),
                "{args:?}: {expected} not in {stderr}"
            );
        }
        assert!(!stderr.contains("cannot connect"), "{args:?}: {stderr}");
        assert!(!stderr.contains("s3cr3t-Pa55"), "{args:?}: {stderr}");
    }
    let mut allowed = env.to_vec();
    allowed.push(("ENTRA_SYNC_ALLOW_UNVERIFIED_TLS", "true"));
    for args in [&["run"][..], &["sync", "--full"]] {
        let (code, stderr) = worker_exit(args, &allowed).await;
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("cannot connect to DATABASE_URL"),
            "{args:?}: {stderr}"
        );
        assert!(
            !stderr.contains("PostgreSQL over TLS"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("s3cr3t-Pa55"), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn a_short_client_state_or_a_tenant_that_cannot_be_one_stops_the_worker_at_start() {
    // Checked before anything is connected: nothing here needs to be reachable.
    let base = [
        ("DATABASE_URL", "postgres://postgres@127.0.0.1:9/nowhere"),
        ("REDIS_URL", "redis://127.0.0.1:9"),
        ("AZURE_TENANT_ID", TENANT),
        ("AZURE_CLIENT_ID", "client"),
        ("AZURE_CLIENT_SECRET", "secret"),
        ("ENTRA_SYNC_PUBLIC_URL", "https://sync.contoso.com"),
    ];
    let short = "short-s3cr3t";
    let mut env = base.to_vec();
    env.push(("ENTRA_SYNC_CLIENT_STATE", short));
    let (code, stderr) = worker_exit(&["run"], &env).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("ENTRA_SYNC_CLIENT_STATE is shorter than 32 characters"),
        "{stderr}"
    );
    assert!(!stderr.contains(short), "{stderr}");

    for (name, tenant) in [
        ("AZURE_TENANT_ID", "contoso.com/../../common"),
        ("MICROSOFT_TENANT", "tenant?x="),
    ] {
        let mut env: Vec<(&str, &str)> = base
            .iter()
            .copied()
            .filter(|(key, _)| *key != "AZURE_TENANT_ID")
            .collect();
        env.push(("ENTRA_SYNC_CLIENT_STATE", entra_sync_testkit::CLIENT_STATE));
        env.push((name, tenant));
        let (code, stderr) = worker_exit(&["run"], &env).await;
        assert_eq!(code, Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!("{name} {tenant:?} is neither a tenant id")),
            "{stderr}"
        );
    }
}

#[tokio::test]
async fn health_metrics_and_a_graceful_stop_on_sigterm() {
    let mut world = World::new().await;
    let worker = world.spawn_worker_process("graceful");
    assert!(eventually(|| async { world.members(1).await == Some(users(1..=5)) }).await);
    assert!(eventually(|| async { world.first_round_committed().await }).await);

    let base = world.metrics_url(worker).await;
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(format!("{base}{path}")).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);

    // A round that takes a while; SIGTERM arrives in the middle of it: the entry is read and
    // the round has not committed yet.
    world.sim.add_fault(Fault::delay("/groups/delta", 1500, 1));
    world.sim.apply(|t| t.add_member(gid(1), uid(6)));
    assert!(eventually(|| async { world.pending() >= 1 }).await);
    assert_eq!(
        world.members(1).await,
        Some(users(1..=5)),
        "the round committed before SIGTERM: the test proves nothing"
    );
    let status = Command::new("kill")
        .args(["-TERM", &world.process_id(worker).to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = world
        .wait_process(worker, Duration::from_secs(15))
        .await
        .expect("the worker stops");
    assert!(exit.success(), "{exit:?}");
    assert_eq!(
        world.members(1).await,
        Some(users(1..=6)),
        "the round in progress finished"
    );
    assert_eq!(world.pending(), 0, "and was acknowledged");
    assert!(
        world
            .sim
            .requests()
            .iter()
            .any(|r| r.path.ends_with("/groups/delta") && r.status == 200 && r.millis >= 1500),
        "the slow round's delta query was answered, not abandoned"
    );

    // Metrics, from a worker that is running: each series shows what happened, not only its
    // name. (The stream's lag, which shows only while the reader is held back, is shown by
    // `stream_lag_shows_entries_the_reader_is_held_back_from` in e2e.rs.)
    let worker = world.spawn_worker_process("metrics");
    let base = world.metrics_url(worker).await;
    assert!(eventually(|| async { world.first_round_committed().await }).await);
    assert!(
        eventually(|| async {
            metric(
                &scrape_url(&base).await,
                "entra_sync_rounds_total{result=\"ok\"}",
            ) >= Some(1.0)
        })
        .await
    );
    world.sim.add_fault(Fault::delay("/groups/delta", 1500, 2));
    world.sim.apply(|t| t.remove_member(gid(1), uid(6)));
    assert!(eventually(|| async { world.pending() >= 1 }).await);
    world
        .sim
        .apply(|t| t.upsert_group(gid(1), "Platform", None));
    // A rename and a removal in one round are two transactions: wait for both.
    assert!(
        eventually(|| async {
            world.alias(1).await.as_deref() == Some("Platform")
                && world.members(1).await == Some(users(1..=5))
        })
        .await,
        "alias {:?}, members {:?}",
        world.alias(1).await,
        world.members(1).await
    );

    // The stream's pending entries and dead letters: an unreadable entry stays pending between
    // its deliveries, then goes to the dead-letter stream.
    world
        .stream
        .command(&["XADD", world.stream.key(), "*", "v", "99", "garbage", "yes"]);
    assert!(
        eventually(|| async {
            metric(&scrape_url(&base).await, "entra_sync_stream_pending") >= Some(1.0)
        })
        .await,
        "the unreadable entry never showed as pending: {}",
        scrape_url(&base).await
    );
    assert!(eventually(|| async { world.dead.len() == 1 }).await);

    // Once everything is done, the gauges say so, and the counters count what happened.
    let settled = |metrics: &str| {
        metric(metrics, "entra_sync_stream_lag") == Some(0.0)
            && metric(metrics, "entra_sync_stream_pending") == Some(0.0)
            && metric(metrics, "entra_sync_dead_letters_total") == Some(1.0)
    };
    assert!(
        eventually(|| async { settled(&scrape_url(&base).await) }).await,
        "{}",
        scrape_url(&base).await
    );
    let metrics = scrape_url(&base).await;
    for (series, at_least) in [
        (r#"entra_sync_changes_total{kind="member_removed"}"#, 1.0),
        (r#"entra_sync_changes_total{kind="team_renamed"}"#, 1.0),
        (r#"entra_sync_rounds_total{result="ok"}"#, 3.0),
        ("entra_sync_round_seconds_count", 3.0),
        (
            r#"entra_sync_graph_requests_total{endpoint="groups_delta",status="200"}"#,
            3.0,
        ),
        (r#"entra_sync_assignment_polls_total{result="ok"}"#, 1.0),
    ] {
        assert!(
            metric(&metrics, series) >= Some(at_least),
            "{series} is not at least {at_least} in:\n{metrics}"
        );
    }
}
