//! Leases (work that exactly one worker replica does at a time, such as keeping the Graph
//! subscriptions alive) and the record of reconciliation runs, which `status` reports.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum EntraSyncLeases {
    Table,
    Name,
    Holder,
    ExpiresAt,
}

#[derive(DeriveIden)]
enum EntraSyncReconciliations {
    Table,
    Id,
    StartedAt,
    FinishedAt,
    DryRun,
    Changes,
    Error,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(EntraSyncLeases::Table)
                    .col(
                        ColumnDef::new(EntraSyncLeases::Name)
                            .text()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(EntraSyncLeases::Holder).text().not_null())
                    .col(
                        ColumnDef::new(EntraSyncLeases::ExpiresAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(EntraSyncReconciliations::Table)
                    .col(
                        ColumnDef::new(EntraSyncReconciliations::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(EntraSyncReconciliations::StartedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(EntraSyncReconciliations::FinishedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(EntraSyncReconciliations::DryRun)
                            .boolean()
                            .not_null(),
                    )
                    // Drift found: the changes made (or, in a dry run, planned).
                    .col(
                        ColumnDef::new(EntraSyncReconciliations::Changes)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(EntraSyncReconciliations::Error).text())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(EntraSyncReconciliations::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(
                Table::drop()
                    .table(EntraSyncLeases::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}
