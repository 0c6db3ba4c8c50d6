//! Graph benchmark (not a test): reads the full membership of a simulated tenant of 10,000
//! groups, 100,000 users and 1,000,000 memberships through the Graph client, and prints the
//! number of Graph requests and the time each way takes.
//!
//! Run: `cargo bench -p worker --bench graph`

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

#[path = "../tests/it/graph_common/mod.rs"]
mod graph_common;

use entity::{GroupId, UserId};
use graph_sim::tenant::TenantFile;
use graph_sim::{GraphSim, SimConfig};
use uuid::Uuid;
use worker::graph::DeltaStart;

const GROUPS: u128 = 10_000;
const USERS: u128 = 100_000;
const MEMBERS_PER_GROUP: u128 = 100;

fn uid(n: u128) -> Uuid {
    Uuid::from_u128(0x5b00_0000_0000_4000_8000_0000_0000_0000 + n)
}

fn gid(n: u128) -> Uuid {
    Uuid::from_u128(0x9a00_0000_0000_4000_8000_0000_0000_0000 + n)
}

fn tenant() -> TenantFile {
    TenantFile::generate(GROUPS, USERS, MEMBERS_PER_GROUP)
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    let started = Instant::now();
    let file = tenant();
    let config = SimConfig::default();
    let sim = GraphSim::start(config.clone(), file).await.unwrap();
    println!(
        "graph-sim: {GROUPS} groups, {USERS} users, {} memberships loaded in {:.2} s",
        GROUPS * MEMBERS_PER_GROUP,
        started.elapsed().as_secs_f64()
    );
    let (client, _) = graph_common::default_retry_client(&sim);

    sim.clear_requests();
    let started = Instant::now();
    let round = client.groups_delta(DeltaStart::Initial).await.unwrap();
    let memberships: usize = round.groups.iter().map(|(_, g)| g.added.len()).sum();
    println!(
        "groups delta, full membership:   {:>9} memberships of {:>6} groups in {:>7.2} s, {:>6} Graph requests ({} a page)",
        memberships,
        round.groups.len(),
        started.elapsed().as_secs_f64(),
        sim.count("/groups/delta"),
        config.page_size,
    );

    sim.clear_requests();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let ids: Vec<GroupId> = (0..GROUPS)
        .map(|g| GroupId::parse(&gid(g).to_string()).unwrap())
        .collect();
    let mut total = 0;
    for chunk in ids.chunks(ids.len().div_ceil(8)) {
        let client = client.clone();
        let chunk = chunk.to_vec();
        tasks.spawn(async move {
            let mut n = 0;
            for group in chunk {
                n += client.group_members(&group, false).await.unwrap().len();
            }
            n
        });
    }
    for n in tasks.join_all().await {
        total += n;
    }
    println!(
        "members per group, 8 at a time: {:>9} memberships of {:>6} groups in {:>7.2} s, {:>6} Graph requests",
        total,
        GROUPS,
        started.elapsed().as_secs_f64(),
        sim.count("/members"),
    );

    sim.clear_requests();
    let started = Instant::now();
    let user_ids: Vec<UserId> = (0..USERS)
        .map(|n| UserId::parse(&uid(n).to_string()).unwrap())
        .collect();
    let users = client.users_by_ids(&user_ids).await.unwrap();
    println!(
        "getByIds, every user:            {:>9} users in {:>7.2} s, {:>6} Graph requests",
        users.len(),
        started.elapsed().as_secs_f64(),
        sim.count("/getByIds"),
    );
    println!(
        "peak memory (simulator and client in one process): {:.0} MiB",
        peak_rss_mib()
    );
}
