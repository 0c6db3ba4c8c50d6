//! Revocation benchmark (not a test): a group of 10,000 members unassigned from the app under
//! `remove-members`, once with 5,000 of the members holding 2 team keys each and once with no
//! keys: the time to commit and the statements it took; then the time from the commit to the last
//! message on LiteLLM's cache channel, as a subscriber on the local Redis receives them.
//!
//! Run: `cargo bench -p worker --bench revocation`

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use entity::{GroupId, UserId};
use entra_sync_testkit::TestDatabase;
use entra_sync_testkit::redis::{Subscriber, redis_url};
use prometheus_client::metrics::family::Family;
use sea_orm::ConnectionTrait;
use worker::directory::EntraUser;
use worker::litellm_cache::{CHANNEL, CacheTarget, LiteLlmCache};
use worker::litellm_config::LiteLlmSettings;
use worker::store::{ApplyOptions, RemovalMode, Store};

const MEMBERS: u32 = 10_000;
const WITH_KEYS: u32 = 5_000;
const KEYS_EACH: u32 = 2;
/// Keys of other teams and personal keys, so that the key table is not the removal's alone.
const OTHER_KEYS: u32 = 50_000;

fn user(n: u32) -> EntraUser {
    EntraUser {
        id: UserId::parse(&format!("5b000000-0000-4000-8000-{n:012}")).unwrap(),
        user_principal_name: Some(format!("user{n}@contoso.com")),
        mail: None,
        display_name: Some(format!("User {n}")),
    }
}

struct Run {
    commit: Duration,
    statements: u64,
    changes: usize,
    to_last_message: Option<Duration>,
    messages: usize,
}

async fn removal(keys: bool) -> Run {
    let db = TestDatabase::new().await;
    let statements = Arc::new(AtomicU64::new(0));
    let mut conn = db.conn().clone();
    let counted = statements.clone();
    conn.set_metric_callback(move |_| {
        counted.fetch_add(1, Ordering::Relaxed);
    });
    let namespace = format!("entra-sync-bench-{}", uuid::Uuid::new_v4().simple());
    let target = CacheTarget {
        client: redis::Client::open(redis_url()).unwrap(),
        namespace: Some(namespace.clone()),
    };
    let cache = LiteLlmCache::start(target, Family::default());
    let store = Store::new(conn, LiteLlmSettings::default(), RemovalMode::Managed)
        .with_litellm_cache(cache.clone());
    let group = GroupId::parse("9a000000-0000-4000-8000-000000000001").unwrap();
    let options = ApplyOptions::commit(Utc::now());
    store
        .ensure_team(&group, "Everyone", options)
        .await
        .unwrap();
    let members: Vec<EntraUser> = (0..MEMBERS).map(user).collect();
    store.add_members(&group, &members, options).await.unwrap();
    if keys {
        db.conn()
            .execute_unprepared(&format!(
                r#"INSERT INTO "LiteLLM_VerificationToken" (token, user_id, team_id, models, created_at)
                   SELECT md5('team-key-' || n || '-' || k),
                          '5b000000-0000-4000-8000-' || lpad(n::text, 12, '0'), '{group}',
                          ARRAY[]::text[], now() - interval '1 hour'
                   FROM generate_series(0, {WITH_KEYS} - 1) n, generate_series(1, {KEYS_EACH}) k;
                   INSERT INTO "LiteLLM_VerificationToken" (token, user_id, team_id, models)
                   SELECT md5('other-key-' || n),
                          '5b000000-0000-4000-8000-' || lpad((n % {MEMBERS})::text, 12, '0'),
                          CASE WHEN n % 2 = 0 THEN NULL ELSE 'other-team-' || (n % 100) END,
                          ARRAY[]::text[]
                   FROM generate_series(1, {OTHER_KEYS}) n;
                   ANALYZE "LiteLLM_VerificationToken";"#
            ))
            .await
            .unwrap();
    }
    assert!(cache.flush(Duration::from_secs(30)).await);
    let subscriber = Subscriber::subscribe(&format!("{namespace}:{CHANNEL}"));
    statements.store(0, Ordering::Relaxed);

    let start = Instant::now();
    let changes = store
        .remove_managed_members(&group, ApplyOptions::commit(Utc::now()))
        .await
        .unwrap();
    let committed = Instant::now();
    let run_statements = statements.load(Ordering::Relaxed);

    let mut expected: HashSet<String> = changes
        .iter()
        .flat_map(worker::store::Change::cache_keys)
        .collect();
    expected.insert("team_alias:Everyone".into());
    let received = subscriber.receive_until(
        |payloads| payloads.len() >= expected.len(),
        Duration::from_secs(60),
    );
    let to_last_message = (received.len() >= expected.len())
        .then(|| {
            received
                .last()
                .map(|(at, _)| at.saturating_duration_since(committed))
        })
        .flatten();
    Run {
        commit: committed - start,
        statements: run_statements,
        changes: changes.len(),
        to_last_message,
        messages: received.len(),
    }
}

fn report(what: &str, run: &Run) {
    let last = run
        .to_last_message
        .map_or("not all received".to_owned(), |d| {
            format!("{:.1} ms", d.as_secs_f64() * 1000.0)
        });
    println!(
        "{what:<44} commit {:>8.1} ms  {:>3} statements  {:>6} changes  {:>6} cache messages, last {last} after the commit",
        run.commit.as_secs_f64() * 1000.0,
        run.statements,
        run.changes,
        run.messages,
    );
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would pass nothing: run only for bench.
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    println!(
        "revocation benchmark: a 10,000-member team removed under remove-members (PostgreSQL at {}, Redis at {})",
        entra_sync_testkit::server_url(),
        redis_url()
    );
    for _ in 0..2 {
        report("no keys", &removal(false).await);
        report("5,000 members with 2 team keys each", &removal(true).await);
    }
}
