//! Nested groups and group owners:
//! - `entra_sync_nested_groups`: for each assigned group, every group below it (its transitive
//!   group members), as the last transitive read found them. A change that Graph reports for a
//!   nested group reaches every assigned group above it through this table. Empty when
//!   `ENTRA_SYNC_MEMBERSHIP=direct`.
//! - `entra_sync_group_owners`: with `ENTRA_SYNC_OWNERS_AS_ADMINS`, each assigned group's owners
//!   as the last read found them, and whether entra-sync gave each the team's `admin` role
//!   (`made_admin`), so that it sets the role back when the ownership ends and never touches an
//!   admin role set by hand.
//! - `entra_sync_managed_memberships` says why entra-sync keeps a membership it established:
//!   `member` (the user is in the group) and `owner` (the user owns it). Rows from before are
//!   memberships through the group.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE TABLE IF NOT EXISTS entra_sync_nested_groups (
                     group_id text NOT NULL,
                     nested_group_id text NOT NULL,
                     PRIMARY KEY (group_id, nested_group_id)
                 );
                 CREATE INDEX IF NOT EXISTS entra_sync_nested_groups_nested
                     ON entra_sync_nested_groups (nested_group_id);
                 CREATE TABLE IF NOT EXISTS entra_sync_group_owners (
                     group_id text NOT NULL,
                     user_id text NOT NULL,
                     entra_user_id text NOT NULL,
                     made_admin boolean NOT NULL,
                     PRIMARY KEY (group_id, user_id)
                 );
                 ALTER TABLE entra_sync_managed_memberships
                     ADD COLUMN IF NOT EXISTS member boolean NOT NULL DEFAULT true,
                     ADD COLUMN IF NOT EXISTS owner boolean NOT NULL DEFAULT false;",
            )
            .await
            .map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE entra_sync_managed_memberships
                     DROP COLUMN IF EXISTS owner,
                     DROP COLUMN IF EXISTS member;
                 DROP TABLE IF EXISTS entra_sync_group_owners;
                 DROP TABLE IF EXISTS entra_sync_nested_groups;",
            )
            .await
            .map(|_| ())
    }
}
