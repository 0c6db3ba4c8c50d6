//! LiteLLM's locks: concurrent writers of one team serialize instead of losing each other's work.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use crate::common;

use std::time::Duration;

use common::*;
use entra_sync_testkit::TestDatabase;
use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};
use worker::litellm_config::LiteLlmSettings;
use worker::store::{RemovalMode, Store};

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
async fn write_batch(
    store: &Store,
    teams: &[worker::store::TeamSync<'_>],
) -> worker::store::Result<()> {
    for _ in 0..10 {
        match store.sync_teams(teams, commit()).await {
            Err(worker::store::Error::ConcurrentChange(_)) => {
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

/// Waits up to a minute until `check` holds; returns whether it did.
async fn within_a_minute<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sessions of the test database waiting for a lock (a row's, an advisory one, a table's).
async fn waiting_for_a_lock(db: &TestDatabase) -> i64 {
    scalar_i64(
        db.conn(),
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .await
}

/// Waits until `count` sessions wait for a lock.
async fn until_waiting(db: &TestDatabase, count: i64, what: &str) {
    assert!(
        within_a_minute(|| async { waiting_for_a_lock(db).await >= count }).await,
        "{what}"
    );
}

/// A transaction of a third session holding one lock until it ends, to stop a writer at a
/// chosen point.
async fn hold(db: &TestDatabase, sql: &str) -> sea_orm::DatabaseTransaction {
    let holder = db.connect_again().await;
    let txn = holder.begin().await.unwrap();
    txn.execute_unprepared(sql).await.unwrap();
    txn
}

/// Which of the two writers a test stops first.
#[derive(Clone, Copy, Debug)]
enum First {
    Removal,
    Departure,
}

/// A member removal with keys (from team 1) and the same user's departure (leaving team 2, their
/// other keys blocked) run at once, each forced to wait where the other would wait for it had
/// they taken their locks in different orders: the removal first, stopped at the key of team 1
/// (which a third session holds), then the departure; or the departure first, stopped at the
/// user's row (which the third session holds), then the removal. Both then finish (no deadlock,
/// SQLSTATE 40P01), and the rows are those of one after the other.
async fn removal_and_departure_meet(policy: worker::store::RemovedMemberKeys, first: First) {
    use worker::store::{DepartedUserKeys, KeyPolicy};
    let db = TestDatabase::new().await;
    let policy = KeyPolicy {
        removed_member: policy,
        departed_user: DepartedUserKeys::Block,
    };
    let (removing, departing) = two_stores(&db).await;
    let (removing, departing) = (
        removing.with_key_policy(policy),
        departing.with_key_policy(policy),
    );
    let (team, other) = (group(1), group(2));
    let user = user_id(1);
    for g in [&team, &other] {
        removing.ensure_team(g, "Team", commit()).await.unwrap();
        removing
            .add_members(g, &[entra_user(1)], commit())
            .await
            .unwrap();
    }
    let created = "2026-11-01 00:00:00";
    let (team_id, other_id) = (team.to_string(), other.to_string());
    insert_key(
        db.conn(),
        "k-team",
        user.as_str(),
        Some(&team_id),
        None,
        created,
    )
    .await;
    insert_key(
        db.conn(),
        "k-other",
        user.as_str(),
        Some(&other_id),
        None,
        created,
    )
    .await;
    insert_key(db.conn(), "k-own", user.as_str(), None, None, created).await;

    let removal = || {
        let (store, team, user) = (removing.clone(), team.clone(), user.clone());
        tokio::spawn(async move { store.remove_members(&team, &[user], commit()).await })
    };
    let departure = || {
        let (store, other, user) = (departing.clone(), other.clone(), user.clone());
        tokio::spawn(async move { store.depart_user(&user, Some(&[other]), commit()).await })
    };
    let (holder, removed, departed) = match first {
        First::Removal => {
            let holder = hold(
                &db,
                r#"SELECT 1 FROM "LiteLLM_VerificationToken" WHERE token = 'k-team' FOR UPDATE"#,
            )
            .await;
            let removed = removal();
            until_waiting(&db, 1, "the removal does not wait for the team's key").await;
            let departed = departure();
            until_waiting(&db, 2, "the departure does not wait").await;
            (holder, removed, departed)
        }
        First::Departure => {
            let holder = hold(
                &db,
                &format!(
                    r#"SELECT 1 FROM "LiteLLM_UserTable" WHERE user_id = '{user}' FOR UPDATE"#
                ),
            )
            .await;
            let departed = departure();
            until_waiting(&db, 1, "the departure does not wait for the user's row").await;
            let removed = removal();
            until_waiting(&db, 2, "the removal does not wait").await;
            (holder, removed, departed)
        }
    };
    holder.commit().await.unwrap();
    let (removed, departed) = (removed.await.unwrap(), departed.await.unwrap());
    // A deadlock (SQLSTATE 40P01) fails one of them.
    let removed = removed.unwrap_or_else(|e| panic!("the removal failed ({first:?} first): {e}"));
    let departed =
        departed.unwrap_or_else(|e| panic!("the departure failed ({first:?} first): {e}"));

    let removed_from = |changes: &[worker::store::Change], g: &entity::GroupId| {
        changes.iter().any(|change| {
            matches!(change, worker::store::Change::MemberRemoved { team_id, .. }
                if *team_id == g.to_string())
        })
    };
    assert!(removed_from(&removed, &team), "{removed:?}");
    assert!(removed_from(&departed, &other), "{departed:?}");
    for g in [&team, &other] {
        assert!(entry_ids(db.conn(), g).await.is_empty(), "{g}");
        assert!(membership_rows(db.conn(), g).await.is_empty(), "{g}");
    }
    assert_eq!(
        user_row(db.conn(), user.as_str()).await.teams,
        Some(Vec::<String>::new())
    );
    let blocked_for = |reason: &str| {
        Some((
            Some(true),
            serde_json::json!({"note": "kept", "entra_sync_blocked": reason}),
        ))
    };
    match policy.removed_member {
        worker::store::RemovedMemberKeys::Delete => {
            assert_eq!(key_state(db.conn(), "k-team").await, None);
            assert_eq!(key_state(db.conn(), "k-other").await, None);
            assert_eq!(
                scalar_i64(
                    db.conn(),
                    r#"SELECT count(*) FROM "LiteLLM_DeletedVerificationToken""#
                )
                .await,
                2
            );
        }
        _ => {
            assert_eq!(
                key_state(db.conn(), "k-team").await,
                blocked_for("member_removed")
            );
            assert_eq!(
                key_state(db.conn(), "k-other").await,
                blocked_for("member_removed")
            );
        }
    }
    assert_eq!(
        key_state(db.conn(), "k-own").await,
        blocked_for("user_departed")
    );
}

#[tokio::test]
async fn a_removal_deleting_keys_and_the_same_users_departure_neither_deadlock_nor_lose_a_change() {
    use worker::store::RemovedMemberKeys::Delete;
    removal_and_departure_meet(Delete, First::Removal).await;
    removal_and_departure_meet(Delete, First::Departure).await;
}

#[tokio::test]
async fn a_removal_blocking_keys_and_the_same_users_departure_neither_deadlock_nor_lose_a_change() {
    use worker::store::RemovedMemberKeys::Block;
    removal_and_departure_meet(Block, First::Removal).await;
    removal_and_departure_meet(Block, First::Departure).await;
}

/// Two group ids whose team locks are one (`hashtext` collides), the first before the second,
/// and a third whose id lies between them: found among a few hundred thousand ids (about a second).
async fn colliding_groups(
    db: &TestDatabase,
) -> (entity::GroupId, entity::GroupId, entity::GroupId) {
    let ids = scalar_text(
        db.conn(),
        "WITH ids AS (
           SELECT n, hashtext('9a000000-0000-4000-8000-' || lpad(n::text, 12, '0')) AS lock_key
           FROM generate_series(1, 400000) AS n),
         pair AS (
           SELECT min(n) AS low, max(n) AS high, lock_key FROM ids
           GROUP BY lock_key HAVING count(*) = 2 ORDER BY max(n) - min(n) DESC LIMIT 1)
         SELECT pair.low || ' ' || pair.high || ' ' || (
           SELECT min(ids.n) FROM ids
           WHERE ids.n > pair.low AND ids.n < pair.high AND ids.lock_key <> pair.lock_key)
         FROM pair",
    )
    .await;
    let ids: Vec<u32> = ids.split(' ').map(|n| n.parse().unwrap()).collect();
    (group(ids[0]), group(ids[1]), group(ids[2]))
}

/// Team locks are taken in the order of their lock keys, not of team ids. With two ids sharing
/// a lock (a `hashtext` collision) and a third between them by id, one writer locking the first
/// and the third, and another the second and the third, would take the shared lock first and
/// last by id order: the first writer is stopped at the shared lock (held by a third session),
/// the second takes what it can and waits; once the shared lock is free, both finish.
#[tokio::test]
async fn teams_whose_lock_keys_collide_are_locked_in_one_order() {
    let db = TestDatabase::new().await;
    let (low, high, between) = colliding_groups(&db).await;
    let (first, second) = two_stores(&db).await;
    for g in [&low, &high, &between] {
        first.ensure_team(g, "Team", commit()).await.unwrap();
    }
    let holder = hold(
        &db,
        &format!("SELECT pg_advisory_xact_lock(hashtext('{low}'))"),
    )
    .await;
    let sync = |store: &Store, groups: [entity::GroupId; 2]| {
        let store = store.clone();
        tokio::spawn(async move {
            let teams: Vec<worker::store::TeamSync> = groups
                .iter()
                .map(|group| worker::store::TeamSync {
                    group,
                    display_name: Some("Renamed"),
                    members: &[],
                    unreadable: &[],
                })
                .collect();
            store.sync_teams(&teams, commit()).await
        })
    };
    let one = sync(&first, [low.clone(), between.clone()]);
    until_waiting(&db, 1, "the first writer does not wait for the shared lock").await;
    let two = sync(&second, [high.clone(), between.clone()]);
    until_waiting(&db, 2, "the second writer does not wait").await;
    holder.commit().await.unwrap();

    // A deadlock (SQLSTATE 40P01) fails one of them.
    one.await.unwrap().expect("the first writer failed");
    two.await.unwrap().expect("the second writer failed");
    for g in [&low, &high, &between] {
        assert_eq!(
            team_row(db.conn(), g).await.team_alias.as_deref(),
            Some("Renamed")
        );
    }
}
