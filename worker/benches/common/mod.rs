//! What the sync benchmarks share: graph-sim with a generated tenant, a fresh database with
//! LiteLLM's schema, and a syncer as `run` has it. Each benchmark declares `graph_common` too.
#![allow(dead_code, clippy::unwrap_used)]

use entra_sync_testkit::TestDatabase;
use graph_sim::tenant::TenantFile;
use graph_sim::{GraphSim, SimConfig};
use worker::litellm_config::LiteLlmSettings;
use worker::store::{RemovalMode, Store};
use worker::sync::{Syncer, UnassignedPolicy};

use crate::graph_common;

/// graph-sim serving `tenant` in pages as large as the worker asks for ($top=999, as Graph
/// serves them), a fresh database, and a syncer that counts its changes without listing them.
pub async fn start(tenant: TenantFile) -> (GraphSim, TestDatabase, Syncer) {
    let config = SimConfig {
        page_size: 999,
        ..SimConfig::default()
    };
    let sim = GraphSim::start(config, tenant).await.unwrap();
    let db = TestDatabase::new().await;
    let (graph, _) = graph_common::default_retry_client(&sim);
    let store = Store::new(
        db.conn().clone(),
        LiteLlmSettings::default(),
        RemovalMode::Managed,
    );
    let syncer = Syncer::new(graph, store, UnassignedPolicy::RemoveMembers).counting_only();
    (sim, db, syncer)
}

/// The rows of a table.
pub async fn count(db: &sea_orm::DatabaseConnection, table: &str) -> i64 {
    use sea_orm::ConnectionTrait;
    db.query_one(sea_orm::Statement::from_string(
        sea_orm::DbBackend::Postgres,
        format!("SELECT count(*) FROM {table}"),
    ))
    .await
    .unwrap()
    .unwrap()
    .try_get_by_index::<i64>(0)
    .unwrap()
}
