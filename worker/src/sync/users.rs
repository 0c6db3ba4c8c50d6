//! Users: a `users` notification, or a reconciliation, re-reads users from Graph. A rename
//! follows into LiteLLM; a user deleted or disabled in Entra loses what entra-sync gave them.

use std::collections::{BTreeMap, HashMap};

use super::{Syncer, USER_BATCH, retrying, whole_batch};
use crate::directory::{EntraUser, UserState};
use crate::error::{Error, Result};
use crate::graph::DeltaStart;
use crate::store::{Cause, Change, Changes, Deletion, Departure, Item};
use chrono::{DateTime, Utc};
use entity::{GroupId, UserId};

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
    /// `deleted`: those named by notifications of a deletion, with when the first arrived, each
    /// one piece of evidence that the user is gone (a second, a minute later, confirms it).
    #[tracing::instrument(skip(self, ids, deleted), fields(users = ids.len()), err(level = "debug"))]
    pub async fn refresh_users(
        &self,
        ids: &[UserId],
        deleted: &BTreeMap<UserId, DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Changes> {
        let mut unique: Vec<UserId> = ids.to_vec();
        unique.sort();
        unique.dedup();
        self.exclusively(Cause::UserNotification, now, |syncer| async move {
            let mut changes = syncer.tally();
            for (user, notified_at) in deleted {
                syncer
                    .store
                    .deletion_seen(user, *notified_at, syncer.options(now))
                    .await?;
            }
            syncer.reread_users(&unique, now, &mut changes).await?;
            Ok(changes)
        })
        .await
    }

    /// Reads these users again (twenty to a request) and applies what changed, inside a unit of
    /// work.
    async fn reread_users(
        &self,
        ids: &[UserId],
        now: DateTime<Utc>,
        changes: &mut Changes,
    ) -> Result<()> {
        // A departed user may be back, and roles come back with them: worked out again at the
        // next poll.
        let departed_among = ids.iter().any(|id| self.excluded.contains_key(id));
        let before = changes.total();
        let mut read = Vec::with_capacity(ids.len());
        for (id, state) in self.graph.user_states(ids).await? {
            match state {
                Ok(state) => read.push((id, state)),
                Err(error) => changes.add(
                    self.settle_item(Item::User(id), Err(error.into()), now)
                        .await?,
                ),
            }
        }
        self.apply_users(read, now, changes).await?;
        if departed_among || changes.total() != before {
            self.store.mark_roles_stale(None, self.options(now)).await?;
        }
        Ok(())
    }

    /// The users delta since the last round: the users it names that LiteLLM knows are read
    /// again, so that a lost `users` notification (a disabling, an enabling, a rename) costs at
    /// most a round, not a reconciliation. The first round only takes a link from now (what
    /// happened before is in the reads that made LiteLLM's rows); an expired link compares
    /// every known user with the tenant's listing, as a reconciliation does. A Graph error of
    /// its own leaves the link where it was, for the next round.
    pub(super) async fn users_round(
        &self,
        now: DateTime<Utc>,
        changes: &mut Changes,
    ) -> Result<()> {
        let start = match self.store.users_delta_link().await? {
            Some(link) => DeltaStart::Link(link),
            None => DeltaStart::Latest,
        };
        let delta = match self.graph.users_delta(start).await.map_err(Error::from) {
            Ok(delta) => delta,
            Err(Error::DeltaExpired) => {
                tracing::warn!("the users delta token expired: reading every known user again");
                let latest = self.graph.users_delta(DeltaStart::Latest).await?;
                let tenant = self.graph.all_users().await?;
                changes.merge(self.apply_tenant_users(tenant, now).await?);
                self.store.mark_roles_stale(None, self.options(now)).await?;
                return Ok(self
                    .store
                    .save_users_delta_link(&latest.delta_link, self.options(now))
                    .await?);
            }
            Err(error) if !error.is_systemic() => {
                tracing::warn!(%error, "cannot read the users delta; the next round tries again");
                return Ok(());
            }
            Err(error) => return Err(error),
        };
        if !delta.users.is_empty() {
            let named: Vec<UserId> = delta.users.into_iter().collect();
            let known = self.store.known_among(&named).await?;
            let named: Vec<UserId> = named
                .into_iter()
                .filter(|id| known.contains(id) || self.excluded.contains_key(id))
                .collect();
            if !named.is_empty() {
                tracing::debug!(users = named.len(), "the users delta names known users");
                self.reread_users(&named, now, changes).await?;
            }
        }
        Ok(self
            .store
            .save_users_delta_link(&delta.delta_link, self.options(now))
            .await?)
    }

    /// The users entra-sync holds as departed, read again (a thousand to a getByIds request):
    /// those Graph says are enabled are restored; the others stay departed.
    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn recheck_departed(&self, now: DateTime<Utc>) -> Result<Changes> {
        self.exclusively(Cause::DepartedRecheck, now, |syncer| async move {
            let mut changes = syncer.tally();
            let departed: Vec<UserId> = syncer.excluded.keys().cloned().collect();
            if departed.is_empty() {
                return Ok(changes);
            }
            // Not found: deleted (or not readable a moment): they stay departed either way.
            let back: Vec<(UserId, Option<UserState>)> = syncer
                .graph
                .users_by_ids(&departed)
                .await?
                .into_iter()
                .filter(|state| state.confirmed_enabled)
                .map(|state| (state.user.id.clone(), Some(state)))
                .collect();
            if !back.is_empty() {
                tracing::info!(users = back.len(), "departed users are enabled again");
                syncer.apply_users(back, now, &mut changes).await?;
            }
            Ok(changes)
        })
        .await
    }

    /// Every user LiteLLM knows from Entra, compared with the tenant's users (after notifications
    /// were missed).
    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn refresh_all_users(&self, now: DateTime<Utc>) -> Result<Changes> {
        self.exclusively(Cause::UserNotification, now, |syncer| async move {
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
    ) -> Result<Changes> {
        let mut changes = self.tally();
        let known = self.store.known_users().await?;
        if known.is_empty() {
            return Ok(changes);
        }
        let tenant: HashMap<UserId, UserState> = tenant
            .into_iter()
            .map(|state| (state.user.id.clone(), state))
            .collect();
        // A user the listing leaves out may be deleted, or only not replicated yet: that is
        // one piece of evidence, which a read a minute later confirms or not. Users already
        // held as departed need no more.
        let states: Vec<(UserId, Option<UserState>)> = known
            .into_iter()
            .filter_map(|id| match tenant.get(&id) {
                Some(state) => Some((id, Some(state.clone()))),
                None if self.excluded.contains_key(&id) => None,
                None => Some((id, None)),
            })
            .collect();
        self.apply_users(states, now, &mut changes).await?;
        Ok(changes)
    }

    /// Applies users' states as read (`None`: deleted). The enabled users whose LiteLLM row
    /// already says what Entra says are recognised together and cost nothing more, so that a
    /// tenant of 100,000 unchanged users is a few statements. Disabled users depart, and users
    /// back without a rename return, a thousand to a transaction (see [`Self::depart_all`]);
    /// the others (renames, users Graph did not find, users that failed before) are applied
    /// one by one, several at a time.
    async fn apply_users(
        &self,
        states: Vec<(UserId, Option<UserState>)>,
        now: DateTime<Utc>,
        changes: &mut Changes,
    ) -> Result<()> {
        let settled: Vec<&EntraUser> = states
            .iter()
            .filter_map(|(id, state)| {
                let state = state.as_ref()?;
                (state.enabled && !self.excluded.contains_key(id)).then_some(&state.user)
            })
            .collect();
        // Every user read now: an earlier "not found" for them no longer counts.
        let read: Vec<UserId> = states
            .iter()
            .filter(|(_, state)| state.is_some())
            .map(|(id, _)| id.clone())
            .collect();
        self.store
            .forget_deletions(&read, self.options(now))
            .await?;
        let unchanged = self.store.unchanged_users(&settled).await?;
        let work: Vec<(UserId, Option<UserState>)> = states
            .into_iter()
            .filter(|(id, _)| {
                !unchanged.contains(id) || self.failing.contains(&Item::User(id.clone()))
            })
            .collect();
        let (departing, returning, one_by_one) = self.sort_users(work).await?;
        self.depart_all(departing, now, changes).await?;
        self.return_all(returning, now, changes).await?;
        self.in_parallel(
            one_by_one,
            |(id, _)| Item::User(id.clone()),
            now,
            move |syncer, (id, state)| async move {
                syncer.apply_user(&id, state.as_ref(), now).await
            },
            changes,
        )
        .await?;
        Ok(())
    }

    /// Users to apply, sorted: those disabled in Entra (who depart together), those enabled
    /// again with nothing to rename (who return together), and the rest (one by one).
    async fn sort_users(
        &self,
        work: Vec<(UserId, Option<UserState>)>,
    ) -> Result<(Vec<UserId>, Vec<UserId>, Vec<(UserId, Option<UserState>)>)> {
        let back: Vec<&EntraUser> = work
            .iter()
            .filter_map(|(id, state)| {
                let state = state.as_ref()?;
                (state.confirmed_enabled && self.excluded.contains_key(id)).then_some(&state.user)
            })
            .collect();
        let renamed = self.store.renamed_users(&back).await?;
        let (mut departing, mut returning, mut one_by_one) = (Vec::new(), Vec::new(), Vec::new());
        for (id, state) in work {
            match &state {
                Some(state) if !state.enabled => departing.push(id),
                Some(state)
                    if state.confirmed_enabled
                        && self.excluded.contains_key(&id)
                        && !renamed.contains(&id) =>
                {
                    returning.push(id);
                }
                _ => one_by_one.push((id, state)),
            }
        }
        Ok((departing, returning, one_by_one))
    }

    /// Users disabled in Entra depart a thousand to a transaction: their memberships, roles and
    /// keys (see [`Store::depart_users`]), and the cache evictions after each commit. A batch
    /// that fails on its own (one user LiteLLM refuses) is applied user by user, so that one
    /// bad user never holds the others back.
    async fn depart_all(
        &self,
        users: Vec<UserId>,
        now: DateTime<Utc>,
        changes: &mut Changes,
    ) -> Result<()> {
        if users.is_empty() {
            return Ok(());
        }
        let mut groups = self.groups_left_by(&users).await?;
        for batch in users.chunks(USER_BATCH) {
            let departures: Vec<Departure> = batch
                .iter()
                .map(|user| Departure {
                    user: user.clone(),
                    leaving: groups
                        .as_mut()
                        .map(|groups| groups.remove(user).unwrap_or_default()),
                })
                .collect();
            let options = self.options(now);
            let outcome = retrying(|| self.store.depart_users(&departures, options)).await;
            let Some(made) = whole_batch(outcome, batch.len())? else {
                let depart = |user| self.depart(user, now);
                self.each_alone(batch, UserId::clone, depart, now, changes)
                    .await?;
                continue;
            };
            tracing::info!(
                users = batch.len(),
                changes = made.len(),
                "users left Entra or were disabled"
            );
            changes.add(made);
            self.settled_together(batch, now).await?;
        }
        Ok(())
    }

    /// Users enabled in Entra again, with nothing of theirs renamed: the keys blocked for their
    /// departure come back a thousand users to a transaction, then their departures are
    /// forgotten (as [`Self::apply_user`] does for one). A batch that fails on its own is
    /// applied user by user.
    async fn return_all(
        &self,
        users: Vec<UserId>,
        now: DateTime<Utc>,
        changes: &mut Changes,
    ) -> Result<()> {
        for batch in users.chunks(USER_BATCH) {
            let options = self.options(now);
            let outcome = retrying(|| self.store.reinstate_users(batch, options)).await;
            let Some(made) = whole_batch(outcome, batch.len())? else {
                let come_back = |user| self.come_back(user, now);
                self.each_alone(batch, UserId::clone, come_back, now, changes)
                    .await?;
                continue;
            };
            changes.add(made);
            let back = self
                .store
                .forget_departures(batch, self.options(now))
                .await?;
            if !back.is_empty()
                && let Some(unit) = &self.unit
            {
                unit.note_restored();
            }
            tracing::info!(users = back.len(), "departed users are enabled again");
            self.settled_together(batch, now).await?;
        }
        Ok(())
    }

    /// A failed item among users applied in a batch succeeded.
    async fn settled_together(&self, users: &[UserId], now: DateTime<Utc>) -> Result<()> {
        for user in users {
            self.settle_item(Item::User(user.clone()), Ok(Vec::new()), now)
                .await?;
        }
        Ok(())
    }

    /// The groups each user leaves on departure: none under the `keep` policy.
    async fn groups_left_by(
        &self,
        users: &[UserId],
    ) -> Result<Option<BTreeMap<UserId, Vec<GroupId>>>> {
        Ok(match self.departed_policy {
            DepartedUserPolicy::Keep => None,
            DepartedUserPolicy::RemoveMemberships => {
                Some(self.store.managed_groups_of(users).await?)
            }
        })
    }

    /// A user as Graph describes it now (`None`: not found). Whether the user departed is
    /// remembered, so that every path leaves them out (or lets them back) alike. A disabled
    /// account departs at once; a user Graph does not find departs only once a second answer,
    /// at least a minute after the first, confirms the deletion (until then the user is a failed
    /// item, read again with the usual backoff).
    pub(super) async fn apply_user(
        &self,
        id: &UserId,
        state: Option<&UserState>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Change>> {
        if state.is_none() {
            if let Deletion::Unconfirmed { confirm_after } =
                self.store.deletion_seen(id, now, self.options(now)).await?
            {
                return Err(Error::DeletionUnconfirmed {
                    user: id.to_string(),
                    confirm_after,
                });
            }
        } else {
            self.store.forget_deletion(id, self.options(now)).await?;
        }
        match state {
            // Held as departed, and this answer does not say the account is enabled: no
            // evidence that the user is back.
            Some(state)
                if state.enabled && !state.confirmed_enabled && self.excluded.contains_key(id) =>
            {
                Ok(Vec::new())
            }
            Some(state) if state.enabled => {
                let options = self.options(now);
                let changes = retrying(|| self.store.update_user(&state.user, options)).await?;
                if self.excluded.contains_key(id)
                    && self.store.forget_departure(id, self.options(now)).await?
                    && let Some(unit) = &self.unit
                {
                    unit.note_restored();
                }
                Ok(changes)
            }
            // The departure is remembered in the transaction that makes it.
            _ => self.depart(id, now).await,
        }
    }

    /// The user left Entra (or was disabled): under the default policy, every membership
    /// entra-sync manages goes and a role entra-sync set drops to the default; whatever the
    /// policy, their remaining keys follow `ENTRA_SYNC_DEPARTED_USER_KEYS`.
    async fn depart(&self, id: &UserId, now: DateTime<Utc>) -> Result<Vec<Change>> {
        let departure = Departure {
            user: id.clone(),
            leaving: self
                .groups_left_by(std::slice::from_ref(id))
                .await?
                .map(|mut groups| groups.remove(id).unwrap_or_default()),
        };
        let options = self.options(now);
        let changes = retrying(|| {
            self.store
                .depart_users(std::slice::from_ref(&departure), options)
        })
        .await?;
        if !changes.is_empty() {
            tracing::info!(user = %id, changes = changes.len(), "user left Entra or was disabled");
        }
        Ok(changes)
    }

    /// The user is enabled in Entra again: the keys blocked for their departure come back, and
    /// the departure is forgotten.
    async fn come_back(&self, id: &UserId, now: DateTime<Utc>) -> Result<Vec<Change>> {
        let options = self.options(now);
        let changes = retrying(|| {
            self.store
                .reinstate_users(std::slice::from_ref(id), options)
        })
        .await?;
        if self.store.forget_departure(id, self.options(now)).await?
            && let Some(unit) = &self.unit
        {
            unit.note_restored();
        }
        Ok(changes)
    }
}
