//! Log levels fit the event: what is retried as a matter of course is debug, a failure that is
//! recovered from is a warning, and nothing the worker handles is an error. The events are
//! captured in-process by level and target (the worker's own), never read back as text.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::graph_common;

use std::sync::{Arc, Mutex};

use entity::GroupId;
use graph_common::*;
use graph_sim::Fault;
use tracing::Level;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use worker::store::{ApplyOptions, RemovalMode, Store};

/// The worker's events, as (level, target).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<(Level, String)>>>);

impl<S: tracing::Subscriber> Layer<S> for Captured {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let metadata = event.metadata();
        let ours = ["worker", "entra_sync_graph", "entra_sync_litellm"];
        if ours.iter().any(|name| metadata.target().starts_with(name)) {
            self.0
                .lock()
                .unwrap()
                .push((*metadata.level(), metadata.target().to_owned()));
        }
    }
}

impl Captured {
    /// Captures this thread's events (the tests' runtime is single-threaded, so every task's)
    /// until the guard is dropped.
    fn start() -> (Self, tracing::subscriber::DefaultGuard) {
        let captured = Self::default();
        let subscriber = tracing_subscriber::registry().with(captured.clone());
        (captured, tracing::subscriber::set_default(subscriber))
    }

    fn at(&self, level: Level, target: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(l, t)| *l == level && t == target)
            .count()
    }

    /// Events at `level` or more severe.
    fn at_least(&self, level: Level) -> Vec<(Level, String)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(l, _)| *l <= level)
            .cloned()
            .collect()
    }
}

fn group_id(n: u128) -> GroupId {
    GroupId::parse(&gid(n).to_string()).unwrap()
}

#[tokio::test]
async fn throttling_and_a_refused_token_are_retried_at_debug() {
    let sim = sim(|_| {}).await;
    let (client, _) = secret_client(&sim);
    client.group_members(&group_id(1), false).await.unwrap();
    let (captured, _guard) = Captured::start();
    sim.add_fault(Fault::throttle("/members", 0, 2));
    sim.revoke_tokens();
    client.group_members(&group_id(1), false).await.unwrap();
    assert_eq!(captured.at(Level::DEBUG, "entra_sync_graph::http"), 3);
    assert_eq!(captured.at_least(Level::WARN), []);
}

#[tokio::test]
async fn a_graph_outage_retried_is_a_warning_not_an_error() {
    let sim = sim(|_| {}).await;
    let (client, _) = secret_client(&sim);
    let (captured, _guard) = Captured::start();
    sim.add_fault(Fault::status("/members", 503, 1));
    client.group_members(&group_id(1), false).await.unwrap();
    assert_eq!(captured.at(Level::WARN, "entra_sync_graph::http"), 1);
    assert_eq!(captured.at_least(Level::ERROR), []);
}

#[tokio::test]
async fn errors_handed_to_the_caller_are_not_logged_as_errors() {
    // An expired delta token: the caller resyncs.
    let sim = sim(|_| {}).await;
    let (client, _) = secret_client(&sim);
    let first = client
        .groups_delta(entra_sync_graph::DeltaStart::Initial)
        .await
        .unwrap();
    sim.change(|t| {
        t.expire_delta_tokens();
        ((), Vec::new())
    });
    let (captured, guard) = Captured::start();
    let error = client
        .groups_delta(entra_sync_graph::DeltaStart::Link(first.delta_link))
        .await
        .unwrap_err();
    assert!(
        matches!(error, entra_sync_graph::Error::DeltaExpired),
        "{error}"
    );
    assert_eq!(captured.at(Level::DEBUG, "entra_sync_graph::delta"), 1);
    assert_eq!(captured.at_least(Level::WARN), []);
    drop(guard);

    // A store error (as a concurrent change is, before the sync retries it): the store's
    // caller decides what it means.
    let db = entra_sync_testkit::TestDatabase::new().await;
    let store = Store::new(db.conn().clone(), Default::default(), RemovalMode::Managed);
    let (captured, _guard) = Captured::start();
    let error = store
        .add_members(&group_id(99), &[], ApplyOptions::commit(chrono::Utc::now()))
        .await
        .unwrap_err();
    assert!(
        matches!(error, worker::store::Error::TeamNotFound(_)),
        "{error}"
    );
    assert_eq!(captured.at(Level::DEBUG, "entra_sync_litellm::store"), 1);
    assert_eq!(captured.at_least(Level::WARN), []);
}
