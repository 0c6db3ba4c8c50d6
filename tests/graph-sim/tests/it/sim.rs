//! graph-sim's own behaviour over HTTP: the subscription handshake, change and lifecycle
//! notifications, Graph's error shapes, and the admin API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, RawQuery, State};
use axum::routing::post;
use graph_sim::tenant::{Group, TenantFile, User};
use graph_sim::{Fault, GraphSim, SimConfig};
use serde_json::{Value, json};
use uuid::Uuid;

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn tenant() -> TenantFile {
    TenantFile {
        users: (1..=3)
            .map(|n| User {
                id: id(n),
                display_name: format!("User {n}"),
                user_principal_name: format!("user{n}@sim.example"),
                mail: None,
                account_enabled: true,
            })
            .collect(),
        groups: vec![Group {
            id: id(100),
            display_name: "Engineering".into(),
            description: None,
            members: [id(1)].into(),
            owners: Default::default(),
        }],
        app: Default::default(),
    }
}

/// What a subscriber received.
#[derive(Default)]
struct Received {
    validations: Vec<(String, String)>,
    notifications: Vec<Value>,
    lifecycle: Vec<Value>,
}

type Shared = Arc<Mutex<Received>>;

/// A subscriber: echoes validation tokens (or `wrong` when told to), records notifications.
async fn subscriber(answer: &'static str) -> (String, Shared) {
    async fn notifications(
        State((shared, answer)): State<(Shared, &'static str)>,
        RawQuery(raw): RawQuery,
        Query(query): Query<HashMap<String, String>>,
        body: String,
    ) -> (axum::http::StatusCode, String) {
        if let Some(token) = query.get("validationToken") {
            shared
                .lock()
                .unwrap()
                .validations
                .push((raw.unwrap_or_default(), token.clone()));
            return match answer {
                "echo" => (axum::http::StatusCode::OK, token.clone()),
                "wrong" => (axum::http::StatusCode::OK, "not the token".into()),
                _ => (axum::http::StatusCode::ACCEPTED, token.clone()),
            };
        }
        let body: Value = serde_json::from_str(&body).unwrap();
        let mut received = shared.lock().unwrap();
        for item in body["value"].as_array().unwrap() {
            if item.get("lifecycleEvent").is_some() {
                received.lifecycle.push(item.clone());
            } else {
                received.notifications.push(item.clone());
            }
        }
        (axum::http::StatusCode::ACCEPTED, String::new())
    }
    let shared = Shared::default();
    let app = axum::Router::new()
        .route("/hook", post(notifications))
        .with_state((shared.clone(), answer));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, shared)
}

struct Caller {
    http: reqwest::Client,
    sim: GraphSim,
    token: String,
}

impl Caller {
    async fn new(sim: &GraphSim) -> Self {
        let http = reqwest::Client::new();
        let config = sim.config();
        let response: Value = http
            .post(sim.token_url())
            .form(&[
                ("client_id", config.client_id.to_string()),
                ("client_secret", config.client_secret.unwrap()),
                ("grant_type", "client_credentials".into()),
                ("scope", format!("{}/.default", sim.url())),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        Self {
            http,
            sim: sim.clone(),
            token: response["access_token"].as_str().unwrap().to_owned(),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}/{path}", self.sim.graph_url()))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn subscribe(&self, url: &str, resource: &str) -> (u16, Value) {
        let expiration = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
        self.call(
            reqwest::Method::POST,
            "subscriptions",
            Some(json!({
                "changeType": "updated,deleted",
                "notificationUrl": url,
                "lifecycleNotificationUrl": url,
                "resource": resource,
                "expirationDateTime": expiration,
                "clientState": "the-client-state",
            })),
        )
        .await
    }
}

async fn wait_for(shared: &Shared, count: usize) -> Vec<Value> {
    for _ in 0..200 {
        let received = shared.lock().unwrap().notifications.clone();
        if received.len() >= count {
            return received;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shared.lock().unwrap().notifications.clone()
}

#[tokio::test]
async fn tokens_are_issued_only_for_the_simulated_graphs_own_scope() {
    let sim = GraphSim::start(SimConfig::default(), tenant())
        .await
        .unwrap();
    let config = sim.config();
    let ask = |scope: String| {
        let form = [
            ("client_id", config.client_id.to_string()),
            ("client_secret", config.client_secret.clone().unwrap()),
            ("grant_type", "client_credentials".into()),
            ("scope", scope),
        ];
        let token_url = sim.token_url();
        async move {
            let response = reqwest::Client::new()
                .post(token_url)
                .form(&form)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    // Public Graph's scope names another cloud than the simulator's, as it would for
    // graph.microsoft.us.
    let (status, body) = ask("https://graph.microsoft.com/.default".into()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_scope"))
    );
    let (status, body) = ask(format!("{}/.default", sim.url())).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["access_token"].is_string(), "{body}");
}

#[tokio::test]
async fn a_wrong_handshake_answer_fails_creation_with_400() {
    let sim = GraphSim::start(SimConfig::default(), tenant())
        .await
        .unwrap();
    let caller = Caller::new(&sim).await;
    for answer in ["wrong", "accepted"] {
        let (url, _) = subscriber(answer).await;
        let (status, body) = caller.subscribe(&url, "groups").await;
        assert_eq!(status, 400, "{answer}: {body}");
        assert_eq!(body["error"]["code"], "ValidationError");
    }
    assert!(sim.subscriptions().is_empty());
}

#[tokio::test]
async fn the_handshake_sends_a_url_encoded_token_to_both_urls() {
    let sim = GraphSim::start(SimConfig::default(), tenant())
        .await
        .unwrap();
    let caller = Caller::new(&sim).await;
    let (url, shared) = subscriber("echo").await;
    let (status, body) = caller.subscribe(&url, "groups").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["clientState"], "the-client-state");
    let validations = shared.lock().unwrap().validations.clone();
    assert_eq!(
        validations.len(),
        2,
        "notification and lifecycle URL, though equal"
    );
    let (raw, decoded) = &validations[0];
    assert!(decoded.contains(' ') && decoded.contains(':'), "{decoded}");
    assert!(!raw.contains(' '), "the token travels URL-encoded: {raw}");
}

#[tokio::test]
async fn subscription_limits_are_graphs() {
    let sim = GraphSim::start(SimConfig::default(), tenant())
        .await
        .unwrap();
    let caller = Caller::new(&sim).await;
    let (url, _) = subscriber("echo").await;
    let too_late = (chrono::Utc::now() + chrono::Duration::minutes(41_761)).to_rfc3339();
    let (status, body) = caller
        .call(
            reqwest::Method::POST,
            "subscriptions",
            Some(json!({"changeType": "updated", "notificationUrl": url, "resource": "groups", "expirationDateTime": too_late})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("ExtensionError"))
    );
    let (status, _) = caller
        .call(
            reqwest::Method::POST,
            "subscriptions",
            Some(json!({"changeType": "updated", "notificationUrl": "http://example.com/hook", "resource": "groups", "expirationDateTime": (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339()})),
        )
        .await;
    assert_eq!(status, 400, "plain http to a non-loopback host");
    for _ in 0..100 {
        assert_eq!(caller.subscribe(&url, "users").await.0, 201);
    }
    let (status, body) = caller.subscribe(&url, "users").await;
    assert_eq!(status, 403, "{body}");
}

#[tokio::test]
async fn every_tenant_change_is_notified_with_graphs_shape() {
    let sim = GraphSim::start(SimConfig::default(), tenant())
        .await
        .unwrap();
    let caller = Caller::new(&sim).await;
    let (url, shared) = subscriber("echo").await;
    let (_, subscription) = caller.subscribe(&url, "groups").await;
    let (users_url, users_shared) = subscriber("echo").await;
    caller.subscribe(&users_url, "users").await;

    sim.apply(|t| t.add_member(id(100), id(2)));
    sim.apply(|t| t.upsert_group(id(100), "Platform", None));
    sim.apply(|t| t.upsert_group(id(200), "New group", None));
    sim.apply(|t| t.soft_delete_group(id(200)));
    sim.apply(|t| t.hard_delete_group(id(100)));
    let received = wait_for(&shared, 5).await;

    let types: Vec<&str> = received
        .iter()
        .map(|n| n["changeType"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["updated", "updated", "updated", "updated", "deleted"]
    );
    let first = &received[0];
    assert_eq!(first["subscriptionId"], subscription["id"]);
    assert_eq!(first["clientState"], "the-client-state");
    assert_eq!(first["tenantId"], sim.config().tenant_id.to_string());
    assert_eq!(first["resource"], format!("Groups/{}", id(100)));
    assert_eq!(
        first["resourceData"]["@odata.type"],
        "#Microsoft.Graph.Group"
    );
    assert_eq!(first["resourceData"]["id"], id(100).to_string());
    assert!(
        users_shared.lock().unwrap().notifications.is_empty(),
        "group changes are not user changes"
    );

    sim.apply(|t| t.delete_user(id(3)));
    let users = wait_for(&users_shared, 1).await;
    assert_eq!(users[0]["resource"], format!("Users/{}", id(3)));
    assert_eq!(users[0]["changeType"], "deleted");
}

#[tokio::test]
async fn delivery_can_duplicate_lose_delay_and_stop() {
    let sim = GraphSim::start(SimConfig::default(), tenant())
        .await
        .unwrap();
    let caller = Caller::new(&sim).await;
    let (url, shared) = subscriber("echo").await;
    caller.subscribe(&url, "groups").await;

    sim.set_delivery(|d| d.duplicates = 2);
    sim.apply(|t| t.add_member(id(100), id(2)));
    assert_eq!(wait_for(&shared, 3).await.len(), 3);

    // Changes are delivered in order, one after the other: once a later one has come, an
    // earlier one that has not never will.
    sim.set_delivery(|d| {
        d.duplicates = 0;
        d.loss_rate = 1.0;
    });
    sim.apply(|t| t.add_member(id(100), id(3)));
    sim.set_delivery(|d| {
        d.loss_rate = 0.0;
        d.delay_millis = 200;
    });
    let changed = std::time::Instant::now();
    sim.apply(|t| t.upsert_group(id(200), "Delayed", None));
    let received = wait_for_group(&shared, id(200)).await;
    let took = changed.elapsed();
    let groups: Vec<&str> = received
        .iter()
        .map(|n| n["resourceData"]["id"].as_str().unwrap())
        .collect();
    let (first, delayed) = (id(100).to_string(), id(200).to_string());
    assert_eq!(
        groups,
        [first.as_str(), &first, &first, &delayed],
        "the lost one never came, the delayed one did"
    );
    assert!(took >= Duration::from_millis(200), "delayed only {took:?}");

    sim.set_delivery(|d| {
        d.enabled = false;
        d.delay_millis = 0;
    });
    sim.apply(|t| t.remove_member(id(100), id(2)));
    sim.set_delivery(|d| d.enabled = true);
    sim.apply(|t| t.upsert_group(id(300), "After the stop", None));
    let received = wait_for_group(&shared, id(300)).await;
    let last: Vec<&str> = received[4..]
        .iter()
        .map(|n| n["resourceData"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        last,
        [id(300).to_string()],
        "a change made while delivery was off was delivered"
    );
}

#[tokio::test]
async fn owner_changes_are_notified_unless_delivery_leaves_them_out() {
    let sim = GraphSim::start(SimConfig::default(), tenant())
        .await
        .unwrap();
    let caller = Caller::new(&sim).await;
    let (url, shared) = subscriber("echo").await;
    caller.subscribe(&url, "groups").await;

    sim.apply(|t| t.add_owner(id(100), id(2)));
    wait_for_group(&shared, id(100)).await;
    sim.set_delivery(|d| d.owner_changes = false);
    sim.apply(|t| t.add_owner(id(100), id(3)));
    // Delivered in order: once this one has come, the owner change would have come before it.
    sim.apply(|t| t.upsert_group(id(200), "After the owner change", None));
    let received = wait_for_group(&shared, id(200)).await;
    let groups: Vec<&str> = received
        .iter()
        .map(|n| n["resourceData"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(groups, [id(100).to_string(), id(200).to_string()]);
}

/// Waits until a notification about group `group` has come; returns all received by then.
async fn wait_for_group(shared: &Shared, group: Uuid) -> Vec<Value> {
    let about = |received: &[Value]| {
        received
            .iter()
            .any(|n| n["resourceData"]["id"] == group.to_string())
    };
    for _ in 0..200 {
        let received = shared.lock().unwrap().notifications.clone();
        if about(&received) {
            return received;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let received = shared.lock().unwrap().notifications.clone();
    assert!(about(&received), "nothing about {group}: {received:?}");
    received
}

#[tokio::test]
async fn lifecycle_events_on_demand() {
    let sim = GraphSim::start(SimConfig::default(), tenant())
        .await
        .unwrap();
    let caller = Caller::new(&sim).await;
    let (url, shared) = subscriber("echo").await;
    let (_, subscription) = caller.subscribe(&url, "groups").await;
    let id = subscription["id"].as_str().unwrap();

    assert_eq!(
        sim.lifecycle(id, "reauthorizationRequired").await,
        Some(202)
    );
    assert_eq!(sim.lifecycle(id, "subscriptionRemoved").await, Some(202));
    let lifecycle = shared.lock().unwrap().lifecycle.clone();
    assert_eq!(lifecycle[0]["lifecycleEvent"], "reauthorizationRequired");
    assert_eq!(lifecycle[0]["clientState"], "the-client-state");
    assert_eq!(lifecycle[1]["lifecycleEvent"], "subscriptionRemoved");
    assert!(
        sim.subscriptions().is_empty(),
        "a removed subscription is gone"
    );
    assert_eq!(
        caller
            .call(reqwest::Method::GET, &format!("subscriptions/{id}"), None)
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn graph_errors_and_authentication() {
    let sim = GraphSim::start(SimConfig::default(), tenant())
        .await
        .unwrap();
    let anonymous = reqwest::get(format!("{}/groups/delta", sim.graph_url()))
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let body: Value = anonymous.json().await.unwrap();
    assert_eq!(body["error"]["code"], "InvalidAuthenticationToken");

    let caller = Caller::new(&sim).await;
    let (status, body) = caller
        .call(reqwest::Method::GET, "groups/delta?$deltatoken=zzz", None)
        .await;
    assert_eq!(status, 400, "{body}");
    let ids: Vec<String> = (0..51).map(|n| format!("id eq '{}'", id(n))).collect();
    let (status, body) = caller
        .call(
            reqwest::Method::GET,
            &format!("groups/delta?$filter={}", ids.join(" or ")),
            None,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["innerError"]["request-id"].is_string());
}

#[tokio::test]
async fn the_admin_api_changes_the_tenant_and_shows_requests() {
    let sim = GraphSim::start(SimConfig::default(), TenantFile::default())
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let admin = |path: &str| format!("{}/admin/{path}", sim.url());
    let status = http
        .put(admin("tenant"))
        .json(&tenant())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 204);
    http.put(admin(&format!("groups/{}/members/{}", id(100), id(3))))
        .send()
        .await
        .unwrap();
    http.post(admin("faults"))
        .json(&json!({"pathContains": "/members", "kind": "status", "status": 503, "times": 1}))
        .send()
        .await
        .unwrap();

    let caller = Caller::new(&sim).await;
    let path = format!("groups/{}/members", id(100));
    assert_eq!(caller.call(reqwest::Method::GET, &path, None).await.0, 503);
    let (status, body) = caller.call(reqwest::Method::GET, &path, None).await;
    assert_eq!(status, 200);
    assert_eq!(body["value"].as_array().unwrap().len(), 2);

    let requests: Vec<Value> = http
        .get(admin("requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let statuses: Vec<u64> = requests
        .iter()
        .filter(|r| r["path"].as_str().unwrap().contains("/members"))
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [503, 200]);
    let dumped: TenantFile = http
        .get(admin("tenant"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(dumped.groups[0].members.len(), 2);
}

#[tokio::test]
async fn reordering_lets_later_changes_overtake_earlier_ones() {
    let sim = GraphSim::start(SimConfig::default(), tenant())
        .await
        .unwrap();
    let caller = Caller::new(&sim).await;
    let (url, shared) = subscriber("echo").await;
    caller.subscribe(&url, "groups").await;
    sim.set_delivery(|d| {
        d.reorder = true;
        d.delay_millis = 150;
    });
    for n in 1000..1012 {
        sim.apply(|t| t.upsert_group(id(n), "Group", None));
    }
    let received = wait_for(&shared, 12).await;
    let sequence: Vec<u64> = received
        .iter()
        .map(|n| n["resourceData"]["sequenceNumber"].as_u64().unwrap())
        .collect();
    assert_eq!(sequence.len(), 12);
    assert!(!sequence.is_sorted(), "delivered in order: {sequence:?}");
}

#[tokio::test]
async fn delta_pages_have_graphs_shape() {
    let sim = GraphSim::start(SimConfig::default(), tenant())
        .await
        .unwrap();
    let caller = Caller::new(&sim).await;
    let (status, first) = caller
        .call(
            reqwest::Method::GET,
            "groups/delta?$select=displayName,description,members",
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(first["value"][0]["displayName"], "Engineering");
    assert_eq!(
        first["value"][0]["members@delta"],
        json!([{"@odata.type": "#microsoft.graph.user", "id": id(1)}])
    );
    let link = first["@odata.deltaLink"].as_str().unwrap().to_owned();
    assert!(first.get("@odata.nextLink").is_none());

    sim.apply(|t| t.remove_member(id(100), id(1)));
    sim.apply(|t| t.upsert_group(id(200), "Soon gone", None));
    sim.apply(|t| t.soft_delete_group(id(200)));
    let path = link
        .trim_start_matches(&format!("{}/", sim.graph_url()))
        .to_owned();
    let (_, next) = caller.call(reqwest::Method::GET, &path, None).await;
    let value = next["value"].as_array().unwrap();
    assert_eq!(
        value[0]["members@delta"],
        json!([{"@odata.type": "#microsoft.graph.user", "id": id(1), "@removed": {"reason": "deleted"}}])
    );
    assert_eq!(
        value[1],
        json!({"id": id(200), "@removed": {"reason": "changed"}})
    );
}

#[tokio::test]
async fn a_held_request_waits_until_the_faults_are_cleared() {
    let sim = GraphSim::start(SimConfig::default(), tenant())
        .await
        .unwrap();
    let caller = Caller::new(&sim).await;
    sim.add_fault(Fault::hold("/groups/delta"));
    let call = tokio::spawn(async move {
        caller
            .call(reqwest::Method::GET, "groups/delta", None)
            .await
            .0
    });
    while sim.held_requests() == 0 {
        tokio::task::yield_now().await;
    }
    // Held: nothing answered, and the request is not in the log yet.
    assert!(!call.is_finished());
    assert!(
        sim.requests()
            .iter()
            .all(|r| !r.path.ends_with("/groups/delta"))
    );
    sim.clear_faults();
    assert_eq!(call.await.unwrap(), 200);
    assert_eq!(sim.held_requests(), 0);
}

/// The ids of a list's `value`, in order.
fn ids_of(body: &Value) -> Vec<Uuid> {
    body["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|object| object["id"].as_str().unwrap().parse().unwrap())
        .collect()
}

/// The tenant with group 100 of users 1 and 2, owned by user 1, nested in group 200, and
/// assigned to the app.
async fn lag_tenant() -> GraphSim {
    let sim = GraphSim::start(SimConfig::default(), tenant())
        .await
        .unwrap();
    sim.apply(|t| {
        let mut notices = t.add_member(id(100), id(2));
        notices.extend(t.add_owner(id(100), id(1)));
        notices.extend(t.upsert_group(id(200), "Parent", None));
        notices.extend(t.add_member(id(200), id(100)));
        t.assign(id(100), Uuid::nil()).unwrap();
        notices
    });
    sim
}

#[tokio::test]
async fn a_lagging_user_is_missing_from_reads_of_users_while_membership_reads_list_her() {
    let sim = lag_tenant().await;
    let caller = Caller::new(&sim).await;
    sim.lag(id(1));
    assert_eq!(sim.lagging(), [id(1)]);

    // Reads of the user herself miss her.
    let (status, body) = caller
        .call(
            reqwest::Method::POST,
            "directoryObjects/getByIds",
            Some(json!({"ids": [id(1), id(2)], "types": ["user"]})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(ids_of(&body), [id(2)]);
    let (status, body) = caller
        .call(reqwest::Method::GET, &format!("users/{}", id(1)), None)
        .await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "Request_ResourceNotFound");
    let (status, body) = caller
        .call(
            reqwest::Method::POST,
            "$batch",
            Some(json!({"requests": [
                {"id": "1", "method": "GET", "url": format!("/users/{}", id(1))},
                {"id": "2", "method": "GET", "url": format!("/users/{}", id(2))},
            ]})),
        )
        .await;
    assert_eq!(status, 200);
    let responses = body["responses"].as_array().unwrap();
    assert_eq!(responses[0]["status"], 404);
    assert_eq!(
        responses[0]["body"]["error"]["code"],
        "Request_ResourceNotFound"
    );
    assert_eq!(responses[1]["status"], 200);
    assert_eq!(responses[1]["body"]["id"], id(2).to_string());
    let (_, body) = caller.call(reqwest::Method::GET, "users", None).await;
    assert_eq!(ids_of(&body), [id(2), id(3)]);

    // Membership reads and delta list her, with her properties.
    for path in [
        format!("groups/{}/members", id(100)),
        format!("groups/{}/owners", id(100)),
        format!("groups/{}/transitiveMembers", id(200)),
    ] {
        let (status, body) = caller.call(reqwest::Method::GET, &path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
        let her = body["value"]
            .as_array()
            .unwrap()
            .iter()
            .find(|object| object["id"] == id(1).to_string())
            .unwrap_or_else(|| panic!("{path} leaves her out: {body}"));
        assert_eq!(her["displayName"], "User 1", "{path}");
        assert_eq!(her["userPrincipalName"], "user1@sim.example", "{path}");
    }
    let (_, body) = caller
        .call(
            reqwest::Method::GET,
            "groups/delta?$select=displayName,description,members",
            None,
        )
        .await;
    let group = body["value"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["id"] == id(100).to_string())
        .unwrap();
    assert!(
        group["members@delta"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == id(1).to_string())
    );

    // The lag over, every read finds her again.
    sim.end_lag(id(1));
    assert!(sim.lagging().is_empty());
    let (status, body) = caller
        .call(reqwest::Method::GET, &format!("users/{}", id(1)), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["displayName"], "User 1");
    let (_, body) = caller.call(reqwest::Method::GET, "users", None).await;
    assert_eq!(ids_of(&body), [id(1), id(2), id(3)]);
}

#[tokio::test]
async fn a_lagging_group_answers_404_while_delta_and_the_assignments_list_it() {
    let sim = lag_tenant().await;
    let caller = Caller::new(&sim).await;
    sim.lag(id(100));

    for path in [
        format!("groups/{}", id(100)),
        format!("groups/{}?$expand=owners", id(100)),
        format!("groups/{}/members", id(100)),
        format!("groups/{}/transitiveMembers", id(100)),
        format!("groups/{}/owners", id(100)),
    ] {
        let (status, body) = caller.call(reqwest::Method::GET, &path, None).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["error"]["code"], "Request_ResourceNotFound", "{path}");
    }
    let (_, body) = caller
        .call(
            reqwest::Method::POST,
            "directoryObjects/getByIds",
            Some(json!({"ids": [id(100), id(200)]})),
        )
        .await;
    assert_eq!(ids_of(&body), [id(200)]);

    // Delta, the app's assignments and the parent's members still list it.
    let (_, body) = caller
        .call(
            reqwest::Method::GET,
            "groups/delta?$select=displayName,description,members",
            None,
        )
        .await;
    let group = body["value"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["id"] == id(100).to_string())
        .unwrap();
    assert_eq!(group["displayName"], "Engineering");
    let sp = sim.read(|t| t.app.service_principal_id);
    let (_, body) = caller
        .call(
            reqwest::Method::GET,
            &format!("servicePrincipals/{sp}/appRoleAssignedTo"),
            None,
        )
        .await;
    assert_eq!(body["value"][0]["principalId"], id(100).to_string());
    assert_eq!(body["value"][0]["principalDisplayName"], "Engineering");
    let (_, body) = caller
        .call(
            reqwest::Method::GET,
            &format!("groups/{}/members", id(200)),
            None,
        )
        .await;
    assert_eq!(ids_of(&body), [id(100)]);
    assert_eq!(body["value"][0]["displayName"], "Engineering");

    sim.clear_lag();
    let (status, body) = caller
        .call(
            reqwest::Method::GET,
            &format!("groups/{}/members", id(100)),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(ids_of(&body), [id(1), id(2)]);
}

#[tokio::test]
async fn a_lag_for_a_duration_ends_by_itself() {
    let sim = lag_tenant().await;
    let caller = Caller::new(&sim).await;
    let status = |n: u128| {
        let caller = &caller;
        async move {
            caller
                .call(reqwest::Method::GET, &format!("users/{}", id(n)), None)
                .await
                .0
        }
    };
    sim.lag_for(id(1), Duration::from_secs(3600));
    sim.lag_for(id(2), Duration::ZERO);
    assert_eq!(status(1).await, 404);
    assert_eq!(status(2).await, 200, "a lag of no time is over");
    assert_eq!(sim.lagging(), [id(1)]);

    // A short lag: the user is readable once it is over, without anyone clearing it.
    sim.lag_for(id(3), Duration::from_millis(200));
    assert_eq!(status(3).await, 404);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while status(3).await != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the lag did not end by itself"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sim.lagging(), [id(1)]);
}

#[tokio::test]
async fn lag_through_the_admin_api() {
    let sim = lag_tenant().await;
    let caller = Caller::new(&sim).await;
    let http = reqwest::Client::new();
    let admin = |path: String| format!("{}/admin/{path}", sim.url());
    let lagging = || async {
        http.get(admin("lag".into()))
            .send()
            .await
            .unwrap()
            .json::<Vec<Uuid>>()
            .await
            .unwrap()
    };
    for path in [
        format!("lag/{}", id(1)),
        format!("lag/{}?millis=3600000", id(100)),
        format!("lag/{}?millis=0", id(2)),
    ] {
        let status = http.put(admin(path)).send().await.unwrap().status();
        assert_eq!(status, 204);
    }
    assert_eq!(lagging().await, [id(1), id(100)]);
    let path = format!("users/{}", id(1));
    assert_eq!(caller.call(reqwest::Method::GET, &path, None).await.0, 404);
    let group = format!("groups/{}", id(100));
    assert_eq!(caller.call(reqwest::Method::GET, &group, None).await.0, 404);

    let status = http
        .delete(admin(format!("lag/{}", id(1))))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 204);
    assert_eq!(caller.call(reqwest::Method::GET, &path, None).await.0, 200);
    assert_eq!(lagging().await, [id(100)]);
    http.delete(admin("lag".into())).send().await.unwrap();
    assert!(lagging().await.is_empty());
    assert_eq!(caller.call(reqwest::Method::GET, &group, None).await.0, 200);
}
