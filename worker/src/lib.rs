//! entra-sync's worker: turns what Entra says about groups, members and app roles into LiteLLM's
//! teams, memberships and user roles.

pub mod commands;
pub mod config;
pub mod error;
pub mod health;
pub mod metrics;
pub mod readiness;
pub mod removals;
pub mod run;
pub mod serve;
pub mod startup;
pub mod stream;
pub mod subscriptions;
pub mod sync;

/// The Graph client, as `worker::graph` (its own crate, `entra-sync-graph`).
pub use entra_sync_graph as graph;
pub use entra_sync_graph::user as directory;
/// What entra-sync knows of LiteLLM and writes to it (its own crate, `entra-sync-litellm`).
pub use entra_sync_litellm::{budget, litellm_cache, litellm_config, roles, store, team_rules};
pub use error::{Error, Result};
