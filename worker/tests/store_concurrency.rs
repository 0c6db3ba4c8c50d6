//! LiteLLM's locks: concurrent writers of one team serialize instead of losing each other's work.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::time::Duration;

use common::*;
use entra_sync_testkit::TestDatabase;
use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};
use worker::litellm_config::LiteLlmSettings;
use worker::store::{LiteLlmWriter, RemovalMode, Store};

#[tokio::test]
async fn concurrent_additions_to_one_team_lose_no_member() {
    let db = TestDatabase::new().await;
    let first = Store::new(
        db.connect_again().await,
        LiteLlmSettings::default(),
        RemovalMode::Managed,
    );
    let second = Store::new(
        db.connect_again().await,
        LiteLlmSettings::default(),
        RemovalMode::Managed,
    );
    let g = group(1);
    first.ensure_team(&g, "Team", commit()).await.unwrap();

    for round in 0..20u32 {
        let a = users(1000 + round * 20..1000 + round * 20 + 10);
        let b = users(1000 + round * 20 + 10..1000 + round * 20 + 20);
        let (ra, rb) = tokio::join!(
            first.add_members(&g, &a, commit()),
            second.add_members(&g, &b, commit())
        );
        ra.unwrap();
        rb.unwrap();
    }

    let entries = entry_ids(db.conn(), &g).await;
    assert_eq!(entries.len(), 400, "members_with_roles lost entries");
    assert_eq!(membership_rows(db.conn(), &g).await.len(), 400);
}

#[tokio::test]
async fn membership_changes_wait_for_litellm_team_lock() {
    let db = TestDatabase::new().await;
    let store = plain_store(&db);
    let g = group(1);
    store.ensure_team(&g, "Team", commit()).await.unwrap();

    // LiteLLM is in the middle of changing the same team.
    let litellm = db.connect_again().await;
    let litellm_txn = litellm.begin().await.unwrap();
    litellm_txn
        .execute(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_advisory_xact_lock(hashtext($1))",
            [g.to_string().into()],
        ))
        .await
        .unwrap();

    let members = users(1..3);
    let adding = tokio::spawn({
        let store = store.clone();
        let g = g.clone();
        async move { store.add_members(&g, &members, commit()).await }
    });

    // Wait until our transaction is queued behind LiteLLM's advisory lock.
    let mut waiting = 0;
    for _ in 0..200 {
        waiting = scalar_i64(
            db.conn(),
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .await;
        if waiting > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        waiting, 1,
        "add_members did not wait for the team's advisory lock"
    );
    assert!(!adding.is_finished());
    assert!(entry_ids(db.conn(), &g).await.is_empty());

    litellm_txn.commit().await.unwrap();
    adding.await.unwrap().unwrap();
    assert_eq!(entry_ids(db.conn(), &g).await.len(), 2);
}
