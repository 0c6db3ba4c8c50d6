//! The store against LiteLLM's real schema: every operation, its effects in both directions,
//! idempotence, dry runs, the audit log, and LiteLLM's locks.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use crate::common;

use common::*;
use entra_sync_testkit::TestDatabase;
use worker::directory::EntraUser;
use worker::roles::LiteLlmRole;
use worker::store::{Change, RemovalMode};

const TEAM_DEFAULTS: &str = r#"
litellm_settings:
  default_team_params:
    max_budget: 100
    budget_duration: 30d
    models: ["gpt-4o", "gpt-4o-mini"]
    tpm_limit: 5000
    rpm_limit: 50
    team_member_permissions: ["/key/generate", "/key/info"]
    metadata: {source: entra}
  default_internal_user_params:
    user_role: internal_user
    max_budget: 10
    budget_duration: 7d
    models: ["gpt-4o-mini"]
"#;

#[tokio::test]
async fn ensure_team_creates_the_team_with_litellm_defaults() {
    let db = TestDatabase::new().await;
    let store = store(&db, settings(TEAM_DEFAULTS), RemovalMode::Managed);
    let g = group(1);

    let changes = store
        .ensure_team(&g, "Production LLM Evals", commit())
        .await
        .unwrap();

    assert_eq!(
        changes,
        [Change::TeamCreated {
            team_id: g.to_string(),
            team_alias: "Production LLM Evals".into()
        }]
    );
    let team = team_row(db.conn(), &g).await;
    assert_eq!(team.team_alias.as_deref(), Some("Production LLM Evals"));
    assert_eq!(team.max_budget, Some(100.0));
    assert_eq!(team.budget_duration.as_deref(), Some("30d"));
    // 30d resets on the 1st of next month at midnight UTC.
    assert_eq!(team.budget_reset_at, Some(naive("2026-12-01 00:00:00")));
    assert_eq!(
        team.models.as_deref(),
        Some(&["gpt-4o".to_owned(), "gpt-4o-mini".to_owned()][..])
    );
    assert_eq!((team.tpm_limit, team.rpm_limit), (Some(5000), Some(50)));
    assert_eq!(
        team.team_member_permissions.as_deref(),
        Some(&["/key/generate".to_owned(), "/key/info".to_owned()][..])
    );
    assert_eq!(team.metadata, serde_json::json!({"source": "entra"}));
    assert_eq!(team.members_with_roles, serde_json::json!([]));
    assert_eq!(team.spend, 0.0);
    assert!(!team.blocked);
    assert_eq!(team.created_at, naive("2026-11-28 12:00:00"));
    assert_eq!(team.updated_at, naive("2026-11-28 12:00:00"));
}

#[tokio::test]
async fn budget_reset_follows_litellm_timezone_and_reset_time() {
    let db = TestDatabase::new().await;
    let yaml = "litellm_settings:\n  timezone: America/New_York\n  budget_reset_time: \"09:00\"\n  default_team_params:\n    budget_duration: 1d\n  default_internal_user_params:\n    budget_duration: 7d\n";
    let store = store(&db, settings(yaml), RemovalMode::Managed);
    store.ensure_team(&group(1), "T", commit()).await.unwrap();
    store.ensure_user(&entra_user(1), commit()).await.unwrap();

    // 12:00 UTC is 07:00 in New York: today's 09:00 reset (14:00 UTC) is still ahead.
    let team = team_row(db.conn(), &group(1)).await;
    assert_eq!(team.budget_reset_at, Some(naive("2026-11-28 14:00:00")));
    // 7d: next Monday (2026-11-30) at 09:00 New York time.
    let user = user_row(db.conn(), user_id(1).as_str()).await;
    assert_eq!(user.budget_reset_at, Some(naive("2026-11-30 14:00:00")));
    assert_eq!(user.budget_duration.as_deref(), Some("7d"));
}

#[tokio::test]
async fn ensure_team_on_an_existing_team_only_updates_the_alias() {
    let db = TestDatabase::new().await;
    let store = store(&db, settings(TEAM_DEFAULTS), RemovalMode::Managed);
    let g = group(1);
    store.ensure_team(&g, "Old name", commit()).await.unwrap();
    // An admin edits the budget and models in LiteLLM; the team spends money.
    execute(
        db.conn(),
        &format!(
            r#"UPDATE "LiteLLM_TeamTable" SET max_budget = 999, models = ARRAY['claude'],
               spend = 12.5, budget_duration = '1d' WHERE team_id = '{g}'"#
        ),
    )
    .await;

    let changes = store.ensure_team(&g, "New name", commit()).await.unwrap();

    assert_eq!(
        changes,
        [Change::TeamRenamed {
            team_id: g.to_string(),
            from: Some("Old name".into()),
            to: "New name".into()
        }]
    );
    let team = team_row(db.conn(), &g).await;
    assert_eq!(team.team_alias.as_deref(), Some("New name"));
    assert_eq!(team.max_budget, Some(999.0));
    assert_eq!(team.models.as_deref(), Some(&["claude".to_owned()][..]));
    assert_eq!(team.spend, 12.5);
    assert_eq!(team.budget_duration.as_deref(), Some("1d"));

    let before = snapshot(db.conn(), true).await;
    assert!(
        store
            .ensure_team(&g, "New name", commit())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(snapshot(db.conn(), true).await, before);
}

#[tokio::test]
async fn ensure_user_creates_users_as_litellm_sign_in_does() {
    let db = TestDatabase::new().await;
    let store = store(&db, settings(TEAM_DEFAULTS), RemovalMode::Managed);
    let alice = entra_user(1);

    let changes = store.ensure_user(&alice, commit()).await.unwrap();

    assert_eq!(
        changes,
        [Change::UserCreated {
            user_id: alice.id.to_string(),
            user_email: Some("user1@contoso.com".into()),
            user_role: "internal_user".into()
        }]
    );
    let row = user_row(db.conn(), alice.id.as_str()).await;
    assert_eq!(row.sso_user_id.as_deref(), Some(alice.id.as_str()));
    assert_eq!(row.user_email.as_deref(), Some("user1@contoso.com"));
    assert_eq!(row.user_alias.as_deref(), Some("User 1"));
    assert_eq!(row.user_role.as_deref(), Some("internal_user"));
    assert_eq!(row.models.as_deref(), Some(&["gpt-4o-mini".to_owned()][..]));
    assert_eq!(row.max_budget, Some(10.0));
    assert_eq!(
        row.metadata,
        serde_json::json!({"auth_provider": "microsoft"})
    );
    assert_eq!(row.teams.as_deref(), Some(&[][..]));
    assert!(
        store
            .ensure_user(&alice, commit())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_new_user_without_configured_role_is_internal_user_viewer() {
    let db = TestDatabase::new().await;
    let store = plain_store(&db);
    store.ensure_user(&entra_user(1), commit()).await.unwrap();
    let row = user_row(db.conn(), user_id(1).as_str()).await;
    assert_eq!(row.user_role.as_deref(), Some("internal_user_viewer"));
    assert_eq!(row.max_budget, None);
    assert_eq!(row.budget_reset_at, None);
}

#[tokio::test]
async fn a_scim_user_is_matched_by_email_and_given_its_sso_user_id() {
    let db = TestDatabase::new().await;
    let store = plain_store(&db);
    let g = group(1);
    store.ensure_team(&g, "Team", commit()).await.unwrap();
    // LiteLLM's SCIM made this user with user_id = UPN and a mixed-case email.
    execute(
        db.conn(),
        r#"INSERT INTO "LiteLLM_UserTable" (user_id, user_email, user_role, metadata, spend)
           VALUES ('user1@contoso.com', 'USER1@contoso.com', 'internal_user', '{"scim": true}', 3.5)"#,
    )
    .await;
    let alice = entra_user(1);

    let changes = store
        .add_members(&g, std::slice::from_ref(&alice), commit())
        .await
        .unwrap();

    assert_eq!(
        changes,
        [
            Change::UserLinked {
                user_id: "user1@contoso.com".into(),
                sso_user_id: alice.id.to_string()
            },
            // As LiteLLM's sign-in leaves the row: its email normalised, its empty alias filled.
            Change::UserUpdated {
                user_id: "user1@contoso.com".into(),
                user_email: Some("user1@contoso.com".into()),
                user_alias: Some("User 1".into()),
            },
            Change::MemberAdded {
                team_id: g.to_string(),
                user_id: "user1@contoso.com".into()
            }
        ]
    );
    let row = user_row(db.conn(), "user1@contoso.com").await;
    assert_eq!(row.sso_user_id.as_deref(), Some(alice.id.as_str()));
    assert_eq!(row.user_email.as_deref(), Some("user1@contoso.com"));
    assert_eq!(row.user_alias.as_deref(), Some("User 1"));
    assert_eq!(row.teams.as_deref(), Some(&[g.to_string()][..]));
    assert_eq!(row.spend, 3.5);
    assert_eq!(row.metadata, serde_json::json!({"scim": true}));
    assert_eq!(
        scalar_i64(db.conn(), r#"SELECT count(*) FROM "LiteLLM_UserTable""#).await,
        1
    );
    assert_eq!(entry_ids(db.conn(), &g).await, ["user1@contoso.com"]);
    assert_eq!(
        membership_rows(db.conn(), &g).await[0].user_id,
        "user1@contoso.com"
    );

    // From now on the user is found by sso_user_id: removal works on the Entra id.
    store
        .remove_members(&g, std::slice::from_ref(&alice.id), commit())
        .await
        .unwrap();
    assert!(entry_ids(db.conn(), &g).await.is_empty());
}

#[tokio::test]
async fn add_members_writes_every_trace_of_membership() {
    let db = TestDatabase::new().await;
    let store = plain_store(&db);
    let g = group(1);
    store.ensure_team(&g, "Team", commit()).await.unwrap();
    // The team gives members a per-member budget through its metadata, as LiteLLM does.
    execute(
        db.conn(),
        &format!(
            r#"INSERT INTO "LiteLLM_BudgetTable" (budget_id, max_budget, created_by, updated_by)
               VALUES ('member-budget', 5, 'admin', 'admin');
               UPDATE "LiteLLM_TeamTable" SET metadata = '{{"team_member_budget_id": "member-budget"}}'
               WHERE team_id = '{g}'"#
        ),
    )
    .await;
    let members = users(1..4);

    let changes = store.add_members(&g, &members, commit()).await.unwrap();

    assert_eq!(
        changes
            .iter()
            .filter(|c| matches!(c, Change::UserCreated { .. }))
            .count(),
        3
    );
    assert_eq!(
        changes
            .iter()
            .filter(|c| matches!(c, Change::MemberAdded { .. }))
            .count(),
        3
    );
    let team = team_row(db.conn(), &g).await;
    assert_eq!(
        team.members_with_roles,
        serde_json::json!([
            {"user_id": user_id(1).to_string(), "user_email": "user1@contoso.com", "role": "user"},
            {"user_id": user_id(2).to_string(), "user_email": "user2@contoso.com", "role": "user"},
            {"user_id": user_id(3).to_string(), "user_email": "user3@contoso.com", "role": "user"},
        ])
    );
    for member in &members {
        let row = user_row(db.conn(), member.id.as_str()).await;
        assert_eq!(row.teams.as_deref(), Some(&[g.to_string()][..]));
    }
    let rows = membership_rows(db.conn(), &g).await;
    assert_eq!(rows.len(), 3);
    assert!(
        rows.iter()
            .all(|r| r.budget_id.as_deref() == Some("member-budget") && r.spend == 0.0)
    );
    assert_eq!(managed_memberships(db.conn()).await, 3);
}

#[tokio::test]
async fn add_members_keeps_existing_entries_and_reads_the_empty_object_default() {
    let db = TestDatabase::new().await;
    let store = plain_store(&db);
    let g = group(1);
    // A team LiteLLM made itself: members_with_roles keeps its column default `{}`.
    execute(
        db.conn(),
        &format!(r#"INSERT INTO "LiteLLM_TeamTable" (team_id, team_alias) VALUES ('{g}', 'Team')"#),
    )
    .await;
    assert_eq!(
        team_row(db.conn(), &g).await.members_with_roles,
        serde_json::json!({})
    );
    add_member_by_hand(db.conn(), &g, "boss", "admin").await;

    store.add_members(&g, &users(1..2), commit()).await.unwrap();

    let team = team_row(db.conn(), &g).await;
    assert_eq!(team.members_with_roles[0]["user_id"], "boss");
    assert_eq!(team.members_with_roles[0]["role"], "admin");
    assert_eq!(
        team.members_with_roles[1]["user_id"],
        user_id(1).to_string()
    );
    assert_eq!(team.members_with_roles.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn a_partial_membership_is_completed() {
    let db = TestDatabase::new().await;
    let store = plain_store(&db);
    let g = group(1);
    store.ensure_team(&g, "Team", commit()).await.unwrap();
    store.add_members(&g, &users(1..2), commit()).await.unwrap();
    // Something deleted the membership row and the team from the user's list.
    execute(
        db.conn(),
        &format!(
            r#"DELETE FROM "LiteLLM_TeamMembership";
               UPDATE "LiteLLM_UserTable" SET teams = NULL WHERE user_id = '{}'"#,
            user_id(1)
        ),
    )
    .await;

    let changes = store.add_members(&g, &users(1..2), commit()).await.unwrap();

    assert_eq!(
        changes,
        [Change::MemberAdded {
            team_id: g.to_string(),
            user_id: user_id(1).to_string()
        }]
    );
    assert_eq!(membership_rows(db.conn(), &g).await.len(), 1);
    let row = user_row(db.conn(), user_id(1).as_str()).await;
    assert_eq!(row.teams.as_deref(), Some(&[g.to_string()][..]));
    assert_eq!(entry_ids(db.conn(), &g).await.len(), 1);
}

#[tokio::test]
async fn add_members_requires_the_team() {
    let db = TestDatabase::new().await;
    let store = plain_store(&db);
    let err = store
        .add_members(&group(1), &users(1..2), commit())
        .await
        .unwrap_err();
    assert!(
        matches!(err, worker::store::Error::TeamNotFound(_)),
        "{err}"
    );
    assert_eq!(
        scalar_i64(db.conn(), r#"SELECT count(*) FROM "LiteLLM_UserTable""#).await,
        0
    );
}

#[tokio::test]
async fn remove_members_undoes_every_trace_and_leaves_spend_elsewhere() {
    let db = TestDatabase::new().await;
    let store = plain_store(&db);
    let (g, other) = (group(1), group(2));
    store.ensure_team(&g, "Team", commit()).await.unwrap();
    store.ensure_team(&other, "Other", commit()).await.unwrap();
    store.add_members(&g, &users(1..3), commit()).await.unwrap();
    store
        .add_members(&other, &users(1..2), commit())
        .await
        .unwrap();
    execute(
        db.conn(),
        r#"UPDATE "LiteLLM_UserTable" SET spend = 7; UPDATE "LiteLLM_TeamTable" SET spend = 8;
           UPDATE "LiteLLM_TeamMembership" SET spend = 9, total_spend = 10"#,
    )
    .await;

    let changes = store
        .remove_members(&g, &[user_id(1)], commit())
        .await
        .unwrap();

    assert_eq!(
        changes,
        [Change::MemberRemoved {
            team_id: g.to_string(),
            user_id: user_id(1).to_string()
        }]
    );
    assert_eq!(entry_ids(db.conn(), &g).await, [user_id(2).to_string()]);
    let row = user_row(db.conn(), user_id(1).as_str()).await;
    assert_eq!(row.teams.as_deref(), Some(&[other.to_string()][..]));
    assert_eq!(row.spend, 7.0);
    let rows = membership_rows(db.conn(), &g).await;
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].spend, rows[0].total_spend), (9.0, 10.0));
    assert_eq!(team_row(db.conn(), &g).await.spend, 8.0);
    // The other team's membership is untouched.
    assert_eq!(entry_ids(db.conn(), &other).await, [user_id(1).to_string()]);
    assert_eq!(membership_rows(db.conn(), &other).await.len(), 1);
    assert_eq!(managed_memberships(db.conn()).await, 2);
    // Removing again changes nothing.
    assert!(
        store
            .remove_members(&g, &[user_id(1)], commit())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn managed_mode_keeps_a_manual_member_and_mirror_mode_removes_it() {
    let db = TestDatabase::new().await;
    let managed = plain_store(&db);
    let mirror = store(&db, Default::default(), RemovalMode::Mirror);
    let g = group(1);
    managed.ensure_team(&g, "Team", commit()).await.unwrap();
    managed
        .add_members(&g, &users(1..3), commit())
        .await
        .unwrap();
    // An admin added user 3 by hand, and user 3 is in the Entra group too.
    let hand_made = user_id(3).to_string();
    add_member_by_hand(db.conn(), &g, &hand_made, "user").await;
    add_member_by_hand(db.conn(), &g, "contractor", "admin").await;

    // Entra now says the group holds user 2 only.
    let changes = managed
        .replace_members(&g, &users(2..3), commit())
        .await
        .unwrap();
    assert_eq!(
        changes,
        [Change::MemberRemoved {
            team_id: g.to_string(),
            user_id: user_id(1).to_string()
        }]
    );
    assert_eq!(
        entry_ids(db.conn(), &g).await,
        [
            user_id(2).to_string(),
            hand_made.clone(),
            "contractor".into()
        ]
    );
    // An explicit removal in managed mode leaves the hand-made membership as well.
    assert!(
        managed
            .remove_members(&g, &[user_id(3)], commit())
            .await
            .unwrap()
            .is_empty()
    );

    let changes = mirror
        .replace_members(&g, &users(2..3), commit())
        .await
        .unwrap();
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert_eq!(entry_ids(db.conn(), &g).await, [user_id(2).to_string()]);
    assert_eq!(membership_rows(db.conn(), &g).await.len(), 1);
    let contractor = user_row(db.conn(), "contractor").await;
    assert_eq!(contractor.teams.as_deref(), Some(&[][..]));
}

#[tokio::test]
async fn mirror_mode_removes_a_manual_member_named_explicitly() {
    let db = TestDatabase::new().await;
    let mirror = store(&db, Default::default(), RemovalMode::Mirror);
    let g = group(1);
    mirror.ensure_team(&g, "Team", commit()).await.unwrap();
    mirror.ensure_user(&entra_user(1), commit()).await.unwrap();
    add_member_by_hand(db.conn(), &g, user_id(1).as_str(), "user").await;

    let changes = mirror
        .remove_members(&g, &[user_id(1)], commit())
        .await
        .unwrap();

    assert_eq!(changes.len(), 1);
    assert!(entry_ids(db.conn(), &g).await.is_empty());
    assert!(membership_rows(db.conn(), &g).await.is_empty());
}

#[tokio::test]
async fn set_role_takes_the_highest_valid_role_case_insensitively() {
    let db = TestDatabase::new().await;
    let store = plain_store(&db);
    let alice = entra_user(1);
    store.ensure_user(&alice, commit()).await.unwrap();
    let role_of = || async { user_row(db.conn(), alice.id.as_str()).await.user_role };

    let values = ["Internal_User", "PROXY_ADMIN_VIEWER", "Reader"].map(String::from);
    let changes = store.set_role(&alice.id, &values, commit()).await.unwrap();
    assert_eq!(
        changes,
        [Change::RoleChanged {
            user_id: alice.id.to_string(),
            from: Some("internal_user_viewer".into()),
            to: "proxy_admin_viewer".into()
        }]
    );
    assert_eq!(role_of().await.as_deref(), Some("proxy_admin_viewer"));
    assert_eq!(
        scalar_i64(
            db.conn(),
            "SELECT count(*) FROM entra_sync_managed_roles WHERE role = 'proxy_admin_viewer'"
        )
        .await,
        1
    );

    // No valid value: unchanged.
    assert!(
        store
            .set_role(&alice.id, &["Reader".into()], commit())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .set_role(&alice.id, &[], commit())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(role_of().await.as_deref(), Some("proxy_admin_viewer"));

    // The same role again: nothing to do.
    let values = ["proxy_admin_viewer".to_owned()];
    assert!(
        store
            .set_role(&alice.id, &values, commit())
            .await
            .unwrap()
            .is_empty()
    );

    let values = ["org_admin", "Proxy_Admin"].map(String::from);
    store.set_role(&alice.id, &values, commit()).await.unwrap();
    assert_eq!(
        role_of().await.as_deref(),
        Some(LiteLlmRole::ProxyAdmin.as_str())
    );
}

#[tokio::test]
async fn set_role_of_an_unknown_user_is_an_error_that_changes_nothing() {
    let db = TestDatabase::new().await;
    let store = plain_store(&db);
    let err = store
        .set_role(&user_id(9), &["proxy_admin".into()], commit())
        .await
        .unwrap_err();
    assert!(
        matches!(err, worker::store::Error::UserNotFound(_)),
        "{err}"
    );
    assert_eq!(
        scalar_i64(db.conn(), "SELECT count(*) FROM entra_sync_managed_roles").await,
        0
    );
}

/// One of everything, as the worker would apply it, on top of `setup`.
async fn scenario(store: &worker::store::Store) -> Vec<Change> {
    let mut all = Vec::new();
    all.extend(
        store
            .ensure_team(&group(1), "Engineering", commit())
            .await
            .unwrap(),
    );
    all.extend(
        store
            .ensure_team(&group(2), "Research", commit())
            .await
            .unwrap(),
    );
    all.extend(
        store
            .add_members(&group(1), &users(3..8), commit())
            .await
            .unwrap(),
    );
    all.extend(
        store
            .remove_members(&group(1), &[user_id(2)], commit())
            .await
            .unwrap(),
    );
    all.extend(
        store
            .replace_members(&group(2), &users(5..10), commit())
            .await
            .unwrap(),
    );
    all.extend(store.ensure_user(&entra_user(20), commit()).await.unwrap());
    all.extend(
        store
            .set_role(&user_id(3), &["PROXY_ADMIN".into()], commit())
            .await
            .unwrap(),
    );
    all
}

async fn setup(store: &worker::store::Store) {
    store.ensure_team(&group(1), "Eng", commit()).await.unwrap();
    store
        .ensure_team(&group(2), "Research", commit())
        .await
        .unwrap();
    store
        .add_members(&group(1), &users(1..4), commit())
        .await
        .unwrap();
    store
        .add_members(&group(2), &users(1..7), commit())
        .await
        .unwrap();
}

#[tokio::test]
async fn applying_everything_twice_changes_nothing_the_second_time() {
    let db = TestDatabase::new().await;
    let store = store(&db, settings(TEAM_DEFAULTS), RemovalMode::Managed);
    setup(&store).await;

    let first = scenario(&store).await;
    let after_first = snapshot(db.conn(), true).await;
    let second = scenario(&store).await;

    assert!(!first.is_empty());
    assert_eq!(second, [], "second application changed something");
    assert_eq!(snapshot(db.conn(), true).await, after_first);
}

#[tokio::test]
async fn every_applied_change_is_in_the_audit_log() {
    let db = TestDatabase::new().await;
    let store = plain_store(&db);

    let changes = scenario(&store).await;

    let logged = scalar_i64(db.conn(), "SELECT count(*) FROM entra_sync_audit_log").await;
    assert_eq!(logged, changes.len() as i64);
    let expected = serde_json::to_value(&changes).unwrap();
    let row = sea_orm::ConnectionTrait::query_one(
        db.conn(),
        sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT jsonb_agg(detail ORDER BY id)::text FROM entra_sync_audit_log",
        ),
    )
    .await
    .unwrap()
    .unwrap();
    let logged: serde_json::Value =
        serde_json::from_str(&row.try_get_by_index::<String>(0).unwrap()).unwrap();
    assert_eq!(logged, expected);
    assert_eq!(
        scalar_i64(
            db.conn(),
            "SELECT count(*) FROM entra_sync_audit_log WHERE kind = 'member_added' AND team_id IS NOT NULL AND user_id IS NOT NULL"
        )
        .await,
        changes.iter().filter(|c| matches!(c, Change::MemberAdded { .. })).count() as i64
    );
}

#[tokio::test]
async fn a_dry_run_writes_nothing_and_lists_what_a_real_run_then_does() {
    let db = TestDatabase::new().await;
    let store = store(&db, settings(TEAM_DEFAULTS), RemovalMode::Managed);
    store
        .ensure_team(&group(1), "Engineering", commit())
        .await
        .unwrap();
    store
        .add_members(&group(1), &users(1..4), commit())
        .await
        .unwrap();
    execute(
        db.conn(),
        r#"INSERT INTO "LiteLLM_UserTable" (user_id, user_email, metadata) VALUES ('scim@x', 'user7@contoso.com', '{}')"#,
    )
    .await;
    let before = snapshot(db.conn(), true).await;
    let wanted = users(2..8);

    let planned_team = store
        .ensure_team(&group(1), "Platform", dry_run())
        .await
        .unwrap();
    let planned_new_team = store
        .ensure_team(&group(2), "New", dry_run())
        .await
        .unwrap();
    let planned_members = store
        .replace_members(&group(1), &wanted, dry_run())
        .await
        .unwrap();
    let planned_role = store
        .set_role(&user_id(2), &["org_admin".into()], dry_run())
        .await
        .unwrap();
    let planned_user = store.ensure_user(&entra_user(30), dry_run()).await.unwrap();

    assert_eq!(
        snapshot(db.conn(), true).await,
        before,
        "a dry run wrote something"
    );
    assert_eq!(planned_team.len(), 1);
    assert_eq!(planned_new_team.len(), 1);
    assert!(
        planned_members
            .iter()
            .any(|c| matches!(c, Change::UserLinked { .. }))
    );
    assert!(
        planned_members
            .iter()
            .any(|c| matches!(c, Change::MemberRemoved { .. }))
    );
    assert_eq!(planned_role.len(), 1);
    assert_eq!(planned_user.len(), 1);

    assert_eq!(
        store
            .ensure_team(&group(1), "Platform", commit())
            .await
            .unwrap(),
        planned_team
    );
    assert_eq!(
        store.ensure_team(&group(2), "New", commit()).await.unwrap(),
        planned_new_team
    );
    assert_eq!(
        store
            .replace_members(&group(1), &wanted, commit())
            .await
            .unwrap(),
        planned_members
    );
    assert_eq!(
        store
            .set_role(&user_id(2), &["org_admin".into()], commit())
            .await
            .unwrap(),
        planned_role
    );
    assert_eq!(
        store.ensure_user(&entra_user(30), commit()).await.unwrap(),
        planned_user
    );
}

#[tokio::test]
async fn duplicate_members_in_one_request_are_added_once() {
    let db = TestDatabase::new().await;
    let store = plain_store(&db);
    store
        .ensure_team(&group(1), "Team", commit())
        .await
        .unwrap();
    let alice = entra_user(1);
    let mut shouting = alice.clone();
    shouting.user_principal_name = Some("USER1@CONTOSO.COM".into());

    store
        .add_members(&group(1), &[alice.clone(), shouting, alice], commit())
        .await
        .unwrap();

    assert_eq!(entry_ids(db.conn(), &group(1)).await.len(), 1);
    assert_eq!(
        scalar_i64(db.conn(), r#"SELECT count(*) FROM "LiteLLM_UserTable""#).await,
        1
    );
}

#[tokio::test]
async fn two_users_sharing_an_email_do_not_take_the_same_row() {
    let db = TestDatabase::new().await;
    let store = plain_store(&db);
    store
        .ensure_team(&group(1), "Team", commit())
        .await
        .unwrap();
    execute(
        db.conn(),
        r#"INSERT INTO "LiteLLM_UserTable" (user_id, user_email, metadata) VALUES ('scim', 'shared@contoso.com', '{}')"#,
    )
    .await;
    let shared = |n| EntraUser {
        user_principal_name: Some("shared@contoso.com".into()),
        ..entra_user(n)
    };

    store
        .add_members(&group(1), &[shared(1), shared(2)], commit())
        .await
        .unwrap();

    let scim = user_row(db.conn(), "scim").await;
    assert_eq!(scim.sso_user_id.as_deref(), Some(user_id(1).as_str()));
    // The second Entra user gets a row of its own.
    let second = user_row(db.conn(), user_id(2).as_str()).await;
    assert_eq!(second.sso_user_id.as_deref(), Some(user_id(2).as_str()));
    assert_eq!(entry_ids(db.conn(), &group(1)).await.len(), 2);
}

#[tokio::test]
async fn removal_cleans_up_after_a_user_row_deleted_by_an_admin() {
    let db = TestDatabase::new().await;
    let store = plain_store(&db);
    let g = group(1);
    store.ensure_team(&g, "Team", commit()).await.unwrap();
    store.add_members(&g, &users(1..3), commit()).await.unwrap();
    execute(
        db.conn(),
        &format!(
            r#"DELETE FROM "LiteLLM_UserTable" WHERE user_id = '{}'"#,
            user_id(1)
        ),
    )
    .await;

    let changes = store
        .remove_members(&g, &[user_id(1)], commit())
        .await
        .unwrap();

    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(entry_ids(db.conn(), &g).await, [user_id(2).to_string()]);
    assert_eq!(membership_rows(db.conn(), &g).await.len(), 1);
    assert_eq!(managed_memberships(db.conn()).await, 1);
}

#[tokio::test]
async fn a_bulk_sync_leaves_litellm_tables_analysed() {
    let db = TestDatabase::new().await;
    let store = plain_store(&db);
    store
        .ensure_team(&group(1), "Everyone", commit())
        .await
        .unwrap();

    store
        .add_members(&group(1), &users(0..1200), commit())
        .await
        .unwrap();

    // Statistics reach pg_stat_user_tables when the analysing session reports them.
    let mut analysed = 0;
    for _ in 0..100 {
        analysed = scalar_i64(
            db.conn(),
            r#"SELECT count(*) FROM pg_stat_user_tables
               WHERE relname IN ('LiteLLM_UserTable', 'LiteLLM_TeamMembership')
                 AND last_analyze IS NOT NULL"#,
        )
        .await;
        if analysed == 2 {
            break;
        }
        execute(db.conn(), "SELECT pg_stat_clear_snapshot()").await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        analysed, 2,
        "1,200 new users and memberships were not followed by ANALYZE"
    );
}

#[tokio::test]
async fn a_revoked_role_drops_to_the_default_unless_an_admin_changed_it() {
    let db = TestDatabase::new().await;
    let store = plain_store(&db);
    for n in 1..=2 {
        store.ensure_user(&entra_user(n), commit()).await.unwrap();
        store
            .set_role(&user_id(n), &["PROXY_ADMIN".into()], commit())
            .await
            .unwrap();
    }
    // An admin changes user 2's role by hand in LiteLLM.
    execute(
        db.conn(),
        &format!(
            r#"UPDATE "LiteLLM_UserTable" SET user_role = 'org_admin' WHERE user_id = '{}'"#,
            user_id(2)
        ),
    )
    .await;

    // Entra still grants proxy_admin to user 2: the hand-set role stays.
    let values = ["proxy_admin".to_owned()];
    assert!(
        store
            .set_role(&user_id(2), &values, commit())
            .await
            .unwrap()
            .is_empty()
    );

    let changes = store.revoke_role(&user_id(1), commit()).await.unwrap();
    assert_eq!(
        changes,
        [Change::RoleChanged {
            user_id: user_id(1).to_string(),
            from: Some("proxy_admin".into()),
            to: "internal_user_viewer".into()
        }]
    );
    assert!(
        store
            .revoke_role(&user_id(2), commit())
            .await
            .unwrap()
            .is_empty()
    );
    let conn = db.conn();
    let role = |n| async move { user_row(conn, user_id(n).as_str()).await.user_role };
    assert_eq!(role(1).await.as_deref(), Some("internal_user_viewer"));
    assert_eq!(role(2).await.as_deref(), Some("org_admin"));
    assert_eq!(
        scalar_i64(db.conn(), "SELECT count(*) FROM entra_sync_managed_roles").await,
        0,
        "entra-sync no longer manages either role"
    );
    assert!(
        store
            .revoke_role(&user_id(1), commit())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn removing_managed_members_keeps_hand_added_ones_even_in_mirror_mode() {
    let db = TestDatabase::new().await;
    let mirror = store(&db, Default::default(), RemovalMode::Mirror);
    let g = group(1);
    mirror.ensure_team(&g, "Team", commit()).await.unwrap();
    mirror
        .add_members(&g, &users(1..4), commit())
        .await
        .unwrap();
    add_member_by_hand(db.conn(), &g, "by-hand", "admin").await;

    let changes = mirror.remove_managed_members(&g, commit()).await.unwrap();

    assert_eq!(changes.len(), 3);
    assert_eq!(entry_ids(db.conn(), &g).await, ["by-hand"]);
    assert_eq!(managed_memberships(db.conn()).await, 0);
    assert!(
        mirror
            .remove_managed_members(&g, commit())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn blocking_a_team_keeps_it_and_its_members() {
    let db = TestDatabase::new().await;
    let store = plain_store(&db);
    let g = group(1);
    store.ensure_team(&g, "Team", commit()).await.unwrap();
    store.add_members(&g, &users(1..3), commit()).await.unwrap();

    let changes = store.block_team(&g, commit()).await.unwrap();

    assert_eq!(
        changes,
        [Change::TeamBlocked {
            team_id: g.to_string()
        }]
    );
    let team = team_row(db.conn(), &g).await;
    assert!(team.blocked);
    assert_eq!(entry_ids(db.conn(), &g).await.len(), 2);
    assert!(store.block_team(&g, commit()).await.unwrap().is_empty());
    assert!(
        store
            .block_team(&group(9), commit())
            .await
            .unwrap()
            .is_empty(),
        "no team, nothing to block"
    );
}

#[tokio::test]
async fn a_team_blocked_by_the_policy_is_unblocked_when_its_group_is_back_and_one_an_admin_blocked_is_not()
 {
    let db = TestDatabase::new().await;
    let store = plain_store(&db);
    let (ours, admins) = (group(1), group(2));
    store.ensure_team(&ours, "Team", commit()).await.unwrap();
    store.ensure_team(&admins, "Other", commit()).await.unwrap();
    store.block_team(&ours, commit()).await.unwrap();
    execute(
        db.conn(),
        &format!(
            r#"UPDATE "LiteLLM_TeamTable" SET blocked = true, metadata = '{{"note": "x"}}'
               WHERE team_id = '{admins}'"#
        ),
    )
    .await;
    assert_eq!(
        team_row(db.conn(), &ours).await.metadata["entra_sync_blocked"],
        "group_unassigned"
    );

    // The group is assigned again (or restored): the team comes back, under its current name.
    let changes = store.ensure_team(&ours, "Team", commit()).await.unwrap();
    assert_eq!(
        changes,
        [Change::TeamUnblocked {
            team_id: ours.to_string(),
            team_alias: Some("Team".into())
        }]
    );
    let team = team_row(db.conn(), &ours).await;
    assert!(!team.blocked);
    assert_eq!(team.metadata, serde_json::json!({}));
    assert!(
        store
            .ensure_team(&ours, "Team", commit())
            .await
            .unwrap()
            .is_empty()
    );

    // A team an admin blocked stays blocked.
    assert!(
        store
            .ensure_team(&admins, "Other", commit())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(team_row(db.conn(), &admins).await.blocked);
}

/// Two teams with members, a hand-added member, a SCIM user to be linked by email, a removed
/// member's key: the state a batch and a sequence of single syncs both start from.
async fn batch_setup(db: &TestDatabase) -> worker::store::Store {
    let store = store(db, settings(TEAM_DEFAULTS), RemovalMode::Managed);
    setup(&store).await;
    add_member_by_hand(db.conn(), &group(1), "hand", "user").await;
    insert_key(
        db.conn(),
        "key-of-user-2",
        user_id(2).as_str(),
        Some(group(1).as_str()),
        None,
        "2026-11-01 00:00:00",
    )
    .await;
    // LiteLLM's SCIM made user 8 with user_id = UPN.
    execute(
        db.conn(),
        r#"INSERT INTO "LiteLLM_UserTable" (user_id, user_email, user_role, metadata)
           VALUES ('user8@contoso.com', 'User8@contoso.com', 'internal_user', '{}');
           UPDATE "LiteLLM_UserTable" SET created_at = '2026-11-01', updated_at = '2026-11-01'
           WHERE user_id IN ('hand', 'user8@contoso.com')"#,
    )
    .await;
    store
}

#[tokio::test]
async fn syncing_teams_in_one_batch_writes_exactly_what_syncing_them_one_by_one_writes() {
    // Groups 1 (renamed, user 2 gone), 2 (new members) and 3 (a new team), sharing users: 8
    // (linked by email), 9 and 10 (created) among them.
    let groups = [
        (group(1), "Engineering", vec![1, 3, 8, 9]),
        (group(2), "Research", vec![1, 2, 3, 4, 5, 6, 8, 10]),
        (group(3), "New team", vec![9, 10, 3]),
    ];
    let members: Vec<Vec<EntraUser>> = groups
        .iter()
        .map(|(_, _, ids)| ids.iter().map(|&n| entra_user(n)).collect())
        .collect();
    let teams: Vec<worker::store::TeamSync> = groups
        .iter()
        .zip(&members)
        .map(|((group, name, _), members)| worker::store::TeamSync {
            group,
            display_name: Some(name),
            members,
            unreadable: &[],
        })
        .collect();

    let batched = TestDatabase::new().await;
    let one_by_one = TestDatabase::new().await;
    let batch_store = batch_setup(&batched).await;
    let single_store = batch_setup(&one_by_one).await;
    let audit_before = scalar_i64(batched.conn(), "SELECT max(id) FROM entra_sync_audit_log").await;

    let in_batch = batch_store.sync_teams(&teams, commit()).await.unwrap();
    let mut alone = Vec::new();
    for team in &teams {
        alone.extend(
            single_store
                .sync_team(team.group, team.display_name, team.members, commit())
                .await
                .unwrap(),
        );
    }

    assert_eq!(in_batch, alone);
    assert!(in_batch.contains(&Change::UserLinked {
        user_id: "user8@contoso.com".into(),
        sso_user_id: user_id(8).to_string(),
    }));
    assert!(in_batch.contains(&Change::MemberRemoved {
        team_id: group(1).to_string(),
        user_id: user_id(2).to_string(),
    }));
    assert_eq!(
        snapshot(batched.conn(), false).await,
        snapshot(one_by_one.conn(), false).await
    );
    // The removed member's key is gone, copied to LiteLLM's deleted keys, in both.
    let keys = "SELECT concat_ws(' ', (SELECT count(*) FROM \"LiteLLM_VerificationToken\"),
                  (SELECT string_agg(token || ' ' || deleted_by, ',')
                   FROM \"LiteLLM_DeletedVerificationToken\"))";
    assert_eq!(
        scalar_text(batched.conn(), keys).await,
        "0 key-of-user-2 entra-sync"
    );
    assert_eq!(
        scalar_text(one_by_one.conn(), keys).await,
        "0 key-of-user-2 entra-sync"
    );
    let audit = |db: &TestDatabase| {
        let db = db.conn().clone();
        async move {
            scalar_text(
                &db,
                &format!(
                    "SELECT string_agg(concat_ws(' ', kind, team_id, user_id), ', ' ORDER BY id)
                     FROM entra_sync_audit_log WHERE id > {audit_before}"
                ),
            )
            .await
        }
    };
    assert_eq!(audit(&batched).await, audit(&one_by_one).await);
    // Each user once in LiteLLM, and the users created in the batch in every team they joined.
    assert_eq!(
        user_row(batched.conn(), user_id(10).as_str()).await.teams,
        Some(vec![group(2).to_string(), group(3).to_string()])
    );
    assert_eq!(
        batch_store.sync_teams(&teams, commit()).await.unwrap(),
        [],
        "a second batch changed something"
    );
}

#[tokio::test]
async fn a_re_read_user_is_left_alone_only_when_litellm_already_says_what_entra_says() {
    let db = TestDatabase::new().await;
    let store = plain_store(&db);
    store.ensure_team(&group(1), "Eng", commit()).await.unwrap();
    store
        .add_members(&group(1), &users(1..5), commit())
        .await
        .unwrap();
    // User 3's key was blocked when the user departed; user 4 is known by sso_user_id only.
    insert_key(
        db.conn(),
        "key-of-user-3",
        user_id(3).as_str(),
        None,
        Some(true),
        "2026-11-01 00:00:00",
    )
    .await;
    execute(
        db.conn(),
        &format!(
            r#"UPDATE "LiteLLM_VerificationToken"
               SET metadata = '{{"entra_sync_blocked": "user_departed"}}'
               WHERE token = 'key-of-user-3';
               UPDATE "LiteLLM_UserTable" SET user_id = 'user4@contoso.com'
               WHERE user_id = '{}'"#,
            user_id(4)
        ),
    )
    .await;
    let same = entra_user(1);
    let mut renamed = entra_user(2);
    renamed.display_name = Some("User 2 (renamed)".into());
    let returning = entra_user(3);
    let by_sso = entra_user(4);
    let mut no_name = entra_user(4);
    no_name.display_name = None;
    let unknown = entra_user(9);

    let unchanged = store
        .unchanged_users(&[&same, &renamed, &returning, &by_sso, &unknown])
        .await
        .unwrap();

    let mut unchanged: Vec<_> = unchanged.into_iter().collect();
    unchanged.sort();
    assert_eq!(unchanged, [user_id(1), user_id(4), user_id(9)]);
    // Entra omitting an attribute is no difference: LiteLLM's value stays.
    assert_eq!(store.unchanged_users(&[&no_name]).await.unwrap().len(), 1);
    // What the filter leaves alone, a re-read indeed does not change.
    for user in [&same, &by_sso, &unknown] {
        assert_eq!(store.update_user(user, commit()).await.unwrap(), []);
    }
    assert_ne!(store.update_user(&renamed, commit()).await.unwrap(), []);
    assert_ne!(store.update_user(&returning, commit()).await.unwrap(), []);
}

/// Waits up to a minute until `check` holds; returns whether it did.
async fn within_a_minute<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A transaction that began while its lease held, checking its fence after the lease ran out by
/// the database's clock, finds it lost: the lease is checked against the clock, not against the
/// transaction's start.
#[tokio::test]
async fn a_fence_checked_after_its_lease_ran_out_is_lost_however_early_the_transaction_began() {
    use sea_orm::TransactionTrait;
    use worker::store::lease::{Fence, check};
    let db = TestDatabase::new().await;
    execute(
        db.conn(),
        "INSERT INTO entra_sync_leases (name, holder, expires_at, fence)
         VALUES ('sync', 'us', clock_timestamp() + interval '1 second', 7)",
    )
    .await;
    let fence = Fence {
        lease: "sync",
        token: 7,
    };
    let txn = db.conn().begin().await.unwrap();
    check(&txn, fence).await.expect("the lease holds at first");

    let ran_out = within_a_minute(|| async {
        scalar_i64(
            db.conn(),
            "SELECT count(*) FROM entra_sync_leases WHERE expires_at < clock_timestamp()",
        )
        .await
            == 1
    })
    .await;
    assert!(ran_out, "the lease never ran out");

    let lost = check(&txn, fence).await.unwrap_err();
    assert!(
        matches!(lost, worker::store::Error::LeaseLost { lease: "sync" }),
        "{lost}"
    );
}

/// LiteLLM creates a team itself (its `/team/new` takes no team lock) between our read and our
/// insert: our insert meets its row, and that is a concurrent change (retried), not a team we
/// created. No `team_created` entry, no member budget made for it; the retry finds the team.
#[tokio::test]
async fn a_team_created_by_litellm_meanwhile_is_a_concurrent_change_with_nothing_of_ours_written() {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let db = TestDatabase::new().await;
    let store = store(
        &db,
        settings("litellm_settings:\n  default_team_params:\n    team_member_budget: 25\n"),
        RemovalMode::Managed,
    );
    let g = group(1);
    // LiteLLM's transaction has inserted the team's row, not committed yet: our read does not
    // see it, our insert waits for it.
    let litellm = db.connect_again().await;
    let litellm_txn = litellm.begin().await.unwrap();
    litellm_txn
        .execute_unprepared(&format!(
            r#"INSERT INTO "LiteLLM_TeamTable" (team_id, team_alias) VALUES ('{g}', 'By LiteLLM')"#
        ))
        .await
        .unwrap();
    let ensuring = tokio::spawn({
        let (store, g) = (store.clone(), g.clone());
        async move { store.ensure_team(&g, "Team", commit()).await }
    });
    let waiting = within_a_minute(|| async {
        scalar_i64(
            db.conn(),
            r#"SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
               AND wait_event_type = 'Lock' AND query LIKE '%INSERT INTO "LiteLLM_TeamTable"%'"#,
        )
        .await
            == 1
    })
    .await;
    assert!(waiting, "our insert did not meet LiteLLM's row");
    litellm_txn.commit().await.unwrap();

    let outcome = ensuring.await.unwrap();
    assert!(
        matches!(outcome, Err(worker::store::Error::ConcurrentChange(_))),
        "{outcome:?}"
    );
    assert_eq!(
        scalar_i64(
            db.conn(),
            "SELECT count(*) FROM entra_sync_audit_log WHERE kind = 'team_created'"
        )
        .await,
        0
    );
    assert_eq!(
        scalar_i64(db.conn(), r#"SELECT count(*) FROM "LiteLLM_BudgetTable""#).await,
        0,
        "a member budget was made for a team we did not create"
    );
    assert_eq!(
        team_row(db.conn(), &g).await.team_alias.as_deref(),
        Some("By LiteLLM")
    );

    let retried = store.ensure_team(&g, "Team", commit()).await.unwrap();
    assert_eq!(
        retried,
        [Change::TeamRenamed {
            team_id: g.to_string(),
            from: Some("By LiteLLM".into()),
            to: "Team".into()
        }]
    );
    // A team the store did not create gets no member budget from it.
    assert_eq!(
        scalar_i64(db.conn(), r#"SELECT count(*) FROM "LiteLLM_BudgetTable""#).await,
        0
    );
}

/// A commit's ANALYZE runs in the background: with another session holding a lock ANALYZE waits
/// for (but writes do not), a bulk load's commit returns while its ANALYZE waits, and once the
/// lock is gone the statistics are updated all the same.
#[tokio::test]
async fn a_bulk_loads_analyze_runs_after_its_commit_returned() {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let db = TestDatabase::new().await;
    let store = plain_store(&db);
    store
        .ensure_team(&group(1), "Everyone", commit())
        .await
        .unwrap();
    let other = db.connect_again().await;
    let holder = other.begin().await.unwrap();
    holder
        .execute_unprepared(
            r#"LOCK TABLE "LiteLLM_UserTable", "LiteLLM_TeamMembership"
               IN SHARE UPDATE EXCLUSIVE MODE"#,
        )
        .await
        .unwrap();

    let adding = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .add_members(&group(1), &users(0..1200), commit())
                .await
        }
    });
    let analyze_waiting = || async {
        scalar_i64(
            db.conn(),
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
             AND wait_event_type = 'Lock' AND query LIKE 'ANALYZE%'",
        )
        .await
            == 1
    };
    assert!(
        within_a_minute(analyze_waiting).await,
        "1,200 new users and memberships were not followed by ANALYZE"
    );
    assert!(
        within_a_minute(|| async { adding.is_finished() }).await,
        "the commit waited for its ANALYZE"
    );
    adding.await.unwrap().unwrap();
    assert!(analyze_waiting().await, "ANALYZE did not wait for the lock");
    let analysed = r#"SELECT count(*) FROM pg_stat_user_tables
                      WHERE relname IN ('LiteLLM_UserTable', 'LiteLLM_TeamMembership')
                        AND last_analyze IS NOT NULL"#;
    assert_eq!(scalar_i64(db.conn(), analysed).await, 0);

    holder.commit().await.unwrap();
    let updated = within_a_minute(|| async {
        execute(db.conn(), "SELECT pg_stat_clear_snapshot()").await;
        scalar_i64(db.conn(), analysed).await == 2
            && scalar_i64(
                db.conn(),
                r#"SELECT reltuples::bigint FROM pg_class WHERE relname = 'LiteLLM_UserTable'"#,
            )
            .await
                == 1200
    })
    .await;
    assert!(updated, "the statistics were not updated");
}

/// `seq_scan` and `idx_scan` of LiteLLM's user table, once this session (the only one the store
/// under test has) has flushed its statistics: it does so before answering the request to.
async fn user_table_scans(conn: &sea_orm::DatabaseConnection) -> (i64, i64) {
    execute(conn, "SELECT pg_stat_force_next_flush()").await;
    let scans = |column: &str| {
        format!(
            "SELECT coalesce({column}, 0) FROM pg_stat_user_tables
             WHERE relname = 'LiteLLM_UserTable'"
        )
    };
    (
        scalar_i64(conn, &scans("seq_scan")).await,
        scalar_i64(conn, &scans("idx_scan")).await,
    )
}

/// The role path finds users as the membership path does (by id, then sso id, then email, each an
/// index lookup, each only for what the step before did not find), and so do a re-read, a rename
/// and a departure's keys: on 20,000 users, a role batch of 90 (found by id, by sso id, by email,
/// and new) and the rest never make PostgreSQL read the whole user table. The store works on one
/// session, whose statistics say it: `seq_scan` stays put while `idx_scan` grows.
#[tokio::test]
async fn the_role_path_finds_users_by_index_never_scanning_the_user_table() {
    use worker::store::Store;
    let db = TestDatabase::new().await;
    let conn = sea_orm::Database::connect(
        sea_orm::ConnectOptions::new(db.url())
            .max_connections(1)
            .min_connections(1)
            .to_owned(),
    )
    .await
    .unwrap();
    let store = Store::new(
        conn.clone(),
        worker::litellm_config::LiteLlmSettings::default(),
        RemovalMode::Managed,
    );
    let entra_id = "'5b000000-0000-4000-8000-' || lpad(n::text, 12, '0')";
    execute(
        &conn,
        &format!(
            r#"INSERT INTO "LiteLLM_UserTable" (user_id, sso_user_id, user_email, user_alias, metadata)
               SELECT 'filler-' || n, NULL, 'filler-' || n || '@example.com', NULL, '{{}}'
               FROM generate_series(1, 20000) AS n;
               -- Made by entra-sync: found by id.
               INSERT INTO "LiteLLM_UserTable" (user_id, sso_user_id, user_email, user_alias, metadata)
               SELECT {entra_id}, {entra_id}, 'user' || n || '@contoso.com', 'User ' || n, '{{}}'
               FROM generate_series(1, 30) AS n;
               -- Made by LiteLLM's SCIM (user id = UPN), linked: found by sso id.
               INSERT INTO "LiteLLM_UserTable" (user_id, sso_user_id, user_email, user_alias, metadata)
               SELECT 'User' || n || '@Contoso.com', {entra_id}, 'user' || n || '@contoso.com',
                      'User ' || n, '{{}}'
               FROM generate_series(31, 60) AS n;
               -- Invited by email, never signed in: found by email.
               INSERT INTO "LiteLLM_UserTable" (user_id, sso_user_id, user_email, user_alias, metadata)
               SELECT 'invited-' || n, NULL, 'user' || n || '@contoso.com', NULL, '{{}}'
               FROM generate_series(61, 80) AS n;
               ANALYZE "LiteLLM_UserTable";"#
        ),
    )
    .await;
    insert_key(
        &conn,
        "k-50",
        "User50@Contoso.com",
        None,
        None,
        "2026-11-01 00:00:00",
    )
    .await;
    let admins: Vec<(EntraUser, Vec<String>)> = users(1..91)
        .into_iter()
        .map(|user| (user, vec!["PROXY_ADMIN".to_owned()]))
        .collect();
    let (seq_before, idx_before) = user_table_scans(&conn).await;

    let made = store.set_user_roles(&admins, commit()).await.unwrap();
    let kinds = |kind: fn(&Change) -> bool| made.iter().filter(|c| kind(c)).count();
    assert_eq!(kinds(|c| matches!(c, Change::UserLinked { .. })), 20);
    assert_eq!(kinds(|c| matches!(c, Change::UserCreated { .. })), 10);
    assert_eq!(kinds(|c| matches!(c, Change::RoleChanged { .. })), 90);
    store
        .set_user_role(&entra_user(91), &["PROXY_ADMIN".into()], commit())
        .await
        .unwrap();
    store
        .set_role(&user_id(31), &["INTERNAL_USER".into()], commit())
        .await
        .unwrap();
    let everyone: Vec<EntraUser> = users(1..92);
    let unchanged = store
        .unchanged_users(&everyone.iter().collect::<Vec<_>>())
        .await
        .unwrap();
    // Those invited by email have no alias yet.
    assert_eq!(unchanged.len(), 71);
    let mut renamed = entra_user(40);
    renamed.display_name = Some("Renamed".into());
    store.update_user(&renamed, commit()).await.unwrap();
    store
        .revoke_roles(&(1..31).map(user_id).collect::<Vec<_>>(), commit())
        .await
        .unwrap();
    store
        .depart_user(&user_id(50), None, commit())
        .await
        .unwrap();
    store.update_user(&entra_user(50), commit()).await.unwrap();
    let (seq_after, idx_after) = user_table_scans(&conn).await;

    assert_eq!(
        user_row(&conn, "User40@Contoso.com")
            .await
            .user_alias
            .as_deref(),
        Some("Renamed")
    );
    assert_eq!(
        user_row(&conn, "User31@Contoso.com")
            .await
            .user_role
            .as_deref(),
        Some("internal_user")
    );
    assert_eq!(
        key_state(&conn, "k-50").await.map(|(blocked, _)| blocked),
        Some(Some(false)),
        "the departed user's key was not blocked and unblocked"
    );
    assert!(
        idx_after > idx_before,
        "the store's lookups were not counted"
    );
    assert_eq!(
        seq_after - seq_before,
        0,
        "the store read the whole user table"
    );
}
