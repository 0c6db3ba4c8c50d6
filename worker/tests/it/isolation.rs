//! Nothing stalls, nothing flaps: a group or user that fails on its own never holds back the
//! others (the rest commits, the entries are acknowledged, the item is retried until it
//! succeeds); a team deleted by hand is made again; disabled users are left out on every path.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::graph_common;
use crate::world;

use chrono::Utc;
use entity::litellm::user;
use graph_common::*;
use graph_sim::Fault;
use prometheus_client::registry::Registry;
use sea_orm::{ConnectionTrait, EntityTrait};
use uuid::Uuid;
use worker::metrics::WorkerMetrics;
use worker::store::{RemovalMode, Store};
use world::*;

async fn execute(world: &World, sql: &str) {
    world.db.conn().execute_unprepared(sql).await.unwrap();
}

fn with(ids: Vec<String>, n: u128) -> Vec<String> {
    let mut ids = ids;
    ids.push(uid(n).to_string());
    ids.sort();
    ids
}

fn without(ids: Vec<String>, n: u128) -> Vec<String> {
    ids.into_iter()
        .filter(|id| *id != uid(n).to_string())
        .collect()
}

/// Group 2 (users 3-8 and group 1) is assigned too.
fn assign_group_two(world: &World) {
    world.sim.change(|t| {
        t.assign(gid(2), Uuid::nil()).unwrap();
        ((), Vec::new())
    });
}

async fn role(world: &World, n: u128) -> Option<String> {
    user::Entity::find_by_id(uid(n).to_string())
        .one(world.db.conn())
        .await
        .unwrap()
        .and_then(|u| u.user_role)
}

/// The worker's metrics, as Prometheus reads them.
fn scrape(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text
}

#[tokio::test]
async fn one_broken_group_never_stalls_the_others_and_is_retried_until_it_succeeds() {
    let mut world = World::new().await;
    assign_group_two(&world);
    let mut registry = Registry::default();
    let metrics = WorkerMetrics::register(&mut registry);
    let store = Store::new(
        world.db.conn().clone(),
        Default::default(),
        RemovalMode::Managed,
    );
    world.start_worker_with_store(store, metrics, "isolated", None);
    let group_two = users(3..=8);
    assert!(eventually(|| async { world.members(1).await == Some(users(1..=5)) }).await);
    assert!(eventually(|| async { world.members(2).await == Some(group_two.clone()) }).await);

    // From now on PostgreSQL refuses every new membership of team 1, and only of team 1.
    execute(
        &world,
        &format!(
            r#"CREATE FUNCTION refuse_team_one() RETURNS trigger AS $$
               BEGIN RAISE EXCEPTION 'memberships of team 1 are refused for this test'; END
               $$ LANGUAGE plpgsql;
               CREATE TRIGGER refuse_team_one BEFORE INSERT ON "LiteLLM_TeamMembership"
               FOR EACH ROW WHEN (NEW.team_id = '{}') EXECUTE FUNCTION refuse_team_one();"#,
            gid(1)
        ),
    )
    .await;
    world.sim.apply(|t| t.add_member(gid(1), uid(9)));
    world.sim.apply(|t| t.add_member(gid(2), uid(10)));

    // Group 2's change commits, the entries are acknowledged, and group 1 waits for a retry.
    assert!(
        eventually(|| async { world.members(2).await == Some(with(group_two.clone(), 10)) }).await,
        "group 1's failure held back group 2"
    );
    assert!(eventually(|| async { world.pending() == 0 && world.unread() == 0 }).await);
    assert_eq!(world.members(1).await, Some(users(1..=5)));
    let failed = format!(
        "SELECT count(*) FROM entra_sync_failed_items WHERE kind = 'group' AND id = '{}' \
         AND attempts >= 1 AND error LIKE '%refused for this test%'",
        gid(1)
    );
    assert!(eventually(|| async { world.count(&failed).await == 1 }).await);
    assert!(
        world.count(&format!(
                "SELECT count(*) FROM entra_sync_audit_log WHERE kind = 'sync_failed' AND team_id = '{}'",
                gid(1)
            )
        )
        .await
            >= 1
    );
    assert!(
        eventually(|| async {
            scrape(&registry).contains(r#"entra_sync_failed_items{kind="group"} 1"#)
        })
        .await,
        "{}",
        scrape(&registry)
    );
    // `status` lists it, with its error.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_entra-sync-worker"))
        .args(["status", "--json"])
        .env_clear()
        .envs(world.worker_env("status"))
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let failed = status["failed_items"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{status}");
    assert_eq!(failed[0]["kind"], "group");
    assert_eq!(failed[0]["id"], gid(1).to_string());
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap()
            .contains("refused for this test")
    );
    // The deltaLink moved on: later changes to group 2 keep arriving.
    world.sim.apply(|t| t.remove_member(gid(2), uid(8)));
    assert!(
        eventually(|| async {
            world.members(2).await == Some(without(with(group_two.clone(), 10), 8))
        })
        .await
    );

    // The cause goes away; at its next attempt group 1 is read whole and catches up.
    execute(
        &world,
        r#"DROP TRIGGER refuse_team_one ON "LiteLLM_TeamMembership";
           UPDATE entra_sync_failed_items SET retry_at = now()"#,
    )
    .await;
    assert!(
        eventually(|| async { world.members(1).await == Some(with(users(1..=5), 9)) }).await,
        "group 1 was not retried"
    );
    assert!(
        eventually(|| async {
            world
                .count("SELECT count(*) FROM entra_sync_failed_items")
                .await
                == 0
        })
        .await
    );
    assert_eq!(
        world.count(&format!(
                "SELECT count(*) FROM entra_sync_audit_log WHERE kind = 'sync_recovered' AND team_id = '{}'",
                gid(1)
            )
        )
        .await,
        1
    );
    world.stop_workers().await;
}

#[tokio::test]
async fn a_team_deleted_by_hand_while_its_group_is_assigned_is_made_again() {
    let mut world = World::new().await;
    world.start_worker();
    assert!(eventually(|| async { world.members(1).await == Some(users(1..=5)) }).await);

    // An admin deletes the team in LiteLLM's UI (LiteLLM deletes its memberships with it).
    execute(
        &world,
        &format!(
            r#"DELETE FROM "LiteLLM_TeamMembership" WHERE team_id = '{g}';
               UPDATE "LiteLLM_UserTable" SET teams = array_remove(teams, '{g}');
               DELETE FROM "LiteLLM_TeamTable" WHERE team_id = '{g}';"#,
            g = gid(1)
        ),
    )
    .await;
    assert_eq!(world.members(1).await, None);

    // The next change to the group makes the team again, as LiteLLM's own sign-in would, with
    // every current member.
    world.sim.apply(|t| t.add_member(gid(1), uid(6)));
    assert!(
        eventually(|| async { world.members(1).await == Some(users(1..=6)) }).await,
        "the team was not made again, with every member"
    );
    assert_eq!(world.alias(1).await.as_deref(), Some("Engineering"));
    assert!(eventually(|| async { world.pending() == 0 }).await);
    assert_eq!(
        world
            .count("SELECT count(*) FROM entra_sync_failed_items")
            .await,
        0
    );
    world.stop_workers().await;
}

#[tokio::test]
async fn a_poll_is_not_all_or_nothing() {
    let world = World::new().await;
    let syncer = world.syncer();
    syncer.poll_assignments(Utc::now()).await.unwrap();
    // Two more groups are assigned; Graph answers 404 for one of them's members, for good.
    world.sim.apply(|t| t.upsert_group(gid(3), "Design", None));
    for n in [7, 8] {
        world.sim.apply(|t| t.add_member(gid(3), uid(n)));
    }
    world.sim.change(|t| {
        t.assign(gid(2), Uuid::nil()).unwrap();
        t.assign(gid(3), Uuid::nil()).unwrap();
        ((), Vec::new())
    });
    world.sim.add_fault(Fault {
        times: None,
        ..Fault::status(&format!("/groups/{}/members", gid(2)), 404, 1)
    });

    let report = syncer.poll_assignments(Utc::now()).await.unwrap();
    assert_eq!(report.newly_assigned, 2);
    assert_eq!(world.members(3).await, Some(users(7..=8)), "group 3 waited");
    assert_eq!(world.members(2).await, None);
    assert_eq!(
        world
            .count(&format!(
                "SELECT count(*) FROM entra_sync_failed_items WHERE id = '{}'",
                gid(2)
            ))
            .await,
        1
    );

    // Graph answers again; the retry makes the team.
    world.sim.clear_faults();
    execute(
        &world,
        "UPDATE entra_sync_failed_items SET retry_at = now()",
    )
    .await;
    syncer.delta_round(Utc::now()).await.unwrap();
    assert_eq!(world.members(2).await, Some(users(3..=8)));
    assert_eq!(
        world
            .count("SELECT count(*) FROM entra_sync_failed_items")
            .await,
        0
    );
}

#[tokio::test]
async fn disabled_users_never_flap_back_into_teams_or_roles() {
    let mut world = World::new().await;
    world
        .subscription_manager()
        .ensure(Utc::now())
        .await
        .unwrap();
    world.start_worker();
    let syncer = world.syncer();
    // User 3 is an admin through a direct app role.
    world.sim.change(|t| {
        t.assign(uid(3), role_id(PROXY_ADMIN_ROLE)).unwrap();
        ((), Vec::new())
    });
    syncer.poll_assignments(Utc::now()).await.unwrap();
    assert!(eventually(|| async { world.members(1).await == Some(users(1..=5)) }).await);
    assert_eq!(role(&world, 3).await.as_deref(), Some("proxy_admin"));

    // Disabled: the users notification takes the team and the role away.
    world.sim.apply(|t| t.upsert_user(user(3, false)));
    assert!(
        eventually(|| async { world.members(1).await == Some(without(users(1..=5), 3)) }).await
    );
    assert!(
        eventually(|| async { role(&world, 3).await.as_deref() == Some("internal_user_viewer") })
            .await
    );

    // No path gives them back: a poll (the app role is still assigned in Entra), a full resync
    // of the groups, and a new group membership.
    syncer.poll_assignments(Utc::now()).await.unwrap();
    assert_eq!(
        role(&world, 3).await.as_deref(),
        Some("internal_user_viewer")
    );
    syncer.resync_round(Utc::now()).await.unwrap();
    assert_eq!(world.members(1).await, Some(without(users(1..=5), 3)));
    assign_group_two(&world);
    syncer.poll_assignments(Utc::now()).await.unwrap();
    assert_eq!(world.members(2).await, Some(without(users(3..=8), 3)));
    world.sim.apply(|t| t.remove_member(gid(1), uid(3)));
    world.sim.apply(|t| t.add_member(gid(1), uid(3)));
    world.sim.apply(|t| t.add_member(gid(1), uid(10)));
    assert!(
        eventually(|| async { world.members(1).await == Some(with(without(users(1..=5), 3), 10)) })
            .await
    );

    // Enabled again: the team and the role come back.
    world.sim.apply(|t| t.upsert_user(user(3, true)));
    assert!(
        eventually(|| async {
            world
                .count("SELECT count(*) FROM entra_sync_departed_users")
                .await
                == 0
        })
        .await
    );
    syncer.reconcile(Utc::now()).await.unwrap();
    assert_eq!(world.members(1).await, Some(with(users(1..=5), 10)));
    assert_eq!(role(&world, 3).await.as_deref(), Some("proxy_admin"));
    world.stop_workers().await;
}

/// Roles are written a thousand users to a transaction; one user LiteLLM refuses fails that
/// batch, and then only themselves: the others get their roles, and the next poll tries again.
#[tokio::test]
async fn one_user_whose_role_is_refused_never_holds_back_the_others() {
    let world = World::new().await;
    let syncer = world.syncer();
    syncer.poll_assignments(Utc::now()).await.unwrap();
    // From now on PostgreSQL refuses any new role for user 4.
    execute(
        &world,
        &format!(
            r#"CREATE FUNCTION refuse_user_four() RETURNS trigger AS $$
               BEGIN RAISE EXCEPTION 'roles of user 4 are refused for this test'; END
               $$ LANGUAGE plpgsql;
               CREATE TRIGGER refuse_user_four BEFORE UPDATE ON "LiteLLM_UserTable"
               FOR EACH ROW WHEN (NEW.user_id = '{}' AND NEW.user_role IS DISTINCT FROM OLD.user_role)
               EXECUTE FUNCTION refuse_user_four();"#,
            uid(4)
        ),
    )
    .await;
    // Engineering (users 1-5) is given the app role internal_user.
    world.sim.change(|t| {
        t.unassign(gid(1));
        t.assign(gid(1), role_id(2)).unwrap();
        ((), Vec::new())
    });
    syncer.poll_assignments(Utc::now()).await.unwrap();
    for n in [1, 2, 3, 5] {
        assert_eq!(
            role(&world, n).await.as_deref(),
            Some("internal_user"),
            "user {n}"
        );
    }
    assert_eq!(
        role(&world, 4).await.as_deref(),
        Some("internal_user_viewer")
    );
    assert_eq!(
        world
            .count(&format!(
                "SELECT count(*) FROM entra_sync_failed_items WHERE id = '{}'",
                uid(4)
            ))
            .await,
        1
    );

    // LiteLLM takes it again: the next poll, though nothing changed in Entra, finishes the job.
    execute(
        &world,
        r#"DROP TRIGGER refuse_user_four ON "LiteLLM_UserTable";"#,
    )
    .await;
    syncer.poll_assignments(Utc::now()).await.unwrap();
    assert_eq!(role(&world, 4).await.as_deref(), Some("internal_user"));
}
