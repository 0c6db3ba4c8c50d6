//! The store: the only writer of LiteLLM's tables.
//!
//! Each operation applies one intention in one transaction, taking LiteLLM's own locks in
//! LiteLLM's order (`pg_advisory_xact_lock(hashtext(team_id))`, then the user rows
//! `ORDER BY user_id COLLATE "C" FOR UPDATE`), and returns the [`Change`]s it made, which are also
//! written to the audit log. Operations are idempotent: applying the same intention again finds
//! nothing to change and writes nothing. In a dry run the same plan is computed under the same
//! locks, then rolled back, so it lists exactly what a real run would change.

mod change;
mod members;
mod roles;
mod sql;
mod statistics;
mod teams;
mod users;

use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use entity::{GroupId, UserId};
use sea_orm::{DatabaseConnection, DatabaseTransaction, TransactionTrait};

pub use change::Change;

use crate::directory::EntraUser;
use crate::error::Result;
use crate::litellm_config::LiteLlmSettings;

/// Which members a removal may take out of a team.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum RemovalMode {
    /// Only memberships entra-sync created; members an admin added by hand stay.
    #[default]
    Managed,
    /// Every member who is not in the Entra group.
    Mirror,
}

/// When an operation happens, and whether it may write.
#[derive(Clone, Copy, Debug)]
pub struct ApplyOptions {
    pub now: DateTime<Utc>,
    pub dry_run: bool,
}

impl ApplyOptions {
    pub fn commit(now: DateTime<Utc>) -> Self {
        Self {
            now,
            dry_run: false,
        }
    }

    pub fn dry_run(now: DateTime<Utc>) -> Self {
        Self { now, dry_run: true }
    }
}

/// The intentions the worker applies to LiteLLM's tables.
pub trait LiteLlmWriter {
    /// Creates the team for a group, or brings its alias up to date.
    fn ensure_team(
        &self,
        group: &GroupId,
        display_name: &str,
        options: ApplyOptions,
    ) -> impl Future<Output = Result<Vec<Change>>> + Send;

    /// Creates the LiteLLM user for an Entra user, or links an existing one found by email.
    fn ensure_user(
        &self,
        user: &EntraUser,
        options: ApplyOptions,
    ) -> impl Future<Output = Result<Vec<Change>>> + Send;

    /// Entra renamed a user: a known user's email and display name follow (unknown users: nothing).
    fn update_user(
        &self,
        user: &EntraUser,
        options: ApplyOptions,
    ) -> impl Future<Output = Result<Vec<Change>>> + Send;

    /// [`Self::ensure_user`] then [`Self::set_role`] in one transaction (so that a dry run plans
    /// the role of a user it would create).
    fn set_user_role(
        &self,
        user: &EntraUser,
        role_values: &[String],
        options: ApplyOptions,
    ) -> impl Future<Output = Result<Vec<Change>>> + Send;

    /// Makes the users full members of the group's team (creating users as needed).
    fn add_members(
        &self,
        group: &GroupId,
        members: &[EntraUser],
        options: ApplyOptions,
    ) -> impl Future<Output = Result<Vec<Change>>> + Send;

    /// Takes the users out of the group's team (in `Managed` mode, only memberships entra-sync
    /// created).
    fn remove_members(
        &self,
        group: &GroupId,
        members: &[UserId],
        options: ApplyOptions,
    ) -> impl Future<Output = Result<Vec<Change>>> + Send;

    /// Makes the team's membership equal the group's full member list: adds the missing, removes
    /// the others (in `Managed` mode, only memberships entra-sync created).
    fn replace_members(
        &self,
        group: &GroupId,
        members: &[EntraUser],
        options: ApplyOptions,
    ) -> impl Future<Output = Result<Vec<Change>>> + Send;

    /// Brings a group's team up to date in one transaction: created (or renamed) first when a
    /// display name is given, then its membership made equal to `members` as
    /// [`Self::replace_members`] does. In a dry run a new team's members are planned too.
    fn sync_team(
        &self,
        group: &GroupId,
        display_name: Option<&str>,
        members: &[EntraUser],
        options: ApplyOptions,
    ) -> impl Future<Output = Result<Vec<Change>>> + Send;

    /// Takes out every membership entra-sync created in the group's team, whatever the removal
    /// mode (the `remove-members` policy for an unassigned or deleted group).
    fn remove_managed_members(
        &self,
        group: &GroupId,
        options: ApplyOptions,
    ) -> impl Future<Output = Result<Vec<Change>>> + Send;

    /// Blocks the group's team (the `block` policy for an unassigned or deleted group).
    fn block_team(
        &self,
        group: &GroupId,
        options: ApplyOptions,
    ) -> impl Future<Output = Result<Vec<Change>>> + Send;

    /// The user has no valid Entra role left: a role entra-sync set drops to the default role
    /// for new users; a role an admin set since stays.
    fn revoke_role(
        &self,
        user: &UserId,
        options: ApplyOptions,
    ) -> impl Future<Output = Result<Vec<Change>>> + Send;

    /// Sets the user's role from their Entra app-role values: the most privileged valid one wins;
    /// none valid leaves the role as it is.
    fn set_role(
        &self,
        user: &UserId,
        role_values: &[String],
        options: ApplyOptions,
    ) -> impl Future<Output = Result<Vec<Change>>> + Send;
}

/// The PostgreSQL store, writing LiteLLM's tables through SeaORM.
#[derive(Clone, Debug)]
pub struct Store {
    db: DatabaseConnection,
    settings: Arc<LiteLlmSettings>,
    removal_mode: RemovalMode,
    statistics: Arc<statistics::Statistics>,
}

impl Store {
    pub fn new(
        db: DatabaseConnection,
        settings: LiteLlmSettings,
        removal_mode: RemovalMode,
    ) -> Self {
        Self {
            db,
            settings: Arc::new(settings),
            removal_mode,
            statistics: Arc::new(statistics::Statistics::new()),
        }
    }

    /// Ends an operation's transaction: a dry run rolls back; otherwise the changes are written to
    /// the audit log and everything commits together.
    async fn finish(
        &self,
        txn: DatabaseTransaction,
        changes: Vec<Change>,
        options: ApplyOptions,
    ) -> Result<Vec<Change>> {
        if options.dry_run {
            txn.rollback().await?;
        } else {
            change::record(&txn, &changes, options.now).await?;
            txn.commit().await?;
            self.statistics.after_commit(&self.db, &changes).await;
        }
        Ok(changes)
    }

    /// Ends an operation whose work may have failed: a failure rolls back at once, on this
    /// connection, rather than leaving the rollback to the transaction's drop (where it may be
    /// deferred while the connection goes back to the pool).
    async fn settle(
        &self,
        txn: DatabaseTransaction,
        work: Result<Vec<Change>>,
        options: ApplyOptions,
    ) -> Result<Vec<Change>> {
        match work {
            Ok(changes) => self.finish(txn, changes, options).await,
            Err(error) => {
                if let Err(rollback) = txn.rollback().await {
                    tracing::warn!(%rollback, "rollback after a failed operation failed");
                }
                Err(error)
            }
        }
    }

    async fn membership(
        &self,
        group: &GroupId,
        joining: &[EntraUser],
        leaving: members::Leaving<'_>,
        options: ApplyOptions,
    ) -> Result<Vec<Change>> {
        let txn = self.db.begin().await?;
        let request = members::Request {
            group,
            joining,
            leaving,
            mode: self.removal_mode,
        };
        let changes =
            members::apply(&txn, request, &self.settings, options.now, options.dry_run).await;
        self.settle(txn, changes, options).await
    }
}

impl LiteLlmWriter for Store {
    #[tracing::instrument(skip(self), err)]
    async fn ensure_team(
        &self,
        group: &GroupId,
        display_name: &str,
        options: ApplyOptions,
    ) -> Result<Vec<Change>> {
        let txn = self.db.begin().await?;
        let changes = teams::ensure(
            &txn,
            group,
            display_name,
            &self.settings,
            options.now,
            options.dry_run,
        )
        .await;
        self.settle(txn, changes, options).await
    }

    #[tracing::instrument(skip(self, user), fields(user = %user.id), err)]
    async fn ensure_user(&self, user: &EntraUser, options: ApplyOptions) -> Result<Vec<Change>> {
        let txn = self.db.begin().await?;
        let changes = users::ensure(&txn, user, &self.settings, options.now, options.dry_run).await;
        self.settle(txn, changes, options).await
    }

    #[tracing::instrument(skip(self, user), fields(user = %user.id), err)]
    async fn update_user(&self, user: &EntraUser, options: ApplyOptions) -> Result<Vec<Change>> {
        let txn = self.db.begin().await?;
        let changes = users::update(&txn, user, options.now).await;
        self.settle(txn, changes, options).await
    }

    #[tracing::instrument(skip(self, user), fields(user = %user.id), err)]
    async fn set_user_role(
        &self,
        user: &EntraUser,
        role_values: &[String],
        options: ApplyOptions,
    ) -> Result<Vec<Change>> {
        let txn = self.db.begin().await?;
        // Written inside the transaction even in a dry run, which then rolls back.
        let work = async {
            let mut changes = users::ensure(&txn, user, &self.settings, options.now, false).await?;
            changes.extend(roles::set(&txn, &user.id, role_values, options.now, false).await?);
            Ok(changes)
        }
        .await;
        self.settle(txn, work, options).await
    }

    #[tracing::instrument(skip(self, members), fields(members = members.len()), err)]
    async fn add_members(
        &self,
        group: &GroupId,
        members: &[EntraUser],
        options: ApplyOptions,
    ) -> Result<Vec<Change>> {
        self.membership(group, members, members::Leaving::Nobody, options)
            .await
    }

    #[tracing::instrument(skip(self, members), fields(members = members.len()), err)]
    async fn remove_members(
        &self,
        group: &GroupId,
        members: &[UserId],
        options: ApplyOptions,
    ) -> Result<Vec<Change>> {
        self.membership(group, &[], members::Leaving::These(members), options)
            .await
    }

    #[tracing::instrument(skip(self, members), fields(members = members.len()), err)]
    async fn replace_members(
        &self,
        group: &GroupId,
        members: &[EntraUser],
        options: ApplyOptions,
    ) -> Result<Vec<Change>> {
        self.membership(group, members, members::Leaving::EveryoneElse, options)
            .await
    }

    #[tracing::instrument(skip(self, members), fields(members = members.len()), err)]
    async fn sync_team(
        &self,
        group: &GroupId,
        display_name: Option<&str>,
        members: &[EntraUser],
        options: ApplyOptions,
    ) -> Result<Vec<Change>> {
        let txn = self.db.begin().await?;
        // Both steps write inside the transaction, even in a dry run (which then rolls back), so
        // that the members of a team that does not exist yet are planned against it.
        let mut changes = match display_name {
            Some(name) => {
                teams::ensure(&txn, group, name, &self.settings, options.now, false).await?
            }
            None => Vec::new(),
        };
        let request = members::Request {
            group,
            joining: members,
            leaving: members::Leaving::EveryoneElse,
            mode: self.removal_mode,
        };
        changes.extend(members::apply(&txn, request, &self.settings, options.now, false).await?);
        self.finish(txn, changes, options).await
    }

    #[tracing::instrument(skip(self), err)]
    async fn remove_managed_members(
        &self,
        group: &GroupId,
        options: ApplyOptions,
    ) -> Result<Vec<Change>> {
        self.membership(group, &[], members::Leaving::AllManaged, options)
            .await
    }

    #[tracing::instrument(skip(self), err)]
    async fn block_team(&self, group: &GroupId, options: ApplyOptions) -> Result<Vec<Change>> {
        let txn = self.db.begin().await?;
        let changes = teams::block(&txn, group, options.now, options.dry_run).await;
        self.settle(txn, changes, options).await
    }

    #[tracing::instrument(skip(self), err)]
    async fn revoke_role(&self, user: &UserId, options: ApplyOptions) -> Result<Vec<Change>> {
        let default = self
            .settings
            .user_defaults
            .user_role
            .unwrap_or(crate::roles::LiteLlmRole::DEFAULT_FOR_NEW_USER);
        let txn = self.db.begin().await?;
        let changes = roles::revoke(&txn, user, default, options.now, options.dry_run).await;
        self.settle(txn, changes, options).await
    }

    #[tracing::instrument(skip(self), err)]
    async fn set_role(
        &self,
        user: &UserId,
        role_values: &[String],
        options: ApplyOptions,
    ) -> Result<Vec<Change>> {
        let txn = self.db.begin().await?;
        let changes = roles::set(&txn, user, role_values, options.now, options.dry_run).await;
        self.settle(txn, changes, options).await
    }
}
