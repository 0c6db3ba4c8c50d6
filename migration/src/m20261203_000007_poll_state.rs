//! What makes an unchanged poll cheap, and a lookup linear:
//! - `entra_sync_poll_state` (one row): a fingerprint of the app's assignments and app roles as
//!   the last poll applied them, and whether users' roles are stale since (a role-holding
//!   group's members changed, or a user came back). A poll that finds the same fingerprint and
//!   nothing stale has nothing to do.
//! - `entra_sync_assigned_groups.holds_role`: the group is assigned an app role (not only
//!   default access), so that a round changing its members marks the roles stale.
//! - an index on `entra_sync_managed_roles (entra_user_id)`: revoking a role looks it up so.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE TABLE IF NOT EXISTS entra_sync_poll_state (
                     id smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1),
                     assignments_fingerprint text NOT NULL,
                     roles_stale boolean NOT NULL DEFAULT false,
                     updated_at timestamptz NOT NULL
                 );
                 ALTER TABLE entra_sync_assigned_groups
                     ADD COLUMN IF NOT EXISTS holds_role boolean NOT NULL DEFAULT false;
                 CREATE INDEX IF NOT EXISTS entra_sync_managed_roles_entra_user
                     ON entra_sync_managed_roles (entra_user_id);",
            )
            .await
            .map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "DROP INDEX IF EXISTS entra_sync_managed_roles_entra_user;
                 ALTER TABLE entra_sync_assigned_groups DROP COLUMN IF EXISTS holds_role;
                 DROP TABLE IF EXISTS entra_sync_poll_state;",
            )
            .await
            .map(|_| ())
    }
}
