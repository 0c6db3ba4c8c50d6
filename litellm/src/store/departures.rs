//! Users who left Entra (deleted, or disabled) and users who came back, a batch at a time: a
//! bulk disabling (a compromised tenant, a layoff) costs a few statements per thousand users,
//! not a transaction each.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use entity::{GroupId, UserId};
use sea_orm::{DatabaseTransaction, FromQueryResult, TransactionTrait};

use super::sql::{lock_teams, stmt, text_array};
use super::{Applied, ApplyOptions, Change, RemovalReason, Store};
use super::{keys, members, planning, roles, users};
use crate::error::Result;
use crate::store::keys::DepartedUserKeys;

/// A user who left Entra, and the teams they leave for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Departure {
    pub user: UserId,
    /// The groups whose teams the user leaves (with the usual rules for their keys), a role
    /// entra-sync set dropping to the default; `None`: the user keeps their teams and role
    /// (`ENTRA_SYNC_DEPARTED_USER_POLICY=keep`).
    pub leaving: Option<Vec<GroupId>>,
}

impl Store {
    /// The user was disabled or deleted in Entra (see [`Self::depart_users`]).
    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn depart_user(
        &self,
        user: &UserId,
        leaving: Option<&[GroupId]>,
        options: ApplyOptions,
    ) -> Result<Vec<Change>> {
        let departure = Departure {
            user: user.clone(),
            leaving: leaving.map(<[GroupId]>::to_vec),
        };
        self.depart_users(&[departure], options).await
    }

    /// Users disabled or deleted in Entra, in one transaction and a few statements however
    /// many: each remembered as departed; those with groups to leave leave their teams (keys as
    /// for any removal, removals staged for the threshold) and a role entra-sync set drops to
    /// the default; then, under `ENTRA_SYNC_DEPARTED_USER_KEYS=block`, every key of theirs not
    /// blocked yet is blocked, with entra-sync's marker. Locks in the store's order: every team
    /// left, then the users' rows, then their keys.
    #[tracing::instrument(skip_all, fields(users = departures.len()), err(level = "debug"))]
    pub async fn depart_users(
        &self,
        departures: &[Departure],
        options: ApplyOptions,
    ) -> Result<Vec<Change>> {
        let txn = self.db.begin().await?;
        let work = self.depart(&txn, departures, options).await;
        self.settle(txn, work, options).await
    }

    async fn depart(
        &self,
        txn: &DatabaseTransaction,
        departures: &[Departure],
        options: ApplyOptions,
    ) -> Result<Applied> {
        let now = options.now;
        let mut applied = Applied::default();
        let users: Vec<&UserId> = departures.iter().map(|d| &d.user).collect();
        // Remembered in the transaction that blocks the keys: never one without the other.
        record_departures(txn, &users, now).await?;
        let blocking = self.keys.departed_user == DepartedUserKeys::Block;
        let leaving: Vec<UserId> = departures
            .iter()
            .filter(|d| d.leaving.is_some())
            .map(|d| d.user.clone())
            .collect();
        if leaving.is_empty() && !blocking {
            return Ok(applied);
        }
        let by_team = leavers_by_team(departures);
        let team_ids: Vec<String> = by_team.keys().map(ToString::to_string).collect();
        lock_teams(txn, &team_ids).await?;
        let entra_ids: Vec<&str> = users.iter().map(|user| user.as_str()).collect();
        lock_user_rows(txn, &entra_ids).await?;
        if !by_team.is_empty() {
            let requests: Vec<planning::Request> = by_team
                .iter()
                .map(|(group, users)| planning::Request {
                    group,
                    joining: &[],
                    leaving: planning::Leaving::These(users),
                    owners: planning::Owners::Ignored,
                    mode: self.removal_mode,
                    keys: self.keys.removed_member,
                    unreadable: &[],
                    removals: options.removals,
                    reason: RemovalReason::UserDeparted,
                })
                .collect();
            let removed = members::apply_many(txn, &requests, &self.settings, now).await?;
            applied
                .changes
                .extend(removed.changes.into_iter().flatten());
            applied.stale.extend(removed.stale);
            applied.staged.extend(removed.staged);
        }
        let default = self.settings.default_user_role();
        applied
            .changes
            .extend(roles::revoke(txn, &leaving, default, now).await?);
        if blocking {
            applied
                .changes
                .extend(keys::block_departed(txn, &entra_ids, now).await?);
        }
        Ok(applied)
    }

    /// Users enabled in Entra again: the keys entra-sync blocked for their departure come back,
    /// for all of them in one transaction. Their departures are forgotten separately
    /// ([`Self::forget_departures`]), as each path that finds a user back does.
    #[tracing::instrument(skip_all, fields(users = users.len()), err(level = "debug"))]
    pub async fn reinstate_users(
        &self,
        users: &[UserId],
        options: ApplyOptions,
    ) -> Result<Vec<Change>> {
        let txn = self.db.begin().await?;
        let entra_ids: Vec<&str> = users.iter().map(UserId::as_str).collect();
        let work = keys::reinstate(&txn, &entra_ids, options.now).await;
        self.settle(txn, work, options).await
    }

    /// The groups in whose teams entra-sync manages a membership of each of these Entra users
    /// (those with none are left out), in one statement.
    pub async fn managed_groups_of(
        &self,
        users: &[UserId],
    ) -> Result<BTreeMap<UserId, Vec<GroupId>>> {
        #[derive(FromQueryResult)]
        struct Row {
            entra_user_id: String,
            group_id: String,
        }
        let rows = Row::find_by_statement(stmt(
            "SELECT DISTINCT entra_user_id, group_id FROM entra_sync_managed_memberships
             WHERE entra_user_id = ANY($1)",
            [text_array(users.iter().map(UserId::as_str))],
        ))
        .all(&self.db)
        .await?;
        let mut groups: BTreeMap<UserId, Vec<GroupId>> = BTreeMap::new();
        for row in rows {
            if let (Ok(user), Ok(group)) = (
                UserId::parse(&row.entra_user_id),
                GroupId::parse(&row.group_id),
            ) {
                groups.entry(user).or_default().push(group);
            }
        }
        Ok(groups)
    }
}

/// The users each team loses, by group, in group order (the store locks teams in that order).
fn leavers_by_team(departures: &[Departure]) -> BTreeMap<&GroupId, Vec<UserId>> {
    let mut by_team: BTreeMap<&GroupId, Vec<UserId>> = BTreeMap::new();
    for departure in departures {
        for group in departure.leaving.iter().flatten() {
            let users = by_team.entry(group).or_default();
            if !users.contains(&departure.user) {
                users.push(departure.user.clone());
            }
        }
    }
    by_team
}

/// The departing users' rows, locked: those Entra's ids find, and any whose role entra-sync
/// manages for them.
async fn lock_user_rows(txn: &DatabaseTransaction, entra_ids: &[&str]) -> Result<()> {
    let mut rows: Vec<String> = users::by_object_ids(txn, entra_ids)
        .await?
        .into_iter()
        .map(|row| row.user_id)
        .collect();
    rows.extend(roles::managed_users(txn, entra_ids).await?);
    rows.sort_unstable();
    rows.dedup();
    users::lock_users(txn, &rows.iter().map(String::as_str).collect::<Vec<_>>()).await
}

/// These users departed, as of a read made at `read_at` (a newer record stands).
async fn record_departures(
    txn: &DatabaseTransaction,
    users: &[&UserId],
    read_at: DateTime<Utc>,
) -> Result<()> {
    use sea_orm::ConnectionTrait;
    txn.execute(stmt(
        "INSERT INTO entra_sync_departed_users (entra_user_id, since)
         SELECT DISTINCT id, $2::timestamptz FROM unnest($1::text[]) AS x(id)
         ON CONFLICT (entra_user_id) DO UPDATE
           SET since = greatest(entra_sync_departed_users.since, excluded.since)",
        [
            text_array(users.iter().map(|user| user.as_str())),
            read_at.into(),
        ],
    ))
    .await?;
    Ok(())
}
