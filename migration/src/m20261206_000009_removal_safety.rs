//! Nothing irreversible on missing evidence:
//! - `entra_sync_held_removals`: memberships a unit of work would have removed, held for a person
//!   because the unit would have removed (or deleted keys of) more than
//!   `ENTRA_SYNC_REMOVAL_THRESHOLD`. The member stays in the team; the keys the removal would
//!   have deleted are blocked meanwhile (`keys`, marker `removal_held`). `entra-sync-worker
//!   removals release` applies a hold after checking it against Graph again, `discard` drops it.
//! - `entra_sync_deletion_evidence`: users Graph answered "not found" for, once. Graph is
//!   eventually consistent, so a user is taken for deleted only when a second answer, at least a
//!   minute after the first, says so too; reading the user in between forgets the first.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE TABLE IF NOT EXISTS entra_sync_held_removals (
                     id bigserial PRIMARY KEY,
                     group_id text NOT NULL,
                     user_id text NOT NULL,
                     entra_user_id text,
                     reason text NOT NULL,
                     keys text[] NOT NULL DEFAULT '{}',
                     cause text,
                     held_at timestamptz NOT NULL,
                     UNIQUE (group_id, user_id)
                 );
                 CREATE TABLE IF NOT EXISTS entra_sync_deletion_evidence (
                     entra_user_id text PRIMARY KEY,
                     first_seen_at timestamptz NOT NULL
                 );",
            )
            .await
            .map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "DROP TABLE IF EXISTS entra_sync_deletion_evidence;
                 DROP TABLE IF EXISTS entra_sync_held_removals;",
            )
            .await
            .map(|_| ())
    }
}
