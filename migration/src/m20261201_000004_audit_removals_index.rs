//! An index on the audit log's member removals: reconciliation looks up, for each key that has a
//! team, whether entra-sync removed its user from that team (keys that survived a removal).
//! Partial, so that the million `member_added` rows of a first sync cost nothing to index.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const INDEX: &str = "entra_sync_audit_log_member_removed_idx";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(&format!(
                "CREATE INDEX IF NOT EXISTS {INDEX} ON entra_sync_audit_log (team_id, user_id) \
                 WHERE kind = 'member_removed'"
            ))
            .await
            .map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(&format!("DROP INDEX IF EXISTS {INDEX}"))
            .await
            .map(|_| ())
    }
}
