//! The fault suite: each fault an operator meets, end to end (graph-sim, the webhook, Redis, the
//! worker, LiteLLM's real schema), and each must end with LiteLLM's tables equal to what Entra
//! holds and nothing lost: every notification acknowledged, nothing dead-lettered. Each test
//! prints one line (`cargo test -p worker --test faults -- --nocapture`):
//!
//! ```text
//! fault  1  worker SIGKILL mid-round                 converged in  4.2 s, nothing lost
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod graph_common;
mod world;

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
