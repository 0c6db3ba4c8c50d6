//! entra-sync's worker: turns what Entra says about groups, members and app roles into LiteLLM's
//! teams, memberships and user roles.

pub mod budget;
pub mod commands;
pub mod config;
pub mod directory;
pub mod error;
pub mod graph;
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

pub use error::{Error, Result};
