//! LiteLLM's real proxy (litellm 1.110.2) as the judge of access: graph-sim, the webhook and an
//! `entra-sync-worker run` process write the test's database, and the proxy, started on that
//! database (tests/testkit/src/litellm_proxy.rs), answers whether a key works.
//!
//! The proxy reads one database and takes about 30 s to start, so there are two proxies, one per
//! test, each walking through several scenarios with teams and users of its own:
//! - with `ENTRA_SYNC_LITELLM_REDIS_URL` set and the proxy's cache kept for an hour, so that only
//!   entra-sync's evictions can explain a refusal: membership, admin reads, removal, LiteLLM's own
//!   member_delete (the control), disabled users, the proxy_admin role, an admin's edits kept,
//!   and a team made by a team rule;
//! - without it, and a short cache TTL: a removed member's key works until the TTL runs out.
//!
//! Latencies are printed (`cargo test -p worker --test it -- litellm_proxy:: --nocapture`), never
//! asserted beyond the condition waited for.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use crate::graph_common;
use crate::world;

use std::time::{Duration, Instant};

use chrono::Utc;
use entra_sync_testkit::litellm_proxy::{LiteLlmProxy, MASTER_KEY, ProxySettings};
use entra_sync_testkit::redis::redis_url;
use graph_common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;
use world::*;

/// The model every team may use, one outside the teams' models, and one LiteLLM's cost map
/// prices (so that a team's spend grows and its budget can run out).
const TEAM_MODEL: &str = "gpt-test";
const OTHER_MODEL: &str = "other-model";
const PRICED_MODEL: &str = "gpt-4o-mini";

/// The tenant's internal_user app role (graph_common's tenant).
const INTERNAL_USER_ROLE: u128 = 2;

/// How long a test waits for the proxy to change its answer.
const WAIT: Duration = Duration::from_secs(60);

fn proxy_settings(world: &World, namespace: &str, cache_ttl: Duration) -> ProxySettings {
    ProxySettings {
        database_url: world.db.url().to_owned(),
        redis_namespace: namespace.to_owned(),
        cache_ttl,
        models: vec![
            (TEAM_MODEL.into(), format!("openai/{TEAM_MODEL}")),
            (OTHER_MODEL.into(), format!("openai/{OTHER_MODEL}")),
            (PRICED_MODEL.into(), format!("openai/{PRICED_MODEL}")),
        ],
    }
}

/// A key made by the proxy's admin with `/key/generate`.
async fn generate_key(proxy: &LiteLlmProxy, body: Value) -> String {
    let (status, answer) = proxy.post("/key/generate", MASTER_KEY, &body).await;
    assert_eq!(status, StatusCode::OK, "/key/generate {body}: {answer}");
    answer["key"].as_str().unwrap().to_owned()
}

/// Waits until `request` answers `expected`, returning how long after `since` it did; panics
/// with the last answer when it does not within [`WAIT`].
async fn answers_within<F, Fut>(
    what: &str,
    since: Instant,
    expected: StatusCode,
    mut request: F,
) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (StatusCode, Value)>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = request().await;
        if status == expected {
            let took = since.elapsed();
            println!(
                "{what}: {expected} after {:.0} ms",
                took.as_secs_f64() * 1000.0
            );
            return took;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still {status} after {WAIT:?}, expected {expected}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The worker process's environment for these tests: assignments polled every second (app roles
/// and newly assigned groups), and the extra variables given.
fn spawn_worker(world: &mut World, extra: &[(&str, &str)]) {
    let mut overrides = vec![("ENTRA_SYNC_POLL_SECONDS", "1")];
    overrides.extend_from_slice(extra);
    world.spawn_worker_process_with("proxy", &overrides);
}

/// The proxy's log since `from` (a length of it), without the lines every start writes.
fn errors_since(proxy: &LiteLlmProxy, from: usize) -> Vec<String> {
    let log = proxy.log();
    log.get(from..)
        .unwrap_or_default()
        .lines()
        .filter(|line| {
            let lower = line.to_lowercase();
            lower.contains("error") || lower.contains("exception") || lower.contains("traceback")
        })
        .map(str::to_owned)
        .collect()
}

fn team_ids(teams: &Value) -> Vec<String> {
    teams
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["team_id"].as_str().map(str::to_owned))
        .collect()
}

fn member_ids(team: &Value) -> Vec<String> {
    team["members_with_roles"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["user_id"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn access_through_litellms_proxy_follows_entra() {
    let mut world = World::new().await;
    let namespace = format!("entra-sync-test-{}", Uuid::new_v4().simple());
    // Research (group 2) gets its team from a rule when it is assigned, below.
    let rules =
        std::env::temp_dir().join(format!("entra-sync-proxy-rules-{}.yaml", Uuid::new_v4()));
    std::fs::write(
        &rules,
        format!(
            "rules:\n  - match: {{ group_id: \"{}\" }}\n    team: {{ max_budget: 0.00001, models: [{PRICED_MODEL}] }}\n",
            gid(2)
        ),
    )
    .unwrap();
    // Users' notifications (disabled, enabled) reach the webhook.
    world
        .subscription_manager()
        .ensure(Utc::now())
        .await
        .unwrap();
    let litellm_redis = redis_url();
    spawn_worker(
        &mut world,
        &[
            ("ENTRA_SYNC_LITELLM_REDIS_URL", litellm_redis.as_str()),
            ("ENTRA_SYNC_LITELLM_REDIS_NAMESPACE", namespace.as_str()),
            ("ENTRA_SYNC_TEAM_RULES", rules.to_str().unwrap()),
        ],
    );
    // An hour: a key refused within the test was evicted, never expired.
    let proxy = LiteLlmProxy::start(&proxy_settings(
        &world,
        &namespace,
        Duration::from_secs(3600),
    ))
    .await;
    assert!(eventually(|| async { world.members(1).await == Some(users(1..=5)) }).await);
    let engineering = gid(1).to_string();

    // An admin's edits through LiteLLM's API: the team's models, and a member not in Entra.
    let (status, body) = proxy
        .post(
            "/team/update",
            MASTER_KEY,
            &json!({"team_id": engineering, "models": [TEAM_MODEL]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "/team/update: {body}");
    let (status, body) = proxy
        .post(
            "/team/member_add",
            MASTER_KEY,
            &json!({"team_id": engineering, "member": {"user_id": "contractor", "role": "user"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "/team/member_add: {body}");

    // A member entra-sync added uses a team key; a model outside the team's is refused.
    let ada_key = generate_key(
        &proxy,
        json!({"team_id": engineering, "user_id": uid(2).to_string()}),
    )
    .await;
    let (status, body) = proxy.chat(&ada_key, TEAM_MODEL).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = proxy.chat(&ada_key, OTHER_MODEL).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["type"], "team_model_access_denied", "{body}");

    // What entra-sync wrote, as LiteLLM shows it.
    let (status, team) = proxy
        .get(&format!("/team/info?team_id={engineering}"), MASTER_KEY)
        .await;
    assert_eq!(status, StatusCode::OK, "{team}");
    assert_eq!(team["team_info"]["team_alias"], "Engineering", "{team}");
    let members = member_ids(&team["team_info"]);
    for member in users(1..=5) {
        assert!(
            members.contains(&member),
            "{member} missing from {members:?}"
        );
    }
    let (status, ada) = proxy
        .get(&format!("/user/info?user_id={}", uid(2)), MASTER_KEY)
        .await;
    assert_eq!(status, StatusCode::OK, "{ada}");
    assert_eq!(
        ada["user_info"]["user_email"], "user2@contoso.example",
        "{ada}"
    );
    assert_eq!(ada["user_info"]["user_alias"], "User 2", "{ada}");
    assert!(team_ids(&ada["teams"]).contains(&engineering), "{ada}");

    // LiteLLM's admin reads of what entra-sync wrote answer, with no error in its log.
    let log_mark = proxy.log().len();
    for route in ["/team/list", "/v2/team/list", "/user/list", "/key/list"] {
        let (status, body) = proxy.get(route, MASTER_KEY).await;
        assert_eq!(status, StatusCode::OK, "{route}: {body}");
    }
    let errors = errors_since(&proxy, log_mark);
    assert!(
        errors.is_empty(),
        "the admin reads logged errors: {errors:#?}"
    );

    // Removed in Entra: the key just used (so cached) is refused once entra-sync evicts it.
    let (status, _) = proxy.chat(&ada_key, TEAM_MODEL).await;
    assert_eq!(status, StatusCode::OK);
    let removed = Instant::now();
    world.sim.apply(|t| t.remove_member(gid(1), uid(2)));
    answers_within(
        "a removed member's cached team key (ENTRA_SYNC_LITELLM_REDIS_URL set)",
        removed,
        StatusCode::UNAUTHORIZED,
        || proxy.chat(&ada_key, TEAM_MODEL),
    )
    .await;

    // The admin's edits survived entra-sync's change to the team.
    let (_, team) = proxy
        .get(&format!("/team/info?team_id={engineering}"), MASTER_KEY)
        .await;
    assert_eq!(team["team_info"]["models"], json!([TEAM_MODEL]), "{team}");
    let members = member_ids(&team["team_info"]);
    assert!(members.contains(&"contractor".to_owned()), "{members:?}");
    assert!(!members.contains(&uid(2).to_string()), "{members:?}");

    // The control: LiteLLM's own /team/member_delete refuses a cached key the same way.
    let grace_key = generate_key(
        &proxy,
        json!({"team_id": engineering, "user_id": uid(5).to_string()}),
    )
    .await;
    let (status, _) = proxy.chat(&grace_key, TEAM_MODEL).await;
    assert_eq!(status, StatusCode::OK);
    let deleted = Instant::now();
    let (status, body) = proxy
        .post(
            "/team/member_delete",
            MASTER_KEY,
            &json!({"team_id": engineering, "user_id": uid(5).to_string()}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "/team/member_delete: {body}");
    answers_within(
        "the control: a cached team key after LiteLLM's /team/member_delete",
        deleted,
        StatusCode::UNAUTHORIZED,
        || proxy.chat(&grace_key, TEAM_MODEL),
    )
    .await;

    // Disabled in Entra: their personal key is refused; enabled again: accepted.
    let personal_key = generate_key(&proxy, json!({"user_id": uid(3).to_string()})).await;
    let (status, body) = proxy.chat(&personal_key, TEAM_MODEL).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let disabled = Instant::now();
    world.sim.apply(|t| t.upsert_user(user(3, false)));
    answers_within(
        "a disabled user's cached personal key",
        disabled,
        StatusCode::UNAUTHORIZED,
        || proxy.chat(&personal_key, TEAM_MODEL),
    )
    .await;
    let enabled = Instant::now();
    world.sim.apply(|t| t.upsert_user(user(3, true)));
    answers_within(
        "the same key once the user is enabled again",
        enabled,
        StatusCode::OK,
        || proxy.chat(&personal_key, TEAM_MODEL),
    )
    .await;

    // The proxy_admin app role: an admin-only route refuses an internal_user, answers the same
    // key once proxy_admin is assigned instead, and refuses it again once that is removed.
    let admin_key = generate_key(&proxy, json!({"user_id": uid(4).to_string()})).await;
    let assign_only = |role: u128| {
        move |t: &mut graph_sim::tenant::Tenant| {
            t.unassign(uid(4));
            t.assign(uid(4), role_id(role)).unwrap();
            ((), Vec::new())
        }
    };
    world.sim.change(assign_only(INTERNAL_USER_ROLE));
    let role_of_4 = format!(
        r#"SELECT count(*) FROM "LiteLLM_UserTable" WHERE user_id = '{}' AND user_role = 'internal_user'"#,
        uid(4)
    );
    assert!(eventually(|| async { world.count(&role_of_4).await == 1 }).await);
    let (status, body) = proxy.get("/user/list", &admin_key).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "an internal_user reads /user/list: {body}"
    );
    let assigned = Instant::now();
    world.sim.change(assign_only(PROXY_ADMIN_ROLE));
    answers_within(
        "GET /user/list once proxy_admin is assigned (the poll runs every second)",
        assigned,
        StatusCode::OK,
        || proxy.get("/user/list", &admin_key),
    )
    .await;
    let unassigned = Instant::now();
    world.sim.change(assign_only(INTERNAL_USER_ROLE));
    answers_within(
        "GET /user/list once proxy_admin is removed (internal_user again)",
        unassigned,
        StatusCode::FORBIDDEN,
        || proxy.get("/user/list", &admin_key),
    )
    .await;

    // A team made by a team rule: the proxy enforces its models and its budget.
    world.sim.change(|t| {
        t.assign(gid(2), Uuid::nil()).unwrap();
        ((), Vec::new())
    });
    let research = gid(2).to_string();
    assert!(eventually(|| async { world.members(2).await.is_some_and(|m| m.len() >= 6) }).await);
    let (status, team) = proxy
        .get(&format!("/team/info?team_id={research}"), MASTER_KEY)
        .await;
    assert_eq!(status, StatusCode::OK, "{team}");
    assert_eq!(team["team_info"]["models"], json!([PRICED_MODEL]), "{team}");
    assert_eq!(team["team_info"]["max_budget"], json!(0.00001), "{team}");
    let research_key = generate_key(
        &proxy,
        json!({"team_id": research, "user_id": uid(6).to_string()}),
    )
    .await;
    let (status, body) = proxy.chat(&research_key, TEAM_MODEL).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a model outside the rule's: {body}"
    );
    let (status, body) = proxy.chat(&research_key, PRICED_MODEL).await;
    assert_eq!(status, StatusCode::OK, "the rule's model: {body}");
    // One answer costs more than the budget: the proxy then refuses the team's keys (LiteLLM
    // 1.110.2 answers 422 budget_exceeded).
    let spent = Instant::now();
    answers_within(
        "the rule's team over its budget",
        spent,
        StatusCode::UNPROCESSABLE_ENTITY,
        || proxy.chat(&research_key, PRICED_MODEL),
    )
    .await;
    let (_, refusal) = proxy.chat(&research_key, PRICED_MODEL).await;
    assert_eq!(refusal["error"]["type"], "budget_exceeded", "{refusal}");

    let _ = std::fs::remove_file(&rules);
    drop(proxy);
}

#[tokio::test]
async fn without_litellms_redis_a_removed_members_cached_key_works_until_the_cache_ttl() {
    const TTL: Duration = Duration::from_secs(15);
    let mut world = World::new().await;
    let namespace = format!("entra-sync-test-{}", Uuid::new_v4().simple());
    spawn_worker(&mut world, &[]);
    let proxy = LiteLlmProxy::start(&proxy_settings(&world, &namespace, TTL)).await;
    assert!(eventually(|| async { world.members(1).await == Some(users(1..=5)) }).await);
    let engineering = gid(1).to_string();
    let key = generate_key(
        &proxy,
        json!({"team_id": engineering, "user_id": uid(2).to_string()}),
    )
    .await;
    let (status, body) = proxy.chat(&key, TEAM_MODEL).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let removed = Instant::now();
    world.sim.apply(|t| t.remove_member(gid(1), uid(2)));
    let keys_left = format!(
        r#"SELECT count(*) FROM "LiteLLM_VerificationToken" WHERE user_id = '{}' AND team_id = '{engineering}'"#,
        uid(2)
    );
    assert!(eventually(|| async { world.count(&keys_left).await == 0 }).await);
    let written = removed.elapsed();
    // The row is gone, and LiteLLM still serves the key from its cache.
    let (status, body) = proxy.chat(&key, TEAM_MODEL).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "refused before the cache TTL without LiteLLM's Redis: {body}"
    );
    let refused = answers_within(
        "a removed member's cached team key (ENTRA_SYNC_LITELLM_REDIS_URL unset)",
        removed,
        StatusCode::UNAUTHORIZED,
        || proxy.chat(&key, TEAM_MODEL),
    )
    .await;
    println!(
        "the key was deleted {:.0} ms after the change; LiteLLM's cache TTL is {} s; refused after {:.1} s",
        written.as_secs_f64() * 1000.0,
        TTL.as_secs(),
        refused.as_secs_f64()
    );
}
