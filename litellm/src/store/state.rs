//! entra-sync's own state, kept by the store like LiteLLM's tables: the groups assigned to the
//! app, where the groups' delta query resumes, users who departed, the memberships and roles
//! entra-sync manages, and the record of reconciliations. Every write follows the same
//! [`ApplyOptions`] as the store's other operations: it commits only under its lease's fence,
//! and a dry run writes nothing.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use entity::sync::{assigned_group, delta_link, managed_role, reconciliation};
use entity::{GroupId, UserId};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, FromQueryResult, QueryFilter,
    QueryOrder, QuerySelect, TransactionTrait,
};

use super::sql::{stmt, text_array};
use super::{ApplyOptions, Store};
use crate::error::Result;
use crate::store::lease::Lease;

/// The resources whose deltaLinks are kept (`entra_sync_delta_links.resource`).
const GROUPS: &str = "groups";
const USERS: &str = "users";

/// What a reconciliation left behind, for `status`.
#[derive(Clone, Debug)]
pub struct ReconciliationRecord {
    pub started_at: DateTime<Utc>,
    /// The drift it found: changes made.
    pub changes: u64,
    /// Why it stopped, when it failed.
    pub error: Option<String>,
}

impl Store {
    /// A transaction for entra-sync's own state that commits only while the options' fence holds
    /// its lease; `None` in a dry run, which writes nothing.
    pub(super) async fn state_transaction(
        &self,
        options: ApplyOptions,
    ) -> Result<Option<DatabaseTransaction>> {
        if options.dry_run {
            return Ok(None);
        }
        let txn = self.db.begin().await?;
        if let Some(fence) = options.fence {
            crate::store::lease::check(&txn, fence).await?;
        }
        Ok(Some(txn))
    }

    /// A lease on this database (see [`crate::store::lease`]).
    pub fn lease(&self, name: &'static str, holder: &str, ttl: std::time::Duration) -> Lease {
        Lease::new(self.db.clone(), name, holder, ttl)
    }

    /// The groups assigned to the app at the last poll, with their names.
    pub async fn assigned_groups(&self) -> Result<HashMap<GroupId, Option<String>>> {
        Ok(assigned_group::Entity::find()
            .all(&self.db)
            .await?
            .into_iter()
            .map(|g| (g.group_id, g.display_name))
            .collect())
    }

    /// Records groups as assigned, with their current names, in one statement.
    pub async fn remember_assigned(
        &self,
        groups: &[(GroupId, Option<String>)],
        options: ApplyOptions,
    ) -> Result<()> {
        if groups.is_empty() {
            return Ok(());
        }
        let Some(txn) = self.state_transaction(options).await? else {
            return Ok(());
        };
        assigned_group::Entity::insert_many(groups.iter().map(|(group, display_name)| {
            assigned_group::ActiveModel {
                group_id: Set(group.clone()),
                display_name: Set(display_name.clone()),
                assigned_at: Set(options.now),
                holds_role: NotSet,
            }
        }))
        .on_conflict(
            OnConflict::column(assigned_group::Column::GroupId)
                .update_column(assigned_group::Column::DisplayName)
                .to_owned(),
        )
        .exec_without_returning(&txn)
        .await?;
        txn.commit().await?;
        Ok(())
    }

    /// A group is no longer assigned (its team followed the unassigned policy).
    pub async fn forget_assigned(&self, group: &GroupId, options: ApplyOptions) -> Result<()> {
        let Some(txn) = self.state_transaction(options).await? else {
            return Ok(());
        };
        assigned_group::Entity::delete_by_id(group.clone())
            .exec(&txn)
            .await?;
        for table in ["entra_sync_nested_groups", "entra_sync_group_owners"] {
            txn.execute(stmt(
                &format!("DELETE FROM {table} WHERE group_id = $1"),
                [group.to_string().into()],
            ))
            .await?;
        }
        txn.commit().await?;
        Ok(())
    }

    /// Where the groups' delta query resumes, if a round ever committed.
    pub async fn delta_link(&self) -> Result<Option<String>> {
        self.link_of(GROUPS).await
    }

    /// Stores where the next round resumes, once the round's changes are committed.
    pub async fn save_delta_link(&self, link: &str, options: ApplyOptions) -> Result<()> {
        self.save_link(GROUPS, link, options).await
    }

    /// Where the users' delta query resumes, if a round ever read it.
    pub async fn users_delta_link(&self) -> Result<Option<String>> {
        self.link_of(USERS).await
    }

    /// Stores where the users' delta query resumes, once the users it named are applied.
    pub async fn save_users_delta_link(&self, link: &str, options: ApplyOptions) -> Result<()> {
        self.save_link(USERS, link, options).await
    }

    async fn link_of(&self, resource: &str) -> Result<Option<String>> {
        Ok(delta_link::Entity::find_by_id(resource.to_owned())
            .one(&self.db)
            .await?
            .map(|l| l.delta_link))
    }

    async fn save_link(&self, resource: &str, link: &str, options: ApplyOptions) -> Result<()> {
        let Some(txn) = self.state_transaction(options).await? else {
            return Ok(());
        };
        delta_link::Entity::insert(delta_link::ActiveModel {
            resource: Set(resource.to_owned()),
            delta_link: Set(link.to_owned()),
            updated_at: Set(options.now),
        })
        .on_conflict(
            OnConflict::column(delta_link::Column::Resource)
                .update_columns([delta_link::Column::DeltaLink, delta_link::Column::UpdatedAt])
                .to_owned(),
        )
        .exec_without_returning(&txn)
        .await?;
        txn.commit().await?;
        Ok(())
    }

    /// Forgets where the groups' delta query resumes: the next round reads every assigned group
    /// whole (a user back from a departure rejoins the teams of every group they are in).
    pub async fn forget_delta_link(&self, options: ApplyOptions) -> Result<()> {
        let Some(txn) = self.state_transaction(options).await? else {
            return Ok(());
        };
        delta_link::Entity::delete_by_id(GROUPS.to_owned())
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(())
    }

    /// Users entra-sync saw disabled or deleted in Entra, with when the last read that said so
    /// was made.
    pub async fn departed_users(&self) -> Result<HashMap<UserId, DateTime<Utc>>> {
        #[derive(FromQueryResult)]
        struct Row {
            entra_user_id: String,
            since: DateTime<Utc>,
        }
        Ok(Row::find_by_statement(stmt(
            "SELECT entra_user_id, since FROM entra_sync_departed_users",
            [],
        ))
        .all(&self.db)
        .await?
        .into_iter()
        .filter_map(|row| Some((UserId::parse(&row.entra_user_id).ok()?, row.since)))
        .collect())
    }

    /// A read made at `options.now` found the user enabled: their departure is forgotten, unless
    /// a newer read recorded it (the newer read wins). Returns whether the user was departed and
    /// is back. Departures are recorded by the transaction that makes them (`depart_users`).
    pub async fn forget_departure(&self, user: &UserId, options: ApplyOptions) -> Result<bool> {
        Ok(!self
            .forget_departures(std::slice::from_ref(user), options)
            .await?
            .is_empty())
    }

    /// [`Self::forget_departure`] for many users in one statement; returns those who were
    /// departed and are back.
    pub async fn forget_departures(
        &self,
        users: &[UserId],
        options: ApplyOptions,
    ) -> Result<Vec<UserId>> {
        #[derive(FromQueryResult)]
        struct Row {
            entra_user_id: String,
        }
        let Some(txn) = self.state_transaction(options).await? else {
            return Ok(Vec::new());
        };
        let back = Row::find_by_statement(stmt(
            "DELETE FROM entra_sync_departed_users
             WHERE entra_user_id = ANY($1) AND since < $2
             RETURNING entra_user_id",
            [
                text_array(users.iter().map(UserId::as_str)),
                options.now.into(),
            ],
        ))
        .all(&txn)
        .await?;
        txn.commit().await?;
        Ok(back
            .into_iter()
            .filter_map(|row| UserId::parse(&row.entra_user_id).ok())
            .collect())
    }

    /// The Entra users whose LiteLLM role entra-sync set.
    pub async fn managed_role_holders(&self) -> Result<Vec<UserId>> {
        Ok(managed_role::Entity::find()
            .all(&self.db)
            .await?
            .into_iter()
            .map(|role| role.entra_user_id)
            .collect())
    }

    /// The Entra users LiteLLM knows: linked by `sso_user_id`, or given a membership or a role
    /// by entra-sync; sorted.
    pub async fn known_users(&self) -> Result<Vec<UserId>> {
        #[derive(FromQueryResult)]
        struct Row {
            id: String,
        }
        let rows = Row::find_by_statement(stmt(
            r#"SELECT sso_user_id AS id FROM "LiteLLM_UserTable" WHERE sso_user_id IS NOT NULL
               UNION SELECT entra_user_id FROM entra_sync_managed_memberships
               UNION SELECT entra_user_id FROM entra_sync_managed_roles"#,
            [],
        ))
        .all(&self.db)
        .await?;
        let mut known: Vec<UserId> = rows
            .into_iter()
            .filter_map(|row| UserId::parse(&row.id).ok())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        known.sort();
        Ok(known)
    }

    /// Those of `ids` whom LiteLLM knows from Entra (as [`Self::known_users`] says), one index
    /// lookup per id in each place: a round's users delta may name many users of the tenant,
    /// few of them LiteLLM's.
    pub async fn known_among(&self, ids: &[UserId]) -> Result<HashSet<UserId>> {
        #[derive(FromQueryResult)]
        struct Row {
            id: String,
        }
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let rows = Row::find_by_statement(stmt(
            r#"SELECT sso_user_id AS id FROM "LiteLLM_UserTable" WHERE sso_user_id = ANY($1)
               UNION SELECT entra_user_id FROM entra_sync_managed_memberships
                     WHERE entra_user_id = ANY($1)
               UNION SELECT entra_user_id FROM entra_sync_managed_roles
                     WHERE entra_user_id = ANY($1)"#,
            [ids.into()],
        ))
        .all(&self.db)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|row| UserId::parse(&row.id).ok())
            .collect())
    }

    /// The most recent reconciliation that finished without an error, if any did: the one the
    /// next is due after (a failed one is tried again at the next check).
    pub async fn last_successful_reconciliation(&self) -> Result<Option<reconciliation::Model>> {
        Ok(reconciliation::Entity::find()
            .filter(reconciliation::Column::Error.is_null())
            .order_by_desc(reconciliation::Column::Id)
            .one(&self.db)
            .await?)
    }

    /// How many reconciliations in a row, up to the newest that finished (failed ones aside),
    /// found drift; counted up to `up_to`.
    pub async fn reconciliations_with_drift(&self, up_to: u64) -> Result<u64> {
        let newest = reconciliation::Entity::find()
            .filter(reconciliation::Column::Error.is_null())
            .filter(reconciliation::Column::DryRun.eq(false))
            .order_by_desc(reconciliation::Column::Id)
            .limit(up_to)
            .all(&self.db)
            .await?;
        Ok(newest.iter().take_while(|run| run.changes > 0).count() as u64)
    }

    /// Records a reconciliation (not a dry run's), for `status` and for when the next is due.
    pub async fn record_reconciliation(
        &self,
        record: ReconciliationRecord,
        options: ApplyOptions,
    ) -> Result<()> {
        let Some(txn) = self.state_transaction(options).await? else {
            return Ok(());
        };
        reconciliation::Entity::insert(reconciliation::ActiveModel {
            id: NotSet,
            started_at: Set(record.started_at),
            finished_at: Set(Utc::now().max(record.started_at)),
            dry_run: Set(false),
            changes: Set(i64::try_from(record.changes).unwrap_or(i64::MAX)),
            error: Set(record.error),
        })
        .exec_without_returning(&txn)
        .await?;
        txn.commit().await?;
        Ok(())
    }
}

/// The most recent reconciliation, if any ran.
pub async fn last_reconciliation(
    db: &impl ConnectionTrait,
) -> Result<Option<reconciliation::Model>> {
    Ok(reconciliation::Entity::find()
        .order_by_desc(reconciliation::Column::Id)
        .one(db)
        .await?)
}

/// When the groups' deltaLink was last stored: the last committed round.
pub async fn last_delta_round(db: &impl ConnectionTrait) -> Result<Option<DateTime<Utc>>> {
    Ok(delta_link::Entity::find_by_id(GROUPS.to_owned())
        .one(db)
        .await?
        .map(|l| l.updated_at))
}

/// How many groups are assigned to the app, for `status`.
pub async fn assigned_group_count(db: &impl ConnectionTrait) -> Result<u64> {
    use sea_orm::PaginatorTrait;
    Ok(assigned_group::Entity::find().count(db).await?)
}

impl Store {
    /// The groups whose owners entra-sync made team admins at some point and still remembers.
    pub async fn groups_with_owners(&self) -> Result<HashSet<GroupId>> {
        #[derive(FromQueryResult)]
        struct Row {
            group_id: String,
        }
        Ok(Row::find_by_statement(stmt(
            "SELECT DISTINCT group_id FROM entra_sync_group_owners",
            [],
        ))
        .all(&self.db)
        .await?
        .into_iter()
        .filter_map(|row| GroupId::parse(&row.group_id).ok())
        .collect())
    }
}
