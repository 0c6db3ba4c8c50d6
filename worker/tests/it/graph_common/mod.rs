//! A small simulated tenant and a Graph client pointed at it.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use graph_sim::tenant::{App, AppRole, Group, TenantFile, User};
use graph_sim::{GraphSim, SimConfig};
use prometheus_client::registry::Registry;
use uuid::Uuid;
use worker::graph::{Credential, GraphClient, GraphConfig, GraphMetrics, RetryPolicy};

pub fn uid(n: u128) -> Uuid {
    Uuid::from_u128(0x5b00_0000_0000_4000_8000_0000_0000_0000 + n)
}

pub fn gid(n: u128) -> Uuid {
    Uuid::from_u128(0x9a00_0000_0000_4000_8000_0000_0000_0000 + n)
}

pub const PROXY_ADMIN_ROLE: u128 = 0xadd;

/// User `n` of the tenant, its account enabled or not (as `upsert_user` takes it).
pub fn user(n: u128, enabled: bool) -> User {
    User {
        id: uid(n),
        display_name: format!("User {n}"),
        user_principal_name: format!("user{n}@contoso.example"),
        mail: None,
        account_enabled: enabled,
    }
}

pub fn role_id(n: u128) -> Uuid {
    Uuid::from_u128(0xa0_0000_0000_4000_8000_0000_0000_0000 + n)
}

/// Users 1..=10; group 1 holds users 1-5; group 2 holds users 3-8 and group 1; the app has a
/// proxy_admin and an internal_user role; group 1 and user 9 are assigned.
pub fn tenant() -> TenantFile {
    let users = (1..=10)
        .map(|n| User {
            id: uid(n),
            display_name: format!("User {n}"),
            user_principal_name: format!("user{n}@contoso.example"),
            mail: Some(format!("user{n}.mail@contoso.example")),
            account_enabled: true,
        })
        .collect();
    let groups = vec![
        Group {
            id: gid(1),
            display_name: "Engineering".into(),
            description: Some("Builds things".into()),
            members: (1..=5).map(uid).collect(),
            owners: Default::default(),
        },
        Group {
            id: gid(2),
            display_name: "Research".into(),
            description: None,
            members: (3..=8).map(uid).chain([gid(1)]).collect(),
            owners: Default::default(),
        },
    ];
    let app = App {
        app_roles: vec![
            AppRole {
                id: role_id(PROXY_ADMIN_ROLE),
                value: "proxy_admin".into(),
                display_name: "Proxy Admin".into(),
                is_enabled: true,
            },
            AppRole {
                id: role_id(2),
                value: "internal_user".into(),
                display_name: "Internal User".into(),
                is_enabled: true,
            },
        ],
        ..App::default()
    };
    TenantFile { users, groups, app }
}

pub async fn sim(tweak: impl FnOnce(&mut SimConfig)) -> GraphSim {
    let mut config = SimConfig::default();
    tweak(&mut config);
    let sim = GraphSim::start(config, tenant()).await.unwrap();
    sim.change(|t| {
        t.assign(gid(1), Uuid::nil()).unwrap();
        t.assign(uid(9), role_id(PROXY_ADMIN_ROLE)).unwrap();
        ((), Vec::new())
    });
    sim
}

/// Short waits, so retries do not slow the tests down.
pub fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        attempts: 4,
        min_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
        total_delay: Duration::from_secs(20),
        request_timeout: Duration::from_secs(5),
    }
}

pub fn config(sim: &GraphSim, credential: Credential) -> GraphConfig {
    let sim_config = sim.config();
    GraphConfig {
        tenant_id: sim_config.tenant_id.to_string(),
        client_id: sim_config.client_id.to_string(),
        credential,
        token_url: sim.token_url().parse().unwrap(),
        graph_endpoint: sim.graph_url(),
        service_principal_id: None,
        retry: quick_retries(),
    }
}

pub fn secret_client(sim: &GraphSim) -> (GraphClient, Registry) {
    let secret = sim.config().client_secret.unwrap();
    client_with(config(sim, Credential::Secret(secret.into())))
}

/// A secret-credential client with the production retry policy (the benchmarks).
pub fn default_retry_client(sim: &GraphSim) -> (GraphClient, Registry) {
    let secret = sim.config().client_secret.unwrap();
    client_with(GraphConfig {
        retry: RetryPolicy::default(),
        ..config(sim, Credential::Secret(secret.into()))
    })
}

pub fn client_with(config: GraphConfig) -> (GraphClient, Registry) {
    let mut registry = Registry::default();
    let metrics = GraphMetrics::register(&mut registry);
    (GraphClient::new(config, metrics).unwrap(), registry)
}

/// The registry in Prometheus' text format.
pub fn scrape(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text
}
