//! The stream consumer against real servers: batches, acknowledgement, claiming a dead
//! consumer's entries, delivery counts, dead letters, trimming and lag.
//!
//! Every behaviour runs on each kind of server entra-sync supports: the machine's Redis (7.0),
//! Redis 6.2 and Valkey (both from `tests/servers/start`), each with its detected capabilities,
//! and Redis 6.0's path (XPENDING + XCLAIM, XDEL, counted lag) forced on the machine's Redis and
//! on Redis 6.2, which answers XCLAIM as 6.0 does.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use entra_sync_core::record::{Kind, StreamRecord};
use entra_sync_core::redis_server::{
    ClaimMethod, LAG_COUNT_LIMIT, LagSource, RedisCapabilities, TrimMethod,
};
use entra_sync_testkit::redis::{RedisServer, TestStream};
use worker::stream::{Entry, StreamConsumer, StreamSettings, stream_status};

#[derive(Clone, Copy, Debug)]
enum Target {
    /// The machine's Redis, its capabilities detected.
    Machine,
    Redis62,
    Valkey,
    /// The machine's Redis, taken down Redis 6.0's path.
    Redis60PathOnMachine,
    /// Redis 6.2, taken down Redis 6.0's path.
    Redis60PathOnRedis62,
}

impl Target {
    fn server(self) -> RedisServer {
        match self {
            Self::Machine | Self::Redis60PathOnMachine => RedisServer::machine(),
            Self::Redis62 | Self::Redis60PathOnRedis62 => RedisServer::redis6(),
            Self::Valkey => RedisServer::valkey(),
        }
    }

    fn forced(self) -> Option<RedisCapabilities> {
        match self {
            Self::Redis60PathOnMachine | Self::Redis60PathOnRedis62 => {
                Some(RedisCapabilities::redis_6_0())
            }
            Self::Machine | Self::Redis62 | Self::Valkey => None,
        }
    }
}

/// Runs a behaviour, `async fn name(Target)`, as one test per target, in a module of its name.
macro_rules! on_every_server {
    ($($behaviour:ident),* $(,)?) => {$(
        mod $behaviour {
            use super::Target;

            #[tokio::test]
            async fn on_the_machines_redis() {
                super::$behaviour(Target::Machine).await;
            }

            #[tokio::test]
            async fn on_redis_6_2() {
                super::$behaviour(Target::Redis62).await;
            }

            #[tokio::test]
            async fn on_valkey() {
                super::$behaviour(Target::Valkey).await;
            }

            #[tokio::test]
            async fn on_the_redis_6_0_path_on_the_machines_redis() {
                super::$behaviour(Target::Redis60PathOnMachine).await;
            }

            #[tokio::test]
            async fn on_the_redis_6_0_path_on_redis_6_2() {
                super::$behaviour(Target::Redis60PathOnRedis62).await;
            }
        }
    )*};
}

on_every_server!(
    a_batch_is_read_parsed_and_acknowledged,
    a_dead_consumers_entries_are_claimed_after_the_idle_time,
    deliveries_are_counted_across_claims_until_the_entry_is_dead_lettered,
    claimed_entries_get_their_own_counts_with_a_live_consumers_entry_between_them,
    an_entry_deleted_while_pending_is_not_claimed_again,
    trimming_keeps_everything_from_the_oldest_unacknowledged_entry,
    trimming_removes_more_than_one_batch,
    lag_and_pending_follow_reads_and_acknowledgements,
    a_long_backlog_is_counted_exactly_or_bounded_by_the_stream,
);

/// A stream and its dead-letter stream on one target.
struct Streams {
    target: Target,
    stream: TestStream,
    dead: TestStream,
}

impl Streams {
    fn on(target: Target) -> Self {
        let server = target.server();
        Self {
            target,
            stream: TestStream::on(&server),
            dead: TestStream::on(&server),
        }
    }

    fn settings(&self, consumer: &str) -> StreamSettings {
        StreamSettings {
            stream: self.stream.key().to_owned(),
            dead_letter: self.dead.key().to_owned(),
            consumer: consumer.to_owned(),
            batch: 100,
            claim_idle: Duration::from_millis(200),
            max_deliveries: 3,
        }
    }

    async fn consumer(&self, name: &str) -> StreamConsumer {
        self.consumer_with(self.settings(name)).await
    }

    async fn consumer_with(&self, settings: StreamSettings) -> StreamConsumer {
        let url = self.stream.server().url();
        match self.target.forced() {
            Some(capabilities) => StreamConsumer::connect_assuming(url, settings, capabilities)
                .await
                .unwrap(),
            None => StreamConsumer::connect(url, settings).await.unwrap(),
        }
    }

    fn add(&self, group: &str) {
        self.add_many(&[group]);
    }

    /// Appends one record per group, in one round trip.
    fn add_many(&self, groups: &[&str]) {
        let mut pipe = redis::pipe();
        for group in groups {
            let add = pipe.cmd("XADD").arg(self.stream.key()).arg("*");
            for (field, value) in record(group).to_fields() {
                add.arg(field).arg(value);
            }
        }
        pipe.query::<()>(&mut self.stream.server().connection())
            .unwrap();
    }

    fn pending(&self) -> i64 {
        match self
            .stream
            .command(&["XPENDING", self.stream.key(), "entra-sync-workers"])
        {
            redis::Value::Array(items) => match items.first() {
                Some(redis::Value::Int(n)) => *n,
                _ => panic!("XPENDING's count: {items:?}"),
            },
            other => panic!("XPENDING: {other:?}"),
        }
    }

    /// Makes pending entries look idle for `idle`, as Redis counts (what an hour of nobody
    /// acknowledging them would do), without counting a delivery.
    fn age(&self, ids: &[String], idle: Duration) {
        let idle = idle.as_millis().to_string();
        let mut args = vec![
            "XCLAIM",
            self.stream.key(),
            "entra-sync-workers",
            "doomed",
            "0",
        ];
        args.extend(ids.iter().map(String::as_str));
        args.extend(["IDLE", idle.as_str(), "JUSTID"]);
        self.stream.command(&args);
    }

    fn ids(&self) -> Vec<String> {
        self.stream
            .entries_with_ids()
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }
}

fn record(group: &str) -> StreamRecord {
    StreamRecord {
        subscription_id: "sub".into(),
        tenant_id: "tenant".into(),
        kind: Kind::Change {
            change_type: "updated".into(),
            resource: format!("Groups/{group}"),
            resource_id: Some(group.into()),
            odata_type: None,
        },
        subscription_expires: None,
        received_at: chrono::Utc::now(),
    }
}

fn ids(entries: &[Entry]) -> Vec<String> {
    entries.iter().map(|e| e.id.clone()).collect()
}

/// Reads until something comes (claimed entries once they have been idle long enough), up to
/// 10 s.
async fn next_nonempty_batch(consumer: &mut StreamConsumer) -> Vec<Entry> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let batch = consumer
            .next_batch(Duration::from_millis(10))
            .await
            .unwrap();
        if !batch.is_empty() || Instant::now() > deadline {
            return batch;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn each_server_is_detected_with_the_commands_it_has() {
    let machine = Streams::on(Target::Machine);
    let detected = *machine.consumer("a").await.capabilities();
    assert!(detected.version.is_some_and(|v| v.major >= 7), "{detected}");
    assert_eq!(
        (detected.claim, detected.trim, detected.lag),
        (
            ClaimMethod::AutoClaim,
            TrimMethod::MinId,
            LagSource::GroupInfo
        )
    );

    let redis62 = Streams::on(Target::Redis62);
    let detected = *redis62.consumer("a").await.capabilities();
    assert_eq!(
        detected.version.map(|v| (v.major, v.minor)),
        Some((6, 2)),
        "{detected}"
    );
    assert_eq!(
        (detected.claim, detected.trim, detected.lag),
        (
            ClaimMethod::AutoClaim,
            TrimMethod::MinId,
            LagSource::Counted
        )
    );

    // Valkey says it is Redis 7.2.4.
    let valkey = Streams::on(Target::Valkey);
    let detected = *valkey.consumer("a").await.capabilities();
    assert_eq!(
        detected.version.map(|v| (v.major, v.minor)),
        Some((7, 2)),
        "{detected}"
    );
    assert_eq!(
        (detected.claim, detected.trim, detected.lag),
        (
            ClaimMethod::AutoClaim,
            TrimMethod::MinId,
            LagSource::GroupInfo
        )
    );

    let forced = Streams::on(Target::Redis60PathOnMachine);
    let assumed = *forced.consumer("a").await.capabilities();
    assert_eq!(
        (assumed.claim, assumed.trim, assumed.lag),
        (
            ClaimMethod::PendingThenClaim,
            TrimMethod::DeleteBelow,
            LagSource::Counted
        )
    );
}

async fn a_batch_is_read_parsed_and_acknowledged(target: Target) {
    let streams = Streams::on(target);
    let mut consumer = streams.consumer("a").await;
    streams.add_many(&["g0", "g1", "g2", "g3", "g4"]);
    let batch = consumer
        .next_batch(Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(ids(&batch), streams.ids());
    assert!(batch.iter().all(|e| e.deliveries == 1), "{batch:?}");
    let groups: Vec<String> = batch
        .iter()
        .map(|e| match &e.record.as_ref().unwrap().kind {
            Kind::Change { resource_id, .. } => resource_id.clone().unwrap(),
            Kind::Lifecycle { event } => event.clone(),
        })
        .collect();
    assert_eq!(groups, ["g0", "g1", "g2", "g3", "g4"]);
    assert_eq!(streams.pending(), 5, "read but not acknowledged yet");

    consumer.ack(&ids(&batch)).await.unwrap();
    assert_eq!(streams.pending(), 0);
    assert!(
        consumer
            .next_batch(Duration::from_millis(50))
            .await
            .unwrap()
            .is_empty()
    );
}

async fn a_dead_consumers_entries_are_claimed_after_the_idle_time(target: Target) {
    let streams = Streams::on(target);
    // An hour: no test runs that long, so the entries are idle that long only when the test
    // ages them (as Redis counts idle time, which is what the consumer goes by).
    let idle = Duration::from_secs(3600);
    let mut doomed = streams
        .consumer_with(StreamSettings {
            claim_idle: idle,
            ..streams.settings("doomed")
        })
        .await;
    streams.add_many(&["g1", "g2"]);
    let read = doomed.next_batch(Duration::from_millis(100)).await.unwrap();
    assert_eq!(read.len(), 2);
    drop(doomed); // dies without acknowledging

    let mut heir = streams
        .consumer_with(StreamSettings {
            claim_idle: idle,
            ..streams.settings("heir")
        })
        .await;
    let early = heir.next_batch(Duration::from_millis(10)).await.unwrap();
    assert!(early.is_empty(), "claimed at once: {early:?}");
    streams.age(&ids(&read), idle - Duration::from_secs(60));
    let almost = heir.next_batch(Duration::from_millis(10)).await.unwrap();
    assert!(
        almost.is_empty(),
        "claimed before the idle time: {almost:?}"
    );

    streams.age(&ids(&read), idle);
    let claimed = heir.next_batch(Duration::from_millis(10)).await.unwrap();
    assert_eq!(ids(&claimed), ids(&read), "not claimed after the idle time");
    assert!(claimed.iter().all(|e| e.deliveries == 2), "{claimed:?}");
    assert!(claimed.iter().all(|e| e.record.is_ok()), "{claimed:?}");
    heir.ack(&ids(&claimed)).await.unwrap();
    assert_eq!(streams.pending(), 0);
}

async fn deliveries_are_counted_across_claims_until_the_entry_is_dead_lettered(target: Target) {
    let streams = Streams::on(target);
    streams
        .stream
        .command(&["XADD", streams.stream.key(), "*", "v", "99", "junk", "yes"]);
    streams.add("fine");
    let mut first = streams.consumer("first").await;
    let batch = first.next_batch(Duration::from_millis(100)).await.unwrap();
    let (poison, fine): (Vec<_>, Vec<_>) = batch.into_iter().partition(|e| e.record.is_err());
    assert_eq!((poison.len(), fine.len()), (1, 1));
    assert_eq!(poison[0].deliveries, 1);
    first.ack(&ids(&fine)).await.unwrap();

    // Nobody acknowledges it: each claim delivers it once more.
    let mut second = streams.consumer("second").await;
    let again = next_nonempty_batch(&mut second).await;
    assert_eq!(ids(&again), ids(&poison));
    assert_eq!(again[0].deliveries, 2);
    let mut third = streams.consumer("third").await;
    let last = next_nonempty_batch(&mut third).await;
    assert_eq!(ids(&last), ids(&poison));
    assert_eq!(last[0].deliveries, 3, "max_deliveries reached");

    let error = last[0].record.clone().unwrap_err();
    third.dead_letter(&last[0], &error).await.unwrap();
    assert_eq!(streams.pending(), 0);
    let letters = streams.dead.entries();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["original_id"], poison[0].id);
    assert_eq!(letters[0]["deliveries"], "3");
    assert!(letters[0]["error"].contains("version"), "{:?}", letters[0]);
    assert_eq!(letters[0]["field.junk"], "yes");
    assert!(
        third
            .next_batch(Duration::from_millis(10))
            .await
            .unwrap()
            .is_empty()
    );
}

async fn claimed_entries_get_their_own_counts_with_a_live_consumers_entry_between_them(
    target: Target,
) {
    let streams = Streams::on(target);
    // An hour: entries are idle that long only when the test ages them.
    let idle = Duration::from_secs(3600);
    let settings = |name: &str| StreamSettings {
        claim_idle: idle,
        ..streams.settings(name)
    };
    streams.add_many(&["g1", "g2", "g3"]);
    let mut doomed = streams.consumer_with(settings("doomed")).await;
    let read = doomed.next_batch(Duration::from_millis(100)).await.unwrap();
    assert_eq!(read.len(), 3);
    drop(doomed);
    streams.age(&ids(&read), idle);
    let mut heir = streams.consumer_with(settings("heir")).await;
    // A live replica takes the middle entry (its idle time starts again) before the heir
    // looks.
    streams.stream.command(&[
        "XCLAIM",
        streams.stream.key(),
        "entra-sync-workers",
        "live",
        "0",
        &read[1].id,
    ]);
    let claimed = heir.next_batch(Duration::from_millis(10)).await.unwrap();
    assert_eq!(ids(&claimed), [read[0].id.clone(), read[2].id.clone()]);
    assert!(
        claimed.iter().all(|e| e.deliveries == 2),
        "the live consumer's entry must not stand in for the heir's: {claimed:?}"
    );
}

async fn an_entry_deleted_while_pending_is_not_claimed_again(target: Target) {
    let streams = Streams::on(target);
    streams.add_many(&["g1", "g2", "g3"]);
    let mut doomed = streams.consumer("doomed").await;
    let read = doomed.next_batch(Duration::from_millis(100)).await.unwrap();
    assert_eq!(read.len(), 3);
    drop(doomed);
    // Someone deletes an entry that is still pending (entra-sync's own trimming never does).
    streams
        .stream
        .command(&["XDEL", streams.stream.key(), &read[1].id]);

    let mut heir = streams.consumer("heir").await;
    let claimed = next_nonempty_batch(&mut heir).await;
    assert_eq!(ids(&claimed), [read[0].id.clone(), read[2].id.clone()]);
    assert_eq!(
        streams.pending(),
        2,
        "the deleted entry no longer pending (6.x would claim it again and again)"
    );
    heir.ack(&ids(&claimed)).await.unwrap();
    assert_eq!(streams.pending(), 0);
}

async fn trimming_keeps_everything_from_the_oldest_unacknowledged_entry(target: Target) {
    let streams = Streams::on(target);
    let mut consumer = streams.consumer("a").await;
    assert_eq!(consumer.trim().await.unwrap(), 0, "nothing read yet");
    streams.add_many(&["g0", "g1", "g2", "g3"]);
    let batch = consumer
        .next_batch(Duration::from_millis(100))
        .await
        .unwrap();
    // The second entry is still being worked on.
    let done: Vec<String> = batch
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, e)| e.id.clone())
        .collect();
    consumer.ack(&done).await.unwrap();
    streams.add("unread");

    assert_eq!(consumer.trim().await.unwrap(), 1);
    assert_eq!(
        streams.ids(),
        [
            batch[1].id.clone(),
            batch[2].id.clone(),
            batch[3].id.clone(),
            streams.ids()[3].clone()
        ],
        "only the first, acknowledged, entry may go"
    );

    consumer.ack(&[batch[1].id.clone()]).await.unwrap();
    assert_eq!(consumer.trim().await.unwrap(), 3);
    let left = streams.stream.entries();
    assert_eq!(left.len(), 1, "the unread entry stays");
    assert_eq!(left[0]["resource_id"], "unread");
}

async fn trimming_removes_more_than_one_batch(target: Target) {
    let streams = Streams::on(target);
    let mut consumer = streams
        .consumer_with(StreamSettings {
            batch: 3000,
            ..streams.settings("a")
        })
        .await;
    let names: Vec<String> = (0..2500).map(|n| format!("g{n}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    streams.add_many(&names);
    let batch = consumer
        .next_batch(Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(batch.len(), 2500);
    consumer.ack(&ids(&batch)).await.unwrap();
    streams.add("unread");

    assert_eq!(consumer.trim().await.unwrap(), 2500);
    let left = streams.stream.entries();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["resource_id"], "unread");
}

async fn lag_and_pending_follow_reads_and_acknowledgements(target: Target) {
    let streams = Streams::on(target);
    let mut consumer = streams
        .consumer_with(StreamSettings {
            batch: 3,
            ..streams.settings("a")
        })
        .await;
    assert_eq!(consumer.lag().await.unwrap(), (0, 0));
    streams.add_many(&["g0", "g1", "g2", "g3", "g4"]);
    assert_eq!(consumer.lag().await.unwrap(), (5, 0));

    let batch = consumer
        .next_batch(Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(batch.len(), 3);
    assert_eq!(consumer.lag().await.unwrap(), (2, 3));
    consumer.ack(&ids(&batch[..2])).await.unwrap();
    assert_eq!(consumer.lag().await.unwrap(), (2, 1));
    consumer.trim().await.unwrap();
    assert_eq!(streams.stream.len(), 3);
    assert_eq!(consumer.lag().await.unwrap(), (2, 1), "after trimming too");

    // What `entra-sync-worker status` shows, from a connection of its own.
    let status = stream_status(
        streams.stream.server().url(),
        streams.stream.key(),
        streams.dead.key(),
    )
    .await
    .unwrap();
    assert_eq!((status.lag, status.pending, status.dead_letters), (2, 1, 0));
}

async fn a_long_backlog_is_counted_exactly_or_bounded_by_the_stream(target: Target) {
    let streams = Streams::on(target);
    let mut consumer = streams
        .consumer_with(StreamSettings {
            batch: 10,
            ..streams.settings("a")
        })
        .await;
    let total = LAG_COUNT_LIMIT + 50;
    let names: Vec<String> = (0..total).map(|n| format!("g{n}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    streams.add_many(&names);
    let total = total as i64;
    assert_eq!(consumer.lag().await.unwrap(), (total, 0));

    let batch = consumer
        .next_batch(Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(batch.len(), 10);
    assert_eq!(consumer.lag().await.unwrap(), (total - 10, 10));

    // Acknowledged, not trimmed yet: past the counting limit a counted lag may include them,
    // never more than the stream holds.
    consumer.ack(&ids(&batch)).await.unwrap();
    let (lag, pending) = consumer.lag().await.unwrap();
    assert_eq!(pending, 0);
    assert!(
        (total - 10..=total).contains(&lag),
        "lag {lag} of {total} entries"
    );
    if consumer.capabilities().lag == LagSource::GroupInfo {
        assert_eq!(lag, total - 10, "Redis knows it exactly");
    }
    consumer.trim().await.unwrap();
    assert_eq!(
        consumer.lag().await.unwrap(),
        (total - 10, 0),
        "exact again"
    );
}
