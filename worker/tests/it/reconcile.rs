//! Reconciliation (the backstop when notifications never come) and users: renames, deletions and
//! disabled accounts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::graph_common;
use crate::world;

use chrono::Utc;
use entity::litellm::user;
use graph_sim::tenant::User;
use sea_orm::{ConnectionTrait, EntityTrait};
use world::*;

use graph_common::*;

async fn litellm_user(world: &World, n: u128) -> Option<user::Model> {
    user::Entity::find_by_id(uid(n).to_string())
        .one(world.db.conn())
        .await
        .unwrap()
}

/// Every row of LiteLLM's tables and entra-sync's, as text: equal snapshots, equal databases.
async fn snapshot(world: &World) -> String {
    let mut all = String::new();
    for table in [
        r#""LiteLLM_TeamTable""#,
        r#""LiteLLM_UserTable""#,
        r#""LiteLLM_TeamMembership""#,
        "entra_sync_managed_memberships",
        "entra_sync_managed_roles",
        "entra_sync_assigned_groups",
        "entra_sync_delta_links",
        "entra_sync_audit_log",
        "entra_sync_reconciliations",
    ] {
        let row = world
            .db
            .conn()
            .query_one(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                format!("SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY to_jsonb(t)::text), '[]')::text AS rows FROM {table} t"),
            ))
            .await
            .unwrap()
            .unwrap();
        all.push_str(&row.try_get::<String>("", "rows").unwrap());
        all.push('\n');
    }
    all
}

/// Entra changes while Graph delivers nothing: a member added, one removed, a rename, a new
/// admin, a new group assigned, a user renamed and one disabled.
fn drift_in_entra(world: &World) {
    world.sim.set_delivery(|d| d.enabled = false);
    world.sim.apply(|t| t.add_member(gid(1), uid(6)));
    world.sim.apply(|t| t.remove_member(gid(1), uid(2)));
    world
        .sim
        .apply(|t| t.upsert_group(gid(1), "Platform", None));
    world.sim.change(|t| {
        t.assign(uid(4), role_id(PROXY_ADMIN_ROLE));
        ((), Vec::new())
    });
    world.sim.change(|t| {
        t.assign(gid(2), role_id(2));
        ((), Vec::new())
    });
    world.sim.apply(|t| {
        t.upsert_user(User {
            id: uid(3),
            display_name: "User Three (renamed)".into(),
            user_principal_name: "three@contoso.example".into(),
            mail: None,
            account_enabled: true,
        })
    });
    world.sim.apply(|t| {
        t.upsert_user(User {
            id: uid(5),
            display_name: "User 5".into(),
            user_principal_name: "user5@contoso.example".into(),
            mail: None,
            account_enabled: false,
        })
    });
}

#[tokio::test]
async fn with_delivery_off_reconciliation_alone_converges() {
    let world = World::new().await;
    let syncer = world.syncer();
    syncer.poll_assignments(Utc::now()).await.unwrap();
    syncer.delta_round(Utc::now()).await.unwrap();
    assert_eq!(world.members(1).await, Some(users(1..=5)));
    let before = world.stream.len();

    drift_in_entra(&world);
    let report = syncer.reconcile(Utc::now()).await.unwrap();
    assert!(!report.changes.is_empty());
    assert_eq!(world.stream.len(), before, "nothing was notified");

    let mut expected = vec![uid(1), uid(3), uid(4), uid(6)]
        .into_iter()
        .map(|u| u.to_string())
        .collect::<Vec<_>>();
    expected.sort();
    assert_eq!(world.members(1).await, Some(expected), "user 5 is disabled");
    assert_eq!(world.alias(1).await.as_deref(), Some("Platform"));
    // Group 2's direct user members (its nested group is not expanded).
    assert_eq!(
        world.members(2).await,
        Some(
            users(3..=8)
                .into_iter()
                .filter(|u| *u != uid(5).to_string())
                .collect()
        )
    );
    assert_eq!(
        litellm_user(&world, 4).await.unwrap().user_role.as_deref(),
        Some("proxy_admin")
    );
    let three = litellm_user(&world, 3).await.unwrap();
    assert_eq!(three.user_email.as_deref(), Some("three@contoso.example"));
    assert_eq!(three.user_alias.as_deref(), Some("User Three (renamed)"));
    let five = litellm_user(&world, 5).await.unwrap();
    assert_eq!(
        five.teams.unwrap_or_default(),
        Vec::<String>::new(),
        "disabled: no teams"
    );

    // Converged: a second reconciliation finds nothing, and it is recorded with its drift.
    assert!(
        syncer
            .reconcile(Utc::now())
            .await
            .unwrap()
            .changes
            .is_empty()
    );
    let runs = entity::sync::reconciliation::Entity::find()
        .all(world.db.conn())
        .await
        .unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(
        runs[0].changes,
        i64::try_from(report.changes.total()).unwrap()
    );
    assert_eq!(runs[1].changes, 0);
}

fn sorted_json(changes: &[worker::store::Change]) -> Vec<String> {
    let mut lines: Vec<String> = changes
        .iter()
        .map(|c| serde_json::to_string(c).unwrap())
        .collect();
    lines.sort();
    lines
}

#[tokio::test]
async fn a_dry_run_writes_nothing_and_lists_exactly_what_the_real_run_then_makes() {
    let world = World::new().await;
    let syncer = world.syncer();
    syncer.poll_assignments(Utc::now()).await.unwrap();
    syncer.delta_round(Utc::now()).await.unwrap();
    drift_in_entra(&world);
    // And drift made by hand in LiteLLM: a member's traces removed behind entra-sync's back.
    world
        .db
        .conn()
        .execute_unprepared(&format!(
            r#"DELETE FROM "LiteLLM_TeamMembership" WHERE user_id = '{}'"#,
            uid(1)
        ))
        .await
        .unwrap();

    let before = snapshot(&world).await;
    let planned = syncer
        .clone()
        .dry_run()
        .reconcile(Utc::now())
        .await
        .unwrap();
    assert_eq!(snapshot(&world).await, before, "a dry run writes nothing");
    assert!(planned.dry_run);

    let made = syncer.reconcile(Utc::now()).await.unwrap();
    assert!(made.changes.total() >= 10, "{:?}", made.changes);
    assert_eq!(
        sorted_json(planned.changes.list()),
        sorted_json(made.changes.list())
    );
    assert_eq!(planned.changes.total(), made.changes.total());
}

#[tokio::test]
async fn user_notifications_rename_and_remove_users() {
    let mut world = World::new().await;
    // The worker's subscriptions, users included.
    let manager = world.subscription_manager();
    manager.ensure(Utc::now()).await.unwrap();
    world.start_worker();
    assert!(eventually(|| async { world.members(1).await == Some(users(1..=5)) }).await);

    // Renamed in Entra: email and display name follow, in the user row and the team's entry.
    world.sim.apply(|t| {
        t.upsert_user(User {
            id: uid(2),
            display_name: "Grace Hopper".into(),
            user_principal_name: "grace@contoso.example".into(),
            mail: None,
            account_enabled: true,
        })
    });
    assert!(
        eventually(|| async {
            litellm_user(&world, 2)
                .await
                .and_then(|u| u.user_email)
                .as_deref()
                == Some("grace@contoso.example")
        })
        .await
    );
    assert_eq!(
        litellm_user(&world, 2).await.unwrap().user_alias.as_deref(),
        Some("Grace Hopper")
    );
    let team = entity::litellm::team::Entity::find_by_id(gid(1).to_string())
        .one(world.db.conn())
        .await
        .unwrap()
        .unwrap();
    let entry = team
        .members_with_roles
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["user_id"] == uid(2).to_string())
        .unwrap()
        .clone();
    assert_eq!(entry["user_email"], "grace@contoso.example");

    // Disabled: only a users notification comes; the user loses the team, the row stays.
    world.sim.apply(|t| {
        t.upsert_user(User {
            id: uid(3),
            display_name: "User 3".into(),
            user_principal_name: "user3@contoso.example".into(),
            mail: None,
            account_enabled: false,
        })
    });
    assert!(
        eventually(|| async {
            world
                .members(1)
                .await
                .is_some_and(|m| !m.contains(&uid(3).to_string()))
        })
        .await,
        "a disabled user kept the team"
    );
    assert!(litellm_user(&world, 3).await.is_some());

    // Deleted: gone from the team too.
    world.sim.apply(|t| t.delete_user(uid(4)));
    let expected: Vec<String> = [1, 2, 5].map(|n| uid(n).to_string()).into_iter().collect();
    let mut expected = expected;
    expected.sort();
    assert!(eventually(|| async { world.members(1).await == Some(expected.clone()) }).await);
    assert!(
        litellm_user(&world, 4)
            .await
            .unwrap()
            .teams
            .unwrap_or_default()
            .is_empty()
    );
    world.stop_workers().await;
    assert!(world.dead.is_empty());
}

#[tokio::test]
async fn counting_only_a_report_counts_by_kind_exactly_what_the_audit_log_holds_and_lists_none() {
    let world = World::new().await;
    let syncer = world.syncer().counting_only();
    let report = syncer.poll_assignments(Utc::now()).await.unwrap();
    assert!(report.changes.list().is_empty(), "nothing is listed");
    let counted: Vec<(String, i64)> = report
        .changes
        .by_kind()
        .map(|(kind, count)| (kind.to_owned(), i64::try_from(count).unwrap()))
        .collect();
    let audited: Vec<(String, i64)> = world
        .db
        .conn()
        .query_all(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT kind, count(*) FROM entra_sync_audit_log GROUP BY kind ORDER BY kind",
        ))
        .await
        .unwrap()
        .into_iter()
        .map(|row| {
            (
                row.try_get_by_index::<String>(0).unwrap(),
                row.try_get_by_index::<i64>(1).unwrap(),
            )
        })
        .collect();
    assert!(
        audited.iter().any(|(kind, _)| kind == "member_added"),
        "the new group's members were added: {audited:?}"
    );
    assert_eq!(counted, audited);
    assert_eq!(world.members(1).await, Some(users(1..=5)));
}

#[tokio::test]
async fn reconciliations_with_drift_in_a_row_are_counted_from_the_newest_failed_ones_aside() {
    let world = World::new().await;
    let store = worker::store::Store::new(
        world.db.conn().clone(),
        Default::default(),
        worker::store::RemovalMode::Managed,
    );
    let record = |changes: u64, error: Option<&str>| {
        let store = store.clone();
        let error = error.map(str::to_owned);
        async move {
            let record = worker::store::ReconciliationRecord {
                started_at: Utc::now(),
                changes,
                error,
            };
            store
                .record_reconciliation(record, worker::store::ApplyOptions::commit(Utc::now()))
                .await
                .unwrap();
        }
    };
    assert_eq!(store.reconciliations_with_drift(10).await.unwrap(), 0);
    record(3, None).await;
    record(0, None).await;
    record(2, None).await;
    assert_eq!(store.reconciliations_with_drift(10).await.unwrap(), 1);
    // A failed one between them does not break the run.
    record(0, Some("Graph away")).await;
    record(5, None).await;
    assert_eq!(store.reconciliations_with_drift(10).await.unwrap(), 2);
    assert_eq!(store.reconciliations_with_drift(1).await.unwrap(), 1);
    record(0, None).await;
    assert_eq!(store.reconciliations_with_drift(10).await.unwrap(), 0);
}

#[tokio::test]
async fn a_failed_reconciliation_is_due_again_at_the_next_check_and_a_successful_one_after_the_interval()
 {
    use sea_orm::QueryOrder;

    let world = World::new().await;
    let syncer = world.syncer();
    let hour = chrono::Duration::hours(1);
    let minute = chrono::Duration::minutes(1);
    // Whole seconds, as the table keeps them exactly.
    let first = chrono::SubsecRound::trunc_subsecs(Utc::now(), 0);
    // Graph refuses the tenant's users listing, the reconciliation's first read.
    world.sim.add_fault(graph_sim::Fault {
        times: None,
        ..graph_sim::Fault::status("/v1.0/users", 400, 1)
    });
    assert!(syncer.reconcile_if_due(first, hour).await.is_err());

    // A minute later (the next check), it is due again: the failed run does not count.
    world.sim.clear_faults();
    let second = first + minute;
    assert!(
        syncer
            .reconcile_if_due(second, hour)
            .await
            .unwrap()
            .is_some(),
        "a failed reconciliation waited for the interval"
    );
    // A successful one does: not due before the interval has passed since it.
    assert!(
        syncer
            .reconcile_if_due(second + minute, hour)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        syncer
            .reconcile_if_due(second + hour + minute, hour)
            .await
            .unwrap()
            .is_some()
    );
    let runs: Vec<(Option<String>, chrono::DateTime<Utc>)> =
        entity::sync::reconciliation::Entity::find()
            .order_by_asc(entity::sync::reconciliation::Column::Id)
            .all(world.db.conn())
            .await
            .unwrap()
            .into_iter()
            .map(|run| (run.error, run.started_at))
            .collect();
    assert_eq!(runs.len(), 3, "{runs:?}");
    assert!(
        runs[0].0.as_deref().is_some_and(|e| e.contains("400")),
        "{runs:?}"
    );
    assert_eq!(runs[1], (None, second));
    assert_eq!(runs[2], (None, second + hour + minute));
}
