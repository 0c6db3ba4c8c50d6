//! `entra-sync-webhook` as an operator runs it, given a REDIS_URL that carries a password and
//! does not work: it refuses to start, or answers 503, and nothing it prints or answers holds
//! the password or the clientState secret.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;

const PASSWORD: &str = "s3cr3t-Pa55";
const CLIENT_STATE: &str = entra_sync_testkit::CLIENT_STATE;
const TENANT: &str = "7d3c1b2a-1111-4222-8333-944455556666";

fn webhook(redis_url: &str, listen: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_entra-sync-webhook"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("REDIS_URL", redis_url)
        .env("ENTRA_SYNC_LISTEN", listen)
        .env("ENTRA_SYNC_CLIENT_STATE", CLIENT_STATE)
        .env("AZURE_TENANT_ID", TENANT)
        // As much logging as there is, for a leak to have every chance to show.
        .env("RUST_LOG", "trace")
        .kill_on_drop(true);
    command
}

#[tokio::test]
async fn a_malformed_redis_url_stops_the_webhook_without_showing_its_password() {
    let url = format!("redis://:{PASSWORD}@[bad");
    let out = webhook(&url, "127.0.0.1:0").output().await.unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{printed}");
    assert!(printed.contains("REDIS_URL"), "{printed}");
    assert!(!printed.contains(PASSWORD), "{printed}");
}

/// Runs the webhook to its exit with `name` set to `value`: its exit code and what it printed.
async fn refused_with(name: &str, value: &str) -> (Option<i32>, String) {
    let out = webhook("redis://127.0.0.1:9", "127.0.0.1:0")
        .env(name, value)
        .output()
        .await
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), printed)
}

#[tokio::test]
async fn a_short_client_state_or_a_tenant_that_is_no_id_stops_the_webhook_saying_why() {
    let short = "short-s3cr3t";
    let (code, printed) = refused_with("ENTRA_SYNC_CLIENT_STATE", short).await;
    assert_eq!(code, Some(1), "{printed}");
    assert!(
        printed.contains("ENTRA_SYNC_CLIENT_STATE is shorter than 32 characters"),
        "{printed}"
    );
    assert!(printed.contains("openssl rand -hex 32"), "{printed}");
    assert!(!printed.contains(short), "{printed}");

    let (code, printed) = refused_with("AZURE_TENANT_ID", "contoso.onmicrosoft.com").await;
    assert_eq!(code, Some(1), "{printed}");
    assert!(printed.contains("needs the tenant's id"), "{printed}");
    let (code, printed) = refused_with("AZURE_TENANT_ID", "../evil").await;
    assert_eq!(code, Some(1), "{printed}");
    assert!(
        printed.contains("AZURE_TENANT_ID \"../evil\" is neither a tenant id"),
        "{printed}"
    );
}

#[tokio::test]
async fn an_unreachable_redis_answers_503_without_showing_its_password() {
    // Files, not pipes: the webhook must never block on a full pipe nobody reads yet.
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("webhook-secrets-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let (stdout, stderr) = (dir.join("stdout"), dir.join("stderr"));
    let mut child = webhook(
        &format!("redis://:{PASSWORD}@unreachable.invalid:6379"),
        "127.0.0.1:0",
    )
    .stdout(Stdio::from(std::fs::File::create(&stdout).unwrap()))
    .stderr(Stdio::from(std::fs::File::create(&stderr).unwrap()))
    .spawn()
    .unwrap();

    // It binds a port of the system's choosing and says which.
    let listen = entra_sync_testkit::listen::announced_in_file(
        "entra-sync-webhook",
        &stderr,
        Duration::from_secs(30),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let base = format!("http://{listen}");
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let notification = json!({ "value": [{
        "subscriptionId": "0b1d2c3e-aaaa-4bbb-8ccc-000000000001",
        "subscriptionExpirationDateTime": "2026-12-20T00:00:00Z",
        "tenantId": TENANT,
        "clientState": CLIENT_STATE,
        "changeType": "updated",
        "resource": "Groups/9a000000-0000-4000-8000-000000000001",
        "resourceData": {
            "@odata.type": "#Microsoft.Graph.Group",
            "@odata.id": "Groups/9a000000-0000-4000-8000-000000000001",
            "id": "9a000000-0000-4000-8000-000000000001",
            "organizationId": TENANT,
        }
    }]});
    let response = http
        .post(format!("{base}/notifications"))
        .json(&notification)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let body = response.text().await.unwrap();
    assert!(!body.contains(PASSWORD), "{body}");
    assert!(!body.contains(CLIENT_STATE), "{body}");
    assert_eq!(
        http.get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!metrics.contains(PASSWORD), "{metrics}");

    // SIGTERM: the webhook stops as it would in Kubernetes, logging on its way out.
    let stopped = std::process::Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the webhook stops on SIGTERM")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    let printed =
        std::fs::read_to_string(&stdout).unwrap() + &std::fs::read_to_string(&stderr).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!printed.contains(PASSWORD), "{printed}");
    assert!(!printed.contains(CLIENT_STATE), "{printed}");
}
