//! Webhook benchmark (not a test): drives the webhook over loopback with keep-alive connections
//! and realistic one-to-three-notification bodies, and a bare axum handler that answers 202
//! without Redis in the same run, and prints requests per second and p50/p99 latency for both,
//! then the webhook's throughput as a share of the bare handler's, five times alternating, and
//! the median ratio (`ratio: 0.NN (median of 5)`). Beside each run, the CPU time one request
//! cost in this process (client and both servers) and in Redis, and the ratio CPU time alone
//! would give (`CPU ratio`): where the webhook's time goes, and how much of the gap is time
//! nothing ran (waiting for Redis) rather than work. On a shared machine both figures move by
//! a quarter to a third from run to run; `ENTRA_SYNC_BENCH_RUNS` runs more of them.
//!
//! Run: `cargo bench -p webhook --bench webhook` (needs the local Redis), or
//! `ENTRA_SYNC_BENCH_RUNS=15 cargo bench -p webhook --bench webhook` for fifteen runs of each.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use entra_sync_testkit::redis::{TestStream, redis_url};
use serde_json::json;

const TENANT: &str = "7d3c1b2a-1111-4222-8333-944455556666";
const SECRET: &str = "bench-secret-bench-secret-bench-secret";
const CONNECTIONS: usize = 32;
const RUN_FOR: Duration = Duration::from_secs(5);
/// Runs of each handler, alternating, unless `ENTRA_SYNC_BENCH_RUNS` says otherwise.
const RUNS: usize = 5;

fn runs() -> usize {
    std::env::var("ENTRA_SYNC_BENCH_RUNS")
        .ok()
        .and_then(|runs| runs.parse().ok())
        .filter(|&runs| runs > 0)
        .unwrap_or(RUNS)
}

/// CPU seconds used so far: this process (`/proc/self/stat`, utime + stime in clock ticks of
/// 1/100 s) and the Redis server (`used_cpu_sys` and `used_cpu_user` of its `INFO`).
struct CpuClock {
    process: f64,
    redis: f64,
}

impl CpuClock {
    fn read(stream: &TestStream) -> Self {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        // The fields after the command's parenthesis; utime and stime are the 14th and 15th.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let ticks: f64 = after
            .split(' ')
            .skip(11)
            .take(2)
            .map(|t| t.parse::<f64>().unwrap())
            .sum();
        let redis = ["used_cpu_sys", "used_cpu_user"]
            .iter()
            .map(|field| {
                let value = stream.server().info_field(field).unwrap();
                value.parse::<f64>().unwrap()
            })
            .sum();
        Self {
            process: ticks / 100.0,
            redis,
        }
    }
}

/// Redis transactions so far, and the requests they stored (the webhook's
/// `entra_sync_webhook_commit_requests` histogram, read from its `/metrics`).
async fn transactions(metrics_url: &str) -> (f64, f64) {
    let text = reqwest::get(metrics_url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .map_or(0.0, |v| v.trim().parse::<f64>().unwrap())
    };
    (
        value("entra_sync_webhook_commit_requests_count"),
        value("entra_sync_webhook_commit_requests_sum"),
    )
}

fn bodies() -> Vec<String> {
    (1..=3)
        .map(|count| {
            let items: Vec<_> = (0..count)
                .map(|n| {
                    json!({
                        "subscriptionId": "0b1d2c3e-aaaa-4bbb-8ccc-000000000001",
                        "subscriptionExpirationDateTime": "2026-12-20T00:00:00Z",
                        "tenantId": TENANT,
                        "clientState": SECRET,
                        "changeType": "updated",
                        "resource": format!("Groups/9a000000-0000-4000-8000-00000000000{n}"),
                        "resourceData": {
                            "@odata.type": "#Microsoft.Graph.Group",
                            "@odata.id": format!("Groups/9a000000-0000-4000-8000-00000000000{n}"),
                            "id": format!("9a000000-0000-4000-8000-00000000000{n}"),
                            "organizationId": TENANT,
                        }
                    })
                })
                .collect();
            json!({ "value": items }).to_string()
        })
        .collect()
}

struct Figures {
    requests: usize,
    /// CPU microseconds per request: this process, and Redis.
    cpu_process: f64,
    cpu_redis: f64,
    failures: usize,
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

async fn drive(url: String, stream: &TestStream) -> Figures {
    let cpu_before = CpuClock::read(stream);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONNECTIONS)
        .build()
        .unwrap();
    let bodies = bodies();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..CONNECTIONS {
        let client = client.clone();
        let url = url.clone();
        let bodies = bodies.clone();
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0;
            let mut n = worker;
            while started.elapsed() < RUN_FOR {
                let body = bodies[n % bodies.len()].clone();
                n += 1;
                let sent = Instant::now();
                let response = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                match response {
                    Ok(r) if r.status() == 202 => latencies.push(sent.elapsed()),
                    _ => failures += 1,
                }
            }
            (latencies, failures)
        });
    }
    let mut latencies = Vec::new();
    let mut failures = 0;
    for (mut l, f) in tasks.join_all().await {
        latencies.append(&mut l);
        failures += f;
    }
    let elapsed = started.elapsed();
    let cpu_after = CpuClock::read(stream);
    let served = latencies.len().max(1) as f64;
    let per_request = |seconds: f64| seconds * 1e6 / served;
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Figures {
        requests: latencies.len(),
        cpu_process: per_request(cpu_after.process - cpu_before.process),
        cpu_redis: per_request(cpu_after.redis - cpu_before.redis),
        failures,
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    }
}

fn print(name: &str, f: &Figures) {
    println!(
        "{name:<44} {:>9.0} req/s   p50 {:>7.2} ms   p99 {:>7.2} ms   CPU/request {:>5.1} us + Redis {:>4.1} us   ({} requests, {} failed)",
        f.per_second,
        f.p50.as_secs_f64() * 1000.0,
        f.p99.as_secs_f64() * 1000.0,
        f.cpu_process,
        f.cpu_redis,
        f.requests,
        f.failures
    );
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    let stream = TestStream::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let webhook_url = format!("http://{}/notifications", listener.local_addr().unwrap());
    let metrics_url = format!("http://{}/metrics", listener.local_addr().unwrap());
    let settings = webhook::Settings {
        redis_url: redis_url().into(),
        stream: stream.key().to_owned(),
        client_state: SECRET.to_owned().into(),
        client_state_previous: Vec::new(),
        tenant_id: TENANT.into(),
        deadline: Duration::from_secs(2),
        body_limit: 1024 * 1024,
        header_timeout: Duration::from_secs(5),
        body_timeout: Duration::from_secs(10),
        max_backlog: i64::MAX,
        backlog_interval: Duration::from_millis(500),
    };
    tokio::spawn(webhook::serve(listener, settings, std::future::pending()));

    let bare = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bare_url = format!("http://{}/notifications", bare.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/notifications",
        axum::routing::post(|_body: axum::body::Bytes| async { axum::http::StatusCode::ACCEPTED }),
    );
    tokio::spawn(async move { axum::serve(bare, app).await });

    let runs = runs();
    println!(
        "webhook benchmark: {CONNECTIONS} keep-alive connections, {} s each, bodies of 1-3 notifications, {runs} alternating runs",
        RUN_FOR.as_secs()
    );
    // Alternating runs, so that whatever else the machine does weighs on both alike; the median
    // ratio is the figure, a single run moving by a third on a busy machine.
    let mut ratios = Vec::with_capacity(runs);
    let mut cpu_ratios = Vec::with_capacity(runs);
    for run in 1..=runs {
        let bare = drive(bare_url.clone(), &stream).await;
        print(
            &format!("run {run}: bare axum handler (202, no Redis)"),
            &bare,
        );
        let (transactions_before, requests_before) = transactions(&metrics_url).await;
        let real = drive(webhook_url.clone(), &stream).await;
        let (transactions_after, requests_after) = transactions(&metrics_url).await;
        print(
            &format!("run {run}: entra-sync-webhook (Redis XADD)"),
            &real,
        );
        // Group commit at work: how many requests shared a transaction.
        println!(
            "run {run}: {:.1} requests per Redis transaction",
            (requests_after - requests_before)
                / (transactions_after - transactions_before).max(1.0)
        );
        // Each run starts from an empty stream, as a single run did.
        stream.command(&["XTRIM", stream.key(), "MAXLEN", "0"]);
        let ratio = real.per_second / bare.per_second;
        // What the ratio would be if CPU time were all that limited both: the bare handler's
        // CPU per request as a share of the webhook's (Redis included).
        let cpu_ratio = (bare.cpu_process + bare.cpu_redis) / (real.cpu_process + real.cpu_redis);
        println!("run {run}: ratio {ratio:.2}   CPU ratio {cpu_ratio:.2}");
        ratios.push(ratio);
        cpu_ratios.push(cpu_ratio);
    }
    ratios.sort_by(f64::total_cmp);
    cpu_ratios.sort_by(f64::total_cmp);
    println!("CPU ratio: {:.2} (median of {runs})", cpu_ratios[runs / 2]);
    // The figure issues 15 and 25 track: the webhook's throughput as a share of the bare
    // handler's.
    println!("ratio: {:.2} (median of {runs})", ratios[runs / 2]);
}
