//! `entra-sync-worker` given URLs that carry passwords and do not work: it stops (or, for
//! LiteLLM's cache, carries on) with errors that name the setting, and nothing it prints holds
//! a password.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::world;

use std::process::Stdio;
use std::time::Duration;

use entra_sync_testkit::TestDatabase;
use entra_sync_testkit::redis::{TestStream, redis_url};
use world::*;

const PASSWORD: &str = "s3cr3t-Pa55";

/// A worker's environment in which everything checked before the databases is valid, logging
/// as much as there is, for a leak to have every chance to show.
fn env_with(settings: &[(&str, &str)]) -> Vec<(String, String)> {
    [
        ("AZURE_TENANT_ID", "72f988bf-86f1-41af-91ab-2d7cd011db47"),
        ("AZURE_CLIENT_ID", "client"),
        ("AZURE_CLIENT_SECRET", "client-secret"),
        ("ENTRA_SYNC_METRICS_LISTEN", "127.0.0.1:0"),
        ("RUST_LOG", "debug"),
    ]
    .iter()
    .chain(settings)
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

/// Runs `entra-sync-worker run` to its exit: its exit code, and stdout and stderr together.
async fn run_to_exit(env: Vec<(String, String)>) -> (Option<i32>, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_entra-sync-worker"))
        .arg("run")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("the worker exits")
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), printed)
}

#[tokio::test]
async fn a_database_url_that_fails_never_shows_its_password() {
    let server = entra_sync_testkit::server_addr();
    for url in [
        format!("postgres://u:{PASSWORD}@unreachable.invalid:5432/db?sslmode=verify-full"),
        // Refused before connecting: a remote host without verify-full.
        format!("postgres://u:{PASSWORD}@unreachable.invalid:5432/db"),
        // sea-orm alone would quote these whole.
        format!("postgres://u:{PASSWORD}@[bad"),
        format!("redis://u:{PASSWORD}@{server}/db"),
        // A real server refusing the role.
        format!(
            "postgres://entra_sync_nobody:{PASSWORD}@{server}/entra_sync_no_such_database\
             ?password={PASSWORD}&sslmode=disable"
        ),
    ] {
        let (code, printed) = run_to_exit(env_with(&[("DATABASE_URL", &url)])).await;
        assert_eq!(code, Some(1), "{url}: {printed}");
        assert!(printed.contains("DATABASE_URL"), "{url}: {printed}");
        assert!(!printed.contains(PASSWORD), "{url}: {printed}");
    }
}

#[tokio::test]
async fn redis_urls_that_fail_never_show_their_password() {
    let db = TestDatabase::new().await;
    let stream = TestStream::new();
    // The test Redis, which has no such user: it refuses the credentials.
    let mut refusing = url::Url::parse(&redis_url()).unwrap();
    refusing.set_username("entra_sync_nobody").unwrap();
    refusing.set_password(Some(PASSWORD)).unwrap();
    // The worker retries a Redis that does not answer for a few seconds: all at once.
    let runs: Vec<_> = [
        format!("redis://:{PASSWORD}@unreachable.invalid:6379"),
        format!("redis://:{PASSWORD}@[bad"),
        refusing.to_string(),
    ]
    .into_iter()
    .map(|url| {
        let env = env_with(&[
            ("DATABASE_URL", db.url()),
            ("ENTRA_SYNC_STREAM", stream.key()),
            ("REDIS_URL", &url),
        ]);
        (url, tokio::spawn(run_to_exit(env)))
    })
    .collect();
    for (url, run) in runs {
        let (code, printed) = run.await.unwrap();
        assert_eq!(code, Some(1), "{url}: {printed}");
        assert!(printed.contains("REDIS_URL"), "{url}: {printed}");
        assert!(!printed.contains(PASSWORD), "{url}: {printed}");
    }
    // LiteLLM's Redis is checked once the stream's Redis answered.
    let (code, printed) = run_to_exit(env_with(&[
        ("DATABASE_URL", db.url()),
        ("ENTRA_SYNC_STREAM", stream.key()),
        ("REDIS_URL", &redis_url()),
        (
            "ENTRA_SYNC_LITELLM_REDIS_URL",
            &format!("redis://:{PASSWORD}@[bad"),
        ),
    ]))
    .await;
    assert_eq!(code, Some(1), "{printed}");
    assert!(
        printed.contains("ENTRA_SYNC_LITELLM_REDIS_URL"),
        "{printed}"
    );
    assert!(!printed.contains(PASSWORD), "{printed}");
}

/// `entra_sync_litellm_cache_evictions_total{result="failed"}` in a scrape, if there.
fn failed_evictions(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix(r#"entra_sync_litellm_cache_evictions_total{result="failed"} "#)
        })
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn an_unreachable_litellm_redis_costs_evictions_never_its_password() {
    let world = World::new().await;
    let cache_url = format!("redis://:{PASSWORD}@unreachable.invalid:6379");
    let mut env = world.worker_env("secrets");
    env.retain(|(k, _)| k != "RUST_LOG");
    env.extend(
        [
            ("RUST_LOG", "debug"),
            ("ENTRA_SYNC_LITELLM_REDIS_URL", cache_url.as_str()),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    // Files, not pipes: a chatty worker must never block on a full pipe nobody reads yet.
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "secrets-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let (stdout, stderr) = (dir.join("stdout"), dir.join("stderr"));
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_entra-sync-worker"))
        .arg("run")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .stdout(Stdio::from(std::fs::File::create(&stdout).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&stderr).unwrap()))
        .kill_on_drop(true)
        .spawn()
        .expect("entra-sync-worker starts");

    // It binds a port of the system's choosing (ENTRA_SYNC_METRICS_LISTEN is 127.0.0.1:0) and
    // says which.
    let listen = entra_sync_testkit::listen::announced_in_file(
        "entra-sync-worker",
        &stderr,
        Duration::from_secs(30),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    // The first poll creates group 1's team; evicting it from the unreachable cache fails.
    let base = format!("http://{listen}");
    let failed = eventually(|| async { failed_evictions(&scrape_url(&base).await) > 0 }).await;
    assert_eq!(world.members(1).await, Some(users(1..=5)));
    worker.start_kill().unwrap();
    worker.wait().await.unwrap();
    let printed =
        std::fs::read_to_string(&stdout).unwrap() + &std::fs::read_to_string(&stderr).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(failed, "no eviction failed: {printed}");
    assert!(!printed.contains(PASSWORD), "{printed}");
}
