//! The first set of entra-sync tables: subscriptions, delta links, managed memberships and roles,
//! and the audit log.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum EntraSyncSubscriptions {
    Table,
    Id,
    Resource,
    ChangeType,
    NotificationUrl,
    LifecycleNotificationUrl,
    ExpiresAt,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum EntraSyncDeltaLinks {
    Table,
    Resource,
    DeltaLink,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum EntraSyncManagedMemberships {
    Table,
    GroupId,
    UserId,
    EntraUserId,
    CreatedAt,
}

#[derive(DeriveIden)]
enum EntraSyncManagedRoles {
    Table,
    UserId,
    EntraUserId,
    Role,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum EntraSyncAuditLog {
    Table,
    Id,
    RecordedAt,
    Kind,
    TeamId,
    UserId,
    Detail,
}

fn timestamptz(name: impl IntoIden) -> ColumnDef {
    ColumnDef::new(name)
        .timestamp_with_time_zone()
        .not_null()
        .default(Expr::current_timestamp())
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(EntraSyncSubscriptions::Table)
                    .col(
                        ColumnDef::new(EntraSyncSubscriptions::Id)
                            .text()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(EntraSyncSubscriptions::Resource)
                            .text()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(EntraSyncSubscriptions::ChangeType)
                            .text()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(EntraSyncSubscriptions::NotificationUrl)
                            .text()
                            .not_null(),
                    )
                    .col(ColumnDef::new(EntraSyncSubscriptions::LifecycleNotificationUrl).text())
                    .col(
                        ColumnDef::new(EntraSyncSubscriptions::ExpiresAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(timestamptz(EntraSyncSubscriptions::CreatedAt))
                    .col(timestamptz(EntraSyncSubscriptions::UpdatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(EntraSyncDeltaLinks::Table)
                    .col(
                        ColumnDef::new(EntraSyncDeltaLinks::Resource)
                            .text()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(EntraSyncDeltaLinks::DeltaLink)
                            .text()
                            .not_null(),
                    )
                    .col(timestamptz(EntraSyncDeltaLinks::UpdatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(EntraSyncManagedMemberships::Table)
                    .col(
                        ColumnDef::new(EntraSyncManagedMemberships::GroupId)
                            .text()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(EntraSyncManagedMemberships::UserId)
                            .text()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(EntraSyncManagedMemberships::EntraUserId)
                            .text()
                            .not_null(),
                    )
                    .col(timestamptz(EntraSyncManagedMemberships::CreatedAt))
                    .primary_key(
                        Index::create()
                            .col(EntraSyncManagedMemberships::GroupId)
                            .col(EntraSyncManagedMemberships::UserId),
                    )
                    .to_owned(),
            )
            .await?;
        // A user leaving Entra loses every managed membership: find them by user.
        manager
            .create_index(
                Index::create()
                    .name("entra_sync_managed_memberships_entra_user_id_idx")
                    .table(EntraSyncManagedMemberships::Table)
                    .col(EntraSyncManagedMemberships::EntraUserId)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(EntraSyncManagedRoles::Table)
                    .col(
                        ColumnDef::new(EntraSyncManagedRoles::UserId)
                            .text()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(EntraSyncManagedRoles::EntraUserId)
                            .text()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(EntraSyncManagedRoles::Role)
                            .text()
                            .not_null(),
                    )
                    .col(timestamptz(EntraSyncManagedRoles::UpdatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(EntraSyncAuditLog::Table)
                    .col(
                        ColumnDef::new(EntraSyncAuditLog::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(timestamptz(EntraSyncAuditLog::RecordedAt))
                    .col(ColumnDef::new(EntraSyncAuditLog::Kind).text().not_null())
                    .col(ColumnDef::new(EntraSyncAuditLog::TeamId).text())
                    .col(ColumnDef::new(EntraSyncAuditLog::UserId).text())
                    .col(
                        ColumnDef::new(EntraSyncAuditLog::Detail)
                            .json_binary()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("entra_sync_audit_log_recorded_at_idx")
                    .table(EntraSyncAuditLog::Table)
                    .col(EntraSyncAuditLog::RecordedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            EntraSyncAuditLog::Table.into_iden(),
            EntraSyncManagedRoles::Table.into_iden(),
            EntraSyncManagedMemberships::Table.into_iden(),
            EntraSyncDeltaLinks::Table.into_iden(),
            EntraSyncSubscriptions::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
