//! The groups assigned to LiteLLM's enterprise app, as last seen: Graph sends no notifications
//! for assignments, so unassignment is found by comparing a poll with this table.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum EntraSyncAssignedGroups {
    Table,
    GroupId,
    DisplayName,
    AssignedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(EntraSyncAssignedGroups::Table)
                    .col(
                        ColumnDef::new(EntraSyncAssignedGroups::GroupId)
                            .text()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(EntraSyncAssignedGroups::DisplayName).text())
                    .col(
                        ColumnDef::new(EntraSyncAssignedGroups::AssignedAt)
                            .timestamp_with_time_zone()
                            .not_null()
                            .default(Expr::current_timestamp()),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(EntraSyncAssignedGroups::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}
