//! The subscriptions task, and the lifecycle events Graph sends about them.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::Context;
use crate::error::Result;
use crate::metrics::KindLabel;
use crate::store::lease::Lease;
use crate::subscriptions::{Action, SubscriptionManager};

/// The subscription keeper: at start and every `check`, the replica that holds the keeper's
/// `lease` makes sure the subscriptions exist and are renewed in time. At the stop it gives the
/// lease back, so that another replica takes over at once instead of when the lease runs out.
pub(super) async fn keep(
    context: Context,
    manager: SubscriptionManager,
    lease: Lease,
    check: Duration,
) {
    let mut wait = Duration::ZERO;
    while context.waited(wait).await {
        wait = check;
        match lease.try_acquire().await {
            Ok(true) => match manager.ensure(Utc::now()).await {
                Ok(actions) => context.count_subscription_actions(&actions),
                Err(error) => tracing::warn!(%error, "cannot keep the subscriptions; retrying"),
            },
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, "cannot take the subscription lease"),
        }
    }
    if let Err(error) = lease.release().await {
        tracing::warn!(%error, "cannot release the subscription lease");
    }
}

impl Context {
    /// Acts on a lifecycle event about one of our subscriptions; returns whether it calls for
    /// a full resync (notifications were lost). An event about any other subscription id (not
    /// a GUID, or not stored as ours) is ignored: it is not ours to reauthorize, re-create or
    /// resync for. An error (the database unreachable) leaves the event to be tried again.
    pub(super) async fn lifecycle_event(
        &self,
        subscription: &str,
        event: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let Some(manager) = &self.subscriptions else {
            tracing::warn!(
                subscription = %subscription.escape_debug(),
                event = %event.escape_debug(),
                "lifecycle event, but ENTRA_SYNC_PUBLIC_URL is unset: no subscriptions are ours; ignored"
            );
            return Ok(false);
        };
        let Some(subscription) = manager.ours(subscription).await? else {
            tracing::warn!(
                subscription = %subscription.escape_debug(),
                event = %event.escape_debug(),
                "lifecycle event for a subscription that is not ours; ignored"
            );
            return Ok(false);
        };
        let subscription = subscription.as_str();
        tracing::info!(subscription, event, "lifecycle event");
        Ok(match event {
            "reauthorizationRequired" => {
                self.keep_subscriptions(event, manager.reauthorize(subscription, now))
                    .await;
                false
            }
            "subscriptionRemoved" => {
                self.keep_subscriptions(event, manager.recreate(subscription, now))
                    .await;
                true
            }
            "missed" => true,
            other => {
                tracing::warn!(event = %other.escape_debug(), "unknown lifecycle event; ignored");
                false
            }
        })
    }

    /// Counts what a subscription action did. A failure is logged, not fatal: the subscription
    /// keeper checks every subscription again within its interval.
    async fn keep_subscriptions(
        &self,
        event: &str,
        action: impl Future<Output = Result<Vec<Action>>>,
    ) {
        match action.await {
            Ok(actions) => self.count_subscription_actions(&actions),
            Err(error) => {
                tracing::warn!(%error, event, "cannot act on the lifecycle event; the subscription keeper will retry")
            }
        }
    }

    fn count_subscription_actions(&self, actions: &[Action]) {
        for action in actions {
            self.metrics
                .subscription_actions
                .get_or_create(&KindLabel {
                    kind: action.action,
                })
                .inc();
        }
    }
}
