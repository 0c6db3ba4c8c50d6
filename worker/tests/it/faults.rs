//! The fault suite: each fault an operator meets, end to end (graph-sim, the webhook, Redis, the
//! worker, LiteLLM's real schema), and each must end with LiteLLM's tables equal to what Entra
//! holds and nothing lost: every notification acknowledged, nothing dead-lettered. Each test
//! prints one line (`cargo test -p worker --test it -- faults:: --nocapture`):
//!
//! ```text
//! fault  1  worker SIGKILL mid-round                 converged in  4.2 s, nothing lost
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use crate::common;
use crate::graph_common;
use crate::world;

use std::time::{Duration, Instant};

use entra_sync_testkit::proxy::TcpProxy;
use entra_sync_testkit::redis::RedisProxy;
use entra_sync_testkit::servers::{OwnPgBouncer, OwnRedis};
use graph_common::*;
use graph_sim::Fault;
use sea_orm::ConnectionTrait;
use uuid::Uuid;
use world::*;

/// What Entra holds for a group now: its name, and its users who may hold a team.
fn entra(world: &World, n: u128) -> (Option<String>, Vec<String>) {
    world.sim.read(|t| {
        let name = t.groups.get(&gid(n)).map(|g| g.display_name.clone());
        let mut members: Vec<String> = t
            .members_of(gid(n), false)
            .unwrap_or_default()
            .into_iter()
            .filter(|id| t.users.get(id).is_some_and(|u| u.account_enabled))
            .map(|id| id.to_string())
            .collect();
        members.sort();
        (name, members)
    })
}

/// Waits until LiteLLM shows, for every group, what Entra holds, and every notification is
/// acknowledged with none dead-lettered; prints the fault's line, and fails with what differs.
async fn converges(world: &World, number: u32, fault: &str, started: Instant, groups: &[u128]) {
    let check = || async {
        for &n in groups {
            let (name, members) = entra(world, n);
            if world.members(n).await != Some(members) || world.alias(n).await != name {
                return false;
            }
        }
        world.unread() == 0 && world.pending() == 0
    };
    let converged = eventually_within(Duration::from_secs(60), check).await;
    let line = format!(
        "fault {number:>2}  {fault:<44} {} in {:>4.1} s, {}",
        if converged {
            "converged"
        } else {
            "DID NOT CONVERGE"
        },
        started.elapsed().as_secs_f64(),
        if world.dead.is_empty() {
            "nothing lost"
        } else {
            "DEAD LETTERS"
        }
    );
    println!("{line}");
    let mut state = String::new();
    for &n in groups {
        state.push_str(&format!(
            "\n  group {n}: LiteLLM {:?} {:?}, Entra {:?}",
            world.alias(n).await,
            world.members(n).await,
            entra(world, n)
        ));
    }
    assert!(
        converged,
        "{line}{state}\n  unread {}, pending {}",
        world.unread(),
        world.pending()
    );
    assert!(world.dead.is_empty(), "{line}: dead letters");
}

/// The status a worker process's endpoint answers, 0 while it does not answer.
async fn status(base: &str, path: &str) -> u16 {
    match reqwest::get(format!("{base}{path}")).await {
        Ok(response) => response.status().as_u16(),
        Err(_) => 0,
    }
}

/// Graph's deliveries the webhook did not accept (answered 503, or could not be reached).
fn refused_deliveries(world: &World) -> usize {
    world
        .sim
        .deliveries()
        .iter()
        .filter(|d| !d.status.is_some_and(|s| (200..300).contains(&s)))
        .count()
}

/// The assignment polls graph-sim has answered, from both replicas alike.
fn polls(world: &World) -> usize {
    world.sim.count("/appRoleAssignedTo")
}

fn with(mut ids: Vec<String>, n: u128) -> Vec<String> {
    ids.push(uid(n).to_string());
    ids.sort();
    ids
}

fn assign(world: &World, n: u128) {
    world.sim.change(|t| {
        t.assign(gid(n), Uuid::nil()).unwrap();
        ((), Vec::new())
    });
}

/// A key of user `user`'s in LiteLLM, for a group's team or their own.
async fn key(world: &World, token: &str, user: u128, team: Option<u128>) {
    let team = team.map(|t| gid(t).to_string());
    common::insert_key(
        world.db.conn(),
        token,
        &uid(user).to_string(),
        team.as_deref(),
        None,
        "2026-01-01 00:00:00",
    )
    .await;
}

/// A key's `blocked` and `metadata`; `None` once it is deleted.
async fn key_state(world: &World, token: &str) -> Option<(Option<bool>, serde_json::Value)> {
    common::key_state(world.db.conn(), token).await
}

/// A key as it was made: never blocked, its metadata as it was.
fn untouched() -> Option<(Option<bool>, serde_json::Value)> {
    Some((None, serde_json::json!({"note": "kept"})))
}

/// A key entra-sync blocked and unblocked again.
fn unblocked() -> Option<(Option<bool>, serde_json::Value)> {
    Some((Some(false), serde_json::json!({"note": "kept"})))
}

/// Keys copied to LiteLLM's deleted keys (as deleted keys are).
async fn deleted_keys(world: &World) -> i64 {
    world
        .count(r#"SELECT count(*) FROM "LiteLLM_DeletedVerificationToken""#)
        .await
}

/// The failed items of this kind (`group`, `user`, `member`) and id.
async fn failed_items(world: &World, kind: &str, id: &str) -> i64 {
    world
        .count(&format!(
            "SELECT count(*) FROM entra_sync_failed_items WHERE kind = '{kind}' AND id = '{id}'"
        ))
        .await
}

/// A member of group `group` that Graph could not read, as a failed item's id.
fn member_item(group: u128, user: u128) -> String {
    format!("{}/{}", gid(group), uid(user))
}

/// A number of seconds the test database answers, `None` for no row or NULL.
async fn seconds(world: &World, sql: &str) -> Option<f64> {
    world
        .db
        .conn()
        .query_one(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            sql,
        ))
        .await
        .unwrap()
        .and_then(|row| row.try_get_by_index::<Option<f64>>(0).unwrap())
}

/// `entra-sync-worker` with `args` as a process of its own, configured as the world's workers
/// are, to its exit: whether it succeeded, and what it wrote to stderr.
async fn worker_command(world: &World, args: &[&str]) -> (bool, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_entra-sync-worker"));
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (key, value) in world.worker_env("command") {
        command.env(key, value);
    }
    let out = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("the command exits")
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn fault_01_worker_killed_mid_round() {
    let mut world = World::new().await;
    let doomed = world.spawn_worker_process("doomed");
    assert!(eventually(|| async { world.first_round_committed().await }).await);
    let started = Instant::now();

    // The round hangs in Graph with the entry read and not acknowledged; SIGKILL.
    world
        .sim
        .add_fault(Fault::delay("/groups/delta", 20_000, 1));
    world.sim.apply(|t| t.add_member(gid(1), uid(6)));
    assert!(eventually(|| async { world.pending() >= 1 }).await);
    world.kill_process(doomed);
    world.sim.apply(|t| t.remove_member(gid(1), uid(2)));

    world.spawn_worker_process("heir");
    converges(&world, 1, "worker SIGKILL mid-round", started, &[1]).await;
}

#[tokio::test]
async fn fault_02_redis_restart() {
    let mut redis = OwnRedis::start();
    let mut world = World::on(redis.server()).await;
    // Graph retries a delivery the webhook answers 503 to (for hours; here, for a while).
    world.sim.set_delivery(|d| {
        d.attempts = 100;
        d.retry_delay_millis = 200;
    });
    let worker = world.spawn_worker_process_with("restart", &[("REDIS_URL", &redis.url())]);
    let health = world.metrics_url(worker).await;
    assert!(eventually(|| async { world.first_round_committed().await }).await);
    let started = Instant::now();
    world.sim.apply(|t| t.add_member(gid(1), uid(6)));
    assert!(eventually(|| async { world.members(1).await == Some(users(1..=6)) }).await);
    assert!(eventually(|| async { status(&health, "/readyz").await == 200 }).await);

    // Redis goes away while Entra changes, and comes back from its append-only file. The
    // outage lasts until both sides felt it: Graph's deliveries refused by the webhook, and the
    // worker's reads of the stream failing (its /readyz says so).
    let refused_before = refused_deliveries(&world);
    redis.stop();
    world.sim.apply(|t| t.remove_member(gid(1), uid(3)));
    world
        .sim
        .apply(|t| t.upsert_group(gid(1), "Platform", None));
    assert!(
        eventually(|| async { refused_deliveries(&world) > refused_before }).await,
        "the webhook accepted notifications without Redis: {:?}",
        world.sim.deliveries()
    );
    assert!(
        eventually(|| async { status(&health, "/readyz").await == 503 }).await,
        "the worker did not notice that Redis was away"
    );
    redis.restart();
    converges(&world, 2, "Redis restart", started, &[1]).await;
}

/// While the worker's database is away, nothing it was notified of is committed or
/// acknowledged: the outage was real, and the notifications wait for it to end.
async fn outage_held(world: &World) {
    assert_eq!(
        world.members(1).await,
        Some(users(1..=5)),
        "a change was committed during the outage"
    );
    assert!(
        world.unread() + world.pending() >= 1,
        "notifications were acknowledged during the outage"
    );
}

#[tokio::test]
async fn fault_03_postgresql_restart() {
    let mut world = World::new().await;
    let postgres = TcpProxy::start(entra_sync_testkit::server_addr()).await;
    let url = world.db.url_via(postgres.addr());
    world.spawn_worker_process_with("restart", &[("DATABASE_URL", &url)]);
    assert!(eventually(|| async { world.first_round_committed().await }).await);
    let started = Instant::now();

    // Every connection drops and new ones are refused, as while PostgreSQL restarts.
    postgres.cut();
    world.sim.apply(|t| t.add_member(gid(1), uid(7)));
    world.sim.apply(|t| t.remove_member(gid(1), uid(4)));
    assert!(eventually(|| async { world.unread() + world.pending() >= 1 }).await);
    // The outage itself, as long as a restart takes (a duration, not a wait for an event): the
    // worker holds the notifications and can commit nothing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    outage_held(&world).await;
    postgres.restore();
    converges(&world, 3, "PostgreSQL restart", started, &[1]).await;
}

#[tokio::test]
async fn fault_04_pgbouncer_restart() {
    let mut pgbouncer = OwnPgBouncer::start();
    let mut world = World::new().await;
    let url = pgbouncer.url(world.db.name());
    world.spawn_worker_process_with("pooled", &[("DATABASE_URL", &url)]);
    assert!(eventually(|| async { world.first_round_committed().await }).await);
    let started = Instant::now();

    pgbouncer.stop();
    world.sim.apply(|t| t.add_member(gid(1), uid(8)));
    world.sim.apply(|t| t.remove_member(gid(1), uid(5)));
    assert!(eventually(|| async { world.unread() + world.pending() >= 1 }).await);
    // The outage itself, as long as a restart takes (a duration, not a wait for an event): the
    // worker holds the notifications and can commit nothing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    outage_held(&world).await;
    pgbouncer.restart();
    converges(&world, 4, "PgBouncer restart", started, &[1]).await;
}

#[tokio::test]
async fn fault_05_graph_429_storm() {
    let mut world = World::new().await;
    world.start_worker();
    assert!(eventually(|| async { world.first_round_committed().await }).await);
    let started = Instant::now();

    // Every delta and getByIds request throttled three times in a row, with Retry-After.
    world.sim.add_fault(Fault::throttle("/groups/delta", 1, 3));
    world
        .sim
        .add_fault(Fault::throttle("/directoryObjects/getByIds", 1, 3));
    world.sim.apply(|t| t.add_member(gid(1), uid(9)));
    world.sim.apply(|t| t.remove_member(gid(1), uid(4)));
    converges(&world, 5, "Graph 429 storm", started, &[1]).await;
    assert!(world.sim.requests().iter().any(|r| r.status == 429));
}

#[tokio::test]
async fn fault_06_graph_503() {
    let mut world = World::new().await;
    world.start_worker();
    assert!(eventually(|| async { world.first_round_committed().await }).await);
    let started = Instant::now();

    world.sim.add_fault(Fault::status("/groups/delta", 503, 6));
    world
        .sim
        .add_fault(Fault::status("/directoryObjects/getByIds", 503, 3));
    world.sim.apply(|t| t.add_member(gid(1), uid(10)));
    world.sim.apply(|t| t.remove_member(gid(1), uid(1)));
    converges(&world, 6, "Graph 503", started, &[1]).await;
    assert!(world.sim.requests().iter().any(|r| r.status == 503));
}

#[tokio::test]
async fn fault_07_expired_delta_token() {
    let mut world = World::new().await;
    world.start_worker();
    assert!(eventually(|| async { world.first_round_committed().await }).await);
    let started = Instant::now();

    world.sim.change(|t| {
        t.expire_delta_tokens();
        ((), Vec::new())
    });
    world.sim.apply(|t| t.add_member(gid(1), uid(8)));
    world.sim.apply(|t| t.remove_member(gid(1), uid(2)));
    converges(&world, 7, "expired delta token", started, &[1]).await;
    assert!(world.sim.requests().iter().any(|r| r.status == 410));
}

#[tokio::test]
async fn fault_08_team_deleted_by_hand() {
    let mut world = World::new().await;
    world.start_worker();
    assert!(eventually(|| async { world.members(1).await == Some(users(1..=5)) }).await);
    let started = Instant::now();

    world
        .db
        .conn()
        .execute_unprepared(&format!(
            r#"DELETE FROM "LiteLLM_TeamMembership" WHERE team_id = '{g}';
               UPDATE "LiteLLM_UserTable" SET teams = array_remove(teams, '{g}');
               DELETE FROM "LiteLLM_TeamTable" WHERE team_id = '{g}';"#,
            g = gid(1)
        ))
        .await
        .unwrap();
    world.sim.apply(|t| t.add_member(gid(1), uid(6)));
    converges(&world, 8, "a team deleted by hand", started, &[1]).await;
}

#[tokio::test]
async fn fault_09_a_group_whose_members_return_404() {
    let mut world = World::new().await;
    world.start_worker();
    assert!(eventually(|| async { world.first_round_committed().await }).await);
    let started = Instant::now();

    // Two groups are assigned; Graph answers 404 for one's members, for good. The other group,
    // and changes to group 1, go on meanwhile.
    world.sim.apply(|t| t.upsert_group(gid(3), "Design", None));
    world.sim.apply(|t| t.add_member(gid(3), uid(9)));
    assign(&world, 2);
    assign(&world, 3);
    let broken = format!("/groups/{}/members", gid(2));
    world.sim.add_fault(Fault {
        times: None,
        ..Fault::status(&broken, 404, 1)
    });
    world
        .syncer()
        .poll_assignments(chrono::Utc::now())
        .await
        .unwrap();
    world.sim.apply(|t| t.add_member(gid(1), uid(10)));
    converges(
        &world,
        9,
        "  (meanwhile, the other groups)",
        started,
        &[1, 3],
    )
    .await;
    assert_eq!(world.members(2).await, None);

    // Graph answers again: at its next attempt the group gets its team.
    world.sim.clear_faults();
    world
        .db
        .conn()
        .execute_unprepared("UPDATE entra_sync_failed_items SET retry_at = now()")
        .await
        .unwrap();
    converges(
        &world,
        9,
        "a group whose members return 404",
        started,
        &[1, 2, 3],
    )
    .await;
}

#[tokio::test]
async fn fault_10_duplicated_reordered_and_dropped_notifications() {
    let mut world = World::new().await;
    world.sim.set_delivery(|d| {
        d.duplicates = 3;
        d.reorder = true;
        d.delay_millis = 300;
        d.loss_rate = 0.5;
    });
    world.start_worker();
    assert!(eventually(|| async { world.first_round_committed().await }).await);
    let started = Instant::now();

    world.sim.apply(|t| t.add_member(gid(1), uid(6)));
    world.sim.apply(|t| t.remove_member(gid(1), uid(6)));
    world.sim.apply(|t| t.add_member(gid(1), uid(7)));
    world.sim.apply(|t| t.remove_member(gid(1), uid(1)));
    world.sim.apply(|t| t.upsert_group(gid(1), "Renamed", None));
    // Whatever was dropped, the next notification that arrives carries it all (delta query).
    world.sim.set_delivery(|d| d.loss_rate = 0.0);
    world.sim.apply(|t| t.add_member(gid(1), uid(8)));
    converges(
        &world,
        10,
        "duplicated, reordered and dropped notifications",
        started,
        &[1],
    )
    .await;
}

#[tokio::test]
async fn fault_11_a_lapsed_subscription() {
    let mut world = World::new().await;
    let url = world.webhook_url.clone();
    world.spawn_worker_process_with(
        "keeper",
        &[
            ("ENTRA_SYNC_PUBLIC_URL", url.as_str()),
            ("ENTRA_SYNC_CLIENT_STATE", CLIENT_STATE),
            ("ENTRA_SYNC_SUBSCRIPTION_CHECK_SECONDS", "1"),
        ],
    );
    let groups_subscriptions = || {
        world
            .sim
            .subscriptions()
            .into_iter()
            .filter(|s| s.resource == "groups")
            .map(|s| s.id)
            .collect::<Vec<_>>()
    };
    assert!(eventually(|| async { world.first_round_committed().await }).await);
    // The keeper made its own (beside the one the test world made).
    assert!(
        eventually(|| async {
            world
                .count("SELECT count(*) FROM entra_sync_subscriptions WHERE resource = 'groups'")
                .await
                == 1
        })
        .await
    );
    let started = Instant::now();

    // Every groups subscription lapses (Graph deletes expired ones): nothing is delivered until
    // the worker makes a new one; a change made meanwhile is caught by the next round.
    let lapsed = groups_subscriptions();
    let (client, _) = secret_client(&world.sim);
    for id in &lapsed {
        client.delete_subscription(id).await.unwrap();
    }
    world.sim.apply(|t| t.remove_member(gid(1), uid(5)));
    assert!(
        eventually(|| async { groups_subscriptions().iter().any(|id| !lapsed.contains(id)) }).await,
        "the subscription was not made again"
    );
    world.sim.apply(|t| t.add_member(gid(1), uid(9)));
    converges(&world, 11, "a lapsed subscription", started, &[1]).await;
}

#[tokio::test]
async fn fault_12_two_replicas_racing() {
    let mut world = World::new().await;
    // Polls every second on both replicas, and a slow read of each group's members, so that a
    // poll's full read of a new group can overlap removals.
    let fast = [("ENTRA_SYNC_POLL_SECONDS", "1")];
    world.spawn_worker_process_with("replica-a", &fast);
    world.spawn_worker_process_with("replica-b", &fast);
    assert!(eventually(|| async { world.first_round_committed().await }).await);
    world.sim.add_fault(Fault {
        times: None,
        ..Fault::delay("/members", 400, 1)
    });
    let started = Instant::now();

    assign(&world, 2);
    for round in 0..3 {
        world.sim.apply(|t| t.remove_member(gid(2), uid(3 + round)));
        world.sim.apply(|t| t.remove_member(gid(1), uid(1 + round)));
        world.sim.apply(|t| t.add_member(gid(2), uid(9)));
        world.sim.apply(|t| t.remove_member(gid(2), uid(9)));
        // The next changes come after another poll was answered: polls and rounds interleave.
        let answered = polls(&world);
        assert!(eventually(|| async { polls(&world) > answered }).await);
    }
    world.sim.apply(|t| t.add_member(gid(1), uid(10)));
    converges(&world, 12, "two replicas racing", started, &[1, 2]).await;
    // And it stays so: the next polls (two more of each replica's) change nothing.
    let answered = polls(&world);
    assert!(eventually(|| async { polls(&world) >= answered + 4 }).await);
    converges(&world, 12, "  (still, after more polls)", started, &[1, 2]).await;
}

#[tokio::test]
async fn an_unreadable_entry_is_dead_lettered_and_the_rest_go_on() {
    let mut world = World::new().await;
    world.start_worker();
    assert!(eventually(|| async { world.members(1).await == Some(users(1..=5)) }).await);

    world
        .stream
        .command(&["XADD", world.stream.key(), "*", "v", "99", "garbage", "yes"]);
    world.sim.apply(|t| t.add_member(gid(1), uid(10)));

    assert!(eventually(|| async { world.members(1).await == Some(with(users(1..=5), 10)) }).await);
    assert!(
        eventually(|| async { world.dead.len() == 1 }).await,
        "the poison entry was not dead-lettered"
    );
    let letter = &world.dead.entries()[0];
    assert_eq!(letter["field.garbage"], "yes");
    assert_eq!(letter["deliveries"], "3");
    assert!(eventually(|| async { world.pending() == 0 }).await);
}

#[tokio::test]
async fn readyz_fails_while_redis_is_away_and_recovers_when_it_is_back() {
    let mut world = World::new().await;
    let redis = RedisProxy::start().await;
    let worker = world.spawn_worker_process_with("readiness", &[("REDIS_URL", &redis.url())]);
    let health = world.metrics_url(worker).await;
    let readyz = || status(&health, "/readyz");
    assert!(eventually(|| async { world.first_round_committed().await }).await);
    assert!(eventually(|| async { readyz().await == 200 }).await);

    redis.cut();
    assert!(
        eventually(|| async { readyz().await == 503 }).await,
        "still ready without Redis"
    );

    redis.restore();
    assert!(
        eventually(|| async { readyz().await == 200 }).await,
        "not ready again once Redis is back"
    );
    // And it works again: a change made now arrives.
    world.sim.apply(|t| t.add_member(gid(1), uid(6)));
    assert!(eventually(|| async { world.members(1).await == Some(with(users(1..=5), 6)) }).await);
    assert!(eventually(|| async { world.pending() == 0 }).await);
}

#[tokio::test]
async fn readyz_fails_after_five_rounds_fail_in_a_row_and_recovers() {
    let mut world = World::new().await;
    let worker = world.spawn_worker_process("failing");
    let health = world.metrics_url(worker).await;
    let http = reqwest::Client::new();
    let get = |path: &'static str| {
        let url = format!("{health}{path}");
        let http = http.clone();
        async move {
            match http.get(url).send().await {
                Ok(response) => (
                    response.status().as_u16(),
                    response.text().await.unwrap_or_default(),
                ),
                Err(_) => (0, String::new()),
            }
        }
    };
    assert!(eventually(|| async { world.first_round_committed().await }).await);
    assert!(eventually(|| async { get("/readyz").await.0 == 200 }).await);

    // Graph refuses every delta query (the database and Redis are fine): rounds fail as a whole.
    world.sim.add_fault(Fault {
        times: None,
        ..Fault::status("/groups/delta", 400, 1)
    });
    world.sim.apply(|t| t.add_member(gid(1), uid(6)));
    assert!(
        eventually(|| async { get("/readyz").await.0 == 503 }).await,
        "still ready after rounds kept failing"
    );
    let metrics = get("/metrics").await.1;
    assert!(
        metric(&metrics, "entra_sync_failed_rounds_in_a_row") >= Some(5.0),
        "the five failures are not counted: {metrics}"
    );

    world.sim.clear_faults();
    assert!(eventually(|| async { get("/readyz").await.0 == 200 }).await);
    assert!(eventually(|| async { world.members(1).await == Some(users(1..=6)) }).await);
    assert!(eventually(|| async { world.pending() == 0 }).await);
}

#[tokio::test]
async fn fault_18_a_reconciliation_that_fails_then_succeeds_at_the_next_check() {
    use entity::sync::reconciliation;
    use sea_orm::{EntityTrait, QueryOrder};

    let mut world = World::new().await;
    // Reconciliations every hour, whether one is due looked at every 200 ms (the first look
    // after the first poll interval, a second here).
    let interval = Duration::from_secs(3600);
    world.run_settings.poll_interval = Duration::from_secs(1);
    world.run_settings.reconcile_interval = Some(interval);
    world.run_settings.reconcile_check = Duration::from_millis(200);
    // Graph refuses the tenant's users listing, each reconciliation's first read, until the
    // faults are cleared.
    world.sim.add_fault(Fault {
        times: None,
        ..Fault::status("/v1.0/users", 400, 1)
    });
    world.start_worker();
    assert!(eventually(|| async { world.members(1).await == Some(users(1..=5)) }).await);
    // Drift only a reconciliation repairs: the team renamed by hand (no notification, no delta).
    world
        .db
        .conn()
        .execute_unprepared(&format!(
            r#"UPDATE "LiteLLM_TeamTable" SET team_alias = 'Renamed by hand' WHERE team_id = '{}'"#,
            gid(1)
        ))
        .await
        .unwrap();
    let failed = "SELECT count(*) FROM entra_sync_reconciliations WHERE error IS NOT NULL";
    assert!(
        eventually(|| async { world.count(failed).await >= 1 }).await,
        "no failed reconciliation was recorded"
    );
    assert_eq!(world.alias(1).await.as_deref(), Some("Renamed by hand"));
    let started = Instant::now();

    world.sim.clear_faults();
    converges(
        &world,
        18,
        "reconciliation fails, succeeds at next check",
        started,
        &[1],
    )
    .await;
    // The failed runs are recorded with their error; the next check's run succeeded and fixed
    // the drift, long before the interval since the first failure had passed. (Its record is
    // written after its changes commit.)
    let succeeded = "SELECT count(*) FROM entra_sync_reconciliations WHERE error IS NULL";
    assert!(eventually(|| async { world.count(succeeded).await >= 1 }).await);
    let runs = reconciliation::Entity::find()
        .order_by_asc(reconciliation::Column::Id)
        .all(world.db.conn())
        .await
        .unwrap();
    let succeeded: Vec<_> = runs.iter().filter(|run| run.error.is_none()).collect();
    assert_eq!(succeeded.len(), 1, "{runs:?}");
    let (failures, after) = runs.split_at(runs.len() - 1);
    assert_eq!(after[0].error, None, "{runs:?}");
    assert!(after[0].changes >= 1, "{runs:?}");
    assert!(
        failures
            .iter()
            .all(|run| run.error.as_deref().is_some_and(|e| e.contains("400"))),
        "{runs:?}"
    );
    let first_failure = &failures[0];
    assert!(
        after[0].started_at - first_failure.finished_at
            < chrono::Duration::from_std(interval).unwrap(),
        "{runs:?}"
    );
}

/// While Graph cannot read user 2 (group 1 still lists her): she is still group 1's member with
/// her keys as they were, and a failed item of her own, after `after`.
async fn unreadable_member_kept(world: &World, after: &str) {
    assert_eq!(
        world.members(1).await,
        Some(users(1..=5)),
        "after {after}: the member Graph could not read left her team"
    );
    assert_eq!(
        key_state(world, "two-team").await,
        untouched(),
        "after {after}: her team key"
    );
    assert_eq!(
        key_state(world, "two-personal").await,
        untouched(),
        "after {after}: her own key"
    );
    assert_eq!(deleted_keys(world).await, 0, "after {after}");
    assert_eq!(
        failed_items(world, "member", &member_item(1, 2)).await,
        1,
        "after {after}: no failed item for the member Graph could not read"
    );
}

#[tokio::test]
async fn fault_13_a_member_unreadable_during_a_reconciliation_and_a_full_sync() {
    let mut world = World::new().await;
    // The worker reconciles every two seconds (whether one is due looked at every 200 ms, the
    // first time after the first poll interval, a second).
    world.run_settings.poll_interval = Duration::from_secs(1);
    world.run_settings.reconcile_interval = Some(Duration::from_secs(2));
    world.run_settings.reconcile_check = Duration::from_millis(200);
    world.start_worker();
    assert!(eventually(|| async { world.members(1).await == Some(users(1..=5)) }).await);
    key(&world, "two-team", 2, Some(1)).await;
    key(&world, "two-personal", 2, None).await;
    let started = Instant::now();

    // Replication lag: group 1 still lists user 2, but getByIds leaves her out, the users
    // listing too, and reading her answers 404.
    let lag_began = chrono::Utc::now();
    world.sim.lag(uid(2));
    let reconciled = format!(
        "SELECT count(*) FROM entra_sync_reconciliations
         WHERE error IS NULL AND started_at > '{}'",
        lag_began.to_rfc3339()
    );
    assert!(
        eventually(|| async { world.count(&reconciled).await >= 1 }).await,
        "no reconciliation ran during the lag"
    );
    unreadable_member_kept(&world, "a reconciliation").await;

    // An operator's full sync, as a process of its own, meets the same lag.
    let (ok, stderr) = worker_command(&world, &["sync", "--full"]).await;
    assert!(ok, "sync --full failed: {stderr}");
    unreadable_member_kept(&world, "sync --full").await;

    // Graph reads her again: nothing to repair, and nothing left failing.
    world.sim.end_lag(uid(2));
    assert!(
        eventually(|| async {
            world
                .count("SELECT count(*) FROM entra_sync_failed_items")
                .await
                == 0
        })
        .await,
        "failed items left once Graph reads her again"
    );
    converges(
        &world,
        13,
        "member unreadable: reconcile, sync --full",
        started,
        &[1],
    )
    .await;
    assert_eq!(key_state(&world, "two-team").await, untouched());
    assert_eq!(key_state(&world, "two-personal").await, untouched());
    assert_eq!(deleted_keys(&world).await, 0);
}

#[tokio::test]
async fn fault_14_a_new_member_unreadable_for_five_seconds() {
    let mut world = World::new().await;
    world.start_worker();
    assert!(eventually(|| async { world.members(1).await == Some(users(1..=5)) }).await);
    assert!(eventually(|| async { world.unread() == 0 && world.pending() == 0 }).await);
    let started = Instant::now();

    // User 6 joins group 1 while Graph's replicas cannot read her yet, for five seconds.
    let lag = Duration::from_secs(5);
    let lag_began = Instant::now();
    world.sim.lag_for(uid(6), lag);
    world.sim.apply(|t| t.add_member(gid(1), uid(6)));
    let item = member_item(1, 6);
    assert!(
        eventually(|| async { failed_items(&world, "member", &item).await == 1 }).await,
        "the new member Graph cannot read is not a failed item"
    );
    assert!(eventually(|| async { world.unread() == 0 && world.pending() == 0 }).await);
    let entries = world.stream.len();
    // Not added while Graph cannot read her (a lower bound: waiting is the behaviour here).
    while lag_began.elapsed() < lag {
        assert_eq!(
            world.members(1).await,
            Some(users(1..=5)),
            "added while Graph could not read her"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Her failed item's retry adds her: no notification came, no reconciliation ran.
    converges(&world, 14, "a new member unreadable for 5 s", started, &[1]).await;
    assert_eq!(world.stream.len(), entries, "a notification came meanwhile");
    assert_eq!(
        world
            .count("SELECT count(*) FROM entra_sync_reconciliations")
            .await,
        0
    );
    assert!(
        eventually(|| async { failed_items(&world, "member", &item).await == 0 }).await,
        "her failed item was not cleared"
    );
    let recovered = format!(
        "SELECT count(*) FROM entra_sync_audit_log
         WHERE kind = 'sync_recovered' AND detail->>'id' = '{item}'"
    );
    assert_eq!(world.count(&recovered).await, 1);
}

/// Whether Graph failed a resync's members read mid-paging (a `$filter` page answered, the page
/// after it 503), and a later attempt since failed too (so the first is over).
fn failed_mid_paging(world: &World) -> bool {
    let reads: Vec<_> = world
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/groups/delta") && !r.batch)
        .collect();
    let Some(first) = reads.iter().position(|r| r.status == 503) else {
        return false;
    };
    first > 0
        && reads[first].query.contains("skiptoken")
        && reads[first - 1].status == 200
        && reads[first - 1].query.contains("filter")
        && reads[first..]
            .iter()
            .any(|r| r.status == 503 && r.query.contains("deltatoken"))
}

#[tokio::test]
async fn fault_15_a_resync_whose_members_read_fails_mid_paging() {
    let mut world = World::new().await;
    world.start_worker();
    assert!(eventually(|| async { world.members(1).await == Some(users(1..=5)) }).await);
    assert!(eventually(|| async { world.unread() == 0 && world.pending() == 0 }).await);
    for n in 1..=5 {
        key(&world, &format!("team-key-{n}"), n, Some(1)).await;
    }
    let started = Instant::now();

    // Group 1's members come two to a page of its delta read. The token expired: the next
    // round resyncs. Its delta query (410), the resync's new deltaLink and the first page of
    // group 1's members are answered; the second page, and every delta request after it, fails
    // until the faults are cleared.
    world.sim.set_config(|c| {
        c.page_size = 1;
        c.delta_members_per_object = 2;
    });
    world.sim.add_fault(Fault::delay("/groups/delta", 0, 3));
    world.sim.add_fault(Fault {
        times: None,
        ..Fault::status("/groups/delta", 503, 1)
    });
    world.sim.change(|t| {
        t.expire_delta_tokens();
        ((), Vec::new())
    });
    world.sim.apply(|t| t.add_member(gid(1), uid(6)));
    assert!(
        eventually(|| async { failed_mid_paging(&world) }).await,
        "the resync's members read did not fail mid-paging: {:?}",
        world.sim.requests()
    );
    // Nobody removed (the first page alone lists two of the five), no key deleted or blocked.
    assert_eq!(world.members(1).await, Some(users(1..=5)));
    for n in 1..=5 {
        assert_eq!(
            key_state(&world, &format!("team-key-{n}")).await,
            untouched(),
            "user {n}'s key"
        );
    }
    assert_eq!(deleted_keys(&world).await, 0);
    assert_eq!(
        world
            .count("SELECT count(*) FROM entra_sync_held_removals")
            .await,
        0
    );

    world.sim.clear_faults();
    converges(
        &world,
        15,
        "resync's members read fails mid-paging",
        started,
        &[1],
    )
    .await;
    for n in 1..=5 {
        assert_eq!(
            key_state(&world, &format!("team-key-{n}")).await,
            untouched(),
            "user {n}'s key"
        );
    }
    assert_eq!(deleted_keys(&world).await, 0);
    assert!(world.sim.requests().iter().any(|r| r.status == 410));
}

/// Fault 16's group: group 3, "Bulk", 600 users (1000 to 1599), each with a key for its team.
const BULK: std::ops::RangeInclusive<u128> = 1000..=1599;

/// Rows of keys in LiteLLM for the bulk group's team, matching `condition`.
async fn bulk_keys(world: &World, condition: &str) -> i64 {
    world
        .count(&format!(
            r#"SELECT count(*) FROM "LiteLLM_VerificationToken"
               WHERE team_id = '{}' AND ({condition})"#,
            gid(3)
        ))
        .await
}

/// The removals held now.
async fn held(world: &World) -> i64 {
    world
        .count("SELECT count(*) FROM entra_sync_held_removals")
        .await
}

/// The audit log's entries of this kind.
async fn audited(world: &World, kind: &str) -> i64 {
    world
        .count(&format!(
            "SELECT count(*) FROM entra_sync_audit_log WHERE kind = '{kind}'"
        ))
        .await
}

/// Fault 16 up to the hold: a worker process syncs group 3's 600 members, each is given a team
/// key, and then Entra removes all of them at once. The round holds the 600 removals: the
/// members stay, their keys are blocked, the worker's gauge and the audit log say so. Returns
/// the worker's metrics URL.
async fn six_hundred_removals_held(world: &mut World) -> String {
    world.sim.change(|t| {
        t.upsert_group(gid(3), "Bulk", None);
        for n in BULK {
            t.upsert_user(user(n, true));
            t.add_member(gid(3), uid(n));
        }
        t.assign(gid(3), Uuid::nil()).unwrap();
        ((), Vec::new())
    });
    let worker = world.spawn_worker_process("holder");
    let metrics = world.metrics_url(worker).await;
    assert!(
        eventually_within(Duration::from_secs(120), || async {
            world.members(3).await == Some(users(BULK))
        })
        .await,
        "the 600 members were not synced"
    );
    assert!(eventually(|| async { world.first_round_committed().await }).await);
    let values: Vec<String> = BULK
        .map(|n| {
            format!(
                "('bulk-{n}', '{}', '{}', ARRAY['gpt-4o'], 0, '{{\"note\": \"kept\"}}')",
                uid(n),
                gid(3)
            )
        })
        .collect();
    world
        .db
        .conn()
        .execute_unprepared(&format!(
            r#"INSERT INTO "LiteLLM_VerificationToken"
                 (token, user_id, team_id, models, spend, metadata)
               VALUES {}"#,
            values.join(",\n")
        ))
        .await
        .unwrap();

    // All 600 leave group 3 at once (an accidental bulk edit), one notification for them.
    world.sim.apply(|t| {
        let mut notices = Vec::new();
        for n in BULK {
            notices.extend(t.remove_member(gid(3), uid(n)));
        }
        notices.truncate(1);
        notices
    });
    assert!(
        eventually_within(Duration::from_secs(60), || async {
            held(world).await == 600
        })
        .await,
        "the 600 removals were not held: {} held",
        held(world).await
    );
    assert!(eventually(|| async { world.unread() == 0 && world.pending() == 0 }).await);
    assert_eq!(
        world.members(3).await,
        Some(users(BULK)),
        "held members left their team"
    );
    let held_keys = "blocked AND metadata->>'entra_sync_blocked' = 'removal_held'";
    assert_eq!(bulk_keys(world, held_keys).await, 600);
    assert_eq!(
        bulk_keys(world, "true").await,
        600,
        "a held removal's key was deleted"
    );
    assert_eq!(deleted_keys(world).await, 0);
    assert_eq!(audited(world, "removal_held").await, 600);
    assert!(
        eventually(|| async {
            metric(&scrape_url(&metrics).await, "entra_sync_removals_held") == Some(600.0)
        })
        .await,
        "the gauge does not say 600: {}",
        scrape_url(&metrics).await
    );
    // Group 1 and its keys are none of it.
    assert_eq!(world.members(1).await, Some(users(1..=5)));
    metrics
}

#[tokio::test]
async fn fault_16_six_hundred_removals_held_then_released() {
    let mut world = World::new().await;
    let started = Instant::now();
    let metrics = six_hundred_removals_held(&mut world).await;

    // The first of them is back in group 3 before a person releases the holds (its
    // notification has not come yet): the release checks each against Graph.
    let back = *BULK.start();
    world.sim.change(|t| {
        t.add_member(gid(3), uid(back));
        ((), Vec::new())
    });
    let (ok, stderr) = worker_command(&world, &["removals", "release", "--all"]).await;
    assert!(ok, "removals release failed: {stderr}");

    assert_eq!(world.members(3).await, Some(users(back..=back)));
    assert_eq!(held(&world).await, 0);
    assert_eq!(
        key_state(&world, &format!("bulk-{back}")).await,
        unblocked(),
        "the member back in the group has her key blocked"
    );
    assert_eq!(
        bulk_keys(&world, "true").await,
        1,
        "the leavers' keys are not deleted"
    );
    assert_eq!(deleted_keys(&world).await, 599);
    let archived = format!(
        r#"SELECT count(*) FROM "LiteLLM_DeletedVerificationToken"
           WHERE token LIKE 'bulk-%' AND team_id = '{}' AND token <> 'bulk-{back}'"#,
        gid(3)
    );
    assert_eq!(world.count(&archived).await, 599);
    assert_eq!(audited(&world, "removal_dropped").await, 1);
    assert!(
        eventually(|| async {
            metric(&scrape_url(&metrics).await, "entra_sync_removals_held") == Some(0.0)
        })
        .await,
        "the gauge still counts held removals"
    );
    converges(
        &world,
        16,
        "600 removals held, then released",
        started,
        &[1, 3],
    )
    .await;
}

#[tokio::test]
async fn fault_16_six_hundred_removals_held_then_discarded() {
    let mut world = World::new().await;
    let started = Instant::now();
    let metrics = six_hundred_removals_held(&mut world).await;

    // A person discards the holds: the members stay, their keys work again.
    let (ok, stderr) = worker_command(&world, &["removals", "discard", "--all"]).await;
    assert!(ok, "removals discard failed: {stderr}");
    assert_eq!(world.members(3).await, Some(users(BULK)));
    assert_eq!(held(&world).await, 0);
    assert_eq!(
        bulk_keys(
            &world,
            "blocked = false AND metadata = '{\"note\": \"kept\"}'::jsonb"
        )
        .await,
        600,
        "keys still blocked after the discard"
    );
    assert_eq!(deleted_keys(&world).await, 0);
    assert_eq!(audited(&world, "removal_dropped").await, 600);
    assert!(
        eventually(|| async {
            metric(&scrape_url(&metrics).await, "entra_sync_removals_held") == Some(0.0)
        })
        .await,
        "the gauge still counts held removals"
    );

    // And Entra is put right (the bulk edit undone): LiteLLM had never lost anything.
    world.sim.apply(|t| {
        let mut notices = Vec::new();
        for n in BULK {
            notices.extend(t.add_member(gid(3), uid(n)));
        }
        notices.truncate(1);
        notices
    });
    converges(
        &world,
        16,
        "600 removals held, then discarded",
        started,
        &[1, 3],
    )
    .await;
    assert_eq!(deleted_keys(&world).await, 0);
    assert_eq!(bulk_keys(&world, "blocked = false").await, 600);
}

#[tokio::test]
async fn fault_19_a_user_deleted_in_entra_is_departed_on_the_second_answer() {
    let mut world = World::new().await;
    // The worker hears of users too (a `users` subscription, as its keeper makes).
    world
        .subscription_manager()
        .ensure(chrono::Utc::now())
        .await
        .unwrap();
    world.start_worker();
    assert!(eventually(|| async { world.members(1).await == Some(users(1..=5)) }).await);
    key(&world, "four-team", 4, Some(1)).await;
    key(&world, "four-personal", 4, None).await;
    let started = Instant::now();

    // Deleted for good: she leaves group 1 (a removal Graph states, applied at once, her team
    // key with it), Graph notifies her deletion and answers 404 for her. That is one answer.
    world.sim.apply(|t| t.delete_user(uid(4)));
    let user = uid(4).to_string();
    assert!(
        eventually(|| async { failed_items(&world, "user", &user).await == 1 }).await,
        "the deleted user is not waiting for a second answer"
    );
    let first_answer = seconds(
        &world,
        &format!(
            "SELECT extract(epoch FROM first_seen_at)::float8
             FROM entra_sync_deletion_evidence WHERE entra_user_id = '{user}'"
        ),
    )
    .await
    .expect("the first answer is not recorded");
    let first_failed = seconds(
        &world,
        &format!(
            "SELECT extract(epoch FROM first_failed_at)::float8
             FROM entra_sync_failed_items WHERE kind = 'user' AND id = '{user}'"
        ),
    )
    .await
    .unwrap();
    assert!(first_answer <= first_failed);
    assert!(eventually(|| async { world.members(1).await == Some(with(users(1..=3), 5)) }).await);
    assert_eq!(key_state(&world, "four-team").await, None);
    assert_eq!(
        key_state(&world, "four-personal").await,
        untouched(),
        "her keys were blocked on the first answer"
    );

    // The second answer, a minute later at the earliest (waiting is the behaviour here),
    // confirms the deletion: her keys are blocked.
    assert!(
        eventually_within(Duration::from_secs(150), || async {
            key_state(&world, "four-personal").await
                == Some((
                    Some(true),
                    serde_json::json!({"note": "kept", "entra_sync_blocked": "user_departed"}),
                ))
        })
        .await,
        "her keys were not blocked after the second answer: {:?}",
        key_state(&world, "four-personal").await
    );
    let blocked_at = seconds(
        &world,
        &format!(
            "SELECT extract(epoch FROM min(recorded_at))::float8 FROM entra_sync_audit_log
             WHERE kind = 'key_blocked' AND user_id = '{user}'"
        ),
    )
    .await
    .expect("the block is not in the audit log");
    assert!(
        blocked_at - first_answer >= 60.0,
        "blocked {:.1} s after the first answer",
        blocked_at - first_answer
    );
    assert!(
        eventually(|| async { failed_items(&world, "user", &user).await == 0 }).await,
        "the confirmed deletion is still a failed item"
    );
    converges(&world, 19, "a user deleted in Entra", started, &[1]).await;
}
