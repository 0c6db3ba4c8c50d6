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
    /// Acts on a lifecycle event; returns whether it calls for a full resync (notifications
    /// were lost).
    pub(super) async fn lifecycle_event(
        &self,
        subscription: &str,
        event: &str,
        now: DateTime<Utc>,
    ) -> bool {
        tracing::info!(subscription, event, "lifecycle event");
        match event {
            "reauthorizationRequired" => {
                self.keep_subscriptions(event, |m| async move {
                    m.reauthorize(subscription, now).await
                })
                .await;
                false
            }
            "subscriptionRemoved" => {
                self.keep_subscriptions(
                    event,
                    |m| async move { m.recreate(subscription, now).await },
                )
                .await;
                true
            }
            "missed" => true,
            other => {
                tracing::warn!(event = other, "unknown lifecycle event; ignored");
                false
            }
        }
    }

    /// Runs a subscription action. A failure is logged, not fatal: the subscription keeper
    /// checks every subscription again within its interval.
    async fn keep_subscriptions<'a, F, Fut>(&'a self, event: &str, action: F)
    where
        F: FnOnce(&'a SubscriptionManager) -> Fut,
        Fut: Future<Output = Result<Vec<Action>>>,
    {
        let Some(manager) = &self.subscriptions else {
            tracing::warn!(
                event,
                "lifecycle event, but ENTRA_SYNC_PUBLIC_URL is unset: no subscriptions to keep"
            );
            return;
        };
        match action(manager).await {
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
