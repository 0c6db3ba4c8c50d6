//! Scale benchmark (not a test): work that must stay linear in a group's or a notification
//! batch's size, against graph-sim and LiteLLM's real schema.
//! - one group of 50,000 members: its first sync, then a round that adds one member;
//! - 10,000 users notified at once (a `users` notification each): the re-read and its changes.
//!
//! Run: `cargo bench -p worker --bench scale`.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

mod common;
#[path = "../tests/it/graph_common/mod.rs"]
mod graph_common;

use entity::UserId;
use graph_sim::GraphSim;
use graph_sim::tenant::{TenantFile, User};

fn requests(sim: &GraphSim) -> usize {
    let count = sim.requests().iter().filter(|r| !r.batch).count();
    sim.clear_requests();
    count
}

async fn one_large_group() {
    const MEMBERS: u128 = 50_000;
    let tenant = TenantFile::generate(1, MEMBERS, MEMBERS);
    let (sim, _db, syncer) = common::start(tenant).await;
    println!("one group of {MEMBERS} members:");
    let started = Instant::now();
    let report = syncer.poll_assignments(chrono::Utc::now()).await.unwrap();
    println!(
        "  first sync: {:.2} s, {} HTTP requests to Graph, {} changes",
        started.elapsed().as_secs_f64(),
        requests(&sim),
        report.changes.total()
    );
    let newcomer = uuid::Uuid::from_u128(0x5b00_0000_0000_4000_8000_0001_0000_0000);
    let group = sim.read(|t| t.to_file().groups[0].id);
    sim.apply(|t| {
        t.upsert_user(User {
            id: newcomer,
            display_name: "Newcomer".into(),
            user_principal_name: "newcomer@contoso.example".into(),
            mail: None,
            account_enabled: true,
        })
    });
    sim.apply(|t| t.add_member(group, newcomer));
    let started = Instant::now();
    let round = syncer.delta_round(chrono::Utc::now()).await.unwrap();
    println!(
        "  a round adding one member: {:.3} s, {} HTTP requests, {} changes",
        started.elapsed().as_secs_f64(),
        requests(&sim),
        round.changes.total()
    );
    sim.shutdown();
}

async fn many_users_notified() {
    const USERS: u128 = 10_000;
    let tenant = TenantFile::generate(10, USERS, USERS / 10);
    let (sim, _db, syncer) = common::start(tenant).await;
    syncer.poll_assignments(chrono::Utc::now()).await.unwrap();
    // Every user renamed in Entra: each notification names one user.
    let renamed: Vec<User> = sim.read(|t| t.to_file().users);
    for mut user in renamed.iter().cloned() {
        user.display_name = format!("{} (renamed)", user.display_name);
        sim.change(|t| ((), t.upsert_user(user)));
    }
    let ids: Vec<UserId> = renamed
        .iter()
        .map(|user| UserId::parse(&user.id.to_string()).unwrap())
        .collect();
    sim.clear_requests();
    let started = Instant::now();
    let changes = syncer
        .refresh_users(&ids, &Default::default(), chrono::Utc::now())
        .await
        .unwrap();
    println!(
        "{USERS} users notified at once (each renamed): {:.2} s, {} HTTP requests to Graph ({} user reads), {} changes",
        started.elapsed().as_secs_f64(),
        sim.requests().iter().filter(|r| !r.batch).count(),
        sim.count("/users/"),
        changes.total()
    );
    sim.shutdown();
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    one_large_group().await;
    many_users_notified().await;
}
