//! Group owners over HTTP: `owners@delta` in the groups delta, `/groups/{id}/owners`,
//! `$expand=owners`, and JSON batching with its request log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use graph_sim::tenant::{Group, TenantFile, User};
use graph_sim::{Fault, GraphSim, SimConfig};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

const GROUP: u128 = 100;
const OTHER_GROUP: u128 = 101;

/// Thirty users; the group has users 1 and 2 as members and users 1 to 25 as owners (more than
/// Graph expands); the other group has no owners.
fn tenant() -> TenantFile {
    let group = |n: u128, owners: Vec<u128>| Group {
        id: id(n),
        display_name: format!("Group {n}"),
        description: None,
        members: [id(1), id(2)].into(),
        owners: owners.into_iter().map(id).collect(),
    };
    TenantFile {
        users: (1..=30)
            .map(|n| User {
                id: id(n),
                display_name: format!("User {n}"),
                user_principal_name: format!("user{n}@sim.example"),
                mail: None,
                account_enabled: true,
            })
            .collect(),
        groups: vec![
            group(GROUP, (1..=25).collect()),
            group(OTHER_GROUP, Vec::new()),
        ],
        app: Default::default(),
    }
}

struct Caller {
    http: reqwest::Client,
    sim: GraphSim,
    token: String,
}

impl Caller {
    async fn start() -> Self {
        let sim = GraphSim::start(SimConfig::default(), tenant())
            .await
            .unwrap();
        let config = sim.config();
        let http = reqwest::Client::new();
        let answer: Value = http
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
            sim,
            token: answer["access_token"].as_str().unwrap().to_owned(),
        }
    }

    /// `path` relative to `/v1.0/`, or a whole URL (a nextLink or deltaLink).
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}/{path}", self.sim.graph_url())
        };
        let mut request = self.http.request(method, url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(Method::GET, path, None).await
    }

    async fn batch(&self, urls: &[String]) -> (u16, Value) {
        let requests: Vec<Value> = urls
            .iter()
            .enumerate()
            .map(|(n, url)| json!({ "id": n.to_string(), "method": "GET", "url": url }))
            .collect();
        self.call(
            Method::POST,
            "$batch",
            Some(json!({ "requests": requests })),
        )
        .await
    }

    /// Every group object of a delta round, following nextLinks; and its deltaLink.
    async fn delta_round(&self, first: &str) -> (Vec<Value>, String) {
        let mut objects = Vec::new();
        let mut next = first.to_owned();
        loop {
            let (status, page) = self.get(&next).await;
            assert_eq!(status, 200, "{page}");
            objects.extend(page["value"].as_array().unwrap().iter().cloned());
            match page["@odata.nextLink"].as_str() {
                Some(link) => next = link.to_owned(),
                None => return (objects, page["@odata.deltaLink"].as_str().unwrap().into()),
            }
        }
    }
}

/// The ids of a group's `owners@delta` entries, added and removed, over all its objects.
fn owner_changes(objects: &[Value], group: Uuid) -> (Vec<Uuid>, Vec<Uuid>) {
    let mut added = Vec::new();
    let mut removed = Vec::new();
    let entries = objects
        .iter()
        .filter(|o| o["id"] == json!(group))
        .flat_map(|o| o["owners@delta"].as_array().cloned().unwrap_or_default());
    for entry in entries {
        assert_eq!(entry["@odata.type"], "#microsoft.graph.user");
        let owner: Uuid = serde_json::from_value(entry["id"].clone()).unwrap();
        if entry.get("@removed").is_some() {
            assert_eq!(entry["@removed"]["reason"], "deleted");
            removed.push(owner);
        } else {
            added.push(owner);
        }
    }
    (added, removed)
}

fn ids(values: &[Value]) -> Vec<Uuid> {
    values
        .iter()
        .map(|v| serde_json::from_value(v["id"].clone()).unwrap())
        .collect()
}

#[tokio::test]
async fn delta_reports_owners_when_selected() {
    let caller = Caller::start().await;
    // Small objects: a group's changes span several, as Graph pages them.
    caller.sim.set_config(|c| c.delta_members_per_object = 7);
    let select = "groups/delta?$select=displayName,description,members,owners";
    let (objects, delta_link) = caller.delta_round(select).await;
    let (added, removed) = owner_changes(&objects, id(GROUP));
    assert_eq!(added, (1..=25).map(id).collect::<Vec<_>>());
    assert!(removed.is_empty());

    caller.sim.apply(|t| t.add_owner(id(GROUP), id(26)));
    caller.sim.apply(|t| t.remove_owner(id(GROUP), id(1)));
    let (objects, _) = caller.delta_round(&delta_link).await;
    assert_eq!(objects.len(), 1, "only the changed group: {objects:?}");
    assert_eq!(
        owner_changes(&objects, id(GROUP)),
        (vec![id(26)], vec![id(1)])
    );
    assert_eq!(objects[0]["members@delta"], json!([]));
}

#[tokio::test]
async fn without_owners_selected_an_owner_change_still_reports_the_group() {
    let caller = Caller::start().await;
    let select = "groups/delta?$select=displayName,description,members";
    let (objects, delta_link) = caller.delta_round(select).await;
    assert!(objects.iter().all(|o| o.get("owners@delta").is_none()));
    assert!(delta_link.contains("$deltatoken=m"));

    caller.sim.apply(|t| t.add_owner(id(OTHER_GROUP), id(3)));
    let (objects, _) = caller.delta_round(&delta_link).await;
    assert_eq!(ids(&objects), [id(OTHER_GROUP)]);
    assert!(objects[0].get("owners@delta").is_none());
    assert_eq!(objects[0]["members@delta"], json!([]));
}

#[tokio::test]
async fn the_owners_list_pages_and_knows_unknown_groups() {
    let caller = Caller::start().await;
    caller.sim.set_config(|c| c.page_size = 10);
    let first = format!(
        "groups/{}/owners?$select=id,displayName,mail,userPrincipalName,accountEnabled&$top=999",
        id(GROUP)
    );
    let mut owners = Vec::new();
    let mut next = Some(first);
    while let Some(url) = next {
        let (status, page) = caller.get(&url).await;
        assert_eq!(status, 200, "{page}");
        owners.extend(ids(page["value"].as_array().unwrap()));
        next = page["@odata.nextLink"].as_str().map(str::to_owned);
    }
    assert_eq!(owners, (1..=25).map(id).collect::<Vec<_>>());

    let (status, body) = caller.get(&format!("groups/{}/owners", id(999))).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "Request_ResourceNotFound");
}

#[tokio::test]
async fn expanded_owners_stop_at_twenty() {
    let caller = Caller::start().await;
    let (status, group) = caller
        .get(&format!("groups/{}?$expand=owners", id(GROUP)))
        .await;
    assert_eq!(status, 200, "{group}");
    assert_eq!(group["displayName"], "Group 100");
    let owners = group["owners"].as_array().unwrap();
    assert_eq!(ids(owners), (1..=20).map(id).collect::<Vec<_>>());
    assert_eq!(owners[0]["userPrincipalName"], "user1@sim.example");

    let (_, plain) = caller.get(&format!("groups/{}", id(GROUP))).await;
    assert!(plain.get("owners").is_none());
    let (status, _) = caller.get(&format!("groups/{}", id(999))).await;
    assert_eq!(status, 404);
}

fn owners_url(group: u128) -> String {
    format!(
        "/groups/{}/owners?$select=id,displayName,mail,userPrincipalName,accountEnabled&$top=999",
        id(group)
    )
}

#[tokio::test]
async fn a_batch_answers_each_request_on_its_own() {
    let caller = Caller::start().await;
    let (status, answer) = caller
        .batch(&[owners_url(GROUP), owners_url(999), owners_url(OTHER_GROUP)])
        .await;
    assert_eq!(status, 200, "{answer}");
    let responses = answer["responses"].as_array().unwrap();
    assert_eq!(responses.len(), 3);
    assert_eq!(responses[0]["id"], "0");
    assert_eq!(responses[0]["status"], 200);
    assert_eq!(responses[0]["headers"]["Content-Type"], "application/json");
    assert_eq!(
        ids(responses[0]["body"]["value"].as_array().unwrap()).len(),
        25
    );
    assert_eq!(responses[1]["status"], 404);
    assert_eq!(
        responses[1]["body"]["error"]["code"],
        "Request_ResourceNotFound"
    );
    assert_eq!(responses[2]["body"]["value"], json!([]));
}

#[tokio::test]
async fn a_batch_over_twenty_requests_is_refused() {
    let caller = Caller::start().await;
    let urls: Vec<String> = (0..21).map(|_| owners_url(GROUP)).collect();
    let (status, answer) = caller.batch(&urls).await;
    assert_eq!(status, 400);
    assert_eq!(answer["error"]["code"], "BadRequest");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limit of 20")
    );
    assert_eq!(caller.sim.count("/owners"), 0, "nothing was answered");
    let (status, _) = caller.batch(&urls[..20]).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_throttled_request_in_a_batch_carries_its_retry_after() {
    let caller = Caller::start().await;
    caller.sim.add_fault(Fault::throttle("/owners", 7, 1));
    let (status, answer) = caller
        .batch(&[owners_url(GROUP), owners_url(OTHER_GROUP)])
        .await;
    assert_eq!(status, 200, "the batch itself is answered");
    let responses = answer["responses"].as_array().unwrap();
    assert_eq!(responses[0]["status"], 429);
    assert_eq!(responses[0]["headers"]["Retry-After"], "7");
    assert_eq!(responses[0]["body"]["error"]["code"], "TooManyRequests");
    assert_eq!(responses[1]["status"], 200);
}

#[tokio::test]
async fn the_log_tells_http_requests_from_batched_reads() {
    let caller = Caller::start().await;
    caller.sim.clear_requests();
    let urls: Vec<String> = (0..20).map(|_| owners_url(GROUP)).collect();
    caller.batch(&urls).await;
    caller.batch(&urls[..5]).await;
    caller.get(&owners_url(GROUP)[1..]).await;

    assert_eq!(caller.sim.count("/owners"), 26, "logical reads");
    assert_eq!(caller.sim.http_count("/owners"), 1, "only the direct one");
    assert_eq!(caller.sim.http_count("$batch"), 2);
    assert_eq!(caller.sim.http_count("/v1.0"), 3);
    let requests = caller.sim.requests();
    let parts: Vec<_> = requests.iter().filter(|r| r.batch).collect();
    assert_eq!(parts.len(), 25);
    assert!(
        parts
            .iter()
            .all(|r| r.method == "GET" && r.query.contains("$top=999"))
    );
}

#[tokio::test]
async fn the_admin_api_changes_owners() {
    let caller = Caller::start().await;
    let admin = |method: Method, owner: u128| {
        let url = format!(
            "{}/admin/groups/{}/owners/{}",
            caller.sim.url(),
            id(OTHER_GROUP),
            id(owner)
        );
        caller.http.request(method, url).send()
    };
    assert_eq!(admin(Method::PUT, 5).await.unwrap().status(), 204);
    assert_eq!(admin(Method::PUT, 6).await.unwrap().status(), 204);
    assert_eq!(admin(Method::DELETE, 5).await.unwrap().status(), 204);
    let owners = caller.sim.read(|t| t.owners_of(id(OTHER_GROUP)));
    assert_eq!(owners, Some(vec![id(6)]));
}
