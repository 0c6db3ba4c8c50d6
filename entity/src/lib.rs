//! SeaORM entities.
//!
//! [`litellm`] maps LiteLLM's own tables as its migrations create them: entra-sync reads and writes
//! them but never creates, alters or drops them. [`sync`] maps entra-sync's own `entra_sync_*`
//! tables, created by the `migration` crate. [`ids`] holds the Entra identifiers both use.

pub mod ids;
pub mod litellm;
pub mod sync;

pub use ids::{GroupId, InvalidObjectId, UserId};
