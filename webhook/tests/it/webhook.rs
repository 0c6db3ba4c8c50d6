//! The webhook against a real Redis: the handshake, verification, storage, every refusal path,
//! Redis going away or hanging mid-test, backpressure, readiness, metrics, replicas and shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use entra_sync_testkit::redis::{RedisProxy, RedisServer, TestStream};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use webhook::Settings;

const TENANT: &str = "7d3c1b2a-1111-4222-8333-944455556666";
const SECRET: &str = entra_sync_testkit::CLIENT_STATE;
/// A clientState from before the 32-character rule, still heard during a rotation.
const OLD_SECRET: &str = "old-secret";
const DEADLINE: Duration = Duration::from_millis(600);

struct Running {
    url: String,
    stream: TestStream,
    proxy: Option<RedisProxy>,
    shutdown: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    http: reqwest::Client,
}

fn settings(redis: String, stream: &TestStream) -> Settings {
    Settings {
        redis_url: redis.into(),
        stream: stream.key().to_owned(),
        client_state: SECRET.to_owned().into(),
        client_state_previous: vec![OLD_SECRET.to_owned().into()],
        tenant_id: TENANT.into(),
        deadline: DEADLINE,
        body_limit: 1024 * 1024,
        header_timeout: Duration::from_secs(5),
        body_timeout: Duration::from_secs(10),
        max_backlog: 100_000,
        backlog_interval: Duration::from_millis(50),
    }
}

async fn start_with(
    stream: TestStream,
    proxy: Option<RedisProxy>,
    tweak: impl FnOnce(&mut Settings),
) -> Running {
    let redis = proxy
        .as_ref()
        .map_or_else(|| stream.server().url().to_owned(), RedisProxy::url);
    let mut settings = settings(redis, &stream);
    tweak(&mut settings);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (shutdown, stop) = oneshot::channel::<()>();
    let server = tokio::spawn(webhook::serve(listener, settings, async {
        let _ = stop.await;
    }));
    Running {
        url,
        stream,
        proxy,
        shutdown: Some(shutdown),
        server,
        http: reqwest::Client::new(),
    }
}

async fn start(tweak: impl FnOnce(&mut Settings)) -> Running {
    start_with(TestStream::new(), None, tweak).await
}

async fn start_behind_proxy() -> Running {
    start_with(TestStream::new(), Some(RedisProxy::start().await), |_| {}).await
}

fn change(client_state: &str, tenant: &str, group: &str) -> Value {
    json!({
        "subscriptionId": "0b1d2c3e-aaaa-4bbb-8ccc-000000000001",
        "subscriptionExpirationDateTime": "2026-12-20T00:00:00Z",
        "tenantId": tenant,
        "clientState": client_state,
        "changeType": "updated",
        "resource": format!("Groups/{group}"),
        "resourceData": {
            "@odata.type": "#Microsoft.Graph.Group",
            "@odata.id": format!("Groups/{group}"),
            "id": group,
            "organizationId": tenant,
        }
    })
}

fn collection(items: Vec<Value>) -> String {
    json!({ "value": items }).to_string()
}

impl Running {
    async fn post(&self, path: &str, body: String, content_type: &str) -> (u16, String, Duration) {
        let started = Instant::now();
        let response = self
            .http
            .post(format!("{}{path}", self.url))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap(), started.elapsed())
    }

    async fn notify(&self, items: Vec<Value>) -> (u16, String, Duration) {
        self.post("/notifications", collection(items), "application/json")
            .await
    }

    async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn status_of(&self, path: &str) -> u16 {
        self.http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

#[tokio::test]
async fn both_handshakes_echo_the_decoded_token_as_plain_text() {
    let app = start(|_| {}).await;
    let token = "Validation: Testing client application reachability for subscription Request-Id: 4f7a&x=<b>?";
    for path in ["/notifications", "/lifecycle"] {
        let response = app
            .http
            .post(format!("{}{path}", app.url))
            .query(&[("validationToken", token)])
            .header("content-type", "text/plain")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let headers = response.headers().clone();
        assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(response.text().await.unwrap(), token);
    }
    let absurd = "x".repeat(5000);
    let response = app
        .http
        .post(format!("{}/notifications", app.url))
        .query(&[("validationToken", absurd.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(app.stream.is_empty());
}

#[tokio::test]
async fn accepted_notifications_are_stored_one_entry_each_without_the_secret() {
    let app = start(|_| {}).await;
    let lifecycle = json!({
        "subscriptionId": "0b1d2c3e-aaaa-4bbb-8ccc-000000000001",
        "tenantId": TENANT, "clientState": SECRET, "lifecycleEvent": "reauthorizationRequired",
    });
    let (status, _, _) = app
        .notify(vec![
            change(SECRET, TENANT, "g1"),
            change(SECRET, TENANT, "g2"),
            lifecycle,
        ])
        .await;
    assert_eq!(status, 202);
    let entries = app.stream.entries();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0]["v"], "1");
    assert_eq!(entries[0]["kind"], "change");
    assert_eq!(entries[0]["resource"], "Groups/g1");
    assert_eq!(entries[0]["resource_id"], "g1");
    assert_eq!(entries[0]["tenant_id"], TENANT);
    assert_eq!(entries[1]["resource_id"], "g2");
    assert_eq!(entries[2]["kind"], "lifecycle");
    assert_eq!(entries[2]["lifecycle_event"], "reauthorizationRequired");
    for entry in &entries {
        assert!(
            entry.values().all(|v| !v.contains(SECRET)),
            "the secret was stored: {entry:?}"
        );
        let record = entra_sync_core::record::StreamRecord::from_fields(entry).unwrap();
        assert_eq!(record.tenant_id, TENANT);
    }
}

#[tokio::test]
async fn the_previous_secret_is_accepted_during_a_rotation() {
    let app = start(|_| {}).await;
    assert_eq!(
        app.notify(vec![change(OLD_SECRET, TENANT, "g")]).await.0,
        202
    );
    assert_eq!(app.stream.len(), 1);
}

#[tokio::test]
async fn wrong_secrets_and_tenants_are_dropped_and_counted() {
    let app = start(|_| {}).await;
    let other_tenant = "00000000-0000-4000-8000-000000000000";
    let (status, _, _) = app
        .notify(vec![
            change(SECRET, TENANT, "kept"),
            change("guess", TENANT, "g"),
            change(SECRET, other_tenant, "g"),
        ])
        .await;
    assert_eq!(status, 202);
    let entries = app.stream.entries();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["resource_id"], "kept");

    let (status, body, _) = app
        .notify(vec![
            change("guess", TENANT, "g"),
            change(SECRET, other_tenant, "g"),
        ])
        .await;
    assert_eq!(status, 401, "{body}");
    let mut missing = change(SECRET, TENANT, "g");
    missing.as_object_mut().unwrap().remove("clientState");
    assert_eq!(app.notify(vec![missing]).await.0, 401);
    assert_eq!(
        app.stream.len(),
        1,
        "refused notifications are never stored"
    );

    let metrics = app.metrics().await;
    assert!(
        metrics
            .contains(r#"entra_sync_webhook_notifications_dropped_total{reason="client_state"} 3"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"entra_sync_webhook_notifications_dropped_total{reason="tenant"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("entra_sync_webhook_notifications_accepted_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"entra_sync_webhook_requests_total{outcome="unauthorized"} 2"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn bad_requests_get_clear_errors_and_store_nothing() {
    let app = start(|s| s.body_limit = 4096).await;

    let (status, body, _) = app
        .post("/notifications", "{not json".into(), "application/json")
        .await;
    assert_eq!(status, 400);
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error"], "malformed");

    let mut no_tenant = change(SECRET, TENANT, "g");
    no_tenant.as_object_mut().unwrap().remove("tenantId");
    let (status, body, _) = app.notify(vec![no_tenant]).await;
    assert_eq!(status, 400);
    assert!(body.contains("tenantId"), "{body}");

    let big = collection(
        (0..40)
            .map(|n| change(SECRET, TENANT, &format!("g{n}")))
            .collect(),
    );
    assert!(big.len() > 4096);
    let (status, body, _) = app.post("/notifications", big, "application/json").await;
    assert_eq!(status, 413, "{body}");

    let (status, _, _) = app
        .post(
            "/notifications",
            collection(vec![change(SECRET, TENANT, "g")]),
            "text/plain",
        )
        .await;
    assert_eq!(status, 415);

    assert_eq!(app.status_of("/notifications").await, 405);
    let put = app
        .http
        .put(format!("{}/lifecycle", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 405);

    assert!(app.stream.is_empty());
}

#[tokio::test]
async fn redis_going_away_answers_503_before_the_deadline_then_202_when_back() {
    let app = start_behind_proxy().await;
    let proxy = app.proxy.as_ref().unwrap();
    assert_eq!(
        app.notify(vec![change(SECRET, TENANT, "before")]).await.0,
        202
    );

    proxy.cut();
    for n in 0..3 {
        let (status, body, _) = app
            .notify(vec![change(SECRET, TENANT, &format!("lost{n}"))])
            .await;
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("could not be stored"), "{body}");
    }
    // Answered by storing failing (a refused connection, or the deadline), not by backpressure;
    // the handler's deadline bounds how long that takes.
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"entra_sync_webhook_requests_total{outcome="unavailable"} 3"#),
        "{metrics}"
    );
    assert_eq!(app.status_of("/readyz").await, 503);

    proxy.restore();
    let mut status = 0;
    for _ in 0..50 {
        status = app.notify(vec![change(SECRET, TENANT, "after")]).await.0;
        if status == 202 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status, 202,
        "the webhook did not recover once Redis was back"
    );
    assert_eq!(app.status_of("/readyz").await, 200);
    let stored: Vec<String> = app
        .stream
        .entries()
        .iter()
        .map(|e| e["resource_id"].clone())
        .collect();
    assert_eq!(stored.first().map(String::as_str), Some("before"));
    assert_eq!(stored.last().map(String::as_str), Some("after"));
    assert!(
        stored.iter().all(|id| !id.starts_with("lost")),
        "a 503 must not have been stored"
    );
}

#[tokio::test]
async fn a_hanging_redis_answers_503_before_the_deadline() {
    let app = start_behind_proxy().await;
    app.proxy.as_ref().unwrap().stall();
    let (status, body, took) = app.notify(vec![change(SECRET, TENANT, "g")]).await;
    assert_eq!(status, 503, "{body}");
    // The deadline answered, after Redis had all of it: the request was not dropped early, nor
    // left to hang. That the deadline comes before Graph's 3-second limit is the
    // configuration's job (`--deadline-ms` is at most 2900, tested with the configuration).
    assert!(
        body.contains(&format!(
            "Redis did not answer within {} ms",
            DEADLINE.as_millis()
        )),
        "{body}"
    );
    assert!(took >= DEADLINE, "took {took:?}");
    assert!(
        app.metrics()
            .await
            .contains(r#"entra_sync_webhook_requests_total{outcome="unavailable"} 1"#)
    );
}

#[tokio::test]
async fn a_full_backlog_answers_503_and_trims_nothing() {
    let stream = TestStream::new();
    // The workers' group exists and has read nothing: every new entry is backlog.
    stream.command(&[
        "XGROUP",
        "CREATE",
        stream.key(),
        "entra-sync-workers",
        "$",
        "MKSTREAM",
    ]);
    let app = start_with(stream, None, |s| s.max_backlog = 2).await;
    for n in 0..3 {
        assert_eq!(
            app.notify(vec![change(SECRET, TENANT, &format!("g{n}"))])
                .await
                .0,
            202
        );
    }
    let mut status = 0;
    for _ in 0..50 {
        status = app.notify(vec![change(SECRET, TENANT, "extra")]).await.0;
        if status == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(status, 503);
    let stored = app.stream.len();
    assert!(stored >= 3, "nothing was trimmed");
    let (status, body, _) = app.notify(vec![change(SECRET, TENANT, "more")]).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("waiting"), "{body}");
    assert_eq!(app.stream.len(), stored);
    assert!(app.metrics().await.contains(r#"outcome="backpressure""#));
}

/// The backlog is what the workers have not finished (unread plus pending), not the stream's
/// length, on servers that report the group's lag (7.0, Valkey) and on those that do not (6.2).
async fn the_backlog_is_what_the_workers_have_not_finished(server: RedisServer) {
    let stream = TestStream::on(&server);
    stream.command(&[
        "XGROUP",
        "CREATE",
        stream.key(),
        "entra-sync-workers",
        "$",
        "MKSTREAM",
    ]);
    let app = start_with(stream, None, |_| {}).await;
    for n in 0..5 {
        assert_eq!(
            app.notify(vec![change(SECRET, TENANT, &format!("g{n}"))])
                .await
                .0,
            202
        );
    }
    // A worker read three and finished two of them: two unread, one pending.
    let key = app.stream.key().to_owned();
    app.stream.command(&[
        "XREADGROUP",
        "GROUP",
        "entra-sync-workers",
        "w",
        "COUNT",
        "3",
        "STREAMS",
        &key,
        ">",
    ]);
    let ids: Vec<String> = app
        .stream
        .entries_with_ids()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    app.stream
        .command(&["XACK", &key, "entra-sync-workers", &ids[0], &ids[1]]);

    // Measured in the background: wait for a measurement taken after the acknowledgement (the
    // only moment the length is 5 and the backlog is not).
    let measured = |metrics: &str| {
        metrics.contains("entra_sync_stream_backlog 3\n")
            && metrics.contains("entra_sync_stream_length 5\n")
    };
    let mut metrics = String::new();
    for _ in 0..250 {
        metrics = app.metrics().await;
        if measured(&metrics) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(measured(&metrics), "{metrics}");
}

#[tokio::test]
async fn the_backlog_on_the_machines_redis() {
    the_backlog_is_what_the_workers_have_not_finished(RedisServer::machine()).await;
}

#[tokio::test]
async fn the_backlog_on_redis_6_2() {
    the_backlog_is_what_the_workers_have_not_finished(RedisServer::redis6()).await;
}

#[tokio::test]
async fn the_backlog_on_valkey() {
    the_backlog_is_what_the_workers_have_not_finished(RedisServer::valkey()).await;
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let app = start(|_| {}).await;
    assert_eq!(app.status_of("/healthz").await, 200);
    assert_eq!(app.status_of("/readyz").await, 200);
    app.notify(vec![change(SECRET, TENANT, "g")]).await;
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"entra_sync_webhook_requests_total{outcome="accepted"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("entra_sync_webhook_enqueue_seconds_count 1"),
        "{metrics}"
    );
    // The length and the backlog are measured in the background; they reach 1 shortly (no
    // worker has made the group yet: the whole stream is backlog).
    let measured = |metrics: &str| {
        metrics.contains("entra_sync_stream_length 1\n")
            && metrics.contains("entra_sync_stream_backlog 1\n")
    };
    let mut metrics = metrics;
    for _ in 0..250 {
        if measured(&metrics) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        metrics = app.metrics().await;
    }
    assert!(measured(&metrics), "{metrics}");
}

#[tokio::test]
async fn several_replicas_share_one_stream() {
    let first = start(|_| {}).await;
    let second = start_with(TestStream::new(), None, |s| {
        s.stream = first.stream.key().to_owned()
    })
    .await;
    assert_eq!(first.notify(vec![change(SECRET, TENANT, "a")]).await.0, 202);
    assert_eq!(
        second.notify(vec![change(SECRET, TENANT, "b")]).await.0,
        202
    );
    let ids: Vec<String> = first
        .stream
        .entries()
        .iter()
        .map(|e| e["resource_id"].clone())
        .collect();
    assert_eq!(ids, ["a", "b"]);
}

#[tokio::test]
async fn shutdown_finishes_requests_in_flight() {
    let mut app = start_with(TestStream::new(), Some(RedisProxy::start().await), |s| {
        s.deadline = Duration::from_millis(1500);
    })
    .await;
    app.proxy.as_ref().unwrap().stall();
    // One genuine notification and one forged: the forged one is counted once the request is
    // verified, just before it waits for Redis, which shows the request is in the handler.
    let in_flight = {
        let http = app.http.clone();
        let url = format!("{}/notifications", app.url);
        tokio::spawn(async move {
            let response = http
                .post(url)
                .header("content-type", "application/json")
                .body(collection(vec![
                    change(SECRET, TENANT, "g"),
                    change("forged", TENANT, "f"),
                ]))
                .send()
                .await?;
            let status = response.status().as_u16();
            response.text().await.map(|body| (status, body))
        })
    };
    let verified = r#"entra_sync_webhook_notifications_dropped_total{reason="client_state"} 1"#;
    let mut metrics = String::new();
    for _ in 0..250 {
        metrics = app.metrics().await;
        if metrics.contains(verified) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        metrics.contains(verified),
        "the request never came: {metrics}"
    );
    assert!(!in_flight.is_finished(), "answered before the shutdown");
    app.shutdown.take().unwrap().send(()).unwrap();
    // The request in flight still gets its answer (503 at the deadline: Redis hangs), not a
    // reset connection.
    let (status, body) = in_flight.await.unwrap().unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("did not answer within 1500 ms"), "{body}");
    let stopped = tokio::time::timeout(Duration::from_secs(5), &mut app.server).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "the server did not stop");
    assert!(
        app.http
            .get(format!("{}/healthz", app.url))
            .send()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn durations_too_long_for_the_clock_do_not_panic() {
    // Settings built by hand are not range-checked: the deadline, the backlog interval and the
    // slow-client timeouts must still never overflow an Instant.
    let app = start(|s| {
        s.deadline = Duration::MAX;
        s.backlog_interval = Duration::MAX;
        s.header_timeout = Duration::MAX;
        s.body_timeout = Duration::MAX;
    })
    .await;
    let (status, body, _) = app.notify(vec![change(SECRET, TENANT, "g")]).await;
    assert_eq!(status, 202, "{body}");
    // The backlog watcher measures once before its (endless) sleep: the length becomes known
    // (-1 is unknown, what a watcher that panicked would leave).
    let measured = |metrics: &str| !metrics.contains("entra_sync_stream_length -1");
    let mut metrics = app.metrics().await;
    for _ in 0..100 {
        if measured(&metrics) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        metrics = app.metrics().await;
    }
    assert!(measured(&metrics), "{metrics}");
    assert_eq!(app.stream.len(), 1);
}

/// Reads what the server sends until it closes the connection, up to `limit`: what it sent, or
/// `None` if the connection was still open then.
async fn read_until_closed(stream: &mut tokio::net::TcpStream, limit: Duration) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    let read_all = async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(limit, read_all).await.ok()?;
    Some(String::from_utf8_lossy(&received).into_owned())
}

fn address(app: &Running) -> String {
    app.url.trim_start_matches("http://").to_owned()
}

#[tokio::test]
async fn a_client_stalling_in_its_headers_is_disconnected_after_the_header_timeout() {
    use tokio::io::AsyncWriteExt;
    let timeout = Duration::from_millis(300);
    let app = start(|s| s.header_timeout = timeout).await;
    let mut slow = tokio::net::TcpStream::connect(address(&app)).await.unwrap();
    let started = Instant::now();
    slow.write_all(b"POST /notifications HTTP/1.1\r\nHost: webhook\r\nContent-Ty")
        .await
        .unwrap();
    // Then nothing more: the server must not wait for the rest.
    let answer = read_until_closed(&mut slow, Duration::from_secs(5)).await;
    let took = started.elapsed();
    assert!(answer.is_some(), "the connection is still open");
    // Closed by the header timeout, not at once for the partial headers.
    assert!(took >= timeout, "took {took:?}");
    // Whatever it answered (hyper may say 408 first), it was no acceptance.
    assert!(!answer.unwrap().contains(" 202 "));
    assert!(app.stream.is_empty());
    // The server is still there for everyone else.
    assert_eq!(app.notify(vec![change(SECRET, TENANT, "g")]).await.0, 202);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    use tokio::io::AsyncWriteExt;
    let timeout = Duration::from_millis(300);
    let app = start(|s| s.header_timeout = timeout).await;
    let mut client = tokio::net::TcpStream::connect(address(&app)).await.unwrap();
    client
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: webhook\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut client, Duration::from_secs(5)).await;
    let answer = answer.expect("the idle connection is closed");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn a_body_that_stalls_gets_408_within_the_body_timeout() {
    use tokio::io::AsyncWriteExt;
    let timeout = Duration::from_millis(400);
    let app = start(|s| s.body_timeout = timeout).await;
    let mut slow = tokio::net::TcpStream::connect(address(&app)).await.unwrap();
    let body = collection(vec![change(SECRET, TENANT, "g")]);
    let head = format!(
        "POST /notifications HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    let started = Instant::now();
    slow.write_all(head.as_bytes()).await.unwrap();
    // Half the body, then nothing.
    slow.write_all(&body.as_bytes()[..body.len() / 2])
        .await
        .unwrap();
    let answer = read_until_closed(&mut slow, Duration::from_secs(5))
        .await
        .expect("the connection is closed after the answer");
    let took = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    assert!(took >= timeout, "took {took:?}");
    assert!(app.stream.is_empty());
    assert!(
        app.metrics()
            .await
            .contains(r#"entra_sync_webhook_requests_total{outcome="body_timeout"} 1"#)
    );
}

#[tokio::test]
async fn a_body_trickled_byte_by_byte_gets_408_within_the_body_timeout() {
    use tokio::io::AsyncWriteExt;
    // Each byte comes well within the timeout of the one before; the whole body does not.
    let timeout = Duration::from_millis(400);
    let app = start(|s| s.body_timeout = timeout).await;
    let stream = tokio::net::TcpStream::connect(address(&app)).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let body = collection(vec![change(SECRET, TENANT, "g")]);
    let head = format!(
        "POST /notifications HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    let started = Instant::now();
    writer.write_all(head.as_bytes()).await.unwrap();
    let whole_body_sent = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickle = tokio::spawn({
        let whole_body_sent = whole_body_sent.clone();
        async move {
            for byte in body.into_bytes() {
                if writer.write_all(&[byte]).await.is_err() {
                    return;
                }
                // The client's pace, not a wait for the server.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            whole_body_sent.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    });
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), reader.read_to_end(&mut answer)).await;
    let took = started.elapsed();
    // Answered while bytes were still coming: the whole body's deadline, not a pause's.
    let still_trickling = !whole_body_sent.load(std::sync::atomic::Ordering::SeqCst);
    trickle.abort();
    assert!(read.is_ok(), "no answer");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(still_trickling, "answered only once the whole body was in");
    assert!(took >= timeout, "took {took:?}");
    assert!(app.stream.is_empty());
    assert!(
        app.metrics()
            .await
            .contains(r#"entra_sync_webhook_requests_total{outcome="body_timeout"} 1"#)
    );
}

#[tokio::test]
async fn requests_in_time_are_served_as_before_with_tight_timeouts() {
    use tokio::io::AsyncWriteExt;
    let app = start(|s| {
        s.header_timeout = Duration::from_millis(300);
        s.body_timeout = Duration::from_millis(300);
    })
    .await;
    assert_eq!(app.notify(vec![change(SECRET, TENANT, "a")]).await.0, 202);
    let (status, body, _) = app
        .post(
            "/notifications?validationToken=hello",
            String::new(),
            "text/plain",
        )
        .await;
    assert_eq!((status, body.as_str()), (200, "hello"));
    // Two requests on one keep-alive connection, both answered.
    let mut client = tokio::net::TcpStream::connect(address(&app)).await.unwrap();
    let body = collection(vec![change(SECRET, TENANT, "b")]);
    let request = format!(
        "POST /notifications HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    client
        .write_all(format!("{request}{request}").as_bytes())
        .await
        .unwrap();
    let answers = read_until_closed(&mut client, Duration::from_secs(5))
        .await
        .expect("the connection closes once idle");
    assert_eq!(answers.matches("HTTP/1.1 202").count(), 2, "{answers}");
    assert_eq!(app.stream.len(), 3);
}

#[tokio::test]
async fn a_megabyte_of_forged_notifications_is_one_refusal_counted_by_reason() {
    let app = start(|_| {}).await;
    let other_tenant = "00000000-0000-4000-8000-000000000000";
    // As many forged notifications as fit in the default 1 MiB limit.
    let forged: Vec<Value> = (0..2000)
        .map(|n| change(&format!("guess-{n}"), TENANT, &format!("g{n}")))
        .chain((0..500).map(|n| change(SECRET, other_tenant, &format!("t{n}"))))
        .collect();
    let body = collection(forged);
    assert!(
        body.len() > 512 * 1024 && body.len() < 1024 * 1024,
        "{}",
        body.len()
    );
    let (status, body, _) = app.post("/notifications", body, "application/json").await;
    assert_eq!(status, 401);
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error"], "unauthorized");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("2000 with another clientState, 500 from another tenant"),
        "{message}"
    );
    assert!(app.stream.is_empty());

    // Mixed with a genuine one: it is kept, the others counted.
    let (status, _, _) = app
        .notify(vec![
            change(SECRET, TENANT, "kept"),
            change("guess", TENANT, "g"),
        ])
        .await;
    assert_eq!(status, 202);
    assert_eq!(app.stream.len(), 1);

    let metrics = app.metrics().await;
    for expected in [
        r#"entra_sync_webhook_notifications_dropped_total{reason="client_state"} 2001"#,
        r#"entra_sync_webhook_notifications_dropped_total{reason="tenant"} 500"#,
        r#"entra_sync_webhook_requests_total{outcome="unauthorized"} 1"#,
        r#"entra_sync_webhook_requests_total{outcome="accepted"} 1"#,
        "entra_sync_webhook_notifications_accepted_total 1",
    ] {
        assert!(
            metrics.contains(expected),
            "{expected} missing from:\n{metrics}"
        );
    }
}

/// Sends `count` requests at once, the n-th carrying `per_request(n)`; their answers in order.
async fn notify_all(
    app: &Running,
    count: usize,
    per_request: impl Fn(usize) -> Vec<Value>,
) -> Vec<(u16, String, Duration)> {
    let mut requests = tokio::task::JoinSet::new();
    for n in 0..count {
        let (http, url, body) = (
            app.http.clone(),
            format!("{}/notifications", app.url),
            collection(per_request(n)),
        );
        requests.spawn(async move {
            let started = Instant::now();
            let response = http
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (n, status, response.text().await.unwrap(), started.elapsed())
        });
    }
    let mut answers = requests.join_all().await;
    answers.sort_by_key(|(n, ..)| *n);
    answers
        .into_iter()
        .map(|(_, status, body, took)| (status, body, took))
        .collect()
}

#[tokio::test]
async fn concurrent_requests_are_each_answered_202_and_stored_exactly_once() {
    let app = start(|_| {}).await;
    // One to three notifications each, all different.
    let groups = |n: usize| -> Vec<String> { (0..=n % 3).map(|i| format!("g{n}-{i}")).collect() };
    let answers = notify_all(&app, 200, |n| {
        groups(n)
            .iter()
            .map(|g| change(SECRET, TENANT, g))
            .collect()
    })
    .await;
    for (status, body, _) in &answers {
        assert_eq!(*status, 202, "{body}");
    }
    let mut stored: Vec<String> = app
        .stream
        .entries()
        .iter()
        .map(|e| e["resource_id"].clone())
        .collect();
    // Each request's entries are stored together and in its order, whatever shared the
    // transaction.
    for n in 0..200 {
        let own: Vec<&String> = stored
            .iter()
            .filter(|id| id.starts_with(&format!("g{n}-")))
            .collect();
        let expected = groups(n);
        assert_eq!(own, expected.iter().collect::<Vec<_>>(), "request {n}");
    }
    stored.sort();
    let mut expected: Vec<String> = (0..200).flat_map(groups).collect();
    expected.sort();
    assert_eq!(stored, expected, "every entry exactly once");
    let metrics = app.metrics().await;
    for line in [
        r#"entra_sync_webhook_requests_total{outcome="accepted"} 200"#.to_owned(),
        format!(
            "entra_sync_webhook_notifications_accepted_total {}",
            expected.len()
        ),
        "entra_sync_webhook_enqueue_seconds_count 200".to_owned(),
        // However they were grouped, the transactions stored the 200 requests.
        "entra_sync_webhook_commit_requests_sum 200.0".to_owned(),
    ] {
        assert!(
            metrics.contains(line.as_str()),
            "{line} missing from:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn a_failing_transaction_answers_503_to_every_request_in_it() {
    let app = start(|_| {}).await;
    // The stream's key holds a string: every XADD of the transaction fails, whichever requests
    // share it.
    app.stream
        .command(&["SET", app.stream.key(), "not a stream"]);
    let answers = notify_all(&app, 50, |n| vec![change(SECRET, TENANT, &format!("g{n}"))]).await;
    for (status, body, _) in &answers {
        assert_eq!(*status, 503, "{body}");
        assert!(body.contains("could not be stored: Redis"), "{body}");
    }
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"entra_sync_webhook_requests_total{outcome="unavailable"} 50"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("entra_sync_webhook_notifications_accepted_total 0"),
        "{metrics}"
    );
    // Once the key is a stream again, the next request is stored, alone.
    app.stream.command(&["DEL", app.stream.key()]);
    assert_eq!(
        app.notify(vec![change(SECRET, TENANT, "after")]).await.0,
        202
    );
    assert_eq!(app.stream.len(), 1);
}

#[tokio::test]
async fn many_requests_waiting_on_a_hanging_redis_each_get_503_at_their_deadline_and_are_never_stored()
 {
    let app = start_behind_proxy().await;
    let proxy = app.proxy.as_ref().unwrap();
    // Connected first, so that the hang is Redis', not the connection's.
    assert_eq!(
        app.notify(vec![change(SECRET, TENANT, "before")]).await.0,
        202
    );
    proxy.stall();
    let answers = notify_all(&app, 40, |n| {
        vec![change(SECRET, TENANT, &format!("lost{n}"))]
    })
    .await;
    for (status, body, took) in &answers {
        assert_eq!(*status, 503, "{body}");
        assert!(body.contains("could not be stored"), "{body}");
        // Not before the deadline (nothing was dropped early), and not long after it: none of
        // them waited for another's transaction.
        assert!(*took >= DEADLINE, "took {took:?}");
        assert!(*took < DEADLINE * 3, "took {took:?}");
    }
    proxy.restore();
    let mut status = 0;
    for _ in 0..50 {
        status = app.notify(vec![change(SECRET, TENANT, "after")]).await.0;
        if status == 202 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 202, "the webhook did not recover");
    // Give anything still travelling a moment to land: nothing answered 503 may.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stored: Vec<String> = app
        .stream
        .entries()
        .iter()
        .map(|e| e["resource_id"].clone())
        .collect();
    assert_eq!(stored.first().map(String::as_str), Some("before"));
    assert_eq!(stored.last().map(String::as_str), Some("after"));
    assert!(
        stored.iter().all(|id| !id.starts_with("lost")),
        "a 503 was stored: {stored:?}"
    );
}
