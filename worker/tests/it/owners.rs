//! Group owners as team admins (`ENTRA_SYNC_OWNERS_AS_ADMINS`): against graph-sim (which keeps
//! owners, tracks them in the groups delta and answers JSON batches) and LiteLLM's real schema.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;
use crate::graph_common;
use crate::world;

use chrono::Utc;
use sea_orm::ConnectionTrait;
use uuid::Uuid;
use worker::store::Change;
use worker::sync::Syncer;
use world::*;

use graph_common::*;

const ENGINEERING: u128 = 1;

fn owners_as_admins(world: &World) -> Syncer {
    world.syncer().with_owners_as_admins(true)
}

/// The team's entries as (user id, role), sorted.
async fn roles(world: &World, n: u128) -> Vec<(String, String)> {
    let row = world
        .db
        .conn()
        .query_one(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            format!(
                r#"SELECT coalesce(jsonb_agg(jsonb_build_array(e->>'user_id', e->>'role')
                                   ORDER BY e->>'user_id'), '[]')::text
                   FROM "LiteLLM_TeamTable" t, jsonb_array_elements(t.members_with_roles) e
                   WHERE t.team_id = '{}'"#,
                gid(n)
            ),
        ))
        .await
        .unwrap()
        .unwrap();
    serde_json::from_str(&row.try_get_by_index::<String>(0).unwrap()).unwrap()
}

fn role(n: u128, role: &str) -> (String, String) {
    (uid(n).to_string(), role.to_owned())
}

/// Engineering's users 1-5 with `user`, except those given.
fn engineering_with(special: &[(u128, &str)]) -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = (1..=5)
        .filter(|n| !special.iter().any(|(s, _)| s == n))
        .map(|n| role(n, "user"))
        .chain(special.iter().map(|(n, r)| role(*n, r)))
        .collect();
    all.sort();
    all
}

fn add_owner(world: &World, group: u128, user: u128) {
    world.sim.apply(|t| t.add_owner(gid(group), uid(user)));
}

fn remove_owner(world: &World, group: u128, user: u128) {
    world.sim.apply(|t| t.remove_owner(gid(group), uid(user)));
}

async fn first_sync(syncer: &Syncer) {
    syncer.poll_assignments(Utc::now()).await.unwrap();
    syncer.delta_round(Utc::now()).await.unwrap();
}

async fn is_member(world: &World, team: u128, user: u128) -> bool {
    world
        .count(&format!(
            r#"SELECT count(*) FROM "LiteLLM_TeamMembership"
               WHERE team_id = '{}' AND user_id = '{}'"#,
            gid(team),
            uid(user)
        ))
        .await
        == 1
}

#[tokio::test]
async fn an_owner_who_is_a_member_is_admin_until_the_ownership_ends() {
    let world = World::new().await;
    add_owner(&world, ENGINEERING, 1);
    let syncer = owners_as_admins(&world);
    first_sync(&syncer).await;
    assert_eq!(
        roles(&world, ENGINEERING).await,
        engineering_with(&[(1, "admin")])
    );

    // Another owner arrives, the first goes: a round sees both (owners@delta).
    add_owner(&world, ENGINEERING, 2);
    remove_owner(&world, ENGINEERING, 1);
    let report = syncer.delta_round(Utc::now()).await.unwrap();
    assert_eq!(
        roles(&world, ENGINEERING).await,
        engineering_with(&[(2, "admin")])
    );
    let kinds: Vec<&str> = report.changes.list().iter().map(Change::kind).collect();
    assert_eq!(kinds, ["member_role_changed", "member_role_changed"]);
}

#[tokio::test]
async fn an_owner_outside_the_group_joins_as_admin_and_leaves_with_their_keys() {
    let world = World::new().await;
    add_owner(&world, ENGINEERING, 7);
    let syncer = owners_as_admins(&world);
    first_sync(&syncer).await;
    assert_eq!(
        roles(&world, ENGINEERING).await,
        engineering_with(&[(7, "admin")])
    );
    assert!(is_member(&world, ENGINEERING, 7).await);

    common::insert_key(
        world.db.conn(),
        "owner-key",
        &uid(7).to_string(),
        Some(&gid(ENGINEERING).to_string()),
        None,
        "2026-11-30 10:00:00",
    )
    .await;
    remove_owner(&world, ENGINEERING, 7);
    syncer.delta_round(Utc::now()).await.unwrap();
    assert_eq!(roles(&world, ENGINEERING).await, engineering_with(&[]));
    assert!(!is_member(&world, ENGINEERING, 7).await);
    assert_eq!(
        common::key_state(world.db.conn(), "owner-key").await,
        None,
        "the removed member's key for the team is deleted, as for any removed member"
    );
}

#[tokio::test]
async fn an_owner_who_leaves_the_group_stays_in_the_team_while_an_owner() {
    let world = World::new().await;
    add_owner(&world, ENGINEERING, 3);
    let syncer = owners_as_admins(&world);
    first_sync(&syncer).await;
    world
        .sim
        .apply(|t| t.remove_member(gid(ENGINEERING), uid(3)));
    syncer.delta_round(Utc::now()).await.unwrap();
    assert_eq!(
        roles(&world, ENGINEERING).await,
        engineering_with(&[(3, "admin")])
    );

    remove_owner(&world, ENGINEERING, 3);
    syncer.delta_round(Utc::now()).await.unwrap();
    assert!(!is_member(&world, ENGINEERING, 3).await);
}

#[tokio::test]
async fn an_admin_role_set_by_hand_is_kept() {
    let world = World::new().await;
    let syncer = owners_as_admins(&world);
    first_sync(&syncer).await;
    // An admin in LiteLLM makes user 2 the team's admin by hand.
    world
        .db
        .conn()
        .execute_unprepared(&format!(
            r#"UPDATE "LiteLLM_TeamTable" SET members_with_roles = (
                 SELECT jsonb_agg(CASE WHEN e->>'user_id' = '{}'
                                  THEN jsonb_set(e, '{{role}}', '"admin"') ELSE e END)
                 FROM jsonb_array_elements(members_with_roles) e)
               WHERE team_id = '{}'"#,
            uid(2),
            gid(ENGINEERING)
        ))
        .await
        .unwrap();
    add_owner(&world, ENGINEERING, 2);
    syncer.delta_round(Utc::now()).await.unwrap();
    remove_owner(&world, ENGINEERING, 2);
    syncer.delta_round(Utc::now()).await.unwrap();
    syncer.reconcile(Utc::now()).await.unwrap();
    assert_eq!(
        roles(&world, ENGINEERING).await,
        engineering_with(&[(2, "admin")]),
        "the role set by hand outlives the ownership"
    );
}

#[tokio::test]
async fn an_owner_change_without_a_notification_arrives_with_the_polls_round() {
    let world = World::new().await;
    let syncer = owners_as_admins(&world);
    first_sync(&syncer).await;
    // Graph does not promise a notification for an owner change. The round that follows every
    // poll finds it in the groups delta (owners@delta).
    world.sim.set_delivery(|d| d.enabled = false);
    world.sim.change(|t| {
        let _ = t.add_owner(gid(ENGINEERING), uid(4));
        ((), Vec::new())
    });
    syncer.poll_assignments(Utc::now()).await.unwrap();
    syncer.delta_round(Utc::now()).await.unwrap();
    assert_eq!(
        roles(&world, ENGINEERING).await,
        engineering_with(&[(4, "admin")])
    );
}

#[tokio::test]
async fn a_reconciliation_reads_every_groups_owners() {
    let world = World::new().await;
    let syncer = owners_as_admins(&world);
    first_sync(&syncer).await;
    // An owner change the groups delta never reported (a deltaLink older than owner tracking,
    // say): the reconciliation reads the owners of every assigned group.
    world.sim.change(|t| {
        let _ = t.add_owner(gid(ENGINEERING), uid(4));
        ((), Vec::new())
    });
    world.sim.change(|t| {
        t.expire_delta_tokens();
        ((), Vec::new())
    });
    syncer.reconcile(Utc::now()).await.unwrap();
    assert_eq!(
        roles(&world, ENGINEERING).await,
        engineering_with(&[(4, "admin")])
    );
}

#[tokio::test]
async fn turning_the_setting_off_gives_back_the_admin_roles_it_gave() {
    let world = World::new().await;
    add_owner(&world, ENGINEERING, 1);
    add_owner(&world, ENGINEERING, 7);
    first_sync(&owners_as_admins(&world)).await;
    assert_eq!(
        roles(&world, ENGINEERING).await,
        engineering_with(&[(1, "admin"), (7, "admin")])
    );

    // The dry run shows it; the next reconciliation does it.
    let preview = world
        .syncer()
        .dry_run()
        .reconcile(Utc::now())
        .await
        .unwrap();
    let mut kinds: Vec<&str> = preview.changes.list().iter().map(Change::kind).collect();
    kinds.sort();
    assert_eq!(kinds, ["member_removed", "member_role_changed"]);
    world.syncer().reconcile(Utc::now()).await.unwrap();
    assert_eq!(roles(&world, ENGINEERING).await, engineering_with(&[]));
    assert_eq!(
        world
            .count("SELECT count(*) FROM entra_sync_group_owners")
            .await,
        0
    );
}

#[tokio::test]
async fn owners_of_many_groups_cost_one_request_per_twenty_groups() {
    let world = World::new().await;
    for n in 100..125 {
        world
            .sim
            .apply(|t| t.upsert_group(gid(n), &format!("Group {n}"), None));
        world.sim.apply(|t| t.add_member(gid(n), uid(1)));
        add_owner(&world, n, 2);
        world.sim.change(|t| {
            t.assign(gid(n), Uuid::nil()).unwrap();
            ((), Vec::new())
        });
    }
    let syncer = owners_as_admins(&world);
    first_sync(&syncer).await;
    world.sim.clear_requests();
    syncer.reconcile(Utc::now()).await.unwrap();
    // 26 assigned groups (Engineering and 25 more): two batches.
    assert_eq!(world.sim.http_count("$batch"), 2);
    assert_eq!(world.sim.count("/owners"), 26);
    assert_eq!(
        roles(&world, 124).await,
        vec![role(1, "user"), role(2, "admin")]
    );
}

/// The running worker: an owner change's notification makes the owner the team's admin.
#[tokio::test]
async fn the_worker_applies_an_owner_change_from_its_notification() {
    let mut world = World::new().await;
    world.syncer_settings = |syncer| syncer.with_owners_as_admins(true);
    world.start_worker();
    assert!(eventually(|| async { world.members(ENGINEERING).await == Some(users(1..=5)) }).await);

    add_owner(&world, ENGINEERING, 8);
    let expected = engineering_with(&[(8, "admin")]);
    let arrived = eventually(|| async { roles(&world, ENGINEERING).await == expected }).await;
    assert!(
        arrived,
        "{:?} {:?}",
        roles(&world, ENGINEERING).await,
        world.sim.deliveries()
    );
    world.stop_workers().await;
}
