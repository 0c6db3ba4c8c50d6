//! entra-sync's own schema: every table is named `entra_sync_*`, including the migration
//! bookkeeping table. LiteLLM's tables come from LiteLLM's migrations; nothing here creates, alters
//! or drops them.

use sea_orm_migration::prelude::*;

pub mod database;
pub mod litellm_schema;
mod m20261128_000001_create_sync_tables;
mod m20261128_000002_assigned_groups;
mod m20261128_000003_leases_and_reconciliations;
mod m20261201_000004_audit_removals_index;
mod m20261201_000005_fencing_and_failed_items;
mod m20261202_000006_nesting_and_owners;
mod m20261203_000007_poll_state;
mod m20261204_000008_audit_cause_and_lookups;
mod m20261206_000009_removal_safety;

pub use sea_orm_migration::MigratorTrait;
pub use sea_orm_migration::sea_orm;

/// The name of the table that records which of entra-sync's migrations ran.
pub const MIGRATION_TABLE: &str = "entra_sync_migrations";

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261128_000001_create_sync_tables::Migration),
            Box::new(m20261128_000002_assigned_groups::Migration),
            Box::new(m20261128_000003_leases_and_reconciliations::Migration),
            Box::new(m20261201_000004_audit_removals_index::Migration),
            Box::new(m20261201_000005_fencing_and_failed_items::Migration),
            Box::new(m20261202_000006_nesting_and_owners::Migration),
            Box::new(m20261203_000007_poll_state::Migration),
            Box::new(m20261204_000008_audit_cause_and_lookups::Migration),
            Box::new(m20261206_000009_removal_safety::Migration),
        ]
    }

    // sea-orm's default, `seaql_migrations`, would put a table outside the `entra_sync_*` namespace
    // into LiteLLM's database.
    fn migration_table_name() -> DynIden {
        Alias::new(MIGRATION_TABLE).into_iden()
    }
}
