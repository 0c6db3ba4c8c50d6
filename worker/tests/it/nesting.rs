//! Nested groups (`ENTRA_SYNC_MEMBERSHIP=transitive`): a team's members are its group's
//! transitive user members, and a change anywhere below an assigned group reaches its team in the
//! same round. Against graph-sim, LiteLLM's real schema, and the worker's own rounds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::graph_common;
use crate::world;

use chrono::Utc;
use graph_sim::tenant::User;
use uuid::Uuid;
use worker::store::Change;
use worker::sync::{Membership, Syncer};
use world::*;

use graph_common::*;

/// Groups of these tests, away from the shared tenant's groups 1 and 2.
const TOP: u128 = 10;
const MIDDLE: u128 = 11;
const BOTTOM: u128 = 12;
const SIDE: u128 = 13;

fn transitive(world: &World) -> Syncer {
    world.syncer().with_membership(Membership::Transitive)
}

/// Users 11 and up, beyond the shared tenant's ten.
fn add_users(world: &World, range: std::ops::RangeInclusive<u128>) {
    for n in range {
        world.sim.apply(|t| {
            t.upsert_user(User {
                id: uid(n),
                display_name: format!("User {n}"),
                user_principal_name: format!("user{n}@contoso.example"),
                mail: None,
                account_enabled: true,
            })
        });
    }
}

fn group(world: &World, n: u128, members: &[Uuid]) {
    world
        .sim
        .apply(|t| t.upsert_group(gid(n), &format!("Group {n}"), None));
    for member in members {
        world.sim.apply(|t| t.add_member(gid(n), *member));
    }
}

fn assign(world: &World, n: u128) {
    world.sim.change(|t| {
        t.assign(gid(n), Uuid::nil()).unwrap();
        ((), Vec::new())
    });
}

/// TOP ⊃ MIDDLE ⊃ BOTTOM, three levels, each with users of its own; TOP is assigned.
fn three_levels(world: &World) {
    add_users(world, 11..=16);
    group(world, BOTTOM, &[uid(15), uid(16)]);
    group(world, MIDDLE, &[uid(13), uid(14), gid(BOTTOM)]);
    group(world, TOP, &[uid(11), uid(12), gid(MIDDLE)]);
    assign(world, TOP);
}

async fn first_sync(syncer: &Syncer) {
    syncer.poll_assignments(Utc::now()).await.unwrap();
    syncer.delta_round(Utc::now()).await.unwrap();
}

#[tokio::test]
async fn members_three_levels_down_are_team_members_and_their_changes_arrive_in_one_round() {
    let world = World::new().await;
    three_levels(&world);
    let syncer = transitive(&world);
    first_sync(&syncer).await;
    assert_eq!(world.members(TOP).await, Some(users(11..=16)));

    // A change at the bottom of the tree reaches the assigned group at the top.
    add_users(&world, 17..=17);
    world.sim.apply(|t| t.add_member(gid(BOTTOM), uid(17)));
    world.sim.apply(|t| t.remove_member(gid(BOTTOM), uid(15)));
    syncer.delta_round(Utc::now()).await.unwrap();
    let mut expected = users(11..=14);
    expected.extend(users(16..=17));
    assert_eq!(world.members(TOP).await, Some(expected));

    // The nested groups are not teams: only assigned groups are.
    assert_eq!(world.members(MIDDLE).await, None);
    assert_eq!(world.members(BOTTOM).await, None);
}

#[tokio::test]
async fn direct_membership_leaves_nested_members_out() {
    let world = World::new().await;
    three_levels(&world);
    let syncer = world.syncer();
    first_sync(&syncer).await;
    assert_eq!(world.members(TOP).await, Some(users(11..=12)));
}

#[tokio::test]
async fn a_cycle_ends_and_every_user_on_it_is_a_member() {
    let world = World::new().await;
    add_users(&world, 11..=14);
    group(&world, TOP, &[uid(11)]);
    group(&world, MIDDLE, &[uid(12), gid(TOP)]);
    group(&world, BOTTOM, &[uid(13), gid(MIDDLE)]);
    // TOP ⊃ BOTTOM ⊃ MIDDLE ⊃ TOP: Entra allows it.
    world.sim.apply(|t| t.add_member(gid(TOP), gid(BOTTOM)));
    assign(&world, TOP);
    let syncer = transitive(&world);
    first_sync(&syncer).await;
    assert_eq!(world.members(TOP).await, Some(users(11..=13)));

    // A change on the cycle still reaches the team, and the round ends.
    world.sim.apply(|t| t.add_member(gid(MIDDLE), uid(14)));
    syncer.delta_round(Utc::now()).await.unwrap();
    assert_eq!(world.members(TOP).await, Some(users(11..=14)));
}

#[tokio::test]
async fn a_user_reached_through_two_paths_stays_until_both_are_gone() {
    let world = World::new().await;
    add_users(&world, 11..=13);
    group(&world, MIDDLE, &[uid(11), uid(12)]);
    group(&world, SIDE, &[uid(12), uid(13)]);
    group(&world, TOP, &[gid(MIDDLE), gid(SIDE)]);
    assign(&world, TOP);
    let syncer = transitive(&world);
    first_sync(&syncer).await;
    assert_eq!(world.members(TOP).await, Some(users(11..=13)));

    world.sim.apply(|t| t.remove_member(gid(MIDDLE), uid(12)));
    syncer.delta_round(Utc::now()).await.unwrap();
    assert_eq!(
        world.members(TOP).await,
        Some(users(11..=13)),
        "user 12 is still a member through SIDE"
    );
    let managed = world
        .count(&format!(
            "SELECT count(*) FROM entra_sync_managed_memberships
             WHERE group_id = '{}' AND user_id = '{}'",
            gid(TOP),
            uid(12)
        ))
        .await;
    assert_eq!(managed, 1, "still managed by entra-sync, once");

    world.sim.apply(|t| t.remove_member(gid(SIDE), uid(12)));
    syncer.delta_round(Utc::now()).await.unwrap();
    let mut expected = users(11..=11);
    expected.extend(users(13..=13));
    assert_eq!(world.members(TOP).await, Some(expected));
}

#[tokio::test]
async fn a_group_taken_out_of_its_parent_takes_its_members_and_one_nested_in_brings_them() {
    let world = World::new().await;
    three_levels(&world);
    let syncer = transitive(&world);
    first_sync(&syncer).await;

    // BOTTOM leaves MIDDLE: its users leave TOP's team.
    world
        .sim
        .apply(|t| t.remove_member(gid(MIDDLE), gid(BOTTOM)));
    syncer.delta_round(Utc::now()).await.unwrap();
    assert_eq!(world.members(TOP).await, Some(users(11..=14)));

    // A change in BOTTOM, no longer below TOP, does not reach it.
    add_users(&world, 17..=18);
    world.sim.apply(|t| t.add_member(gid(BOTTOM), uid(17)));
    syncer.delta_round(Utc::now()).await.unwrap();
    assert_eq!(world.members(TOP).await, Some(users(11..=14)));

    // A new group nested under MIDDLE (itself nested) brings its members in, and its later
    // changes reach TOP.
    group(&world, SIDE, &[uid(18)]);
    world.sim.apply(|t| t.add_member(gid(MIDDLE), gid(SIDE)));
    syncer.delta_round(Utc::now()).await.unwrap();
    let mut expected = users(11..=14);
    expected.extend(users(18..=18));
    assert_eq!(world.members(TOP).await, Some(expected.clone()));

    world.sim.apply(|t| t.add_member(gid(SIDE), uid(17)));
    syncer.delta_round(Utc::now()).await.unwrap();
    expected.extend(users(17..=17));
    expected.sort();
    assert_eq!(world.members(TOP).await, Some(expected));
}

#[tokio::test]
async fn a_group_under_two_assigned_groups_reaches_both_teams() {
    let world = World::new().await;
    three_levels(&world);
    group(&world, SIDE, &[gid(BOTTOM)]);
    assign(&world, SIDE);
    let syncer = transitive(&world);
    first_sync(&syncer).await;
    assert_eq!(world.members(SIDE).await, Some(users(15..=16)));

    world.sim.apply(|t| t.remove_member(gid(BOTTOM), uid(16)));
    syncer.delta_round(Utc::now()).await.unwrap();
    assert_eq!(world.members(SIDE).await, Some(users(15..=15)));
    let mut expected = users(11..=15);
    expected.sort();
    assert_eq!(world.members(TOP).await, Some(expected));
}

/// Changing the setting takes effect at the next reconciliation, which a dry run previews.
#[tokio::test]
async fn switching_to_transitive_and_back_takes_effect_at_reconciliation() {
    let world = World::new().await;
    three_levels(&world);
    let direct = world.syncer();
    first_sync(&direct).await;
    assert_eq!(world.members(TOP).await, Some(users(11..=12)));

    // The dry run lists exactly the members the switch adds, and writes nothing.
    let preview = transitive(&world)
        .dry_run()
        .reconcile(Utc::now())
        .await
        .unwrap();
    let mut added: Vec<String> = preview
        .changes
        .list()
        .iter()
        .filter_map(|change| match change {
            Change::MemberAdded {
                team_id, user_id, ..
            } if *team_id == gid(TOP).to_string() => Some(user_id.clone()),
            _ => None,
        })
        .collect();
    added.sort();
    assert_eq!(added, users(13..=16));
    assert_eq!(world.members(TOP).await, Some(users(11..=12)));
    assert_eq!(
        world
            .count("SELECT count(*) FROM entra_sync_nested_groups")
            .await,
        0,
        "a dry run remembers no nesting"
    );

    transitive(&world).reconcile(Utc::now()).await.unwrap();
    assert_eq!(world.members(TOP).await, Some(users(11..=16)));

    // And back: the nested members go, and the nesting is forgotten.
    direct.reconcile(Utc::now()).await.unwrap();
    assert_eq!(world.members(TOP).await, Some(users(11..=12)));
}

/// The running worker: a notification for a group deep in the tree updates the team above it.
#[tokio::test]
async fn the_worker_applies_a_deep_change_from_its_notification() {
    let mut world = World::new().await;
    world.syncer_settings = |syncer| syncer.with_membership(Membership::Transitive);
    three_levels(&world);
    world.start_worker();
    assert!(eventually(|| async { world.members(TOP).await == Some(users(11..=16)) }).await);

    add_users(&world, 17..=17);
    world.sim.apply(|t| t.add_member(gid(BOTTOM), uid(17)));
    assert!(eventually(|| async { world.members(TOP).await == Some(users(11..=17)) }).await);
    world.stop_workers().await;
}
