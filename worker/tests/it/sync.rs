//! The sync engine against graph-sim and LiteLLM's real schema: assignments, delta rounds,
//! unassignment policies, app roles and resync.
#![allow(clippy::unwrap_used)]

use crate::graph_common;

use entity::UserId;
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
    syncer_on(sim, db.conn().clone(), policy)
}

/// A syncer writing through `db` (directly, or through PgBouncer).
pub(crate) fn syncer_on(
    sim: &GraphSim,
    db: impl Into<migration::database::Db>,
    policy: UnassignedPolicy,
) -> Syncer {
    let settings = LiteLlmSettings::parse(
        "litellm_settings:\n  default_team_params:\n    max_budget: 50\n    models: [\"gpt-4o-mini\"]\n",
        "test",
        &|_| None,
    )
    .unwrap();
    let store = Store::new(db, settings, RemovalMode::Managed);
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

/// Groups read through delta with `$filter`: each request names up to 50 groups.
fn filtered_delta_reads(sim: &GraphSim) -> usize {
    sim.requests()
        .iter()
        .filter(|r| r.path.contains("groups/delta") && r.query.contains("filter"))
        .count()
}

/// Whether graph-sim took its one delay fault within two seconds: a request is on its way and
/// not answered yet.
async fn graph_was_asked(sim: &GraphSim) -> bool {
    for _ in 0..100 {
        if sim.faults().is_empty() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    false
}

/// Sessions of the test database idle in a transaction.
async fn open_transactions(db: &TestDatabase) -> i64 {
    count(
        db,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND state LIKE 'idle in transaction%'",
    )
    .await
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
async fn a_poll_that_fails_after_finding_a_group_unassigned_retires_it_at_the_next() {
    let sim = sim(|_| {}).await;
    let db = TestDatabase::new().await;
    let syncer = syncer(&sim, &db, UnassignedPolicy::RemoveMembers).await;
    syncer.poll_assignments(now()).await.unwrap();
    assert_eq!(members(&db, 1).await, users_named(1..=5));

    // Group 1 is unassigned; the poll that finds it fails afterwards (reading user 9, whose
    // role is assigned directly, is refused): it removes nobody, and forgets nothing.
    sim.change(|t| {
        t.unassign(gid(1));
        ((), Vec::new())
    });
    sim.add_fault(graph_sim::Fault {
        times: None,
        ..graph_sim::Fault::status("/directoryObjects/getByIds", 400, 1)
    });
    assert!(syncer.poll_assignments(now()).await.is_err());
    assert_eq!(members(&db, 1).await, users_named(1..=5));
    assert_eq!(
        count(&db, "SELECT count(*) FROM entra_sync_assigned_groups").await,
        1
    );

    // The next poll retires it (it was forgotten once, its members kept for good).
    sim.clear_faults();
    syncer.poll_assignments(now()).await.unwrap();
    assert!(members(&db, 1).await.is_empty());
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
    assert!(graph_was_asked(&sim).await, "our round did not ask Graph");
    let open = open_transactions(&db).await;
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

// Nothing irreversible on missing evidence (issue 21): what entra-sync needs before it removes a
// member or revokes a key, and the threshold over which it holds removals for a person.

use crate::common;

const CREATED: &str = "2026-11-01 00:00:00";

async fn key(db: &TestDatabase, token: &str, user: u128, team: Option<u128>) {
    let team = team.map(|t| gid(t).to_string());
    common::insert_key(
        db.conn(),
        token,
        &uid(user).to_string(),
        team.as_deref(),
        None,
        CREATED,
    )
    .await;
}

async fn key_state(db: &TestDatabase, token: &str) -> Option<(Option<bool>, serde_json::Value)> {
    common::key_state(db.conn(), token).await
}

fn untouched() -> Option<(Option<bool>, serde_json::Value)> {
    Some((None, serde_json::json!({"note": "kept"})))
}

/// A key entra-sync blocked and unblocked again.
fn unblocked() -> Option<(Option<bool>, serde_json::Value)> {
    Some((Some(false), serde_json::json!({"note": "kept"})))
}

fn blocked_for(reason: &str) -> Option<(Option<bool>, serde_json::Value)> {
    Some((
        Some(true),
        serde_json::json!({"note": "kept", "entra_sync_blocked": reason}),
    ))
}

async fn failed_items(db: &TestDatabase) -> Vec<(String, String, String)> {
    db.conn()
        .query_all(Statement::from_string(
            DbBackend::Postgres,
            "SELECT kind, id, error FROM entra_sync_failed_items ORDER BY kind, id",
        ))
        .await
        .unwrap()
        .into_iter()
        .map(|row| {
            (
                row.try_get("", "kind").unwrap(),
                row.try_get("", "id").unwrap(),
                row.try_get("", "error").unwrap(),
            )
        })
        .collect()
}

fn kinds(changes: &worker::store::Changes) -> Vec<(&'static str, u64)> {
    changes.by_kind().collect()
}

#[tokio::test]
async fn a_member_graph_cannot_read_keeps_her_team_and_key_through_a_reconciliation() {
    let sim = sim(|_| {}).await;
    let db = TestDatabase::new().await;
    let syncer = syncer(&sim, &db, UnassignedPolicy::RemoveMembers).await;
    let t0 = now();
    syncer.poll_assignments(t0).await.unwrap();
    key(&db, "three-team", 3, Some(1)).await;
    // Replication lag: getByIds and GET /users leave her out; the group still lists her.
    sim.lag(uid(3));

    let report = syncer.reconcile(t0).await.unwrap();

    assert_eq!(members(&db, 1).await, users_named(1..=5));
    assert_eq!(key_state(&db, "three-team").await, untouched());
    assert!(
        !report
            .changes
            .list()
            .iter()
            .any(|c| c.kind() == "member_removed" || c.kind().starts_with("key_")),
        "{:?}",
        report.changes.list()
    );
    let failed = failed_items(&db).await;
    let member = format!("{}/{}", gid(1), uid(3));
    assert!(
        failed
            .iter()
            .any(|(kind, id, _)| kind == "member" && *id == member),
        "{failed:?}"
    );

    // Readable again: the member's retry (5 s later) reads the group again and clears it; the
    // tenant listing's "not found" is forgotten once the user is read (a minute later).
    sim.end_lag(uid(3));
    syncer
        .delta_round(t0 + chrono::Duration::seconds(10))
        .await
        .unwrap();
    syncer
        .delta_round(t0 + chrono::Duration::seconds(61))
        .await
        .unwrap();
    assert_eq!(failed_items(&db).await, []);
    assert_eq!(members(&db, 1).await, users_named(1..=5));
    assert_eq!(key_state(&db, "three-team").await, untouched());
    assert_eq!(
        count(&db, "SELECT count(*) FROM entra_sync_deletion_evidence").await,
        0
    );
}

#[tokio::test]
async fn a_new_member_graph_cannot_read_yet_joins_once_it_can() {
    let sim = sim(|_| {}).await;
    let db = TestDatabase::new().await;
    let syncer = syncer(&sim, &db, UnassignedPolicy::RemoveMembers).await;
    let t0 = now();
    syncer.poll_assignments(t0).await.unwrap();
    sim.lag(uid(6));
    sim.apply(|t| t.add_member(gid(1), uid(6)));

    syncer.delta_round(t0).await.unwrap();
    assert_eq!(members(&db, 1).await, users_named(1..=5));
    assert_eq!(failed_items(&db).await.len(), 1);

    // Not due yet: nothing changes.
    sim.end_lag(uid(6));
    syncer
        .delta_round(t0 + chrono::Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(members(&db, 1).await, users_named(1..=5));
    // Due: the group is read again and she joins.
    syncer
        .delta_round(t0 + chrono::Duration::seconds(6))
        .await
        .unwrap();
    assert_eq!(members(&db, 1).await, users_named(1..=6));
    assert_eq!(failed_items(&db).await, []);
}

#[tokio::test]
async fn a_new_member_graph_cannot_read_stays_failed_through_a_round_that_does_not_name_her() {
    let sim = sim(|_| {}).await;
    let db = TestDatabase::new().await;
    let syncer = syncer(&sim, &db, UnassignedPolicy::RemoveMembers).await;
    let t0 = now();
    syncer.poll_assignments(t0).await.unwrap();
    sim.lag(uid(6));
    sim.apply(|t| t.add_member(gid(1), uid(6)));
    syncer.delta_round(t0).await.unwrap();
    assert_eq!(failed_items(&db).await.len(), 1);

    // Another member joins the same group: that round says nothing about her, so her failure
    // stands (it was cleared here once, and she never joined).
    sim.apply(|t| t.add_member(gid(1), uid(7)));
    syncer
        .delta_round(t0 + chrono::Duration::seconds(1))
        .await
        .unwrap();
    let mut joined = users_named(1..=5);
    joined.push(uid(7).to_string());
    joined.sort();
    assert_eq!(members(&db, 1).await, joined);
    assert_eq!(failed_items(&db).await.len(), 1);

    sim.end_lag(uid(6));
    syncer
        .delta_round(t0 + chrono::Duration::seconds(6))
        .await
        .unwrap();
    assert_eq!(members(&db, 1).await, users_named(1..=7));
    assert_eq!(failed_items(&db).await, []);
}

#[tokio::test]
async fn a_deleted_user_departs_only_when_a_second_answer_a_minute_later_confirms_it() {
    let sim = sim(|_| {}).await;
    let db = TestDatabase::new().await;
    let syncer = syncer(&sim, &db, UnassignedPolicy::RemoveMembers).await;
    let t0 = now();
    syncer.poll_assignments(t0).await.unwrap();
    key(&db, "four-personal", 4, None).await;
    sim.apply(|t| t.delete_user(uid(4)));
    let notified =
        std::collections::BTreeMap::from([(UserId::parse(&uid(4).to_string()).unwrap(), t0)]);

    // The notification and the read that follows it: one answer, not yet proof.
    syncer
        .refresh_users(
            &[UserId::parse(&uid(4).to_string()).unwrap()],
            &notified,
            t0,
        )
        .await
        .unwrap();
    assert_eq!(key_state(&db, "four-personal").await, untouched());
    assert_eq!(
        count(&db, "SELECT count(*) FROM entra_sync_departed_users").await,
        0
    );

    // Half a minute on, the round removes her from the group (the delta says so) but she is not
    // read again yet.
    syncer
        .delta_round(t0 + chrono::Duration::seconds(30))
        .await
        .unwrap();
    assert_eq!(
        members(&db, 1).await,
        users_named(1..=5)
            .into_iter()
            .filter(|u| *u != uid(4).to_string())
            .collect::<Vec<_>>()
    );
    assert_eq!(key_state(&db, "four-personal").await, untouched());

    // A minute after the first answer, the second confirms it: her keys are blocked.
    syncer
        .delta_round(t0 + chrono::Duration::seconds(61))
        .await
        .unwrap();
    assert_eq!(
        key_state(&db, "four-personal").await,
        blocked_for("user_departed")
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM entra_sync_departed_users").await,
        1
    );
    assert_eq!(failed_items(&db).await, []);
}

/// Three removals against a threshold of two: every one of them held, keys blocked.
async fn three_removals_held(sim: &GraphSim, db: &TestDatabase) -> Syncer {
    let syncer = syncer(sim, db, UnassignedPolicy::RemoveMembers)
        .await
        .with_removal_threshold(2);
    syncer.poll_assignments(now()).await.unwrap();
    for n in 1..=3 {
        key(db, &format!("team-{n}"), n, Some(1)).await;
    }
    sim.apply(|t| {
        let mut notices = t.remove_member(gid(1), uid(1));
        notices.extend(t.remove_member(gid(1), uid(2)));
        notices.extend(t.remove_member(gid(1), uid(3)));
        notices
    });
    let round = syncer.delta_round(now()).await.unwrap();
    assert_eq!(
        kinds(&round.changes),
        [("key_blocked", 3), ("removal_held", 3)],
        "{:?}",
        round.changes.list()
    );
    assert_eq!(members(db, 1).await, users_named(1..=5));
    for n in 1..=3 {
        assert_eq!(
            key_state(db, &format!("team-{n}")).await,
            blocked_for("removal_held")
        );
    }
    assert_eq!(
        count(db, "SELECT count(*) FROM entra_sync_held_removals").await,
        3
    );
    assert_eq!(
        count(
            db,
            "SELECT count(*) FROM entra_sync_audit_log WHERE kind = 'removal_held'"
        )
        .await,
        3
    );
    syncer
}

#[tokio::test]
async fn removals_over_the_threshold_are_held_then_released_after_a_fresh_look_at_graph() {
    let sim = sim(|_| {}).await;
    let db = TestDatabase::new().await;
    let syncer = three_removals_held(&sim, &db).await;
    // User 2 is back in the group before a person releases the hold.
    sim.apply(|t| t.add_member(gid(1), uid(2)));

    let report = syncer.release_removals(None, now()).await.unwrap();

    assert_eq!((report.released, report.dropped), (2, 1));
    let mut kept = users_named(4..=5);
    kept.insert(0, uid(2).to_string());
    assert_eq!(members(&db, 1).await, kept);
    assert_eq!(key_state(&db, "team-1").await, None);
    assert_eq!(key_state(&db, "team-3").await, None);
    assert_eq!(key_state(&db, "team-2").await, unblocked());
    assert_eq!(
        count(
            &db,
            r#"SELECT count(*) FROM "LiteLLM_DeletedVerificationToken""#
        )
        .await,
        2
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM entra_sync_held_removals").await,
        0
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM entra_sync_audit_log WHERE cause = 'removal_release' AND kind = 'member_removed'").await,
        2
    );
    // Nothing left to do: the next round (which sees user 2 added) changes nothing.
    let round = syncer.delta_round(now()).await.unwrap();
    assert!(round.changes.is_empty(), "{:?}", round.changes.list());
}

#[tokio::test]
async fn discarded_holds_keep_the_members_and_a_reconciliation_holds_them_again() {
    let sim = sim(|_| {}).await;
    let db = TestDatabase::new().await;
    let syncer = three_removals_held(&sim, &db).await;

    let report = syncer.discard_removals(None, now()).await.unwrap();

    assert_eq!((report.released, report.dropped), (0, 3));
    assert_eq!(members(&db, 1).await, users_named(1..=5));
    for n in 1..=3 {
        assert_eq!(key_state(&db, &format!("team-{n}")).await, unblocked());
    }
    assert_eq!(
        count(&db, "SELECT count(*) FROM entra_sync_held_removals").await,
        0
    );

    // A dry run says what a reconciliation would hold, and writes nothing.
    let planned = syncer.clone().dry_run().reconcile(now()).await.unwrap();
    assert_eq!(
        planned
            .changes
            .list()
            .iter()
            .filter(|c| c.kind() == "removal_held")
            .count(),
        3,
        "{:?}",
        planned.changes.list()
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM entra_sync_held_removals").await,
        0
    );
    // The reconciliation finds them still due and, still over the threshold, holds them again.
    syncer.reconcile(now()).await.unwrap();
    assert_eq!(
        count(&db, "SELECT count(*) FROM entra_sync_held_removals").await,
        3
    );
    assert_eq!(members(&db, 1).await, users_named(1..=5));
}

#[tokio::test]
async fn a_held_member_back_in_the_group_is_kept_by_the_next_round() {
    let sim = sim(|_| {}).await;
    let db = TestDatabase::new().await;
    let syncer = three_removals_held(&sim, &db).await;
    sim.apply(|t| t.add_member(gid(1), uid(1)));

    let round = syncer.delta_round(now()).await.unwrap();

    assert_eq!(
        kinds(&round.changes),
        [("key_unblocked", 1), ("removal_dropped", 1)],
        "{:?}",
        round.changes.list()
    );
    assert_eq!(key_state(&db, "team-1").await, unblocked());
    assert_eq!(
        count(&db, "SELECT count(*) FROM entra_sync_held_removals").await,
        2
    );
}

#[tokio::test]
async fn removals_up_to_the_threshold_are_applied_at_the_end_of_the_unit() {
    let sim = sim(|_| {}).await;
    let db = TestDatabase::new().await;
    let syncer = syncer(&sim, &db, UnassignedPolicy::RemoveMembers)
        .await
        .with_removal_threshold(2);
    syncer.poll_assignments(now()).await.unwrap();
    key(&db, "team-1", 1, Some(1)).await;
    sim.apply(|t| {
        let mut notices = t.remove_member(gid(1), uid(1));
        notices.extend(t.remove_member(gid(1), uid(2)));
        notices
    });

    let round = syncer.delta_round(now()).await.unwrap();

    assert_eq!(
        kinds(&round.changes),
        [("key_deleted", 1), ("member_removed", 2)]
    );
    assert_eq!(members(&db, 1).await, users_named(3..=5));
    assert_eq!(
        count(&db, "SELECT count(*) FROM entra_sync_held_removals").await,
        0
    );
}

#[tokio::test]
async fn an_entra_user_two_litellm_users_go_by_is_a_failed_item_naming_both() {
    let sim = sim(|_| {}).await;
    let db = TestDatabase::new().await;
    let syncer = syncer(&sim, &db, UnassignedPolicy::RemoveMembers).await;
    syncer.poll_assignments(now()).await.unwrap();
    let object_id = uid(6).to_string();
    db.conn()
        .execute_unprepared(&format!(
            r#"INSERT INTO "LiteLLM_UserTable" (user_id, sso_user_id, user_email, metadata)
               VALUES ('{object_id}', NULL, 'one@contoso.example', '{{}}'),
                      ('scim-six@contoso.example', '{object_id}', 'six@contoso.example', '{{}}')"#
        ))
        .await
        .unwrap();
    sim.apply(|t| t.add_member(gid(1), uid(6)));

    syncer.delta_round(now()).await.unwrap();

    assert_eq!(members(&db, 1).await, users_named(1..=5));
    let failed = failed_items(&db).await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0].2.contains(&object_id) && failed[0].2.contains("scim-six@contoso.example"),
        "{failed:?}"
    );
}

#[tokio::test]
async fn discarding_holds_never_unblocks_a_key_blocked_for_an_earlier_removal() {
    let sim = sim(|_| {}).await;
    let db = TestDatabase::new().await;
    let store = Store::new(
        db.conn().clone(),
        LiteLlmSettings::default(),
        RemovalMode::Managed,
    )
    .with_key_policy(worker::store::KeyPolicy {
        removed_member: worker::store::RemovedMemberKeys::Block,
        departed_user: worker::store::DepartedUserKeys::Block,
    });
    let (client, _) = secret_client(&sim);
    let syncer =
        Syncer::new(client, store, UnassignedPolicy::RemoveMembers).with_removal_threshold(2);
    syncer.poll_assignments(now()).await.unwrap();
    for n in 1..=5 {
        key(&db, &format!("team-{n}"), n, Some(1)).await;
    }
    // User 5 left earlier: her key is blocked for it.
    sim.apply(|t| t.remove_member(gid(1), uid(5)));
    syncer.delta_round(now()).await.unwrap();
    assert_eq!(
        key_state(&db, "team-5").await,
        blocked_for("member_removed")
    );
    // Three leave at once: held, and a reconciliation stages no "surviving" key of user 5's.
    sim.apply(|t| {
        let mut notices = t.remove_member(gid(1), uid(1));
        notices.extend(t.remove_member(gid(1), uid(2)));
        notices.extend(t.remove_member(gid(1), uid(3)));
        notices
    });
    syncer.reconcile(now()).await.unwrap();
    assert_eq!(
        count(&db, "SELECT count(*) FROM entra_sync_held_removals").await,
        3
    );

    syncer.discard_removals(None, now()).await.unwrap();

    assert_eq!(key_state(&db, "team-1").await, unblocked());
    assert_eq!(
        key_state(&db, "team-5").await,
        blocked_for("member_removed")
    );
}

#[tokio::test]
async fn the_first_sync_updates_an_existing_users_email_and_empty_alias_as_litellms_sign_in_does() {
    let sim = sim(|_| {}).await;
    let db = TestDatabase::new().await;
    let syncer = syncer(&sim, &db, UnassignedPolicy::RemoveMembers).await;
    // Users LiteLLM made before: one without an alias and with an old email, one with an alias
    // of an admin's choosing.
    db.conn()
        .execute_unprepared(&format!(
            r#"INSERT INTO "LiteLLM_UserTable" (user_id, sso_user_id, user_email, user_alias, metadata)
               VALUES ('{two}', '{two}', 'old@contoso.example', NULL, '{{}}'),
                      ('{three}', '{three}', 'user3@contoso.example', 'Ada', '{{}}')"#,
            two = uid(2),
            three = uid(3),
        ))
        .await
        .unwrap();

    let report = syncer.poll_assignments(now()).await.unwrap();

    let two = user::Entity::find_by_id(uid(2).to_string())
        .one(db.conn())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(two.user_email.as_deref(), Some("user2@contoso.example"));
    assert_eq!(two.user_alias.as_deref(), Some("User 2"));
    let three = user::Entity::find_by_id(uid(3).to_string())
        .one(db.conn())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(three.user_alias.as_deref(), Some("Ada"));
    assert_eq!(
        report
            .changes
            .list()
            .iter()
            .filter(|c| c.kind() == "user_updated")
            .count(),
        1,
        "{:?}",
        report.changes.list()
    );
    let entry = team(&db, 1)
        .await
        .unwrap()
        .members_with_roles
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["user_id"] == uid(2).to_string())
        .cloned()
        .unwrap();
    assert_eq!(entry["user_email"], "user2@contoso.example");
}

// What Graph says now wins over what entra-sync remembers (issue 22).

/// User 3 disabled (departed: out of the team, keys blocked), then enabled in Entra without a
/// notification reaching entra-sync.
async fn departed_then_enabled_silently(
    sim: &GraphSim,
    db: &TestDatabase,
    syncer: &Syncer,
    t0: chrono::DateTime<chrono::Utc>,
) {
    syncer.poll_assignments(t0).await.unwrap();
    key(db, "three-personal", 3, None).await;
    sim.apply(|t| t.upsert_user(user(3, false)));
    let three = UserId::parse(&uid(3).to_string()).unwrap();
    syncer
        .refresh_users(std::slice::from_ref(&three), &Default::default(), t0)
        .await
        .unwrap();
    assert_eq!(
        count(db, "SELECT count(*) FROM entra_sync_departed_users").await,
        1
    );
    assert!(!members(db, 1).await.contains(&uid(3).to_string()));
    assert_eq!(
        key_state(db, "three-personal").await,
        blocked_for("user_departed")
    );
    // Enabled again; the `users` notification is lost.
    sim.change(|t| {
        t.upsert_user(user(3, true));
        ((), Vec::new())
    });
}

#[tokio::test]
async fn a_departed_user_a_later_group_read_finds_enabled_is_restored_at_once() {
    let sim = sim(|_| {}).await;
    let db = TestDatabase::new().await;
    let syncer = syncer(&sim, &db, UnassignedPolicy::RemoveMembers).await;
    let t0 = now();
    departed_then_enabled_silently(&sim, &db, &syncer, t0).await;

    // Research is assigned: the poll reads its members, which says user 3 is enabled.
    sim.change(|t| {
        t.assign(gid(2), Uuid::nil()).unwrap();
        ((), Vec::new())
    });
    let t1 = t0 + chrono::Duration::seconds(1);
    syncer.poll_assignments(t1).await.unwrap();

    assert!(members(&db, 2).await.contains(&uid(3).to_string()));
    assert_eq!(
        count(&db, "SELECT count(*) FROM entra_sync_departed_users").await,
        0
    );
    assert_eq!(key_state(&db, "three-personal").await, unblocked());
    // The next round reads every assigned group whole: she is back in Engineering's team too.
    syncer
        .delta_round(t1 + chrono::Duration::seconds(1))
        .await
        .unwrap();
    assert!(members(&db, 1).await.contains(&uid(3).to_string()));
}

#[tokio::test]
async fn a_read_older_than_the_departure_does_not_bring_the_user_back() {
    let sim = sim(|_| {}).await;
    let db = TestDatabase::new().await;
    let syncer = syncer(&sim, &db, UnassignedPolicy::RemoveMembers).await;
    let t0 = now();
    departed_then_enabled_silently(&sim, &db, &syncer, t0).await;
    sim.change(|t| {
        t.assign(gid(2), Uuid::nil()).unwrap();
        ((), Vec::new())
    });

    // A unit that started before the departure was read (its clock behind it) proves nothing.
    syncer
        .poll_assignments(t0 - chrono::Duration::seconds(1))
        .await
        .unwrap();

    assert!(!members(&db, 2).await.contains(&uid(3).to_string()));
    assert_eq!(
        count(&db, "SELECT count(*) FROM entra_sync_departed_users").await,
        1
    );
    assert_eq!(
        key_state(&db, "three-personal").await,
        blocked_for("user_departed")
    );
}

#[tokio::test]
async fn the_departed_users_recheck_brings_back_one_whose_enabling_was_never_notified() {
    let sim = sim(|_| {}).await;
    let db = TestDatabase::new().await;
    let syncer = syncer(&sim, &db, UnassignedPolicy::RemoveMembers).await;
    let t0 = now();
    departed_then_enabled_silently(&sim, &db, &syncer, t0).await;
    // User 4 is disabled too, and stays so.
    sim.change(|t| {
        t.upsert_user(user(4, false));
        ((), Vec::new())
    });
    let four = UserId::parse(&uid(4).to_string()).unwrap();
    syncer
        .refresh_users(std::slice::from_ref(&four), &Default::default(), t0)
        .await
        .unwrap();
    let requests = sim.count("/directoryObjects/getByIds");

    let t1 = t0 + chrono::Duration::seconds(300);
    syncer.recheck_departed(t1).await.unwrap();

    assert_eq!(sim.count("/directoryObjects/getByIds"), requests + 1);
    assert_eq!(
        count(&db, "SELECT count(*) FROM entra_sync_departed_users").await,
        1
    );
    assert_eq!(key_state(&db, "three-personal").await, unblocked());
    syncer
        .delta_round(t1 + chrono::Duration::seconds(1))
        .await
        .unwrap();
    let mut back = users_named(1..=5);
    back.retain(|u| *u != uid(4).to_string());
    assert_eq!(members(&db, 1).await, back);
}

/// A user changed in Entra with no `users` notification delivered: the next round's users delta
/// names her, and she is read again, as a notification would have had her read.
async fn changed_silently(sim: &GraphSim, change: impl FnOnce(&mut graph_sim::tenant::Tenant)) {
    sim.change(|t| {
        change(t);
        ((), Vec::new())
    });
}

#[tokio::test]
async fn a_disabling_and_a_rename_whose_notifications_were_lost_are_applied_by_the_next_round() {
    let sim = sim(|_| {}).await;
    let db = TestDatabase::new().await;
    let syncer = syncer(&sim, &db, UnassignedPolicy::RemoveMembers).await;
    let t0 = now();
    syncer.poll_assignments(t0).await.unwrap();
    // The first round takes the users delta's starting point.
    syncer.delta_round(t0).await.unwrap();
    key(&db, "three-personal", 3, None).await;

    changed_silently(&sim, |t| {
        t.upsert_user(user(3, false));
        let mut four = user(4, true);
        four.display_name = "Ada".into();
        t.upsert_user(four);
        // Not LiteLLM's: nothing reads her.
        t.upsert_user(user(10, false));
    })
    .await;
    sim.clear_requests();
    syncer
        .delta_round(t0 + chrono::Duration::seconds(1))
        .await
        .unwrap();

    assert_eq!(sim.count("/users/delta"), 1);
    // The known users it names read again together (one getByIds), none on their own.
    assert_eq!(sim.count("/directoryObjects/getByIds"), 1);
    assert_eq!(sim.count(&format!("/users/{}", uid(3))), 0);
    assert_eq!(sim.count(&format!("/users/{}", uid(10))), 0);
    assert!(!members(&db, 1).await.contains(&uid(3).to_string()));
    assert_eq!(
        key_state(&db, "three-personal").await,
        blocked_for("user_departed")
    );
    let four = user::Entity::find_by_id(uid(4).to_string())
        .one(db.conn())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(four.user_alias.as_deref(), Some("Ada"));

    // Nothing new: the next round reads no user.
    sim.clear_requests();
    let round = syncer
        .delta_round(t0 + chrono::Duration::seconds(2))
        .await
        .unwrap();
    assert!(round.changes.is_empty());
    assert_eq!(sim.count("/users/delta"), 1);
    let user_reads = sim
        .requests()
        .iter()
        .filter(|r| r.path.contains("/users/") && !r.path.ends_with("/delta"))
        .count();
    assert_eq!(user_reads, 0, "{:?}", sim.requests());
}

#[tokio::test]
async fn an_enabling_whose_notification_was_lost_is_applied_by_the_next_round() {
    let sim = sim(|_| {}).await;
    let db = TestDatabase::new().await;
    let syncer = syncer(&sim, &db, UnassignedPolicy::RemoveMembers).await;
    let t0 = now();
    syncer.delta_round(t0).await.unwrap();
    departed_then_enabled_silently(&sim, &db, &syncer, t0).await;

    let t1 = t0 + chrono::Duration::seconds(1);
    syncer.delta_round(t1).await.unwrap();
    assert_eq!(
        count(&db, "SELECT count(*) FROM entra_sync_departed_users").await,
        0
    );
    assert_eq!(key_state(&db, "three-personal").await, unblocked());
    // Restored, the next round reads every assigned group whole: she is back in the team.
    syncer
        .delta_round(t1 + chrono::Duration::seconds(1))
        .await
        .unwrap();
    assert!(members(&db, 1).await.contains(&uid(3).to_string()));
}

#[tokio::test]
async fn an_expired_users_delta_token_compares_every_known_user_with_the_tenant() {
    let sim = sim(|_| {}).await;
    let db = TestDatabase::new().await;
    let syncer = syncer(&sim, &db, UnassignedPolicy::RemoveMembers).await;
    let t0 = now();
    syncer.poll_assignments(t0).await.unwrap();
    syncer.delta_round(t0).await.unwrap();

    changed_silently(&sim, |t| {
        t.upsert_user(user(2, false));
        t.expire_delta_tokens();
    })
    .await;
    sim.clear_requests();
    syncer
        .delta_round(t0 + chrono::Duration::seconds(1))
        .await
        .unwrap();

    // The tenant's user listing (`GET /users`) was read, once.
    let listings = |sim: &GraphSim| {
        sim.requests()
            .iter()
            .filter(|r| r.path.ends_with("/users"))
            .count()
    };
    assert_eq!(listings(&sim), 1, "{:?}", sim.requests());
    assert!(!members(&db, 1).await.contains(&uid(2).to_string()));
    assert_eq!(
        count(&db, "SELECT count(*) FROM entra_sync_departed_users").await,
        1
    );
    // A link from now on is stored: the next round asks only what changed since.
    sim.clear_requests();
    syncer
        .delta_round(t0 + chrono::Duration::seconds(2))
        .await
        .unwrap();
    assert_eq!(sim.count("/users/delta"), 1);
    assert_eq!(listings(&sim), 0);
}

/// A user of the test tenant with their account enabled or not.
fn tenant_user(n: u128, enabled: bool) -> graph_sim::tenant::User {
    graph_sim::tenant::User {
        id: uid(n),
        display_name: format!("User {n}"),
        user_principal_name: format!("user{n}@contoso.example"),
        mail: Some(format!("user{n}.mail@contoso.example")),
        account_enabled: enabled,
    }
}

fn user_ids(range: std::ops::RangeInclusive<u128>) -> Vec<UserId> {
    range
        .map(|n| UserId::parse(&uid(n).to_string()).unwrap())
        .collect()
}

/// Users 1 to 3 with a team key and a personal key each, then disabled in Entra and named by
/// notifications at once.
async fn three_disabled_at_once(sim: &GraphSim, db: &TestDatabase, syncer: &Syncer) {
    syncer.poll_assignments(now()).await.unwrap();
    for n in 1..=3 {
        key(db, &format!("team-{n}"), n, Some(1)).await;
        key(db, &format!("own-{n}"), n, None).await;
    }
    sim.apply(|t| {
        (1..=3)
            .flat_map(|n| t.upsert_user(tenant_user(n, false)))
            .collect()
    });
    sim.clear_requests();
    syncer
        .refresh_users(&user_ids(1..=3), &Default::default(), now())
        .await
        .unwrap();
}

#[tokio::test]
async fn users_disabled_at_once_depart_together_read_by_one_get_by_ids() {
    let sim = sim(|_| {}).await;
    let db = TestDatabase::new().await;
    let syncer = syncer(&sim, &db, UnassignedPolicy::RemoveMembers).await;
    three_disabled_at_once(&sim, &db, &syncer).await;

    assert_eq!(members(&db, 1).await, users_named(4..=5));
    assert_eq!(
        count(&db, "SELECT count(*) FROM entra_sync_departed_users").await,
        3
    );
    for n in 1..=3 {
        // The team key goes with the membership (the removal policy), the personal key is
        // blocked for the departure.
        assert_eq!(key_state(&db, &format!("team-{n}")).await, None);
        assert_eq!(
            key_state(&db, &format!("own-{n}")).await,
            blocked_for("user_departed")
        );
    }
    // The three were read in one getByIds request, none on their own.
    assert_eq!(sim.count("getByIds"), 1, "{:?}", sim.requests());
    assert_eq!(sim.count("/users/5b"), 0, "{:?}", sim.requests());
    assert_eq!(failed_items(&db).await, []);
}

#[tokio::test]
async fn users_enabled_again_at_once_get_their_keys_back_together() {
    let sim = sim(|_| {}).await;
    let db = TestDatabase::new().await;
    let syncer = syncer(&sim, &db, UnassignedPolicy::RemoveMembers).await;
    three_disabled_at_once(&sim, &db, &syncer).await;

    sim.apply(|t| {
        (1..=3)
            .flat_map(|n| t.upsert_user(tenant_user(n, true)))
            .collect()
    });
    syncer
        .refresh_users(&user_ids(1..=3), &Default::default(), now())
        .await
        .unwrap();

    assert_eq!(
        count(&db, "SELECT count(*) FROM entra_sync_departed_users").await,
        0
    );
    for n in 1..=3 {
        assert_eq!(key_state(&db, &format!("own-{n}")).await, unblocked());
    }
    // The next round reads the groups whole: they are members again.
    syncer.delta_round(now()).await.unwrap();
    assert_eq!(members(&db, 1).await, users_named(1..=5));
    assert_eq!(failed_items(&db).await, []);
}

#[tokio::test]
async fn a_departure_batch_that_fails_on_its_own_is_applied_user_by_user() {
    let sim = sim(|_| {}).await;
    let db = TestDatabase::new().await;
    let syncer = syncer(&sim, &db, UnassignedPolicy::RemoveMembers).await;
    syncer.poll_assignments(now()).await.unwrap();
    // User 2 is two LiteLLM users: the row the sync made, and a SCIM row linked to her.
    let object_id = uid(2).to_string();
    db.conn()
        .execute_unprepared(&format!(
            r#"UPDATE "LiteLLM_UserTable" SET sso_user_id = NULL WHERE user_id = '{object_id}';
               INSERT INTO "LiteLLM_UserTable" (user_id, sso_user_id, user_email, metadata)
               VALUES ('scim-two@contoso.example', '{object_id}', 'two@contoso.example', '{{}}')"#
        ))
        .await
        .unwrap();
    sim.apply(|t| {
        (1..=3)
            .flat_map(|n| t.upsert_user(tenant_user(n, false)))
            .collect()
    });

    syncer
        .refresh_users(&user_ids(1..=3), &Default::default(), now())
        .await
        .unwrap();

    // Users 1 and 3 departed; user 2 stays where she was, a failed item naming both rows.
    assert_eq!(
        members(&db, 1).await,
        users_named(2..=2)
            .into_iter()
            .chain(users_named(4..=5))
            .collect::<Vec<_>>()
    );
    let failed = failed_items(&db).await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0].2.contains("scim-two@contoso.example"),
        "{failed:?}"
    );
    assert_eq!(
        count(
            &db,
            &format!(
                "SELECT count(*) FROM entra_sync_departed_users WHERE entra_user_id <> '{object_id}'"
            )
        )
        .await,
        2
    );
}

#[tokio::test]
async fn a_resync_finds_every_kind_of_drift_and_then_none() {
    let sim = sim(|_| {}).await;
    let db = TestDatabase::new().await;
    let syncer = syncer(&sim, &db, UnassignedPolicy::RemoveMembers).await;
    syncer.poll_assignments(now()).await.unwrap();
    let resync = || async { syncer.resync_round(now()).await.unwrap().changes.total() };
    assert_eq!(resync().await, 0, "nothing drifted yet");

    let team = gid(1).to_string();
    let one = uid(1).to_string();
    let drifts = [
        format!(
            r#"DELETE FROM "LiteLLM_TeamMembership" WHERE team_id = '{team}' AND user_id = '{one}'"#
        ),
        format!(
            r#"UPDATE "LiteLLM_TeamTable" SET members_with_roles =
                 (SELECT jsonb_agg(e) FROM jsonb_array_elements(members_with_roles) e
                  WHERE e->>'user_id' <> '{one}')
               WHERE team_id = '{team}'"#
        ),
        format!(
            r#"UPDATE "LiteLLM_UserTable" SET teams = array_remove(teams, '{team}')
               WHERE user_id = '{one}'"#
        ),
        format!(
            r#"UPDATE "LiteLLM_UserTable" SET user_email = 'old@contoso.example'
               WHERE user_id = '{one}'"#
        ),
        format!(r#"UPDATE "LiteLLM_TeamTable" SET team_alias = 'Renamed by hand' WHERE team_id = '{team}'"#),
        format!(
            "INSERT INTO entra_sync_held_removals (group_id, user_id, entra_user_id, reason, held_at)
             VALUES ('{team}', '{one}', '{one}', 'not_in_group', now())"
        ),
    ];
    for drift in &drifts {
        db.conn().execute_unprepared(drift).await.unwrap();
        assert!(resync().await > 0, "not found: {drift}");
        assert_eq!(resync().await, 0, "found again: {drift}");
    }
    assert_eq!(members(&db, 1).await, users_named(1..=5));

    // What Graph says changed without a notification: a member gone, one new.
    sim.apply(|t| {
        let mut notices = t.remove_member(gid(1), uid(5));
        notices.extend(t.add_member(gid(1), uid(6)));
        notices
    });
    assert!(resync().await > 0);
    assert_eq!(resync().await, 0);
    assert_eq!(
        members(&db, 1).await,
        users_named(1..=4)
            .into_iter()
            .chain(users_named(6..=6))
            .collect::<Vec<_>>()
    );
}

/// A resync compares every group with its team in one statement, then reads again and writes
/// only the teams that may differ: none when nothing drifted, the one whose membership row
/// LiteLLM lost; a team with a member added by hand may differ, is read again, and keeps her.
#[tokio::test]
async fn a_resync_reads_again_only_the_teams_that_may_differ_and_keeps_members_added_by_hand() {
    let db = TestDatabase::new().await;
    let writes_through = db.conn().clone();
    resync_reads_again_only_what_differs(&db, writes_through).await;
}

/// The body of the test above; `writes_through` is how the syncer reaches `db` (directly, or
/// through PgBouncer, where the comparison's tables must outlive each transaction).
pub(crate) async fn resync_reads_again_only_what_differs(
    db: &TestDatabase,
    writes_through: impl Into<migration::database::Db>,
) {
    let sim = sim(|_| {}).await;
    sim.change(|t| {
        t.assign(gid(2), Uuid::nil()).unwrap();
        ((), Vec::new())
    });
    let syncer = syncer_on(&sim, writes_through, UnassignedPolicy::RemoveMembers);
    syncer.poll_assignments(now()).await.unwrap();
    let resync = || async {
        sim.clear_requests();
        let changes = syncer.resync_round(now()).await.unwrap().changes.total();
        (changes, filtered_delta_reads(&sim))
    };
    assert_eq!(
        resync().await,
        (0, 1),
        "both groups read once, nothing written"
    );
    assert_eq!(
        count(db, COMPARISON_TABLES).await,
        0,
        "the comparison's tables are dropped"
    );

    let (one, two) = (gid(1).to_string(), gid(2).to_string());
    let user = uid(1).to_string();
    db.conn()
        .execute_unprepared(&format!(
            r#"DELETE FROM "LiteLLM_TeamMembership" WHERE team_id = '{one}' AND user_id = '{user}'"#
        ))
        .await
        .unwrap();
    let (changes, reads) = resync().await;
    assert!(changes > 0, "the lost row is written again");
    assert_eq!(reads, 2, "the differing group read a second time, alone");
    let rows = format!(
        r#"SELECT count(*) FROM "LiteLLM_TeamMembership" WHERE team_id = '{one}' AND user_id = '{user}'"#
    );
    assert_eq!(count(db, &rows).await, 1);

    // A member entra-sync does not manage, added as LiteLLM's own endpoints would.
    for statement in [
        format!(
            r#"INSERT INTO "LiteLLM_UserTable" (user_id, user_email, teams)
               VALUES ('added-by-hand', 'hand@contoso.example', ARRAY['{two}'])"#
        ),
        format!(
            r#"INSERT INTO "LiteLLM_TeamMembership" (user_id, team_id, spend)
               VALUES ('added-by-hand', '{two}', 0)"#
        ),
        format!(
            r#"UPDATE "LiteLLM_TeamTable" SET members_with_roles = members_with_roles ||
                 '[{{"user_id": "added-by-hand", "user_email": "hand@contoso.example", "role": "user"}}]'::jsonb
               WHERE team_id = '{two}'"#
        ),
    ] {
        db.conn().execute_unprepared(&statement).await.unwrap();
    }
    assert_eq!(
        resync().await,
        (0, 2),
        "read again, and left as it is in the managed removal mode"
    );
    assert!(members(db, 2).await.contains(&"added-by-hand".to_owned()));
}

/// The tables of comparisons in the database.
const COMPARISON_TABLES: &str =
    "SELECT count(*) FROM pg_tables WHERE starts_with(tablename, 'entra_sync_compare_')";

/// The tables a worker stopped in the middle of a comparison left are dropped by a later
/// comparison once they are old; a younger one (another worker's, still comparing) is kept.
#[tokio::test]
async fn a_comparison_drops_the_tables_a_stopped_worker_left() {
    let sim = sim(|_| {}).await;
    let db = TestDatabase::new().await;
    let syncer = syncer(&sim, &db, UnassignedPolicy::RemoveMembers).await;
    syncer.poll_assignments(now()).await.unwrap();
    let old = (now() - chrono::TimeDelta::days(1)).timestamp();
    let young = now().timestamp();
    for made in [old, young] {
        db.conn()
            .execute_unprepared(&format!(
                "CREATE UNLOGGED TABLE entra_sync_compare_{made}_0badc0de_graph_members (x int)"
            ))
            .await
            .unwrap();
    }
    syncer.resync_round(now()).await.unwrap();
    let left = |made: i64| {
        format!(
            "SELECT count(*) FROM pg_tables
             WHERE tablename = 'entra_sync_compare_{made}_0badc0de_graph_members'"
        )
    };
    assert_eq!(count(&db, &left(old)).await, 0, "the old one is dropped");
    assert_eq!(count(&db, &left(young)).await, 1, "the young one is kept");
    assert_eq!(count(&db, COMPARISON_TABLES).await, 1);

    // A comparison given up before its end (Graph failed, the worker stops) drops its own
    // tables on its way out, in a task of its own.
    let store = Store::new(db.conn().clone(), Default::default(), RemovalMode::Managed);
    let comparison = store.begin_comparison(now()).await.unwrap();
    assert_eq!(count(&db, COMPARISON_TABLES).await, 1 + 4);
    drop(comparison);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while count(&db, COMPARISON_TABLES).await > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a comparison given up kept its tables"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A resync reads each user once, however many slices of groups list her: the groups of the
/// second slice are compared with the users the first one read, and found equal.
#[tokio::test]
async fn a_resync_reads_each_user_once_across_its_slices_of_groups() {
    // 250 groups (two slices of up to 200) of 5 members among 50 users: every user in both.
    let tenant = graph_sim::tenant::TenantFile::generate(250, 50, 5);
    let sim = GraphSim::start(graph_sim::SimConfig::default(), tenant)
        .await
        .unwrap();
    let db = TestDatabase::new().await;
    let syncer = syncer(&sim, &db, UnassignedPolicy::RemoveMembers).await;
    syncer.poll_assignments(now()).await.unwrap();
    sim.clear_requests();
    let changes = syncer.resync_round(now()).await.unwrap().changes.total();
    assert_eq!(changes, 0);
    assert_eq!(
        filtered_delta_reads(&sim),
        5,
        "every group read once (50 to a request), none again"
    );
    assert_eq!(
        sim.count("getByIds"),
        1,
        "the 50 users read with the first slice, not again with the second"
    );
}

/// A resync's comparison copies what Graph says as it is read, in a session of its own where
/// each `COPY` is a transaction of its own: while the resync waits for Graph, no transaction of
/// ours is open.
#[tokio::test]
async fn a_resync_holds_no_transaction_open_while_it_waits_for_graph() {
    let sim = sim(|_| {}).await;
    let db = TestDatabase::new().await;
    let syncer = syncer(&sim, &db, UnassignedPolicy::RemoveMembers).await;
    syncer.poll_assignments(now()).await.unwrap();
    // The users of the assigned group are read once the comparison has begun.
    sim.add_fault(graph_sim::Fault::delay("getByIds", 1500, 1));
    let answered = sim.count("getByIds");
    let resync = tokio::spawn({
        let syncer = syncer.clone();
        async move { syncer.resync_round(now()).await }
    });
    assert!(
        graph_was_asked(&sim).await,
        "the resync did not read the users"
    );
    let open = open_transactions(&db).await;
    assert_eq!(
        sim.count("getByIds"),
        answered,
        "looked after Graph answered: the test proves nothing"
    );
    assert_eq!(open, 0, "a transaction stays open across Graph calls");
    assert_eq!(resync.await.unwrap().unwrap().changes.total(), 0);
}
