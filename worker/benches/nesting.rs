//! Nested-groups benchmark (not a test): 1,000 assigned groups, each holding 5 nested groups of
//! 20 users (100,000 users, 100,000 memberships), synced with `ENTRA_SYNC_MEMBERSHIP=transitive`
//! from graph-sim into LiteLLM's real schema. Prints the Graph requests and the time of the first
//! sync, and of a change deep in the tree (a user added to one nested group); then the cost of a
//! resync that reads every group's owners too (`ENTRA_SYNC_OWNERS_AS_ADMINS`).
//!
//! Run: `cargo bench -p worker --bench nesting`.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

mod common;
#[path = "../tests/it/graph_common/mod.rs"]
mod graph_common;

use common::count;
use graph_sim::GraphSim;
use graph_sim::tenant::{TenantFile, User};
use worker::sync::Membership;

const GROUPS: u128 = 1_000;
const NESTED: u128 = 5;
const USERS: u128 = 20;

/// The requests graph-sim answered since the last call, by kind.
fn requests(sim: &GraphSim) -> String {
    let all = sim.requests();
    let of = |fragment: &str| all.iter().filter(|r| r.path.contains(fragment)).count();
    let summary = format!(
        "{} Graph requests ({} transitiveMembers, {} delta, {} other)",
        all.len(),
        of("/transitiveMembers"),
        of("/delta"),
        all.len() - of("/transitiveMembers") - of("/delta"),
    );
    sim.clear_requests();
    summary
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    let tenant = TenantFile::generate_nested(GROUPS, NESTED, USERS);
    let (sim, db, syncer) = common::start(tenant).await;
    let syncer = syncer.with_membership(Membership::Transitive);
    println!(
        "{GROUPS} assigned groups x {NESTED} nested groups x {USERS} users ({} users), transitive:",
        GROUPS * NESTED * USERS
    );

    let started = Instant::now();
    let report = syncer.poll_assignments(chrono::Utc::now()).await.unwrap();
    println!(
        "  first sync (the assignments poll: every team read whole): {:.2} s, {}, {} changes",
        started.elapsed().as_secs_f64(),
        requests(&sim),
        report.changes.total(),
    );
    println!(
        "    LiteLLM now holds {} teams, {} users, {} memberships; {} nested groups remembered",
        count(db.conn(), r#""LiteLLM_TeamTable""#).await,
        count(db.conn(), r#""LiteLLM_UserTable""#).await,
        count(db.conn(), r#""LiteLLM_TeamMembership""#).await,
        count(db.conn(), "entra_sync_nested_groups").await,
    );
    let started = Instant::now();
    let round = syncer.delta_round(chrono::Utc::now()).await.unwrap();
    println!(
        "  the first delta round after it (from the deltaLink the first sync stored): {:.2} s, {}, {} changes",
        started.elapsed().as_secs_f64(),
        requests(&sim),
        round.changes.total(),
    );

    // A new user joins one nested group of group 500: Graph names the nested group, and the
    // round reads group 500 whole again.
    let newcomer = TenantFile::nested_user_id(GROUPS * NESTED * USERS + 1);
    sim.apply(|t| {
        t.upsert_user(User {
            id: newcomer,
            display_name: "Newcomer".into(),
            user_principal_name: "newcomer@contoso.example".into(),
            mail: None,
            account_enabled: true,
        })
    });
    sim.apply(|t| t.add_member(TenantFile::nested_group_id(500 * NESTED + 3), newcomer));
    let started = Instant::now();
    let round = syncer.delta_round(chrono::Utc::now()).await.unwrap();
    println!(
        "  a user added to a nested group: {:.3} s, {}, {} groups applied, {} changes",
        started.elapsed().as_secs_f64(),
        requests(&sim),
        round.groups_applied,
        round.changes.total(),
    );

    // With ENTRA_SYNC_OWNERS_AS_ADMINS, a resync (every reconciliation has one) also reads
    // every assigned group's owners, twenty groups a JSON batch.
    let started = Instant::now();
    syncer
        .clone()
        .with_owners_as_admins(true)
        .resync_round(chrono::Utc::now())
        .await
        .unwrap();
    println!(
        "  a resync with owners as admins: {:.2} s, {} HTTP requests, of them {} $batch carrying {} owners reads",
        started.elapsed().as_secs_f64(),
        sim.requests().iter().filter(|r| !r.batch).count(),
        sim.http_count("$batch"),
        sim.count("/owners"),
    );
    sim.shutdown();
}
