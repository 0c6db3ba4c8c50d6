//! The harness itself: a clone per test, and one clear sentence when PostgreSQL is missing.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use entra_sync_testkit::TestDatabase;
use sea_orm::{ConnectionTrait, DbBackend, Statement};

async fn count(db: &TestDatabase, sql: &str) -> i64 {
    db.conn()
        .query_one(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index(0)
        .unwrap()
}

#[tokio::test]
async fn each_test_gets_its_own_copy_of_litellm_schema() {
    let first = TestDatabase::new().await;
    let second = TestDatabase::litellm_only().await;
    assert_ne!(first.name(), second.name());
    for db in [&first, &second] {
        let litellm_tables = count(
            db,
            "SELECT count(*) FROM information_schema.tables WHERE table_name LIKE 'LiteLLM_%'",
        )
        .await;
        assert!(litellm_tables > 50, "{litellm_tables} LiteLLM tables");
    }
    first
        .conn()
        .execute_unprepared(r#"INSERT INTO "LiteLLM_TeamTable" (team_id) VALUES ('only-here')"#)
        .await
        .unwrap();
    assert_eq!(
        count(&second, r#"SELECT count(*) FROM "LiteLLM_TeamTable""#).await,
        0
    );
    assert_eq!(
        count(
            &second,
            "SELECT count(*) FROM information_schema.tables WHERE table_name LIKE 'entra_sync_%'"
        )
        .await,
        0
    );
    assert_eq!(count(&first, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'entra_sync_audit_log'").await, 1);

    let name = first.name().to_owned();
    drop(first);
    let left = count(
        &second,
        &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'"),
    )
    .await;
    assert_eq!(left, 0, "a dropped TestDatabase left its database behind");
}

/// Runs in a child process pointed at a port where nothing listens.
#[tokio::test]
async fn unreachable_postgres_is_one_clear_sentence() {
    if std::env::var_os("TESTKIT_CHILD").is_some() {
        TestDatabase::new().await;
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "harness::unreachable_postgres_is_one_clear_sentence",
            "--nocapture",
        ])
        .env("TESTKIT_CHILD", "1")
        .env(
            "ENTRA_SYNC_TEST_POSTGRES",
            "postgres://postgres@127.0.0.1:9",
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("PostgreSQL is not reachable at postgres://postgres@127.0.0.1:9"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_template_has_what_litellms_release_adds_to_its_published_migrations() {
    let db = TestDatabase::litellm_only().await;
    // Tables and columns litellm 1.110.2's schema.prisma has and litellm-proxy-extras 0.4.110's
    // migrations lack: its proxy writes them.
    let delivery = count(
        &db,
        r#"SELECT count(*) FROM information_schema.columns WHERE table_name = 'LiteLLM_SpendLogDelivery'"#,
    )
    .await;
    assert_eq!(delivery, 10, "LiteLLM_SpendLogDelivery's columns");
    let added = count(
        &db,
        r#"SELECT count(*) FROM information_schema.columns WHERE table_name = 'LiteLLM_ClaudeCodePluginTable' AND column_name = 'anonymous_download_count'"#,
    )
    .await;
    assert_eq!(added, 1);
}
