//! The sync engine against graph-sim and LiteLLM's real schema: assignments, delta rounds,
//! unassignment policies, app roles and resync.
#![allow(clippy::unwrap_used)]

mod graph_common;

use entity::litellm::{team, user};
use entra_sync_testkit::TestDatabase;
use graph_common::*;
use graph_sim::GraphSim;
use graph_sim::tenant::AppRole;
use sea_orm::{ConnectionTrait, DbBackend, EntityTrait, Statement};
use uuid::Uuid;
use worker::litellm_config::LiteLlmSettings;
use worker::store::{RemovalMode, Store};
use worker::sync::{LeaseSettings, Syncer, UnassignedPolicy};

fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

async fn syncer(sim: &GraphSim, db: &TestDatabase, policy: UnassignedPolicy) -> Syncer {
    let settings = LiteLlmSettings::parse(
        "litellm_settings:\n  default_team_params:\n    max_budget: 50\n    models: [\"gpt-4o-mini\"]\n",
        "test",
        &|_| None,
    )
    .unwrap();
    let store = Store::new(db.conn().clone(), settings, RemovalMode::Managed);
    let (client, _) = secret_client(sim);
    Syncer::new(client, store, policy)
}

async fn team(db: &TestDatabase, n: u128) -> Option<team::Model> {
    team::Entity::find_by_id(gid(n).to_string())
        .one(db.conn())
        .await
        .unwrap()
}

async fn members(db: &TestDatabase, n: u128) -> Vec<String> {
    let team = team(db, n).await.unwrap();
    let mut ids: Vec<String> = team
        .members_with_roles
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["user_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

fn users_named(range: std::ops::RangeInclusive<u128>) -> Vec<String> {
    let mut ids: Vec<String> = range.map(|n| uid(n).to_string()).collect();
    ids.sort();
    ids
}

async fn role_of(db: &TestDatabase, n: u128) -> Option<String> {
    user::Entity::find_by_id(uid(n).to_string())
        .one(db.conn())
        .await
        .unwrap()
        .and_then(|u| u.user_role)
}

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
async fn an_assigned_group_becomes_a_team_with_its_members_and_others_are_ignored() {
    let sim = sim(|_| {}).await;
    let db = TestDatabase::new().await;
    let syncer = syncer(&sim, &db, UnassignedPolicy::RemoveMembers).await;

    let report = syncer.poll_assignments(now()).await.unwrap();

    assert_eq!((report.assigned_groups, report.newly_assigned), (1, 1));
    let engineering = team(&db, 1).await.unwrap();
    assert_eq!(engineering.team_alias.as_deref(), Some("Engineering"));
    assert_eq!(engineering.max_budget, Some(50.0));
    assert_eq!(members(&db, 1).await, users_named(1..=5));
    assert_eq!(
        count(&db, r#"SELECT count(*) FROM "LiteLLM_TeamMembership""#).await,
        5
    );
    let alice = user::Entity::find_by_id(uid(1).to_string())
        .one(db.conn())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(alice.teams.as_deref(), Some(&[gid(1).to_string()][..]));
    assert_eq!(alice.user_email.as_deref(), Some("user1@contoso.example"));
    assert!(
        team(&db, 2).await.is_none(),
        "Research is not assigned to the app"
    );
    // User 9 is assigned directly with proxy_admin.
    assert_eq!(role_of(&db, 9).await.as_deref(), Some("proxy_admin"));

    // Polling again changes nothing.
    assert!(
        syncer
            .poll_assignments(now())
            .await
            .unwrap()
            .changes
            .is_empty()
    );
}

/// The first start: the poll reads every assigned group whole, having taken the delta's starting
/// point first; the first round then carries only what changed since, and reads nothing again.
#[tokio::test]
async fn the_first_round_after_the_first_sync_reads_only_what_changed() {
    let sim = sim(|_| {}).await;
    let db = TestDatabase::new().await;
    let syncer = syncer(&sim, &db, UnassignedPolicy::RemoveMembers).await;
    syncer.poll_assignments(now()).await.unwrap();
    assert_eq!(members(&db, 1).await, users_named(1..=5));

    sim.apply(|t| t.add_member(gid(1), uid(6)));
    sim.clear_requests();
    let first = syncer.delta_round(now()).await.unwrap();
    assert!(!first.resynced, "the poll stored the deltaLink");
    assert_eq!(members(&db, 1).await, users_named(1..=6));
    assert_eq!(
        first.changes.total(),
        2,
        "user 6 created and added: {:?}",
        first.changes
    );
    assert_eq!(
        sim.count("/groups/delta"),
        1,
        "one delta request from the stored link, no filtered full read"
    );
}

#[tokio::test]
async fn delta_rounds_apply_members_added_removed_and_renames_of_assigned_groups() {
    let sim = sim(|c| c.page_size = 2).await;
    let db = TestDatabase::new().await;
    let syncer = syncer(&sim, &db, UnassignedPolicy::RemoveMembers).await;
    syncer.poll_assignments(now()).await.unwrap();

    sim.apply(|t| t.add_member(gid(1), uid(6)));
    sim.apply(|t| t.remove_member(gid(1), uid(1)));
    sim.apply(|t| t.upsert_group(gid(1), "Platform", None));
    sim.apply(|t| t.add_member(gid(2), uid(10)));
    let round = syncer.delta_round(now()).await.unwrap();

    assert!(!round.resynced);
    assert_eq!(round.groups_applied, 1);
    assert_eq!(members(&db, 1).await, users_named(2..=6));
    assert_eq!(
        team(&db, 1).await.unwrap().team_alias.as_deref(),
        Some("Platform")
    );
    assert!(team(&db, 2).await.is_none());
    let gone = user::Entity::find_by_id(uid(1).to_string())
        .one(db.conn())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(gone.teams.as_deref(), Some(&[][..]));

    let quiet = syncer.delta_round(now()).await.unwrap();
    assert!(quiet.changes.is_empty());
}

async fn retire_with(
    policy: UnassignedPolicy,
    by_deleting: bool,
) -> (TestDatabase, Option<team::Model>) {
    let sim = sim(|_| {}).await;
    let db = TestDatabase::new().await;
    let syncer = syncer(&sim, &db, policy).await;
    syncer.poll_assignments(now()).await.unwrap();
    syncer.delta_round(now()).await.unwrap();
    if by_deleting {
        sim.apply(|t| t.soft_delete_group(gid(1)));
        syncer.delta_round(now()).await.unwrap();
    } else {
        sim.change(|t| (t.unassign(gid(1)), Vec::new()));
        syncer.poll_assignments(now()).await.unwrap();
    }
    let team = team(&db, 1).await;
    (db, team)
}

#[tokio::test]
async fn an_unassigned_group_follows_each_policy() {
    let (db, kept) = retire_with(UnassignedPolicy::Keep, false).await;
    assert!(!kept.unwrap().blocked);
    assert_eq!(members(&db, 1).await.len(), 5);

    let (db, removed) = retire_with(UnassignedPolicy::RemoveMembers, false).await;
    assert!(!removed.unwrap().blocked, "the team and its history stay");
    assert!(members(&db, 1).await.is_empty());
    assert_eq!(
        count(&db, r#"SELECT count(*) FROM "LiteLLM_TeamMembership""#).await,
        0
    );

    let (db, blocked) = retire_with(UnassignedPolicy::Block, false).await;
    assert!(blocked.unwrap().blocked);
    assert_eq!(members(&db, 1).await.len(), 5);
    assert_eq!(
        count(&db, "SELECT count(*) FROM entra_sync_assigned_groups").await,
        0
    );
}

#[tokio::test]
async fn under_the_block_policy_a_reassigned_or_restored_group_is_unblocked() {
    for restore in [false, true] {
        let sim = sim(|_| {}).await;
        let db = TestDatabase::new().await;
        let syncer = syncer(&sim, &db, UnassignedPolicy::Block).await;
        syncer.poll_assignments(now()).await.unwrap();
        syncer.delta_round(now()).await.unwrap();
        if restore {
            sim.apply(|t| t.soft_delete_group(gid(1)));
            syncer.delta_round(now()).await.unwrap();
        } else {
            sim.change(|t| (t.unassign(gid(1)), Vec::new()));
            syncer.poll_assignments(now()).await.unwrap();
        }
        assert!(team(&db, 1).await.unwrap().blocked);

        if restore {
            sim.apply(|t| t.restore_group(gid(1)));
            syncer.delta_round(now()).await.unwrap();
        } else {
            sim.change(|t| {
                t.assign(gid(1), Uuid::nil()).unwrap();
                ((), Vec::new())
            });
        }
        syncer.poll_assignments(now()).await.unwrap();
        syncer.delta_round(now()).await.unwrap();
        let team = team(&db, 1).await.unwrap();
        assert!(!team.blocked, "restored: {restore}");
        assert_eq!(members(&db, 1).await, users_named(1..=5));
    }
}

#[tokio::test]
async fn a_deleted_group_follows_the_policy_too() {
    let (db, team) = retire_with(UnassignedPolicy::RemoveMembers, true).await;
    assert!(team.is_some());
    assert!(members(&db, 1).await.is_empty());
}

#[tokio::test]
async fn app_roles_direct_and_through_a_group_highest_wins_and_revocation() {
    let sim = sim(|_| {}).await;
    let viewer_role = Uuid::from_u128(0xbeef);
    sim.change(|t| {
        t.app.app_roles.push(AppRole {
            id: viewer_role,
            value: "Proxy_Admin_Viewer".into(),
            display_name: "Viewer".into(),
            is_enabled: true,
        });
        // Research (users 3-8) gets internal_user; user 3 also gets the viewer role directly.
        t.assign(gid(2), role_id(2)).unwrap();
        t.assign(uid(3), viewer_role).unwrap();
        ((), Vec::new())
    });
    let db = TestDatabase::new().await;
    let syncer = syncer(&sim, &db, UnassignedPolicy::RemoveMembers).await;

    syncer.poll_assignments(now()).await.unwrap();

    assert_eq!(
        role_of(&db, 4).await.as_deref(),
        Some("internal_user"),
        "through the group"
    );
    assert_eq!(
        role_of(&db, 3).await.as_deref(),
        Some("proxy_admin_viewer"),
        "highest, any case"
    );
    assert_eq!(
        role_of(&db, 9).await.as_deref(),
        Some("proxy_admin"),
        "direct"
    );
    assert_eq!(
        role_of(&db, 1).await.as_deref(),
        Some("internal_user_viewer"),
        "no role: default"
    );

    // The admin loses the role; user 5 leaves Research; user 4's role was changed by hand.
    sim.change(|t| (t.unassign(uid(9)), Vec::new()));
    sim.apply(|t| t.remove_member(gid(2), uid(5)));
    db.conn()
        .execute_unprepared(&format!(
            r#"UPDATE "LiteLLM_UserTable" SET user_role = 'org_admin' WHERE user_id = '{}'"#,
            uid(4)
        ))
        .await
        .unwrap();
    syncer.poll_assignments(now()).await.unwrap();

    assert_eq!(
        role_of(&db, 9).await.as_deref(),
        Some("internal_user_viewer"),
        "a revoked admin"
    );
    assert_eq!(
        role_of(&db, 5).await.as_deref(),
        Some("internal_user_viewer")
    );
    assert_eq!(
        role_of(&db, 4).await.as_deref(),
        Some("org_admin"),
        "set by hand: left alone"
    );
}

#[tokio::test]
async fn an_expired_delta_token_resyncs_the_assigned_groups() {
    let sim = sim(|_| {}).await;
    let db = TestDatabase::new().await;
    let syncer = syncer(&sim, &db, UnassignedPolicy::RemoveMembers).await;
    syncer.poll_assignments(now()).await.unwrap();
    syncer.delta_round(now()).await.unwrap();

    sim.change(|t| {
        t.expire_delta_tokens();
        ((), Vec::new())
    });
    sim.apply(|t| t.add_member(gid(1), uid(7)));
    sim.apply(|t| t.remove_member(gid(1), uid(2)));
    sim.apply(|t| t.upsert_group(gid(1), "Platform", None));
    let round = syncer.delta_round(now()).await.unwrap();

    assert!(round.resynced);
    assert_eq!(
        team(&db, 1).await.unwrap().team_alias.as_deref(),
        Some("Platform"),
        "a resync takes the group's current name from Graph, not the one stored at the last poll"
    );
    let mut expected = users_named(1..=5);
    expected.retain(|id| *id != uid(2).to_string());
    expected.push(uid(7).to_string());
    expected.sort();
    assert_eq!(members(&db, 1).await, expected);
    assert!(syncer.delta_round(now()).await.unwrap().changes.is_empty());
}

/// Another replica's unit of work: it holds the sync lease for `seconds` more.
async fn other_replica_holds_the_lease(db: &TestDatabase, seconds: i64) {
    db.conn()
        .execute_unprepared(&format!(
            "INSERT INTO entra_sync_leases (name, holder, expires_at, fence)
             VALUES ('sync', 'other-replica', now() + interval '{seconds} seconds', 41)
             ON CONFLICT (name) DO UPDATE SET holder = 'other-replica',
               expires_at = now() + interval '{seconds} seconds',
               fence = entra_sync_leases.fence + 1"
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn rounds_of_two_replicas_never_interleave_and_hold_no_transaction_open() {
    let sim = sim(|_| {}).await;
    let db = TestDatabase::new().await;
    let syncer = syncer(&sim, &db, UnassignedPolicy::RemoveMembers)
        .await
        .with_lease(LeaseSettings {
            holder: "ours".into(),
            ttl: std::time::Duration::from_secs(3),
            patience: std::time::Duration::from_millis(300),
        });
    syncer.poll_assignments(now()).await.unwrap();
    let members_before = members(&db, 1).await;

    // Another replica is in the middle of a round: ours gives up after its patience, having
    // written nothing.
    other_replica_holds_the_lease(&db, 60).await;
    sim.apply(|t| t.remove_member(gid(1), uid(2)));
    let busy = syncer.delta_round(now()).await.unwrap_err();
    assert!(
        matches!(&busy, worker::Error::LeaseBusy { holder, .. } if holder == "other-replica"),
        "{busy}"
    );
    assert_eq!(members(&db, 1).await, members_before);

    // While a round of ours waits for Graph, no transaction of ours is open in PostgreSQL.
    sim.add_fault(graph_sim::Fault::delay("/groups/delta", 1500, 1));
    let answered = sim.count("/groups/delta");
    db.conn()
        .execute_unprepared("UPDATE entra_sync_leases SET expires_at = now() WHERE name = 'sync'")
        .await
        .unwrap();
    let ours = tokio::spawn({
        let syncer = syncer.clone();
        async move { syncer.delta_round(now()).await }
    });
    let mut held_by_us = false;
    for _ in 0..100 {
        held_by_us = count(
            &db,
            "SELECT count(*) FROM entra_sync_leases WHERE name = 'sync' AND holder = 'ours' \
             AND expires_at > now()",
        )
        .await
            == 1;
        if held_by_us {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(held_by_us, "our round did not take the lease");
    // The delta query has reached graph-sim (its delay fault is taken) and is not answered yet:
    // the round is waiting for Graph.
    let mut waiting_for_graph = false;
    for _ in 0..100 {
        waiting_for_graph = sim.faults().is_empty();
        if waiting_for_graph {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(waiting_for_graph, "our round did not ask Graph");
    let open = count(
        &db,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND state LIKE 'idle in transaction%'",
    )
    .await;
    assert_eq!(
        sim.count("/groups/delta"),
        answered,
        "looked after Graph answered: the test proves nothing"
    );
    assert_eq!(open, 0, "a transaction stays open across Graph calls");
    ours.await.unwrap().unwrap();
    assert!(!members(&db, 1).await.contains(&uid(2).to_string()));
    // Given back at once: another replica could take it now.
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM entra_sync_leases WHERE name = 'sync' AND expires_at > now()"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn work_whose_lease_passed_to_another_replica_commits_nothing() {
    let sim = sim(|_| {}).await;
    let db = TestDatabase::new().await;
    let syncer = syncer(&sim, &db, UnassignedPolicy::RemoveMembers)
        .await
        .with_lease(LeaseSettings {
            holder: "paused".into(),
            ttl: std::time::Duration::from_secs(3),
            patience: std::time::Duration::from_secs(5),
        });
    syncer.poll_assignments(now()).await.unwrap();
    syncer.delta_round(now()).await.unwrap();
    let before = members(&db, 1).await;

    // Our round is slow in Graph; meanwhile our lease runs out (as for a replica that paused
    // or lost its connection) and another replica takes it over.
    sim.add_fault(graph_sim::Fault::delay("/groups/delta", 2000, 1));
    sim.apply(|t| t.remove_member(gid(1), uid(3)));
    let ours = tokio::spawn({
        let syncer = syncer.clone();
        async move { syncer.delta_round(now()).await }
    });
    let mut taken = false;
    for _ in 0..100 {
        taken = count(
            &db,
            "SELECT count(*) FROM entra_sync_leases WHERE name = 'sync' AND holder = 'paused' \
             AND expires_at > now()",
        )
        .await
            == 1;
        if taken {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(taken, "our round did not take the lease");
    other_replica_holds_the_lease(&db, 60).await;

    let lost = ours.await.unwrap().unwrap_err();
    assert!(matches!(lost, worker::Error::LeaseLost { .. }), "{lost}");
    assert_eq!(members(&db, 1).await, before, "a stale round wrote");
}

/// Research (users 3-8) holds the app role internal_user; polled once.
async fn research_holds_internal_user() -> (GraphSim, TestDatabase, Syncer) {
    let sim = sim(|_| {}).await;
    sim.change(|t| {
        t.assign(gid(2), role_id(2)).unwrap();
        ((), Vec::new())
    });
    let db = TestDatabase::new().await;
    let syncer = syncer(&sim, &db, UnassignedPolicy::RemoveMembers).await;
    syncer.poll_assignments(now()).await.unwrap();
    (sim, db, syncer)
}

/// A poll that finds the assignments and app roles as it left them reads them, compares, and
/// stops: no group is read, no role written.
#[tokio::test]
async fn an_unchanged_poll_reads_the_assignments_and_nothing_else() {
    let (sim, db, syncer) = research_holds_internal_user().await;
    let audit_before = audit_rows(&db).await;

    sim.clear_requests();
    let report = syncer.poll_assignments(now()).await.unwrap();
    assert!(report.changes.is_empty());
    let paths: Vec<String> = sim.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(
        paths.len(),
        2,
        "the app and its assignments only: {paths:?}"
    );
    assert!(
        paths.iter().all(|p| p.contains("servicePrincipals")),
        "{paths:?}"
    );
    assert_eq!(audit_rows(&db).await, audit_before);
}

/// A member joins a role-holding group: the round that brings the change marks the roles stale,
/// and the next poll works them out again.
#[tokio::test]
async fn a_member_of_a_role_holding_group_gets_the_role_at_the_poll_after_its_round() {
    let (sim, db, syncer) = research_holds_internal_user().await;
    assert_eq!(role_of(&db, 10).await, None, "user 10 is in no group yet");

    sim.apply(|t| t.add_member(gid(2), uid(10)));
    syncer.delta_round(now()).await.unwrap();
    sim.clear_requests();
    syncer.poll_assignments(now()).await.unwrap();
    assert_eq!(role_of(&db, 10).await.as_deref(), Some("internal_user"));
    assert!(
        sim.count("/members") >= 1,
        "the role-holding group was read"
    );

    // Current again: the next poll reads nothing more.
    sim.clear_requests();
    syncer.poll_assignments(now()).await.unwrap();
    assert_eq!(sim.count("/members"), 0);
}

/// An app role disabled in the app registration: same assignments, different roles.
#[tokio::test]
async fn an_app_role_disabled_changes_the_poll_and_its_holders_lose_it() {
    let sim = sim(|_| {}).await;
    let db = TestDatabase::new().await;
    let syncer = syncer(&sim, &db, UnassignedPolicy::RemoveMembers).await;
    syncer.poll_assignments(now()).await.unwrap();
    assert_eq!(role_of(&db, 9).await.as_deref(), Some("proxy_admin"));

    sim.change(|t| {
        for role in &mut t.app.app_roles {
            if role.id == role_id(PROXY_ADMIN_ROLE) {
                role.is_enabled = false;
            }
        }
        ((), Vec::new())
    });
    syncer.poll_assignments(now()).await.unwrap();
    assert_eq!(
        role_of(&db, 9).await.as_deref(),
        Some("internal_user_viewer")
    );
}

async fn audit_rows(db: &TestDatabase) -> i64 {
    db.conn()
        .query_one(Statement::from_string(
            DbBackend::Postgres,
            "SELECT count(*) FROM entra_sync_audit_log",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index::<i64>(0)
        .unwrap()
}
