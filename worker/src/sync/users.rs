//! Users: a `users` notification, or a reconciliation, re-reads users from Graph. A rename
//! follows into LiteLLM; a user deleted or disabled in Entra loses what entra-sync gave them.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use entity::UserId;
use entity::sync::{managed_membership, managed_role};
use sea_orm::{ColumnTrait, EntityTrait, FromQueryResult, QueryFilter, QuerySelect, Statement};

use super::failures::Item;
use super::{Syncer, retrying};
use crate::directory::UserState;
use crate::error::Result;
use crate::store::{Change, LiteLlmWriter};

/// What happens in LiteLLM to a user deleted or disabled in Entra.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DepartedUserPolicy {
    /// Nothing: the user keeps their teams until Entra removes them from the groups.
    Keep,
    /// Every membership entra-sync manages goes, and a role entra-sync set drops to the default
    /// (the user row, keys and spend stay).
    #[default]
    RemoveMemberships,
}

impl Syncer {
    /// Re-reads these users (named by `users` notifications) and applies what changed.
    #[tracing::instrument(skip(self, ids), fields(users = ids.len()), err(level = "debug"))]
    pub async fn refresh_users(&self, ids: &[UserId], now: DateTime<Utc>) -> Result<Vec<Change>> {
        let mut unique: Vec<UserId> = ids.to_vec();
        unique.sort();
        unique.dedup();
        self.exclusively(|syncer| async move {
            syncer
                .in_parallel(
                    unique,
                    |id| Item::User(id.clone()),
                    now,
                    move |syncer, id| async move {
                        let state = syncer.graph.user_state(&id).await?;
                        syncer.apply_user(&id, state.as_ref(), now).await
                    },
                )
                .await
        })
        .await
    }

    /// Every user LiteLLM knows from Entra, compared with the tenant's users (after notifications
    /// were missed).
    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn refresh_all_users(&self, now: DateTime<Utc>) -> Result<Vec<Change>> {
        self.exclusively(|syncer| async move {
            let tenant = syncer.graph.all_users().await?;
            syncer.apply_tenant_users(tenant, now).await
        })
        .await
    }

    /// Every user LiteLLM knows from Entra, compared with `tenant`, the tenant's users.
    pub(super) async fn apply_tenant_users(
        &self,
        tenant: Vec<UserState>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Change>> {
        let known = self.known_users().await?;
        if known.is_empty() {
            return Ok(Vec::new());
        }
        let tenant: HashMap<UserId, UserState> = tenant
            .into_iter()
            .map(|state| (state.user.id.clone(), state))
            .collect();
        let work: Vec<(UserId, Option<UserState>)> = known
            .into_iter()
            .map(|id| {
                let state = tenant.get(&id).cloned();
                (id, state)
            })
            .collect();
        self.in_parallel(
            work,
            |(id, _)| Item::User(id.clone()),
            now,
            move |syncer, (id, state)| async move {
                syncer.apply_user(&id, state.as_ref(), now).await
            },
        )
        .await
    }

    /// A user as Graph describes it now (`None`: deleted). Whether the user departed is
    /// remembered, so that every path leaves them out (or lets them back) alike.
    pub(super) async fn apply_user(
        &self,
        id: &UserId,
        state: Option<&UserState>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Change>> {
        match state {
            Some(state) if state.enabled => {
                let changes = self
                    .store
                    .update_user(&state.user, self.options(now))
                    .await?;
                if self.excluded.contains(id) && !self.dry_run {
                    super::state::set_departed(&self.db, self.fence, id, false, now).await?;
                }
                Ok(changes)
            }
            _ => {
                let changes = self.depart(id, now).await?;
                if !self.dry_run {
                    super::state::set_departed(&self.db, self.fence, id, true, now).await?;
                }
                Ok(changes)
            }
        }
    }

    /// The user left Entra (or was disabled): under the default policy, every membership
    /// entra-sync manages goes and a role entra-sync set drops to the default; whatever the
    /// policy, their remaining keys follow `ENTRA_SYNC_DEPARTED_USER_KEYS`.
    async fn depart(&self, id: &UserId, now: DateTime<Utc>) -> Result<Vec<Change>> {
        let groups: Option<Vec<entity::GroupId>> = match self.departed_policy {
            DepartedUserPolicy::Keep => None,
            DepartedUserPolicy::RemoveMemberships => Some(
                managed_membership::Entity::find()
                    .select_only()
                    .column(managed_membership::Column::GroupId)
                    .distinct()
                    .filter(managed_membership::Column::EntraUserId.eq(id.clone()))
                    .into_tuple()
                    .all(&self.db)
                    .await?,
            ),
        };
        let options = self.options(now);
        let changes = retrying(|| self.store.depart_user(id, groups.as_deref(), options)).await?;
        if !changes.is_empty() {
            tracing::info!(user = %id, changes = changes.len(), "user left Entra or was disabled");
        }
        Ok(changes)
    }

    /// The Entra users LiteLLM knows: linked by `sso_user_id`, or given a membership or a role by
    /// entra-sync.
    async fn known_users(&self) -> Result<Vec<UserId>> {
        #[derive(FromQueryResult)]
        struct Row {
            id: String,
        }
        let linked = Row::find_by_statement(Statement::from_string(
            sea_orm::DbBackend::Postgres,
            r#"SELECT sso_user_id AS id FROM "LiteLLM_UserTable" WHERE sso_user_id IS NOT NULL"#,
        ))
        .all(&self.db)
        .await?;
        let mut known: HashSet<UserId> = linked
            .into_iter()
            .filter_map(|row| UserId::parse(&row.id).ok())
            .collect();
        let managed: Vec<UserId> = managed_membership::Entity::find()
            .select_only()
            .column(managed_membership::Column::EntraUserId)
            .distinct()
            .into_tuple()
            .all(&self.db)
            .await?;
        known.extend(managed);
        known.extend(
            managed_role::Entity::find()
                .all(&self.db)
                .await?
                .into_iter()
                .map(|role| role.entra_user_id),
        );
        let mut known: Vec<UserId> = known.into_iter().collect();
        known.sort();
        Ok(known)
    }
}
