//! What entra-sync knows of LiteLLM and writes to it: the store over LiteLLM's PostgreSQL tables
//! and entra-sync's own ([`store`], whose membership planning is pure functions), LiteLLM's
//! config (`default_team_params`, `default_internal_user_params`, its caches: [`litellm_config`]),
//! team rules ([`team_rules`]), roles ([`roles`]), budget periods ([`budget`]) and the eviction of
//! LiteLLM's cached objects ([`litellm_cache`]), with one error type ([`Error`]). It reads Entra
//! users as the Graph crate describes them, and never calls Graph.

pub mod budget;
pub mod error;
pub mod litellm_cache;
pub mod litellm_config;
pub mod roles;
pub mod store;
pub mod team_rules;

pub use error::{Error, Result};

/// The users as Graph describes them.
pub(crate) use entra_sync_graph::user as directory;
