//! LiteLLM's locks: concurrent writers of one team serialize instead of losing each other's work.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::time::Duration;

use common::*;
use entra_sync_testkit::TestDatabase;
use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};
use worker::litellm_config::LiteLlmSettings;
use worker::store::{LiteLlmWriter, RemovalMode, Store};

/// Two stores on connections of their own, as two writers have them.
async fn two_stores(db: &TestDatabase) -> (Store, Store) {
    let store = || async {
        Store::new(
            db.connect_again().await,
            LiteLlmSettings::default(),
            RemovalMode::Managed,
        )
    };
    (store().await, store().await)
}

#[tokio::test]
async fn concurrent_additions_to_one_team_lose_no_member() {
    let db = TestDatabase::new().await;
    let (first, second) = two_stores(&db).await;
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

fn batch<'a>(
    groups: &'a [entity::GroupId],
    members: &'a [worker::directory::EntraUser],
) -> Vec<worker::store::TeamSync<'a>> {
    groups
        .iter()
        .map(|group| worker::store::TeamSync {
            group,
            display_name: Some("Team"),
            members,
            unreadable: &[],
        })
        .collect()
}

/// Writes a batch, trying again after a `ConcurrentChange` as the syncer does.
async fn write_batch(store: &Store, teams: &[worker::store::TeamSync<'_>]) -> worker::Result<()> {
    for _ in 0..10 {
        match store.sync_teams(teams, commit()).await {
            Err(worker::Error::ConcurrentChange(_)) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            outcome => return outcome.map(|_| ()),
        }
    }
    panic!("ten concurrent changes in a row");
}

/// Two batches written at once, as a first sync's two writers write them: different teams, the
/// same users (new ones among them, which both plan to create). Neither deadlocks; one may have to
/// try again (`ConcurrentChange`, as the syncer's retry does), and then every user is in every
/// team of both batches, created once.
#[tokio::test]
async fn two_batches_sharing_users_neither_deadlock_nor_lose_a_membership() {
    let db = TestDatabase::new().await;
    let (first, second) = two_stores(&db).await;
    // 3,000 users new to both batches, which name them in opposite orders (users the two share
    // and both write as existing rows would make one wait for the other's commit at its lock).
    let members = users(1..3001);
    let mut reversed = members.clone();
    reversed.reverse();
    let (groups_a, groups_b): (Vec<_>, Vec<_>) =
        ((1..6).map(group).collect(), (6..11).map(group).collect());
    let (a, b) = (batch(&groups_a, &members), batch(&groups_b, &reversed));
    let (ra, rb) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(write_batch(&first, &a), write_batch(&second, &b))
    })
    .await
    .expect("the two batches waited on each other for a minute");
    ra.unwrap();
    rb.unwrap();

    for group in groups_a.iter().chain(&groups_b) {
        assert_eq!(entry_ids(db.conn(), group).await.len(), 3000, "{group}");
        assert_eq!(
            membership_rows(db.conn(), group).await.len(),
            3000,
            "{group}"
        );
    }
    assert_eq!(
        scalar_i64(
            db.conn(),
            r#"SELECT count(*) FROM "LiteLLM_UserTable" WHERE cardinality(teams) >= 10"#
        )
        .await,
        3000,
        "every user in the ten teams, each user once"
    );
}
