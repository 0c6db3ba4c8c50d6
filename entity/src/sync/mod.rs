//! entra-sync's own tables. All are named `entra_sync_*` and created by the `migration` crate.

pub mod assigned_group;
pub mod audit_log;
pub mod delta_link;
pub mod failed_item;
pub mod lease;
pub mod managed_membership;
pub mod managed_role;
pub mod reconciliation;
pub mod subscription;
