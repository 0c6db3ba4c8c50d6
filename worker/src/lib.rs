//! entra-sync's worker: turns what Entra says about groups, members and app roles into LiteLLM's
//! teams, memberships and user roles.

pub mod budget;
pub mod commands;
pub mod config;
pub mod error;
pub mod health;
pub mod litellm_cache;
pub mod litellm_config;
pub mod metrics;
pub mod readiness;
pub mod removals;
pub mod roles;
pub mod run;
pub mod serve;
pub mod startup;
pub mod store;
pub mod stream;
pub mod subscriptions;
pub mod sync;
pub mod team_rules;

/// The Graph client, as `worker::graph` (its own crate, `entra-sync-graph`).
pub use entra_sync_graph as graph;
pub use entra_sync_graph::user as directory;
pub use error::{Error, Result};
