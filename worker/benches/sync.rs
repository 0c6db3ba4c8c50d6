//! Sync benchmark (not a test): the first full sync of a tenant whose every group is assigned to
//! the app, from graph-sim into LiteLLM's real schema: wall time, Graph requests, peak memory.
//!
//! Run: `cargo bench -p worker --bench sync` (1,000 x 100, then 10,000 x 100 memberships, in
//! this process; then 10,000 x 100 again with `entra-sync-worker run` as a process of its own,
//! so that the worker's own peak memory is measured apart from graph-sim's). The first full sync
//! is measured against a `COPY` of the same membership rows into a fresh database, in the same
//! run, so that the ratio holds whatever else the machine is doing.
//! `ENTRA_SYNC_BENCH_GROUPS=1000` runs one size only (1,000 x 100, no worker process): for
//! iterating.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

mod common;
#[path = "../tests/it/graph_common/mod.rs"]
mod graph_common;

use common::count;

use entra_sync_testkit::TestDatabase;
use graph_sim::tenant::TenantFile;
use graph_sim::{GraphSim, SimConfig};
use worker::litellm_config::LiteLlmSettings;
use worker::store::{RemovalMode, Store};
use worker::sync::{Syncer, UnassignedPolicy};

fn peak_rss_mib() -> f64 {
    peak_rss_of(std::process::id()).unwrap_or(0.0)
}

/// `COPY ... FROM STDIN` of the membership rows the full sync of this tenant writes, into a fresh
/// database: the floor a bulk load of LiteLLM's membership table cannot beat. Sent in slices, as
/// a loader streaming a file would.
async fn copy_memberships(tenant: &TenantFile) -> std::time::Duration {
    use sqlx::postgres::PgPoolCopyExt;
    let db = TestDatabase::new().await;
    let pool = db.conn().get_postgres_connection_pool();
    let started = Instant::now();
    let mut copy = pool
        .copy_in_raw(r#"COPY "LiteLLM_TeamMembership" (user_id, team_id) FROM STDIN"#)
        .await
        .unwrap();
    let mut buffer = String::with_capacity(1 << 20);
    for group in &tenant.groups {
        for user in &group.members {
            buffer.push_str(&format!("{user}\t{}\n", group.id));
        }
        if buffer.len() > 1 << 20 {
            copy.send(buffer.as_bytes()).await.unwrap();
            buffer.clear();
        }
    }
    copy.send(buffer.as_bytes()).await.unwrap();
    copy.finish().await.unwrap();
    started.elapsed()
}

async fn full_sync(groups: u128, users: u128, members: u128) {
    let config = SimConfig::default();
    let tenant = TenantFile::generate(groups, users, members);
    let copied = copy_memberships(&tenant).await;
    let sim = GraphSim::start(config.clone(), tenant).await.unwrap();
    let db = TestDatabase::new().await;
    let (graph, _) = graph_common::default_retry_client(&sim);
    let store = Store::new(
        db.conn().clone(),
        LiteLlmSettings::default(),
        RemovalMode::Managed,
    );
    // As `run` has it: changes counted, not listed.
    let syncer = Syncer::new(graph, store, UnassignedPolicy::RemoveMembers).counting_only();

    let started = Instant::now();
    let report = syncer.poll_assignments(chrono::Utc::now()).await.unwrap();
    let took = started.elapsed();
    println!(
        "first full sync, {groups:>6} groups x {members} members ({:>8} memberships, {users:>6} users): {:>7.2} s, {:>6} Graph requests, {:>7} changes",
        groups * members,
        took.as_secs_f64(),
        sim.requests().len(),
        report.changes.total(),
    );
    println!(
        "  COPY of {} membership rows: {:.2} s; first full sync: {:.2} s; ratio {:.1}",
        groups * members,
        copied.as_secs_f64(),
        took.as_secs_f64(),
        took.as_secs_f64() / copied.as_secs_f64(),
    );
    println!(
        "  LiteLLM now holds {} teams, {} users and {} memberships",
        count(db.conn(), r#""LiteLLM_TeamTable""#).await,
        count(db.conn(), r#""LiteLLM_UserTable""#).await,
        count(db.conn(), r#""LiteLLM_TeamMembership""#).await,
    );
    let started = Instant::now();
    let again = syncer.delta_round(chrono::Utc::now()).await.unwrap();
    println!(
        "  then the first delta round (from the deltaLink the first sync stored): {:.2} s, {} changes; peak memory so far {:.0} MiB",
        started.elapsed().as_secs_f64(),
        again.changes.total(),
        peak_rss_mib()
    );
    let started = Instant::now();
    let resync = syncer.resync_round(chrono::Utc::now()).await.unwrap();
    println!(
        "  a resync when nothing changed (every group read whole and compared): {:.2} s, {} changes (COPY of the same rows: {:.2} s)",
        started.elapsed().as_secs_f64(),
        resync.changes.total(),
        copied.as_secs_f64(),
    );
    scatter_differences(&sim, DIFFERENCES);
    let started = Instant::now();
    let resync = syncer.resync_round(chrono::Utc::now()).await.unwrap();
    println!(
        "  a resync finding {DIFFERENCES} scattered differences (members gone and new, no notification): {:.2} s, {} changes (COPY: {:.2} s)",
        started.elapsed().as_secs_f64(),
        resync.changes.total(),
        copied.as_secs_f64(),
    );
    sim.shutdown();
}

/// Differences a resync finds in the second measurement.
const DIFFERENCES: usize = 1_000;

/// `count` changes in graph-sim with no notification, spread over the groups: every other one a
/// member gone, the others a member new (the next group's first member).
fn scatter_differences(sim: &GraphSim, count: usize) {
    let groups = sim.read(|t| t.to_file().groups);
    sim.change(|t| {
        for i in 0..count {
            let at = i * groups.len() / count;
            let group = &groups[at];
            if i % 2 == 0 {
                let _ = t.remove_member(group.id, *group.members.iter().next().unwrap());
            } else {
                let next = &groups[(at + 1) % groups.len()];
                let _ = t.add_member(group.id, *next.members.iter().next().unwrap());
            }
        }
        ((), Vec::new())
    });
}

/// The high-water mark of a process's resident memory, while it runs.
fn peak_rss_of(pid: u32) -> Option<f64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
}

/// Committed rounds, from the worker's `/metrics`.
async fn committed_rounds(metrics: &str) -> u64 {
    let Ok(response) = reqwest::get(format!("http://{metrics}/metrics")).await else {
        return 0;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .find(|line| line.starts_with(r#"entra_sync_rounds_total{result="ok"}"#))
        .and_then(|line| line.split_whitespace().last())
        .and_then(|count| count.parse().ok())
        .unwrap_or(0)
}

/// `entra-sync-worker run` against a fresh database, until its first round committed (seen on
/// its `/metrics`): the assignments polled (every group synced in full), then the first round
/// (only what changed meanwhile: nothing). Its own peak memory, apart from graph-sim's.
async fn worker_process_sync(groups: u128, users: u128, members: u128) {
    let config = SimConfig::default();
    let sim = GraphSim::start(config.clone(), TenantFile::generate(groups, users, members))
        .await
        .unwrap();
    let db = TestDatabase::new().await;
    let stream = entra_sync_testkit::redis::TestStream::new();
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let started = Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_entra-sync-worker"))
        .arg("run")
        .env_clear()
        .env("DATABASE_URL", db.url())
        .env("REDIS_URL", entra_sync_testkit::redis::redis_url())
        .env("ENTRA_SYNC_STREAM", stream.key())
        .env("ENTRA_SYNC_METRICS_LISTEN", &metrics)
        .env("ENTRA_SYNC_POLL_SECONDS", "36000")
        .env("AZURE_TENANT_ID", config.tenant_id.to_string())
        .env("AZURE_CLIENT_ID", config.client_id.to_string())
        .env("AZURE_CLIENT_SECRET", config.client_secret.clone().unwrap())
        .env("AZURE_AUTHORITY_HOST", sim.url())
        .env("MICROSOFT_GRAPH_ENDPOINT", sim.graph_url())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut peak = 0.0_f64;
    while committed_rounds(&metrics).await == 0 {
        assert!(child.try_wait().unwrap().is_none(), "the worker stopped");
        peak = peak.max(peak_rss_of(pid).unwrap_or(0.0));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    peak = peak.max(peak_rss_of(pid).unwrap_or(0.0));
    child.kill().unwrap();
    child.wait().unwrap();
    println!(
        "entra-sync-worker run as a process, {groups} groups x {members} members, until its first round committed: {:.2} s (full sync, then a round finding nothing), {} Graph requests, {} memberships, worker peak memory {peak:.0} MiB",
        took.as_secs_f64(),
        sim.requests().len(),
        count(db.conn(), r#""LiteLLM_TeamMembership""#).await,
    );
    sim.shutdown();
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    if let Ok(groups) = std::env::var("ENTRA_SYNC_BENCH_GROUPS") {
        let groups: u128 = groups
            .parse()
            .expect("ENTRA_SYNC_BENCH_GROUPS: a number of groups");
        full_sync(groups, groups * 10, 100).await;
        return;
    }
    full_sync(1_000, 10_000, 100).await;
    full_sync(10_000, 100_000, 100).await;
    worker_process_sync(10_000, 100_000, 100).await;
    println!(
        "peak memory of this process (graph-sim, the client and the store): {:.0} MiB",
        peak_rss_mib()
    );
}
