//! What the last poll applied, so that a poll finding the same assignments does nothing more
//! (`entra_sync_poll_state`, `entra_sync_assigned_groups.holds_role`).
//!
//! Users' roles follow the app roles assigned to them and to the groups they are members of.
//! They need working out again when the assignments or the app roles change (the fingerprint
//! says so), when a role-holding group's members change (a round marks the roles stale), and
//! when a user returns (a users notification marks them stale).

use entity::GroupId;
use sea_orm::{ConnectionTrait, FromQueryResult};

use super::sql::{stmt, text_array};
use super::{ApplyOptions, Store};
use crate::error::Result;

/// Whether the last poll's work still stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollState {
    /// The assignments and app roles are as the last poll applied them, and nothing made the
    /// roles stale since.
    Current,
    /// Something changed, or no poll completed yet.
    Changed,
}

impl Store {
    /// Compares the assignments' fingerprint with the one the last poll applied.
    pub async fn poll_state(&self, fingerprint: &str) -> Result<PollState> {
        #[derive(FromQueryResult)]
        struct Row {
            current: bool,
        }
        let row = Row::find_by_statement(stmt(
            "SELECT assignments_fingerprint = $1 AND NOT roles_stale AS current
             FROM entra_sync_poll_state",
            [fingerprint.into()],
        ))
        .one(&self.db)
        .await?;
        Ok(match row {
            Some(Row { current: true }) => PollState::Current,
            _ => PollState::Changed,
        })
    }

    /// Records what a poll applied: the assignments' fingerprint and which groups hold roles;
    /// the roles are current again.
    pub async fn save_poll_state(
        &self,
        fingerprint: &str,
        role_groups: &[GroupId],
        options: ApplyOptions,
    ) -> Result<()> {
        let Some(txn) = self.state_transaction(options).await? else {
            return Ok(());
        };
        txn.execute(stmt(
            "INSERT INTO entra_sync_poll_state (id, assignments_fingerprint, roles_stale, updated_at)
             VALUES (1, $1, false, $2)
             ON CONFLICT (id) DO UPDATE
               SET assignments_fingerprint = EXCLUDED.assignments_fingerprint,
                   roles_stale = false, updated_at = EXCLUDED.updated_at",
            [fingerprint.into(), options.now.into()],
        ))
        .await?;
        let groups: Vec<String> = role_groups.iter().map(ToString::to_string).collect();
        txn.execute(stmt(
            "UPDATE entra_sync_assigned_groups SET holds_role = (group_id = ANY($1))
             WHERE holds_role IS DISTINCT FROM (group_id = ANY($1))",
            [text_array(&groups)],
        ))
        .await?;
        txn.commit().await?;
        Ok(())
    }

    /// The roles need working out again at the next poll: `groups` changed members and one of
    /// them holds a role, or (`None`) a user came back.
    pub async fn mark_roles_stale(
        &self,
        groups: Option<&[GroupId]>,
        options: ApplyOptions,
    ) -> Result<()> {
        if groups.is_some_and(<[GroupId]>::is_empty) {
            return Ok(());
        }
        let Some(txn) = self.state_transaction(options).await? else {
            return Ok(());
        };
        match groups {
            Some(groups) => {
                let groups: Vec<String> = groups.iter().map(ToString::to_string).collect();
                txn.execute(stmt(
                    "UPDATE entra_sync_poll_state SET roles_stale = true
                     WHERE NOT roles_stale AND EXISTS (
                         SELECT 1 FROM entra_sync_assigned_groups
                         WHERE holds_role AND group_id = ANY($1))",
                    [text_array(&groups)],
                ))
                .await?
            }
            None => {
                txn.execute(stmt(
                    "UPDATE entra_sync_poll_state SET roles_stale = true WHERE NOT roles_stale",
                    [],
                ))
                .await?
            }
        };
        txn.commit().await?;
        Ok(())
    }
}
