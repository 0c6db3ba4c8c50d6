//! Tasks that work on items side by side, none of whose items is ever lost: a task that panics
//! is that item's failure, as any error of its own is, never the whole unit's.

use std::collections::HashMap;
use std::future::Future;

use tokio::task::{self, JoinError, JoinSet};

/// Tasks that each work on an item (a group, a batch): the item stays here, not in the task,
/// so that a task that panics, or is cancelled, hands it back with the reason, and no item is
/// ever dropped. The tasks stop when this is dropped.
pub(super) struct ItemTasks<I, T> {
    running: JoinSet<T>,
    items: HashMap<task::Id, I>,
}

impl<I, T: Send + 'static> ItemTasks<I, T> {
    pub fn new() -> Self {
        Self {
            running: JoinSet::new(),
            items: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    pub fn spawn(&mut self, item: I, work: impl Future<Output = T> + Send + 'static) {
        let task = self.running.spawn(work);
        self.items.insert(task.id(), item);
    }

    /// The next task to end, with its item: its output, or why it failed ([`task_failure`]).
    /// `None` when no task runs.
    pub async fn next(&mut self) -> Option<(I, std::result::Result<T, String>)> {
        loop {
            let (task, outcome) = match self.running.join_next_with_id().await? {
                Ok((task, output)) => (task, Ok(output)),
                Err(failure) => (failure.id(), Err(task_failure(&failure))),
            };
            // Every task has its item; one without cannot be handed back.
            if let Some(item) = self.items.remove(&task) {
                return Some((item, outcome));
            }
        }
    }
}

/// A task for every item, at most `limit` running at once: `start` turns an item into what the
/// caller keeps of it (handed back however the task ends) and the task's work, as room frees up.
/// The one bounded-concurrency loop of the sync; the tasks stop when this is dropped.
pub(super) struct Bounded<P, S, H, T> {
    pending: P,
    start: S,
    limit: usize,
    running: ItemTasks<H, T>,
}

impl<P, S, H, T, Fut> Bounded<P, S, H, T>
where
    P: Iterator,
    S: FnMut(P::Item) -> (H, Fut),
    T: Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
{
    pub fn new(items: impl IntoIterator<IntoIter = P>, limit: usize, start: S) -> Self {
        Self {
            pending: items.into_iter(),
            start,
            limit: limit.max(1),
            running: ItemTasks::new(),
        }
    }

    /// The next task to end, with what was kept of its item: its output, or why it failed
    /// ([`task_failure`]). `None` once every item's task has ended.
    pub async fn next(&mut self) -> Option<(H, std::result::Result<T, String>)> {
        while self.running.len() < self.limit {
            let Some(item) = self.pending.next() else {
                break;
            };
            let (kept, work) = (self.start)(item);
            self.running.spawn(kept, work);
        }
        self.running.next().await
    }
}

/// Why a task working on items failed: it panicked (a bug, logged as such) or was cancelled.
/// Its items fail with [`crate::Error::ItemTaskFailed`] and this reason.
pub(super) fn task_failure(failure: &JoinError) -> String {
    tracing::error!(%failure, "a task working on items failed");
    failure.to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashSet;

    use chrono::Utc;
    use entity::GroupId;
    use prometheus_client::registry::Registry;
    use sea_orm::{ConnectionTrait, Statement};

    use super::*;
    use crate::graph::{Credential, GraphClient, GraphConfig, GraphMetrics, RetryPolicy};
    use crate::store::{Change, Item, RemovalMode, Store};
    use crate::sync::{Syncer, UnassignedPolicy};

    #[tokio::test]
    async fn a_task_that_panics_hands_back_its_item_with_the_reason() {
        let mut tasks = ItemTasks::new();
        for n in 0..10_u32 {
            tasks.spawn(n, async move {
                if n == 3 {
                    panic!("a bug met by item 3");
                }
                n * 10
            });
        }
        let mut ended = Vec::new();
        while let Some(done) = tasks.next().await {
            ended.push(done);
        }
        assert!(tasks.is_empty());
        ended.sort_by_key(|(n, _)| *n);
        assert_eq!(
            ended.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>(),
            "every item handed back once"
        );
        for (n, outcome) in ended {
            match outcome {
                Ok(output) => assert_eq!(output, n * 10),
                Err(reason) => {
                    assert_eq!(n, 3);
                    assert!(reason.contains("panicked"), "{reason}");
                    assert!(reason.contains("a bug met by item 3"), "{reason}");
                }
            }
        }
    }

    /// A syncer on a database of its own; its Graph is never called.
    async fn syncer() -> (Syncer, Store, entra_sync_testkit::TestDatabase) {
        let db = entra_sync_testkit::TestDatabase::new().await;
        let store = Store::new(db.conn().clone(), Default::default(), RemovalMode::Managed);
        let config = GraphConfig {
            tenant_id: "contoso".into(),
            client_id: "entra-sync".into(),
            credential: Credential::Secret("unused".to_owned().into()),
            token_url: "http://127.0.0.1:9/contoso/oauth2/v2.0/token"
                .parse()
                .unwrap(),
            graph_endpoint: "http://127.0.0.1:9/v1.0".into(),
            service_principal_id: None,
            retry: RetryPolicy::default(),
        };
        let graph =
            GraphClient::new(config, GraphMetrics::register(&mut Registry::default())).unwrap();
        let syncer = Syncer::new(graph, store.clone(), UnassignedPolicy::default());
        (syncer, store, db)
    }

    #[tokio::test]
    async fn a_group_whose_sync_task_panics_is_a_failed_item_and_the_others_go_on() {
        let (syncer, store, db) = syncer().await;
        let groups: Vec<GroupId> = (1..=20_u128)
            .map(|n| GroupId::parse(&uuid::Uuid::from_u128(n).to_string()).unwrap())
            .collect();
        let doomed = groups[11].clone();
        let mut changes = syncer.tally();
        let changed = syncer
            .in_parallel(
                groups.clone(),
                |group| Item::Group(group.clone()),
                Utc::now(),
                move |_, group| {
                    let doomed = doomed.clone();
                    async move {
                        if group == doomed {
                            panic!("a bug met by one group");
                        }
                        Ok(vec![Change::TeamBlocked {
                            team_id: group.to_string(),
                        }])
                    }
                },
                &mut changes,
            )
            .await
            .unwrap();

        // The other groups' outcomes arrived; the doomed group is a failed item of its own.
        assert_eq!(changed, 19);
        assert_eq!(changes.total(), 19);
        assert_eq!(
            store.failing_items().await.unwrap(),
            HashSet::from([Item::Group(groups[11].clone())])
        );
        let error = db
            .conn()
            .query_one(Statement::from_string(
                db.conn().get_database_backend(),
                "SELECT error FROM entra_sync_failed_items",
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get_by_index::<String>(0)
            .unwrap();
        assert!(error.contains("a bug met by one group"), "{error}");
    }
}
