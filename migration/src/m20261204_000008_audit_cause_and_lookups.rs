//! What `entra-sync-worker audit` needs from the audit log:
//! - `cause`: what made the change (a delta round, a resync, the assignment poll, a
//!   reconciliation, a user notification, a retry of a failed item, the `sync` command). Rows
//!   written before this migration have none.
//! - indexes for its filters, newest first: by LiteLLM user and by team. The time filter alone
//!   uses the existing `recorded_at` index; a kind alone is few distinct values, read through time.
//!   Partial, so that rows without a user (or a team) cost nothing to index.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE entra_sync_audit_log ADD COLUMN IF NOT EXISTS cause text;
                 CREATE INDEX IF NOT EXISTS entra_sync_audit_log_user_idx
                     ON entra_sync_audit_log (user_id, recorded_at DESC, id DESC)
                     WHERE user_id IS NOT NULL;
                 CREATE INDEX IF NOT EXISTS entra_sync_audit_log_team_idx
                     ON entra_sync_audit_log (team_id, recorded_at DESC, id DESC)
                     WHERE team_id IS NOT NULL;",
            )
            .await
            .map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "DROP INDEX IF EXISTS entra_sync_audit_log_team_idx;
                 DROP INDEX IF EXISTS entra_sync_audit_log_user_idx;
                 ALTER TABLE entra_sync_audit_log DROP COLUMN IF EXISTS cause;",
            )
            .await
            .map(|_| ())
    }
}
