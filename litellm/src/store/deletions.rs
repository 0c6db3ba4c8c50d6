//! Evidence that a user was deleted. Graph's reads are eventually consistent: a user created or
//! changed a moment ago may be missing from one replica's answer. So "not found" (a `GET
//! /users/{id}` 404, a tenant listing without the user, a `users` notification of a deletion)
//! counts once, and a user is taken for deleted only when a second answer at least
//! [`CONFIRMATION_GAP`] after the first says so too. Reading the user in between forgets the
//! first answer.

use chrono::{DateTime, Utc};
use entity::UserId;
use sea_orm::{ConnectionTrait, FromQueryResult};

use super::sql::stmt;
use super::{ApplyOptions, Store};
use crate::error::Result;

/// How far apart the two answers that confirm a deletion must be.
pub const CONFIRMATION_GAP: chrono::Duration = chrono::Duration::minutes(1);

/// What Graph's answers so far say of a user it did not find.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deletion {
    /// Two answers at least a minute apart: the user is gone.
    Confirmed,
    /// One answer so far (or all within a minute): ask again from this time.
    Unconfirmed { confirm_after: DateTime<Utc> },
}

impl Store {
    /// Graph did not find the user at `seen_at` (a notification's time, or the read's): with an
    /// earlier answer at least a minute before, the deletion is confirmed (and the evidence
    /// forgotten); otherwise it is remembered. A dry run remembers nothing.
    pub async fn deletion_seen(
        &self,
        user: &UserId,
        seen_at: DateTime<Utc>,
        options: ApplyOptions,
    ) -> Result<Deletion> {
        #[derive(FromQueryResult)]
        struct First {
            first_seen_at: DateTime<Utc>,
        }
        let first = match self.state_transaction(options).await? {
            Some(txn) => {
                let first = First::find_by_statement(stmt(
                    "INSERT INTO entra_sync_deletion_evidence (entra_user_id, first_seen_at)
                     VALUES ($1, $2)
                     ON CONFLICT (entra_user_id) DO UPDATE
                       SET first_seen_at = least(entra_sync_deletion_evidence.first_seen_at,
                                                 excluded.first_seen_at)
                     RETURNING first_seen_at",
                    [user.to_string().into(), seen_at.into()],
                ))
                .one(&txn)
                .await?;
                txn.commit().await?;
                first
            }
            None => {
                First::find_by_statement(stmt(
                    "SELECT first_seen_at FROM entra_sync_deletion_evidence
                     WHERE entra_user_id = $1",
                    [user.to_string().into()],
                ))
                .one(&self.db)
                .await?
            }
        };
        let first = first.map_or(seen_at, |row| row.first_seen_at);
        if seen_at - first >= CONFIRMATION_GAP {
            self.forget_deletion(user, options).await?;
            return Ok(Deletion::Confirmed);
        }
        Ok(Deletion::Unconfirmed {
            confirm_after: first + CONFIRMATION_GAP,
        })
    }

    /// Graph read the user: an earlier "not found" no longer counts.
    pub async fn forget_deletion(&self, user: &UserId, options: ApplyOptions) -> Result<()> {
        self.forget_deletions(std::slice::from_ref(user), options)
            .await
    }

    /// [`Self::forget_deletion`] for many users, in one statement.
    pub async fn forget_deletions(&self, users: &[UserId], options: ApplyOptions) -> Result<()> {
        if users.is_empty() {
            return Ok(());
        }
        let Some(txn) = self.state_transaction(options).await? else {
            return Ok(());
        };
        txn.execute(stmt(
            "DELETE FROM entra_sync_deletion_evidence WHERE entra_user_id = ANY($1)",
            [super::sql::text_array(users.iter().map(UserId::as_str))],
        ))
        .await?;
        txn.commit().await?;
        Ok(())
    }
}
