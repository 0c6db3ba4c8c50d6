//! `entra_sync_nested_groups`: the groups below each assigned group, as its last transitive read
//! found them (`ENTRA_SYNC_MEMBERSHIP=transitive`). Graph reports a membership change for the
//! group whose direct members changed; this table says which assigned groups, and so which
//! teams, that change reaches.

use std::collections::HashMap;

use entity::GroupId;
use sea_orm::{ConnectionTrait, FromQueryResult};

use super::sql::{stmt, text_array};
use super::{ApplyOptions, Store};
use crate::error::Result;

#[derive(FromQueryResult)]
struct NestingRow {
    group_id: String,
    nested_group_id: String,
}

impl Store {
    /// For each of `groups` nested in an assigned group, the assigned groups above it.
    #[tracing::instrument(skip(self, groups), fields(groups = groups.len()), err(level = "debug"))]
    pub async fn assigned_above(
        &self,
        groups: &[GroupId],
    ) -> Result<HashMap<GroupId, Vec<GroupId>>> {
        if groups.is_empty() {
            return Ok(HashMap::new());
        }
        let ids: Vec<String> = groups.iter().map(ToString::to_string).collect();
        let rows = NestingRow::find_by_statement(stmt(
            "SELECT group_id, nested_group_id FROM entra_sync_nested_groups
             WHERE nested_group_id = ANY($1)",
            [text_array(&ids)],
        ))
        .all(&self.db)
        .await?;
        let mut above: HashMap<GroupId, Vec<GroupId>> = HashMap::new();
        for row in rows {
            if let (Ok(assigned), Ok(nested)) = (
                GroupId::parse(&row.group_id),
                GroupId::parse(&row.nested_group_id),
            ) {
                above.entry(nested).or_default().push(assigned);
            }
        }
        Ok(above)
    }

    /// Records the groups below an assigned group, replacing what was known of it.
    #[tracing::instrument(skip(self, nested), fields(nested = nested.len()), err(level = "debug"))]
    pub async fn remember_nesting(
        &self,
        group: &GroupId,
        nested: &[GroupId],
        options: ApplyOptions,
    ) -> Result<()> {
        let Some(txn) = self.state_transaction(options).await? else {
            return Ok(());
        };
        let nested: Vec<String> = nested.iter().map(ToString::to_string).collect();
        txn.execute(stmt(
            "DELETE FROM entra_sync_nested_groups
             WHERE group_id = $1 AND NOT (nested_group_id = ANY($2))",
            [group.to_string().into(), text_array(&nested)],
        ))
        .await?;
        if !nested.is_empty() {
            txn.execute(stmt(
                "INSERT INTO entra_sync_nested_groups (group_id, nested_group_id)
                 SELECT $1, unnest($2::text[])
                 ON CONFLICT DO NOTHING",
                [group.to_string().into(), text_array(&nested)],
            ))
            .await?;
        }
        txn.commit().await?;
        Ok(())
    }

    /// Forgets every nesting: direct membership needs none.
    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn forget_nesting(&self, options: ApplyOptions) -> Result<()> {
        let Some(txn) = self.state_transaction(options).await? else {
            return Ok(());
        };
        txn.execute_unprepared("DELETE FROM entra_sync_nested_groups")
            .await?;
        txn.commit().await?;
        Ok(())
    }
}
