//! Reconciliation: the backstop for notifications that were late, lost or never sent. Every
//! assigned group's members and every known user's role and details are compared with LiteLLM's
//! tables, and the drift is fixed (or, in a dry run, listed).

use chrono::{DateTime, Utc};

use std::collections::{HashMap, HashSet};

use entity::UserId;

use super::Syncer;
use super::assignments::PollScope;
use crate::error::Result;
use crate::store::{Cause, Changes, ReconciliationRecord};

/// What a reconciliation found and fixed.
#[derive(Debug, Default)]
pub struct ReconcileReport {
    /// The drift: changes made, or in a dry run planned.
    pub changes: Changes,
    /// Groups assigned to the app.
    pub assigned_groups: usize,
    pub dry_run: bool,
}

impl Syncer {
    /// Runs a full reconciliation under the sync lease and records it (not in a dry run).
    #[tracing::instrument(skip(self), fields(dry_run = self.dry_run), err(level = "debug"))]
    pub async fn reconcile(&self, now: DateTime<Utc>) -> Result<ReconcileReport> {
        self.exclusively(Cause::Reconciliation, now, |syncer| async move {
            syncer.reconcile_locked(now).await
        })
        .await
    }

    /// Reconciles when the last successful run finished `interval` or longer before `now`
    /// (checked under the lease, so that of several replicas only one runs it): a run that
    /// failed is tried again at the next check, not an interval later. `None`: not due.
    pub async fn reconcile_if_due(
        &self,
        now: DateTime<Utc>,
        interval: chrono::Duration,
    ) -> Result<Option<ReconcileReport>> {
        self.exclusively(Cause::Reconciliation, now, |syncer| async move {
            let last = syncer.store.last_successful_reconciliation().await?;
            if last.is_some_and(|run| now - run.finished_at < interval) {
                return Ok(None);
            }
            syncer.reconcile_locked(now).await.map(Some)
        })
        .await
    }

    async fn reconcile_locked(&self, now: DateTime<Utc>) -> Result<ReconcileReport> {
        let result = self.reconcile_steps(now).await;
        let (changes, error) = match &result {
            Ok(report) => (report.changes.total(), None),
            Err(error) => (0, Some(error.to_string())),
        };
        let record = ReconciliationRecord {
            started_at: now,
            changes,
            error,
        };
        self.store
            .record_reconciliation(record, self.options(now))
            .await?;
        result
    }

    async fn reconcile_steps(&self, now: DateTime<Utc>) -> Result<ReconcileReport> {
        // Disabled users are still group members in Entra: left out of teams and roles from the
        // start, so that the groups' pass does not add what the users' pass then takes away; and
        // so are users entra-sync saw depart who are no longer in the tenant. A user enabled
        // again is let back in at once.
        let tenant = self.graph.all_users().await?;
        let in_tenant: HashSet<&UserId> = tenant.iter().map(|state| &state.user.id).collect();
        let mut excluded: HashMap<UserId, DateTime<Utc>> = self
            .excluded
            .iter()
            .filter(|(user, _)| !in_tenant.contains(user))
            .map(|(user, since)| (user.clone(), *since))
            .collect();
        excluded.extend(
            tenant
                .iter()
                .filter(|state| !state.enabled)
                .map(|state| (state.user.id.clone(), now)),
        );
        let syncer = self.excluding(excluded);
        let assignments = syncer.poll_locked(now, PollScope::Everything).await?;
        // In a dry run, each step plans against the tables as they are, not as the steps before
        // would leave them: the tally lists a change they both plan once (see [`Changes`]).
        let mut changes = assignments.changes;
        changes.merge(syncer.resync(now).await?.changes);
        changes.merge(syncer.apply_tenant_users(tenant, now).await?);
        // Keys that outlived a removal (made before entra-sync revoked keys, or created while
        // the member was being removed); departed users' keys were blocked just above.
        changes.add(self.store.revoke_surviving_keys(self.options(now)).await?);
        // The removals it staged, applied or held now, so that its record counts them and a
        // failure to apply them fails the reconciliation.
        changes.add(self.finish_unit(now).await?);
        Ok(ReconcileReport {
            changes,
            assigned_groups: assignments.assigned_groups,
            dry_run: self.dry_run,
        })
    }
}
