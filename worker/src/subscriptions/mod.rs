//! Graph change-notification subscriptions that never lapse.
//!
//! One subscription each for `groups` and `users` (`updated,deleted`), pointing at the webhook's
//! `/notifications` and `/lifecycle`. They are stored in `entra_sync_subscriptions`, renewed a
//! week before they expire (Graph allows at most 29 days), re-created when Graph no longer has
//! them, and duplicates or ones for an old URL are deleted. One replica at a time keeps them (the
//! holder of the [`LEASE`] lease); every change to them happens under another lease,
//! [`CHANGES_LEASE`], so the keeper, a lifecycle event and the `subscriptions` command never
//! race, and no transaction stays open while Graph validates a new subscription.

use migration::database::Db;
use std::collections::HashSet;

use chrono::{DateTime, Duration, Utc};
use entity::sync::subscription;
use secrecy::SecretString;
use serde::Serialize;
use url::Url;

use crate::error::{Error, Result};
use crate::graph::model::Subscription;
use crate::graph::{GraphClient, NewSubscription};
use crate::store::subscriptions as table;

/// What entra-sync subscribes to.
pub const RESOURCES: [&str; 2] = ["groups", "users"];
const CHANGE_TYPE: &str = "updated,deleted";
/// The lease the subscription keeper holds.
pub const LEASE: &str = "subscriptions";
/// Serialises every change to the subscriptions, whichever replica or command makes it.
pub const CHANGES_LEASE: &str = "subscription-changes";
/// How long a change may wait for another to finish.
const CHANGES_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);
/// The change lease's default time to live (`ENTRA_SYNC_LEASE_SECONDS`): how long a replica that
/// died in the middle of a change holds the others back.
const CHANGES_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// Graph's longest lifetime for groups and users is 41,760 minutes; an hour less leaves room for
/// clocks that differ.
fn lifetime() -> Duration {
    Duration::minutes(41_760 - 60)
}

/// Renewed when less than this is left: a week without a working keeper is survivable.
fn renew_when_left() -> Duration {
    Duration::days(7)
}

/// Where Graph sends notifications, and the secret it echoes.
#[derive(Clone, Debug)]
pub struct Target {
    pub notification_url: String,
    pub lifecycle_url: String,
    pub client_state: SecretString,
}

impl Target {
    /// From `ENTRA_SYNC_PUBLIC_URL` (already checked: https, or http on loopback).
    pub fn new(public_url: &Url, client_state: SecretString) -> Result<Self> {
        let join = |path: &str| {
            public_url
                .join(path)
                .map(String::from)
                .map_err(|e| Error::Settings(format!("ENTRA_SYNC_PUBLIC_URL: {e}")))
        };
        Ok(Self {
            notification_url: join("notifications")?,
            lifecycle_url: join("lifecycle")?,
            client_state,
        })
    }
}

/// One thing the manager did, for logs and the `subscriptions` command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Action {
    pub action: &'static str,
    pub resource: String,
    pub id: String,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A stored subscription and whether Graph still has it.
#[derive(Clone, Debug, Serialize)]
pub struct SubscriptionView {
    pub id: String,
    pub resource: String,
    pub notification_url: String,
    pub expires_at: DateTime<Utc>,
    pub in_graph: bool,
}

#[derive(Clone, Debug)]
pub struct SubscriptionManager {
    graph: GraphClient,
    db: Db,
    target: Target,
    changes: crate::store::lease::Lease,
}

fn not_found(error: &crate::graph::Error) -> bool {
    matches!(error, crate::graph::Error::Graph { status: 404, .. })
}

impl SubscriptionManager {
    pub fn new(graph: GraphClient, db: impl Into<Db>, target: Target) -> Self {
        let db = db.into();
        let changes = crate::store::lease::Lease::new(
            db.clone(),
            CHANGES_LEASE,
            &crate::store::lease::this_process(),
            CHANGES_TTL,
        );
        Self {
            graph,
            db,
            target,
            changes,
        }
    }

    /// When each resource's subscription expires, as stored (the latest, if there are several);
    /// `None`: there is none.
    pub async fn expiries(&self) -> Result<Vec<(&'static str, Option<DateTime<Utc>>)>> {
        let stored = crate::store::subscriptions::stored(&self.db).await?;
        Ok(RESOURCES
            .iter()
            .map(|&resource| {
                let latest = stored
                    .iter()
                    .filter(|s| s.resource == resource)
                    .map(|s| s.expires_at)
                    .max();
                (resource, latest)
            })
            .collect())
    }

    /// The stored subscription a notification's `id` names: `None` when it is not a GUID or
    /// not one of ours (stored in `entra_sync_subscriptions`), and must not be acted on.
    pub async fn ours(&self, id: &str) -> Result<Option<String>> {
        if !entra_sync_core::settings::is_guid(id) {
            return Ok(None);
        }
        Ok(table::stored(&self.db)
            .await?
            .into_iter()
            .map(|row| row.id)
            .find(|stored| stored.eq_ignore_ascii_case(id)))
    }

    /// The lease of the subscription keeper (see [`LEASE`]), held as `holder`.
    pub fn keeper_lease(
        &self,
        holder: &str,
        ttl: std::time::Duration,
    ) -> crate::store::lease::Lease {
        crate::store::lease::Lease::new(self.db.clone(), LEASE, holder, ttl)
    }

    /// The change lease lives this long without renewal (`ENTRA_SYNC_LEASE_SECONDS`).
    #[must_use]
    pub fn with_lease_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.changes = crate::store::lease::Lease::new(
            self.db.clone(),
            CHANGES_LEASE,
            &crate::store::lease::this_process(),
            ttl,
        );
        self
    }

    /// Makes sure each resource has exactly one live subscription of ours, renewed in time.
    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn ensure(&self, now: DateTime<Utc>) -> Result<Vec<Action>> {
        self.locked(self.ensure_locked(now)).await
    }

    /// `reauthorizationRequired`: reauthorize, and renew when that fails (both keep it alive);
    /// re-created when Graph no longer has it.
    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn reauthorize(&self, id: &str, now: DateTime<Utc>) -> Result<Vec<Action>> {
        self.locked(async {
            match self.graph.reauthorize_subscription(id).await {
                Ok(()) => Ok(vec![Action {
                    action: "reauthorized",
                    resource: String::new(),
                    id: id.to_owned(),
                    expires_at: None,
                }]),
                Err(error) if not_found(&error) => {
                    table::forget(&self.db, id).await?;
                    self.ensure_locked(now).await
                }
                Err(error) => {
                    tracing::warn!(%error, "reauthorize failed; renewing instead");
                    match self.graph.renew_subscription(id, now + lifetime()).await {
                        Ok(renewed) => {
                            table::remember(&self.db, &renewed, now).await?;
                            Ok(vec![action("renewed", &renewed)])
                        }
                        Err(error) if not_found(&error) => {
                            table::forget(&self.db, id).await?;
                            self.ensure_locked(now).await
                        }
                        Err(error) => Err(error.into()),
                    }
                }
            }
        })
        .await
    }

    /// `subscriptionRemoved`: Graph dropped it; a new one replaces it.
    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn recreate(&self, id: &str, now: DateTime<Utc>) -> Result<Vec<Action>> {
        self.locked(async {
            table::forget(&self.db, id).await?;
            self.ensure_locked(now).await
        })
        .await
    }

    /// The stored subscriptions, and whether Graph still has each.
    pub async fn list(&self) -> Result<Vec<SubscriptionView>> {
        let live: HashSet<String> = self
            .graph
            .list_subscriptions()
            .await?
            .into_iter()
            .map(|s| s.id)
            .collect();
        Ok(table::stored(&self.db)
            .await?
            .into_iter()
            .map(|row| SubscriptionView {
                in_graph: live.contains(&row.id),
                id: row.id,
                resource: row.resource,
                notification_url: row.notification_url,
                expires_at: row.expires_at,
            })
            .collect())
    }

    /// Deletes every subscription entra-sync created (`subscriptions delete`).
    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn delete_all(&self) -> Result<Vec<Action>> {
        self.locked(async {
            let stored = table::stored(&self.db).await?;
            let live = self.graph.list_subscriptions().await?;
            self.delete_all_but(&stored, &live, &HashSet::new()).await
        })
        .await
    }

    async fn ensure_locked(&self, now: DateTime<Utc>) -> Result<Vec<Action>> {
        let live = self.graph.list_subscriptions().await?;
        let stored = table::stored(&self.db).await?;
        let mut actions = Vec::new();
        let mut kept: HashSet<String> = HashSet::new();
        for resource in RESOURCES {
            // Ours for this resource, alive in Graph, the one that lasts longest first.
            let mut candidates: Vec<&Subscription> = live
                .iter()
                .filter(|s| s.resource.eq_ignore_ascii_case(resource) && self.is_ours(s))
                .filter(|s| stored.iter().any(|row| row.id == s.id))
                .collect();
            candidates.sort_by_key(|s| std::cmp::Reverse(s.expiration_date_time));
            let action = match candidates.first() {
                Some(current) if current.expiration_date_time - now > renew_when_left() => {
                    kept.insert(current.id.clone());
                    continue;
                }
                Some(current) => {
                    match self
                        .graph
                        .renew_subscription(&current.id, now + lifetime())
                        .await
                    {
                        Ok(renewed) => {
                            table::remember(&self.db, &renewed, now).await?;
                            kept.insert(renewed.id.clone());
                            action("renewed", &renewed)
                        }
                        Err(error) if not_found(&error) => {
                            let created = self.create(resource, now).await?;
                            kept.insert(created.id.clone());
                            action("recreated", &created)
                        }
                        Err(error) => return Err(error.into()),
                    }
                }
                None => {
                    let created = self.create(resource, now).await?;
                    kept.insert(created.id.clone());
                    action("created", &created)
                }
            };
            tracing::info!(action = action.action, resource, id = action.id, expires = ?action.expires_at, "subscription");
            actions.push(action);
        }
        // Stale: stored ones not kept (duplicates, an old URL, gone from Graph), and ones of ours
        // Graph has that were never stored (a crash between creating and storing).
        actions.extend(self.delete_all_but(&stored, &live, &kept).await?);
        Ok(actions)
    }

    /// Deletes every subscription of ours except `kept`: the stored ones, and those Graph has
    /// that were never stored (a crash between creating and storing).
    async fn delete_all_but(
        &self,
        stored: &[subscription::Model],
        live: &[Subscription],
        kept: &HashSet<String>,
    ) -> Result<Vec<Action>> {
        let mut stale: Vec<(String, String)> = stored
            .iter()
            .map(|row| (row.id.clone(), row.resource.clone()))
            .collect();
        for s in live.iter().filter(|s| self.is_ours(s)) {
            if !stale.iter().any(|(id, _)| *id == s.id) {
                stale.push((s.id.clone(), s.resource.clone()));
            }
        }
        let mut actions = Vec::new();
        for (id, resource) in stale.into_iter().filter(|(id, _)| !kept.contains(id)) {
            self.delete(&id).await?;
            tracing::info!(resource, id, "subscription deleted");
            actions.push(Action {
                action: "deleted",
                resource,
                id,
                expires_at: None,
            });
        }
        Ok(actions)
    }

    fn is_ours(&self, subscription: &Subscription) -> bool {
        subscription.notification_url == self.target.notification_url
    }

    async fn create(&self, resource: &str, now: DateTime<Utc>) -> Result<Subscription> {
        let created = self
            .graph
            .create_subscription(&NewSubscription {
                resource: resource.to_owned(),
                change_type: CHANGE_TYPE.to_owned(),
                notification_url: self.target.notification_url.clone(),
                lifecycle_notification_url: self.target.lifecycle_url.clone(),
                client_state: self.target.client_state.clone(),
                expiration: now + lifetime(),
            })
            .await?;
        table::remember(&self.db, &created, now).await?;
        Ok(created)
    }

    /// Deletes in Graph (already gone is fine) and forgets it.
    async fn delete(&self, id: &str) -> Result<()> {
        match self.graph.delete_subscription(id).await {
            Ok(()) => {}
            Err(error) if not_found(&error) => {}
            Err(error) => return Err(error.into()),
        }
        Ok(table::forget(&self.db, id).await?)
    }

    /// Runs `work` holding the lease on changes to the subscriptions.
    async fn locked<T>(&self, work: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        self.changes.hold(CHANGES_PATIENCE, |_| work).await
    }
}

fn action(name: &'static str, s: &Subscription) -> Action {
    Action {
        action: name,
        resource: s.resource.clone(),
        id: s.id.clone(),
        expires_at: Some(s.expiration_date_time),
    }
}
