//! Removal revokes access: a removed member's keys for the team, a departed user's keys, and
//! keys that outlived a removal, against LiteLLM's real schema.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use crate::common;

use common::*;
use entra_sync_testkit::TestDatabase;
use sea_orm::ConnectionTrait;
use worker::store::{BlockReason, Change, DepartedUserKeys, KeyPolicy, RemovedMemberKeys, Store};

const EARLIER: &str = "2026-11-28 11:00:00";
const LATER: &str = "2026-11-28 13:00:00";

fn keys_store(db: &TestDatabase, removed_member: RemovedMemberKeys) -> Store {
    plain_store(db).with_key_policy(KeyPolicy {
        removed_member,
        departed_user: DepartedUserKeys::Block,
    })
}

/// Team 1 with users 1 and 2, team 2 with user 1; keys: user 1 has two for team 1, one for team 2
/// and a personal one; user 2 has one for team 1.
async fn teams_with_keys(store: &Store, db: &TestDatabase) {
    let (g1, g2) = (group(1), group(2));
    store.ensure_team(&g1, "Research", commit()).await.unwrap();
    store.ensure_team(&g2, "Platform", commit()).await.unwrap();
    store
        .add_members(&g1, &users(1..3), commit())
        .await
        .unwrap();
    store
        .add_members(&g2, &users(1..2), commit())
        .await
        .unwrap();
    let (u1, u2) = (user_id(1).to_string(), user_id(2).to_string());
    let (t1, t2) = (g1.to_string(), g2.to_string());
    insert_key(db.conn(), "k1-team", &u1, Some(&t1), None, EARLIER).await;
    insert_key(db.conn(), "k1-team-b", &u1, Some(&t1), Some(false), EARLIER).await;
    insert_key(db.conn(), "k1-other-team", &u1, Some(&t2), None, EARLIER).await;
    insert_key(db.conn(), "k1-personal", &u1, None, None, EARLIER).await;
    insert_key(db.conn(), "k2-team", &u2, Some(&t1), None, EARLIER).await;
}

/// The keys are as `insert_key` made them.
async fn assert_untouched(db: &TestDatabase, tokens: &[&str]) {
    for token in tokens {
        assert_eq!(
            key_state(db.conn(), token).await,
            Some((None, serde_json::json!({"note": "kept"}))),
            "{token}"
        );
    }
}

fn key_changes(changes: &[Change]) -> Vec<Change> {
    let mut keys: Vec<Change> = changes
        .iter()
        .filter(|c| c.kind().starts_with("key_"))
        .cloned()
        .collect();
    keys.sort_by_key(|c| serde_json::to_string(c).unwrap());
    keys
}

fn deleted(token: &str, user: u32, team: u32) -> Change {
    Change::KeyDeleted {
        token: token.into(),
        user_id: user_id(user).to_string(),
        team_id: Some(group(team).to_string()),
        key_alias: Some(format!("alias-{token}")),
    }
}

fn blocked(token: &str, user: u32, team: Option<u32>, reason: BlockReason) -> Change {
    Change::KeyBlocked {
        token: token.into(),
        user_id: user_id(user).to_string(),
        team_id: team.map(|t| group(t).to_string()),
        reason,
    }
}

fn unblocked(token: &str, user: u32, team: Option<u32>, reason: BlockReason) -> Change {
    Change::KeyUnblocked {
        token: token.into(),
        user_id: user_id(user).to_string(),
        team_id: team.map(|t| group(t).to_string()),
        reason,
    }
}

#[tokio::test]
async fn a_removed_members_team_keys_are_copied_into_the_deleted_table_and_deleted() {
    let db = TestDatabase::new().await;
    let store = keys_store(&db, RemovedMemberKeys::Delete);
    teams_with_keys(&store, &db).await;

    let changes = store
        .remove_members(&group(1), &[user_id(1)], commit())
        .await
        .unwrap();

    assert_eq!(
        key_changes(&changes),
        [deleted("k1-team", 1, 1), deleted("k1-team-b", 1, 1)]
    );
    assert_eq!(key_state(db.conn(), "k1-team").await, None);
    assert_eq!(key_state(db.conn(), "k1-team-b").await, None);
    // The personal key, the key for another team and the other member's key stay as they were.
    assert_untouched(&db, &["k1-other-team", "k1-personal", "k2-team"]).await;
    // The copy is the key as it was, marked as deleted by entra-sync.
    let copy = db
        .conn()
        .query_one(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            r#"SELECT jsonb_build_object('user_id', user_id, 'team_id', team_id,
                 'key_alias', key_alias, 'spend', spend, 'models', models, 'metadata', metadata,
                 'created_at', created_at, 'deleted_at', deleted_at, 'deleted_by', deleted_by,
                 'has_id', id IS NOT NULL)::text
               FROM "LiteLLM_DeletedVerificationToken" WHERE token = 'k1-team'"#,
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index::<String>(0)
        .unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&copy).unwrap(),
        serde_json::json!({
            "user_id": user_id(1).to_string(), "team_id": group(1).to_string(),
            "key_alias": "alias-k1-team", "spend": 1.25, "models": ["gpt-4o"],
            "metadata": {"note": "kept"}, "created_at": "2026-11-28T11:00:00",
            "deleted_at": "2026-11-28T12:00:00", "deleted_by": "entra-sync", "has_id": true
        })
    );
    assert_eq!(
        scalar_i64(
            db.conn(),
            r#"SELECT count(*) FROM "LiteLLM_DeletedVerificationToken""#
        )
        .await,
        2
    );
    // Each deletion is in the audit log with its team and user.
    assert_eq!(
        scalar_i64(
            db.conn(),
            &format!(
                "SELECT count(*) FROM entra_sync_audit_log WHERE kind = 'key_deleted' \
                 AND team_id = '{}' AND user_id = '{}'",
                group(1),
                user_id(1)
            )
        )
        .await,
        2
    );
    // Nothing left to do: a second removal changes nothing.
    assert!(
        store
            .remove_members(&group(1), &[user_id(1)], commit())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn block_mode_blocks_a_removed_members_keys_and_a_rejoin_unblocks_only_those() {
    let db = TestDatabase::new().await;
    let store = keys_store(&db, RemovedMemberKeys::Block);
    teams_with_keys(&store, &db).await;
    // An admin blocked one of the team keys by hand.
    execute(
        db.conn(),
        r#"UPDATE "LiteLLM_VerificationToken" SET blocked = true WHERE token = 'k1-team-b'"#,
    )
    .await;

    let changes = store
        .remove_members(&group(1), &[user_id(1)], commit())
        .await
        .unwrap();

    assert_eq!(
        key_changes(&changes),
        [blocked("k1-team", 1, Some(1), BlockReason::MemberRemoved)]
    );
    assert_eq!(
        key_state(db.conn(), "k1-team").await,
        Some((
            Some(true),
            serde_json::json!({"note": "kept", "entra_sync_blocked": "member_removed"})
        ))
    );
    let hand_blocked = Some((Some(true), serde_json::json!({"note": "kept"})));
    assert_eq!(key_state(db.conn(), "k1-team-b").await, hand_blocked);
    assert_untouched(&db, &["k1-other-team", "k1-personal", "k2-team"]).await;

    // The user rejoins the team: the key entra-sync blocked comes back, the admin's does not.
    let changes = store
        .add_members(&group(1), &users(1..2), commit())
        .await
        .unwrap();
    assert_eq!(
        key_changes(&changes),
        [unblocked("k1-team", 1, Some(1), BlockReason::MemberRemoved)]
    );
    assert_eq!(
        key_state(db.conn(), "k1-team").await,
        Some((Some(false), serde_json::json!({"note": "kept"})))
    );
    assert_eq!(key_state(db.conn(), "k1-team-b").await, hand_blocked);
}

#[tokio::test]
async fn keep_mode_leaves_a_removed_members_keys_alone() {
    let db = TestDatabase::new().await;
    let store = keys_store(&db, RemovedMemberKeys::Keep);
    teams_with_keys(&store, &db).await;
    let before = key_snapshot(db.conn()).await;

    let changes = store
        .remove_members(&group(1), &[user_id(1)], commit())
        .await
        .unwrap();

    assert!(key_changes(&changes).is_empty(), "{changes:?}");
    assert!(
        changes
            .iter()
            .any(|c| matches!(c, Change::MemberRemoved { .. }))
    );
    assert_eq!(key_snapshot(db.conn()).await, before);
}

#[tokio::test]
async fn the_unassigned_policy_revokes_the_keys_of_every_member_it_removes() {
    let db = TestDatabase::new().await;
    let store = keys_store(&db, RemovedMemberKeys::Delete);
    teams_with_keys(&store, &db).await;

    let changes = store
        .remove_managed_members(&group(1), commit())
        .await
        .unwrap();

    assert_eq!(
        key_changes(&changes),
        [
            deleted("k1-team", 1, 1),
            deleted("k1-team-b", 1, 1),
            deleted("k2-team", 2, 1)
        ]
    );
    assert!(key_state(db.conn(), "k1-other-team").await.is_some());
    assert!(key_state(db.conn(), "k1-personal").await.is_some());
}

#[tokio::test]
async fn a_dry_run_lists_the_key_changes_and_writes_nothing() {
    let db = TestDatabase::new().await;
    let store = keys_store(&db, RemovedMemberKeys::Delete);
    teams_with_keys(&store, &db).await;
    let keys_before = key_snapshot(db.conn()).await;
    let before = snapshot(db.conn(), true).await;

    let planned = store
        .replace_members(&group(1), &users(2..3), dry_run())
        .await
        .unwrap();
    let departure = store
        .depart_user(&user_id(2), Some(&[group(1)]), dry_run())
        .await
        .unwrap();

    assert_eq!(key_snapshot(db.conn()).await, keys_before);
    assert_eq!(snapshot(db.conn(), true).await, before);
    assert_eq!(
        key_changes(&planned),
        [deleted("k1-team", 1, 1), deleted("k1-team-b", 1, 1)]
    );
    // The departure plans the team key's deletion once, not also its blocking.
    assert_eq!(key_changes(&departure), [deleted("k2-team", 2, 1)]);

    // The real run makes exactly what was planned.
    let made = store
        .replace_members(&group(1), &users(2..3), commit())
        .await
        .unwrap();
    assert_eq!(made, planned);
}

#[tokio::test]
async fn a_departed_user_loses_team_keys_then_the_rest_are_blocked_until_re_enabled() {
    let db = TestDatabase::new().await;
    let store = keys_store(&db, RemovedMemberKeys::Delete);
    teams_with_keys(&store, &db).await;
    // An admin blocked one of the personal keys by hand.
    insert_key(
        db.conn(),
        "k1-hand",
        user_id(1).as_ref(),
        None,
        Some(true),
        EARLIER,
    )
    .await;

    let changes = store
        .depart_user(&user_id(1), Some(&[group(1), group(2)]), commit())
        .await
        .unwrap();

    // The memberships go first, with their keys; the one left, the personal key, is blocked.
    assert_eq!(
        key_changes(&changes),
        [
            blocked("k1-personal", 1, None, BlockReason::UserDeparted),
            deleted("k1-other-team", 1, 2),
            deleted("k1-team", 1, 1),
            deleted("k1-team-b", 1, 1),
        ]
    );
    assert_eq!(
        key_state(db.conn(), "k1-personal").await,
        Some((
            Some(true),
            serde_json::json!({"note": "kept", "entra_sync_blocked": "user_departed"})
        ))
    );
    let hand_blocked = Some((Some(true), serde_json::json!({"note": "kept"})));
    assert_eq!(key_state(db.conn(), "k1-hand").await, hand_blocked);
    assert!(key_state(db.conn(), "k2-team").await.is_some());
    assert!(
        store
            .depart_user(&user_id(1), Some(&[group(1), group(2)]), commit())
            .await
            .unwrap()
            .is_empty()
    );

    // Enabled again: the key entra-sync blocked comes back; the admin's stays blocked, and
    // deleted keys stay deleted (as in LiteLLM).
    let changes = store.update_user(&entra_user(1), commit()).await.unwrap();
    assert_eq!(
        key_changes(&changes),
        [unblocked("k1-personal", 1, None, BlockReason::UserDeparted)]
    );
    assert_eq!(
        key_state(db.conn(), "k1-personal").await,
        Some((Some(false), serde_json::json!({"note": "kept"})))
    );
    assert_eq!(key_state(db.conn(), "k1-hand").await, hand_blocked);
    assert_eq!(key_state(db.conn(), "k1-team").await, None);
}

#[tokio::test]
async fn in_block_mode_re_enabling_a_user_does_not_unblock_keys_of_teams_they_left() {
    let db = TestDatabase::new().await;
    let store = keys_store(&db, RemovedMemberKeys::Block);
    teams_with_keys(&store, &db).await;

    // Departed while still a member of team 2 (kept by the membership policy).
    store
        .depart_user(&user_id(1), None, commit())
        .await
        .unwrap();
    // Then removed from team 2 while departed: that key is now blocked for the removal.
    let changes = store
        .remove_members(&group(2), &[user_id(1)], commit())
        .await
        .unwrap();
    assert_eq!(
        key_changes(&changes),
        [blocked(
            "k1-other-team",
            1,
            Some(2),
            BlockReason::MemberRemoved
        )]
    );

    let changes = store.update_user(&entra_user(1), commit()).await.unwrap();
    let mut back: Vec<String> = key_changes(&changes)
        .iter()
        .map(|c| match c {
            Change::KeyUnblocked { token, .. } => token.clone(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    back.sort();
    assert_eq!(back, ["k1-personal", "k1-team", "k1-team-b"]);
    assert_eq!(
        key_state(db.conn(), "k1-other-team").await.unwrap().0,
        Some(true)
    );
}

#[tokio::test]
async fn departed_user_keys_keep_leaves_the_keys_alone() {
    let db = TestDatabase::new().await;
    let store = plain_store(&db).with_key_policy(KeyPolicy {
        removed_member: RemovedMemberKeys::Keep,
        departed_user: DepartedUserKeys::Keep,
    });
    teams_with_keys(&store, &db).await;
    let before = key_snapshot(db.conn()).await;
    let changes = store
        .depart_user(&user_id(1), Some(&[group(1)]), commit())
        .await
        .unwrap();
    assert!(key_changes(&changes).is_empty());
    assert_eq!(key_snapshot(db.conn()).await, before);
}

#[tokio::test]
async fn keys_that_outlived_a_removal_are_revoked_and_later_keys_are_not() {
    let db = TestDatabase::new().await;
    // An earlier entra-sync removed user 1 and kept the keys, as versions before this one did.
    let earlier = keys_store(&db, RemovedMemberKeys::Keep);
    teams_with_keys(&earlier, &db).await;
    earlier
        .remove_members(&group(1), &[user_id(1)], commit())
        .await
        .unwrap();
    // Created after the removal (by an admin, say): not a survivor.
    insert_key(
        db.conn(),
        "k1-after",
        user_id(1).as_ref(),
        Some(group(1).as_ref()),
        None,
        LATER,
    )
    .await;
    // User 2 was removed and added back: a member again, their key is theirs.
    earlier
        .remove_members(&group(1), &[user_id(2)], commit())
        .await
        .unwrap();
    earlier
        .add_members(&group(1), &users(2..3), commit())
        .await
        .unwrap();

    let store = keys_store(&db, RemovedMemberKeys::Delete);
    let before = key_snapshot(db.conn()).await;
    let planned = store.revoke_surviving_keys(dry_run()).await.unwrap();
    assert_eq!(
        key_snapshot(db.conn()).await,
        before,
        "a dry run writes nothing"
    );
    assert_eq!(
        key_changes(&planned),
        [deleted("k1-team", 1, 1), deleted("k1-team-b", 1, 1)]
    );

    let made = store.revoke_surviving_keys(commit()).await.unwrap();
    assert_eq!(made, planned);
    assert_eq!(key_state(db.conn(), "k1-team").await, None);
    assert!(key_state(db.conn(), "k1-after").await.is_some());
    assert!(key_state(db.conn(), "k2-team").await.is_some());
    assert!(key_state(db.conn(), "k1-other-team").await.is_some());
    assert!(
        store
            .revoke_surviving_keys(commit())
            .await
            .unwrap()
            .is_empty()
    );

    // In block mode the survivors are blocked instead, and once only.
    let db = TestDatabase::new().await;
    let earlier = keys_store(&db, RemovedMemberKeys::Keep);
    teams_with_keys(&earlier, &db).await;
    earlier
        .remove_members(&group(1), &[user_id(1)], commit())
        .await
        .unwrap();
    let store = keys_store(&db, RemovedMemberKeys::Block);
    assert_eq!(
        key_changes(&store.revoke_surviving_keys(commit()).await.unwrap()),
        [
            blocked("k1-team", 1, Some(1), BlockReason::MemberRemoved),
            blocked("k1-team-b", 1, Some(1), BlockReason::MemberRemoved)
        ]
    );
    assert!(
        store
            .revoke_surviving_keys(commit())
            .await
            .unwrap()
            .is_empty()
    );
}
