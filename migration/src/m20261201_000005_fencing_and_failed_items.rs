//! Fault isolation and exclusion without idle transactions:
//! - `entra_sync_leases.fence`: a number that grows each time a lease changes hands. Work done
//!   under a lease carries the number it got, and every commit checks that it is still current,
//!   so a replica that lost its lease (paused, cut off) can never write over newer work.
//! - `entra_sync_failed_items`: groups and users whose sync failed on their own while the rest
//!   went on, retried with backoff until they succeed (`status` lists them);
//! - `entra_sync_departed_users`: users entra-sync saw disabled or deleted in Entra, so that
//!   every path (delta rounds, polls, notifications, reconciliation) leaves them out alike, even
//!   where Graph's answer does not say whether an account is enabled.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE entra_sync_leases ADD COLUMN IF NOT EXISTS fence bigint NOT NULL DEFAULT 0;
                 CREATE TABLE IF NOT EXISTS entra_sync_failed_items (
                     kind text NOT NULL,
                     id text NOT NULL,
                     error text NOT NULL,
                     attempts integer NOT NULL,
                     first_failed_at timestamptz NOT NULL,
                     last_failed_at timestamptz NOT NULL,
                     retry_at timestamptz NOT NULL,
                     PRIMARY KEY (kind, id)
                 );
                 CREATE TABLE IF NOT EXISTS entra_sync_departed_users (
                     entra_user_id text PRIMARY KEY,
                     since timestamptz NOT NULL
                 );",
            )
            .await
            .map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "DROP TABLE IF EXISTS entra_sync_departed_users;
                 DROP TABLE IF EXISTS entra_sync_failed_items;
                 ALTER TABLE entra_sync_leases DROP COLUMN IF EXISTS fence;",
            )
            .await
            .map(|_| ())
    }
}
