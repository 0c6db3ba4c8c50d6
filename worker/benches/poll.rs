//! Poll benchmark (not a test): what the assignments poll costs, in Graph requests and time,
//! against graph-sim and LiteLLM's real schema.
//! - 5,000 assigned groups (10 members each): a poll that finds nothing changed, and one that
//!   finds one newly assigned group (Graph sends no notification for an assignment: the poll is
//!   how a new group's team appears).
//! - 10,000 users holding app roles through 100 groups: the poll that works their roles out.
//!
//! Run: `cargo bench -p worker --bench poll`.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

mod common;
#[path = "../tests/it/graph_common/mod.rs"]
mod graph_common;

use graph_sim::GraphSim;
use graph_sim::tenant::{AppRole, Group, TenantFile};
use uuid::Uuid;
use worker::sync::Syncer;

const INTERNAL_USER_ROLE: Uuid = Uuid::from_u128(0xa0_0000_0000_4000_8000_0000_0000_0002);

/// Polls once, printing the time and the Graph requests.
async fn timed_poll(sim: &GraphSim, syncer: &Syncer, what: &str) {
    sim.clear_requests();
    let started = Instant::now();
    let report = syncer.poll_assignments(chrono::Utc::now()).await.unwrap();
    println!(
        "  {what}: {:.3} s, {} Graph requests, {} changes",
        started.elapsed().as_secs_f64(),
        sim.requests().len(),
        report.changes.total(),
    );
}

async fn many_assigned_groups() {
    const GROUPS: u128 = 5_000;
    let mut tenant = TenantFile::generate(GROUPS, 50_000, 10);
    // One more group, assigned later.
    let late = Uuid::from_u128(0x9a00_0000_0000_4000_8000_0000_0001_0000);
    tenant.groups.push(Group {
        id: late,
        display_name: "Late".into(),
        description: None,
        members: tenant.users.iter().take(10).map(|u| u.id).collect(),
        owners: Default::default(),
    });
    let (sim, _db, syncer) = common::start(tenant).await;
    println!("{GROUPS} assigned groups of 10 members:");
    timed_poll(&sim, &syncer, "first poll (every team made)").await;
    timed_poll(&sim, &syncer, "a poll that finds nothing changed").await;
    sim.change(|t| {
        t.assign(late, Uuid::nil()).unwrap();
        ((), Vec::new())
    });
    timed_poll(&sim, &syncer, "a poll that finds one new group").await;
    sim.shutdown();
}

async fn roles_through_groups() {
    const GROUPS: u128 = 100;
    const USERS: u128 = 10_000;
    let mut tenant = TenantFile::generate(GROUPS, USERS, USERS / GROUPS);
    tenant.app.app_roles.push(AppRole {
        id: INTERNAL_USER_ROLE,
        value: "internal_user".into(),
        display_name: "Internal User".into(),
        is_enabled: true,
    });
    for assignment in &mut tenant.app.assignments {
        assignment.app_role_id = INTERNAL_USER_ROLE;
    }
    let (sim, _db, syncer) = common::start(tenant).await;
    println!("{USERS} users holding an app role through {GROUPS} groups:");
    timed_poll(&sim, &syncer, "first poll (teams made, every role set)").await;
    timed_poll(&sim, &syncer, "a poll that finds nothing changed").await;
    // A new app role definition: every role is worked out again, and none changes.
    sim.change(|t| {
        t.app.app_roles.push(AppRole {
            id: Uuid::from_u128(0xbeef),
            value: "proxy_admin_viewer".into(),
            display_name: "Viewer".into(),
            is_enabled: true,
        });
        ((), Vec::new())
    });
    timed_poll(
        &sim,
        &syncer,
        "a poll after the app roles changed (every role checked)",
    )
    .await;
    sim.shutdown();
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    many_assigned_groups().await;
    roles_through_groups().await;
}
