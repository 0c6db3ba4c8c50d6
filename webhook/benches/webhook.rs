//! Webhook benchmark (not a test): drives the webhook over loopback with keep-alive connections
//! and realistic one-to-three-notification bodies, and a bare axum handler that answers 202
//! without Redis in the same run, and prints requests per second and p50/p99 latency for both,
//! then the webhook's throughput as a share of the bare handler's, five times alternating, and
//! the median ratio (`ratio: 0.NN (median of 5)`).
//!
//! Run: `cargo bench -p webhook --bench webhook` (needs the local Redis).

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use entra_sync_testkit::redis::{TestStream, redis_url};
use serde_json::json;

const TENANT: &str = "7d3c1b2a-1111-4222-8333-944455556666";
const SECRET: &str = "bench-secret-bench-secret-bench-secret";
const CONNECTIONS: usize = 32;
const RUN_FOR: Duration = Duration::from_secs(5);
/// Runs of each handler, alternating.
const RUNS: usize = 5;

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
    failures: usize,
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

async fn drive(url: String) -> Figures {
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
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Figures {
        requests: latencies.len(),
        failures,
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    }
}

fn print(name: &str, f: &Figures) {
    println!(
        "{name:<44} {:>9.0} req/s   p50 {:>7.2} ms   p99 {:>7.2} ms   ({} requests, {} failed)",
        f.per_second,
        f.p50.as_secs_f64() * 1000.0,
        f.p99.as_secs_f64() * 1000.0,
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

    println!(
        "webhook benchmark: {CONNECTIONS} keep-alive connections, {} s each, bodies of 1-3 notifications, {RUNS} alternating runs",
        RUN_FOR.as_secs()
    );
    // Alternating runs, so that whatever else the machine does weighs on both alike; the median
    // ratio is the figure, a single run moving by a third on a busy machine.
    let mut ratios = Vec::with_capacity(RUNS);
    for run in 1..=RUNS {
        let bare = drive(bare_url.clone()).await;
        print(
            &format!("run {run}: bare axum handler (202, no Redis)"),
            &bare,
        );
        let real = drive(webhook_url.clone()).await;
        print(
            &format!("run {run}: entra-sync-webhook (Redis XADD)"),
            &real,
        );
        // Each run starts from an empty stream, as a single run did.
        stream.command(&["XTRIM", stream.key(), "MAXLEN", "0"]);
        let ratio = real.per_second / bare.per_second;
        println!("run {run}: ratio {ratio:.2}");
        ratios.push(ratio);
    }
    ratios.sort_by(f64::total_cmp);
    // The figure issues 15 and 25 track: the webhook's throughput as a share of the bare
    // handler's.
    println!("ratio: {:.2} (median of {RUNS})", ratios[RUNS / 2]);
}
