//! The Graph client against graph-sim: every call, paging across pages, each credential kind,
//! token refresh, throttling, retries and Graph's errors.
#![allow(clippy::unwrap_used)]

use crate::graph_common;

use std::time::{Duration, Instant};

use entity::{GroupId, UserId};
use graph_common::*;
use graph_sim::Fault;
use worker::graph::model::{DEFAULT_ACCESS, ObjectKind};
use worker::graph::{Credential, DeltaStart};

fn group_id(n: u128) -> GroupId {
    GroupId::parse(&gid(n).to_string()).unwrap()
}

fn member_ids(changes: &[worker::graph::MemberChange]) -> Vec<String> {
    let mut ids: Vec<String> = changes.iter().map(|m| m.id.clone()).collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn initial_delta_merges_groups_split_across_pages() {
    let sim = sim(|c| {
        c.page_size = 2;
        c.delta_members_per_object = 2;
    })
    .await;
    let (client, _) = secret_client(&sim);

    let round = client.groups_delta(DeltaStart::Initial).await.unwrap();

    assert!(round.pages >= 4, "{} pages", round.pages);
    assert_eq!(sim.count("/groups/delta"), round.pages);
    assert_eq!(round.groups.len(), 2);
    let (id, engineering) = &round.groups[0];
    assert_eq!(id, &group_id(1));
    assert_eq!(engineering.display_name.as_deref(), Some("Engineering"));
    assert_eq!(engineering.description.as_deref(), Some("Builds things"));
    assert_eq!(
        member_ids(&engineering.added),
        (1..=5).map(|n| uid(n).to_string()).collect::<Vec<_>>()
    );
    let research = &round.groups[1].1;
    assert_eq!(research.added.len(), 7);
    assert_eq!(
        research
            .added
            .iter()
            .filter(|m| m.kind == ObjectKind::Group)
            .count(),
        1,
        "the nested group is reported as a group"
    );
    assert!(round.delta_link.contains("$deltatoken="));
}

#[tokio::test]
async fn delta_from_the_link_reports_changes_and_removed_groups() {
    let sim = sim(|_| {}).await;
    let (client, _) = secret_client(&sim);
    let first = client.groups_delta(DeltaStart::Initial).await.unwrap();
    let quiet = client
        .groups_delta(DeltaStart::Link(first.delta_link.clone()))
        .await
        .unwrap();
    assert!(quiet.groups.is_empty());

    sim.apply(|t| t.add_member(gid(1), uid(6)));
    sim.apply(|t| t.remove_member(gid(1), uid(1)));
    sim.apply(|t| t.upsert_group(gid(2), "Research & Development", None));
    let round = client
        .groups_delta(DeltaStart::Link(quiet.delta_link))
        .await
        .unwrap();

    let find = |n| {
        round
            .groups
            .iter()
            .find(|(id, _)| id == &group_id(n))
            .map(|(_, g)| g)
            .unwrap()
    };
    assert_eq!(member_ids(&find(1).added), [uid(6).to_string()]);
    assert_eq!(member_ids(&find(1).removed), [uid(1).to_string()]);
    assert_eq!(
        find(2).display_name.as_deref(),
        Some("Research & Development")
    );
    assert!(find(2).added.is_empty());

    sim.apply(|t| t.soft_delete_group(gid(2)));
    let soft = client
        .groups_delta(DeltaStart::Link(round.delta_link))
        .await
        .unwrap();
    assert_eq!(soft.groups[0].1.group_removed.as_deref(), Some("changed"));
    sim.apply(|t| t.hard_delete_group(gid(2)));
    let hard = client
        .groups_delta(DeltaStart::Link(soft.delta_link))
        .await
        .unwrap();
    assert_eq!(hard.groups[0].1.group_removed.as_deref(), Some("deleted"));
}

#[tokio::test]
async fn latest_starts_from_now() {
    let sim = sim(|_| {}).await;
    let (client, _) = secret_client(&sim);
    let latest = client.groups_delta(DeltaStart::Latest).await.unwrap();
    assert!(latest.groups.is_empty());
    sim.apply(|t| t.add_member(gid(2), uid(10)));
    let round = client
        .groups_delta(DeltaStart::Link(latest.delta_link))
        .await
        .unwrap();
    assert_eq!(round.groups.len(), 1);
    assert_eq!(member_ids(&round.groups[0].1.added), [uid(10).to_string()]);
}

#[tokio::test]
async fn filtered_delta_asks_fifty_ids_at_a_time() {
    let sim = sim(|_| {}).await;
    let (client, _) = secret_client(&sim);
    let mut ids: Vec<GroupId> = (100..220).map(group_id).collect();
    ids.push(group_id(1));

    let rounds = client.groups_delta_for(&ids).await.unwrap();

    assert_eq!(rounds.len(), 3);
    let filtered = sim
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/groups/delta") && r.query.contains("filter"))
        .count();
    assert_eq!(filtered, 3);
    let found: Vec<_> = rounds.iter().flat_map(|r| r.groups.iter()).collect();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].1.added.len(), 5);
}

#[tokio::test]
async fn an_expired_delta_token_means_resync() {
    let sim = sim(|_| {}).await;
    let (client, _) = secret_client(&sim);
    let first = client.groups_delta(DeltaStart::Initial).await.unwrap();
    sim.change(|t| {
        t.expire_delta_tokens();
        ((), Vec::new())
    });
    let err = client
        .groups_delta(DeltaStart::Link(first.delta_link))
        .await
        .unwrap_err();
    assert!(matches!(err, worker::graph::Error::DeltaExpired), "{err}");
}

#[tokio::test]
async fn members_are_read_across_pages_and_transitively() {
    let sim = sim(|c| c.page_size = 2).await;
    let (client, _) = secret_client(&sim);

    let direct = client.group_members(&group_id(2), false).await.unwrap();
    assert_eq!(direct.len(), 7);
    assert_eq!(sim.count("/groups/"), 4, "7 members at 2 a page");
    assert!(
        sim.requests()
            .iter()
            .all(|r| !r.path.contains("/members") || r.query.contains("top"))
    );
    let user = direct.iter().find(|o| o.id == uid(3).to_string()).unwrap();
    assert_eq!(
        user.user_principal_name.as_deref(),
        Some("user3@contoso.example")
    );
    assert_eq!(user.kind(), ObjectKind::User);

    let transitive = client.group_members(&group_id(2), true).await.unwrap();
    let users: Vec<_> = transitive
        .into_iter()
        .filter_map(|o| o.into_user())
        .collect();
    assert_eq!(users.len(), 8, "users 1-8 through the nested group");
}

#[tokio::test]
async fn users_by_ids_asks_a_thousand_at_a_time() {
    let sim = sim(|_| {}).await;
    let (client, _) = secret_client(&sim);
    let mut ids: Vec<UserId> = (1000..3500)
        .map(|n| UserId::parse(&uid(n).to_string()).unwrap())
        .collect();
    ids.push(UserId::parse(&uid(4).to_string()).unwrap());

    let users = client.users_by_ids(&ids).await.unwrap();

    assert_eq!(sim.count("/directoryObjects/getByIds"), 3);
    assert_eq!(users.len(), 1);
    assert_eq!(
        users[0].user.email().as_deref(),
        Some("user4@contoso.example")
    );
    assert_eq!(users[0].user.display_name.as_deref(), Some("User 4"));
    assert!(users[0].enabled);
}

#[tokio::test]
async fn the_app_its_roles_and_assignments() {
    let sim = sim(|c| c.page_size = 1).await;
    let (client, _) = secret_client(&sim);

    let app = client.service_principal().await.unwrap();
    assert_eq!(app.app_id, sim.config().client_id.to_string());
    let roles: Vec<_> = app
        .app_roles
        .iter()
        .filter_map(|r| r.value.as_deref())
        .collect();
    assert_eq!(roles, ["proxy_admin", "internal_user"]);
    assert!(
        sim.requests()
            .iter()
            .any(|r| r.path.contains("servicePrincipals(appId="))
    );

    let assignments = client.app_role_assignments().await.unwrap();
    assert_eq!(assignments.len(), 2);
    assert_eq!(sim.count("appRoleAssignedTo"), 2, "one assignment a page");
    let group = assignments
        .iter()
        .find(|a| a.principal_type == "Group")
        .unwrap();
    assert_eq!(group.principal_id, gid(1).to_string());
    assert_eq!(group.app_role_id, DEFAULT_ACCESS);
    assert_eq!(group.principal_display_name.as_deref(), Some("Engineering"));
    let user = assignments
        .iter()
        .find(|a| a.principal_type == "User")
        .unwrap();
    assert_eq!(user.app_role_id, role_id(PROXY_ADMIN_ROLE).to_string());

    // By object id when MICROSOFT_SERVICE_PRINCIPAL_ID is set.
    let mut by_id = config(
        &sim,
        Credential::Secret(sim.config().client_secret.unwrap().into()),
    );
    by_id.service_principal_id = Some(app.id.clone());
    let (client, _) = client_with(by_id);
    assert_eq!(client.service_principal().await.unwrap().id, app.id);
    assert!(
        sim.requests()
            .iter()
            .any(|r| r.path.ends_with(&format!("servicePrincipals/{}", app.id)))
    );
}

#[tokio::test]
async fn a_certificate_assertion_is_accepted_and_a_wrong_key_is_not() {
    let (pem, registered) = certificate();
    let sim = sim(|c| {
        c.client_secret = None;
        c.certificates = vec![registered];
    })
    .await;
    let credential = Credential::certificate_from_pem(pem.as_bytes()).unwrap();
    let (client, _) = client_with(config(&sim, credential));
    assert_eq!(
        client
            .group_members(&group_id(1), false)
            .await
            .unwrap()
            .len(),
        5
    );

    let (other, _) = certificate();
    let credential = Credential::certificate_from_pem(other.as_bytes()).unwrap();
    let (client, _) = client_with(config(&sim, credential));
    let err = client.group_members(&group_id(1), false).await.unwrap_err();
    assert!(matches!(err, worker::graph::Error::Credential(_)), "{err}");
    assert!(err.to_string().contains("invalid_client"), "{err}");
}

/// A self-signed certificate with its key, as AZURE_CLIENT_CERTIFICATE_PATH holds them, and
/// its registration on the app.
fn certificate() -> (String, graph_sim::RegisteredCertificate) {
    use base64::Engine as _;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["entra-sync.test".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert.der());
    let registered = graph_sim::RegisteredCertificate {
        thumbprint_sha256: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref()),
        public_key_pem: key.public_key_pem(),
    };
    (format!("{}{}", cert.pem(), key.serialize_pem()), registered)
}

#[tokio::test]
async fn a_federated_token_file_is_read_again_for_every_token() {
    let dir = std::env::temp_dir().join(format!("entra-sync-federated-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    std::fs::write(&file, "assertion-one\n").unwrap();
    let sim = sim(|c| {
        c.client_secret = None;
        c.federated_assertion = Some("assertion-one".into());
    })
    .await;
    let (client, _) = client_with(config(&sim, Credential::FederatedTokenFile(file.clone())));
    client.group_members(&group_id(1), false).await.unwrap();

    // The platform rotates the projected token; Entra now expects the new one.
    std::fs::write(&file, "assertion-two").unwrap();
    sim.set_config(|c| c.federated_assertion = Some("assertion-two".into()));
    sim.revoke_tokens();
    client.group_members(&group_id(1), false).await.unwrap();

    assert_eq!(sim.count("/oauth2/v2.0/token"), 2);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn tokens_are_cached_shared_and_refreshed_before_expiry() {
    let sim = sim(|c| c.token_lifetime = Duration::from_secs(2)).await;
    let (client, _) = secret_client(&sim);

    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let client = client.clone();
        calls.spawn(async move { client.group_members(&group_id(1), false).await });
    }
    for result in calls.join_all().await {
        result.unwrap();
    }
    assert_eq!(
        sim.count("/oauth2/v2.0/token"),
        1,
        "concurrent callers share one token"
    );

    // Two-second tokens are refreshed after one second. The token's age is what is under test:
    // this sleep makes it older, it does not stand for something else happening.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    client.group_members(&group_id(1), false).await.unwrap();
    assert_eq!(sim.count("/oauth2/v2.0/token"), 2);
}

#[tokio::test]
async fn a_refused_token_is_replaced_once() {
    let sim = sim(|_| {}).await;
    let (client, _) = secret_client(&sim);
    client.group_members(&group_id(1), false).await.unwrap();
    sim.revoke_tokens();
    client.group_members(&group_id(1), false).await.unwrap();
    assert_eq!(sim.count("/oauth2/v2.0/token"), 2);
    let members = sim
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/members"))
        .map(|r| r.status)
        .collect::<Vec<_>>();
    assert_eq!(members, [200, 401, 200]);
}

#[tokio::test]
async fn throttling_waits_for_retry_after_in_seconds_and_as_a_date() {
    let sim = sim(|_| {}).await;
    let (client, registry) = secret_client(&sim);
    client.group_members(&group_id(1), false).await.unwrap();

    sim.add_fault(Fault::throttle("/members", 1, 1));
    let started = Instant::now();
    client.group_members(&group_id(1), false).await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(950),
        "waited only {waited:?}"
    );

    let mut dated = Fault::throttle("/members", 2, 1);
    if let graph_sim::FaultKind::Status {
        retry_after_date, ..
    } = &mut dated.kind
    {
        *retry_after_date = true;
    }
    sim.add_fault(dated);
    let started = Instant::now();
    client.group_members(&group_id(1), false).await.unwrap();
    // An HTTP date has whole-second precision: at least one second of the two remains.
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "waited only {:?}",
        started.elapsed()
    );

    let statuses: Vec<u16> = sim
        .requests()
        .iter()
        .filter(|r| r.path.contains("/members"))
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [200, 429, 200, 429, 200]);
    let metrics = scrape(&registry);
    assert!(
        metrics.contains("entra_sync_graph_throttled_waits_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"entra_sync_graph_requests_total{endpoint="group_members",status="429"} 2"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn unavailable_answers_are_retried() {
    let sim = sim(|_| {}).await;
    let (client, _) = secret_client(&sim);
    sim.add_fault(Fault::status("/members", 503, 2));
    sim.add_fault(Fault::status("/servicePrincipals", 504, 1));

    assert_eq!(
        client
            .group_members(&group_id(1), false)
            .await
            .unwrap()
            .len(),
        5
    );
    client.service_principal().await.unwrap();

    let statuses: Vec<u16> = sim
        .requests()
        .iter()
        .filter(|r| !r.path.contains("oauth2"))
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [503, 503, 200, 504, 200]);
}

#[tokio::test]
async fn retries_are_bounded() {
    let sim = sim(|_| {}).await;
    let (client, _) = secret_client(&sim);
    sim.add_fault(Fault::status("/members", 503, 100));
    let err = client.group_members(&group_id(1), false).await.unwrap_err();
    assert!(
        matches!(err, worker::graph::Error::GraphUnavailable { .. }),
        "{err}"
    );
    assert_eq!(sim.count("/members"), 5, "one try and four retries");
}

#[tokio::test]
async fn a_client_error_surfaces_graph_code_without_retrying() {
    let sim = sim(|_| {}).await;
    let (client, _) = secret_client(&sim);
    let err = client
        .group_members(&group_id(404), false)
        .await
        .unwrap_err();
    match &err {
        worker::graph::Error::Graph {
            status,
            code,
            message,
            ..
        } => {
            assert_eq!(*status, 404);
            assert_eq!(code, "Request_ResourceNotFound");
            assert!(message.contains(&gid(404).to_string()), "{message}");
        }
        other => panic!("expected a Graph error, got {other}"),
    }
    assert_eq!(sim.count("/members"), 1);
}

#[tokio::test]
async fn a_slow_graph_is_waited_for_within_the_timeout() {
    let sim = sim(|_| {}).await;
    let (client, _) = secret_client(&sim);
    sim.add_fault(Fault::delay("/members", 300, 1));
    let started = Instant::now();
    assert_eq!(
        client
            .group_members(&group_id(1), false)
            .await
            .unwrap()
            .len(),
        5
    );
    let waited = started.elapsed();
    // The delay happened, and the client waited it out on the one request (no retry, which a
    // timeout shorter than the delay would have caused).
    let members: Vec<(u16, u64)> = sim
        .requests()
        .iter()
        .filter(|r| r.path.contains("/members"))
        .map(|r| (r.status, r.millis))
        .collect();
    assert!(
        matches!(members[..], [(200, millis)] if millis >= 300),
        "{members:?}"
    );
    assert!(
        waited >= Duration::from_millis(300),
        "waited only {waited:?}"
    );
}

/// A notification endpoint that answers Graph's handshake by echoing the decoded token.
async fn handshake_endpoint() -> String {
    use axum::extract::Query;
    use std::collections::HashMap;
    async fn echo(Query(query): Query<HashMap<String, String>>) -> String {
        query.get("validationToken").cloned().unwrap_or_default()
    }
    let app = axum::Router::new()
        .route("/notifications", axum::routing::post(echo))
        .route("/lifecycle", axum::routing::post(echo));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test]
async fn subscriptions_create_get_list_renew_reauthorize_delete() {
    use chrono::Utc;
    use worker::graph::NewSubscription;
    let sim = sim(|_| {}).await;
    let (client, _) = secret_client(&sim);
    let endpoint = handshake_endpoint().await;
    let new = NewSubscription {
        resource: "groups".into(),
        change_type: "updated,deleted".into(),
        notification_url: format!("{endpoint}/notifications"),
        lifecycle_notification_url: format!("{endpoint}/lifecycle"),
        client_state: entra_sync_testkit::CLIENT_STATE.to_owned().into(),
        expiration: Utc::now() + chrono::Duration::days(2),
    };

    let created = client.create_subscription(&new).await.unwrap();
    assert_eq!(created.resource, "groups");
    assert_eq!(client.get_subscription(&created.id).await.unwrap(), created);
    assert_eq!(
        client.list_subscriptions().await.unwrap(),
        std::slice::from_ref(&created)
    );

    let later = Utc::now() + chrono::Duration::days(20);
    let renewed = client.renew_subscription(&created.id, later).await.unwrap();
    assert!((renewed.expiration_date_time - later).num_seconds().abs() <= 1);

    client.reauthorize_subscription(&created.id).await.unwrap();
    assert_eq!(sim.subscriptions()[0].reauthorized, 1);

    client.delete_subscription(&created.id).await.unwrap();
    let err = client
        .renew_subscription(&created.id, later)
        .await
        .unwrap_err();
    assert!(
        matches!(err, worker::graph::Error::Graph { status: 404, .. }),
        "{err}"
    );

    // Over Graph's maximum lifetime: Graph's own error comes back.
    let too_long = NewSubscription {
        expiration: Utc::now() + chrono::Duration::days(40),
        ..new
    };
    let err = client.create_subscription(&too_long).await.unwrap_err();
    assert!(
        matches!(&err, worker::graph::Error::Graph { status: 400, code, .. } if code == "ExtensionError"),
        "{err}"
    );
}

#[tokio::test]
async fn after_a_503_the_retry_uses_a_new_connection() {
    let sim = sim(|_| {}).await;
    let (client, _) = secret_client(&sim);
    client.group_members(&group_id(1), false).await.unwrap();
    client.group_members(&group_id(1), false).await.unwrap();
    sim.add_fault(Fault::status("/members", 503, 1));
    client.group_members(&group_id(1), false).await.unwrap();

    let peers: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/members"))
        .map(|r| (r.status, r.peer.unwrap()))
        .collect();
    assert_eq!(peers.len(), 4);
    assert_eq!(peers[0].1, peers[1].1, "keep-alive reuses the connection");
    assert_eq!(peers[2], (503, peers[1].1));
    assert_ne!(
        peers[3].1, peers[2].1,
        "the retry after 503 opened a new connection"
    );
}
