//! Departures benchmark (not a test): ten thousand users disabled in Entra at once, each a
//! member of 3 of 1,000 teams with 2 team keys, then enabled again, through the worker's own run
//! loop (the stream, the round, the users' re-read, PostgreSQL, LiteLLM's cache channel). Each
//! run writes one `users` notification per user to the stream, as the webhook would, and prints
//! the time from the first entry written to the last commit (every user departed and their keys
//! blocked or deleted, or every user back and their keys unblocked) and to the last cache
//! message, with the HTTP requests to Graph. Disabling runs twice: with
//! `ENTRA_SYNC_REMOVAL_THRESHOLD=0` (memberships removed, team keys deleted as the default
//! removal policy says) and at the default threshold (removals held for a person, keys blocked);
//! the users then come back from the second.
//!
//! Run: `cargo bench -p worker --bench departures`

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

#[path = "../tests/it/graph_common/mod.rs"]
mod graph_common;

use entra_sync_core::record::{Kind, StreamRecord};
use entra_sync_testkit::TestDatabase;
use entra_sync_testkit::redis::{Subscriber, TestStream, redis_url};
use graph_sim::tenant::{TenantFile, User};
use graph_sim::{GraphSim, SimConfig};
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use worker::litellm_cache::{CHANNEL, CacheTarget, LiteLlmCache};
use worker::metrics::WorkerMetrics;
use worker::run::{RunSettings, Worker};
use worker::store::{RemovalMode, Store};
use worker::stream::{StreamConsumer, StreamSettings};
use worker::sync::{DEFAULT_REMOVAL_THRESHOLD, Syncer, UnassignedPolicy};

const USERS: u128 = 10_000;
const TEAMS: u128 = 1_000;
/// Each user is in 3 teams.
const MEMBERS_PER_TEAM: u128 = USERS * 3 / TEAMS;
const KEYS_EACH: u32 = 2;

async fn scalar(db: &DatabaseConnection, sql: &str) -> i64 {
    db.query_one(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .unwrap()
        .and_then(|row| row.try_get_by_index::<i64>(0).ok())
        .unwrap_or(0)
}

/// One run's figures.
struct Figures {
    to_commit: Duration,
    to_last_message: Duration,
    messages: usize,
    graph_requests: usize,
}

fn report(what: &str, figures: &Figures) {
    println!(
        "{what:<58} last commit {:>6.2} s  last cache message {:>6.2} s  ({} messages)  {} HTTP requests to Graph",
        figures.to_commit.as_secs_f64(),
        figures.to_last_message.as_secs_f64(),
        figures.messages,
        figures.graph_requests,
    );
}

/// The tenant, the database with its teams, members and keys, and the worker running.
struct Setup {
    sim: GraphSim,
    db: TestDatabase,
    stream: TestStream,
    namespace: String,
}

async fn setup(threshold: u64) -> Setup {
    let config = SimConfig {
        page_size: 999,
        ..SimConfig::default()
    };
    let sim = GraphSim::start(config, TenantFile::generate(TEAMS, USERS, MEMBERS_PER_TEAM))
        .await
        .unwrap();
    let db = TestDatabase::new().await;
    let stream = TestStream::new();
    let dead = TestStream::new();
    let namespace = format!("entra-sync-bench-{}", uuid::Uuid::new_v4().simple());
    let cache = LiteLlmCache::start(
        CacheTarget {
            client: redis::Client::open(redis_url()).unwrap(),
            namespace: Some(namespace.clone()),
        },
        Family::default(),
    );
    let store = Store::new(db.conn().clone(), Default::default(), RemovalMode::Managed)
        .with_litellm_cache(cache.clone());
    let (client, _) = graph_common::default_retry_client(&sim);
    let syncer = Syncer::new(client, store, UnassignedPolicy::RemoveMembers)
        .with_removal_threshold(threshold)
        .counting_only();
    syncer.poll_assignments(chrono::Utc::now()).await.unwrap();
    // Two keys per user, on the first two of their teams.
    db.conn()
        .execute_unprepared(&format!(
            r#"INSERT INTO "LiteLLM_VerificationToken" (token, user_id, team_id, models, created_at)
               SELECT md5(m.user_id || '-' || m.team_id), m.user_id, m.team_id, ARRAY[]::text[],
                      now() - interval '1 hour'
               FROM (SELECT user_id, team_id,
                            row_number() OVER (PARTITION BY user_id ORDER BY team_id) AS n
                     FROM "LiteLLM_TeamMembership") m
               WHERE m.n <= {KEYS_EACH};
               ANALYZE "LiteLLM_VerificationToken";"#
        ))
        .await
        .unwrap();
    assert!(cache.flush(Duration::from_secs(30)).await);
    // The first round takes the delta links; the users' changes come after it.
    syncer.delta_round(chrono::Utc::now()).await.unwrap();
    let consumer = StreamConsumer::connect(
        &redis_url(),
        StreamSettings {
            stream: stream.key().to_owned(),
            dead_letter: dead.key().to_owned(),
            consumer: "departures".into(),
            batch: 500,
            claim_idle: Duration::from_secs(60),
            max_deliveries: 5,
        },
    )
    .await
    .unwrap();
    let worker = Worker {
        syncer,
        consumer,
        metrics: WorkerMetrics::register(&mut Registry::default()),
        settings: RunSettings {
            poll_interval: Duration::from_secs(3600),
            reconcile_interval: None,
            departed_recheck: None,
            ..RunSettings::default()
        },
        subscriptions: None,
        readiness: Default::default(),
    };
    tokio::spawn(worker.run(std::future::pending()));
    Setup {
        sim,
        db,
        stream,
        namespace,
    }
}

/// Every user's account enabled or not in graph-sim, then one `users` notification each
/// written to the stream (as the webhook writes them); the figures once `done` holds of the
/// database and the cache channel has been quiet for a second.
async fn notify_all(setup: &Setup, enabled: bool, done: &str) -> Figures {
    let users: Vec<User> = setup.sim.read(|t| t.to_file().users);
    for mut user in users.iter().cloned() {
        user.account_enabled = enabled;
        setup.sim.apply(|t| t.upsert_user(user));
    }
    let subscriber = Subscriber::subscribe(&format!("{}:{CHANNEL}", setup.namespace));
    setup.sim.clear_requests();
    let mut connection = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let started = Instant::now();
    let mut pipe = redis::pipe();
    for user in &users {
        let record = StreamRecord {
            subscription_id: "6d9e8f3a-1b2c-4d5e-8f9a-0b1c2d3e4f5a".into(),
            tenant_id: "tenant".into(),
            kind: Kind::Change {
                change_type: "updated".into(),
                resource: format!("Users/{}", user.id),
                resource_id: Some(user.id.to_string()),
                odata_type: Some("#Microsoft.Graph.User".into()),
            },
            subscription_expires: None,
            received_at: chrono::Utc::now(),
        };
        pipe.xadd(setup.stream.key(), "*", &record.to_fields())
            .ignore();
    }
    let () = pipe.query_async(&mut connection).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while scalar(setup.db.conn(), done).await != 1 {
        if Instant::now() > deadline {
            let db = setup.db.conn();
            panic!(
                "never done: {done}\ndeparted {}, memberships {}, held {}, keys not blocked {}, stream entries {}",
                scalar(db, "SELECT count(*) FROM entra_sync_departed_users").await,
                scalar(db, r#"SELECT count(*) FROM "LiteLLM_TeamMembership""#).await,
                scalar(db, "SELECT count(*) FROM entra_sync_held_removals").await,
                scalar(
                    db,
                    r#"SELECT count(*) FROM "LiteLLM_VerificationToken" WHERE blocked IS NOT TRUE"#
                )
                .await,
                setup.stream.len(),
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let to_commit = started.elapsed();
    // The cache messages of the last commit follow it; quiet for a second means they are all in.
    let received = subscriber.receive_until_quiet(Duration::from_secs(1));
    let last = received
        .last()
        .map_or(to_commit, |(at, _)| at.saturating_duration_since(started));
    Figures {
        to_commit,
        to_last_message: last.max(to_commit),
        messages: received.len(),
        graph_requests: setup.sim.requests().iter().filter(|r| !r.batch).count(),
    }
}

/// Every user departed, none of their memberships left (or all held), every key of theirs
/// deleted or blocked.
fn departed(held: bool) -> String {
    let memberships = if held {
        format!(
            "(SELECT count(*) FROM entra_sync_held_removals) = {}",
            USERS * 3
        )
    } else {
        r#"NOT EXISTS (SELECT 1 FROM "LiteLLM_TeamMembership")"#.to_owned()
    };
    format!(
        r#"SELECT ((SELECT count(*) FROM entra_sync_departed_users) = {USERS}
                  AND {memberships}
                  AND NOT EXISTS (SELECT 1 FROM "LiteLLM_VerificationToken"
                                  WHERE blocked IS NOT TRUE))::int::bigint"#
    )
}

/// Every user back, their keys unblocked.
const BACK: &str = r#"SELECT (NOT EXISTS (SELECT 1 FROM entra_sync_departed_users)
                              AND NOT EXISTS (SELECT 1 FROM "LiteLLM_VerificationToken"
                                              WHERE blocked))::int::bigint"#;

#[tokio::main]
async fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    // `RUST_LOG=info` shows what the worker did, with timestamps, for a closer look.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    println!(
        "departures benchmark: {USERS} users, each in 3 of {TEAMS} teams with {KEYS_EACH} team keys \
         (PostgreSQL at {}, Redis at {})",
        entra_sync_testkit::server_url(),
        redis_url()
    );
    let removed = setup(0).await;
    let figures = notify_all(&removed, false, &departed(false)).await;
    report("10,000 disabled, ENTRA_SYNC_REMOVAL_THRESHOLD=0", &figures);
    removed.sim.shutdown();

    let held = setup(DEFAULT_REMOVAL_THRESHOLD).await;
    let figures = notify_all(&held, false, &departed(true)).await;
    report(
        &format!("10,000 disabled, threshold {DEFAULT_REMOVAL_THRESHOLD} (held)"),
        &figures,
    );
    let figures = notify_all(&held, true, BACK).await;
    report("10,000 enabled again (keys unblocked)", &figures);
    held.sim.shutdown();
}
