//! The stream consumer against a real Redis: batches, acknowledgement, claiming a dead
//! consumer's entries, dead letters and trimming.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use entra_sync_testkit::redis::{TestStream, redis_url};
use webhook::record::{Kind, StreamRecord};
use worker::stream::{StreamConsumer, StreamSettings};

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

fn add(stream: &TestStream, record: &StreamRecord) {
    let mut args = vec!["XADD".to_owned(), stream.key().to_owned(), "*".to_owned()];
    for (k, v) in record.to_fields() {
        args.push(k.to_owned());
        args.push(v);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    stream.command(&args);
}

fn settings(stream: &TestStream, dead: &TestStream, consumer: &str) -> StreamSettings {
    StreamSettings {
        stream: stream.key().to_owned(),
        dead_letter: dead.key().to_owned(),
        consumer: consumer.to_owned(),
        batch: 100,
        claim_idle: Duration::from_millis(200),
        max_deliveries: 3,
    }
}

fn pending(stream: &TestStream) -> i64 {
    match stream.command(&["XPENDING", stream.key(), "entra-sync-workers"]) {
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::Int(n)) => *n,
            _ => 0,
        },
        _ => 0,
    }
}

#[tokio::test]
async fn a_batch_is_read_parsed_and_acknowledged() {
    let (stream, dead) = (TestStream::new(), TestStream::new());
    let mut consumer = StreamConsumer::connect(&redis_url(), settings(&stream, &dead, "a"))
        .await
        .unwrap();
    for n in 0..5 {
        add(&stream, &record(&format!("g{n}")));
    }
    let batch = consumer
        .next_batch(Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(batch.len(), 5);
    assert!(batch.iter().all(|e| e.deliveries == 1 && e.record.is_ok()));
    assert_eq!(pending(&stream), 5, "read but not acknowledged yet");
    let ids: Vec<String> = batch.iter().map(|e| e.id.clone()).collect();
    consumer.ack(&ids).await.unwrap();
    assert_eq!(pending(&stream), 0);
    assert!(
        consumer
            .next_batch(Duration::from_millis(50))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_dead_consumers_entries_are_claimed_after_the_idle_time() {
    let (stream, dead) = (TestStream::new(), TestStream::new());
    let mut doomed = StreamConsumer::connect(&redis_url(), settings(&stream, &dead, "doomed"))
        .await
        .unwrap();
    add(&stream, &record("g1"));
    add(&stream, &record("g2"));
    assert_eq!(
        doomed
            .next_batch(Duration::from_millis(100))
            .await
            .unwrap()
            .len(),
        2
    );
    drop(doomed); // dies without acknowledging

    let mut heir = StreamConsumer::connect(&redis_url(), settings(&stream, &dead, "heir"))
        .await
        .unwrap();
    assert!(
        heir.next_batch(Duration::from_millis(10))
            .await
            .unwrap()
            .is_empty(),
        "not idle long enough yet"
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    let claimed = heir.next_batch(Duration::from_millis(10)).await.unwrap();
    assert_eq!(claimed.len(), 2);
    assert!(claimed.iter().all(|e| e.deliveries == 2), "{claimed:?}");
    heir.ack(&claimed.iter().map(|e| e.id.clone()).collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(pending(&stream), 0);
}

#[tokio::test]
async fn an_unreadable_entry_goes_to_the_dead_letter_stream_with_its_error() {
    let (stream, dead) = (TestStream::new(), TestStream::new());
    let mut consumer = StreamConsumer::connect(&redis_url(), settings(&stream, &dead, "a"))
        .await
        .unwrap();
    stream.command(&["XADD", stream.key(), "*", "v", "99", "junk", "yes"]);
    add(&stream, &record("fine"));
    let batch = consumer
        .next_batch(Duration::from_millis(100))
        .await
        .unwrap();
    let (poison, fine): (Vec<_>, Vec<_>) = batch.into_iter().partition(|e| e.record.is_err());
    assert_eq!((poison.len(), fine.len()), (1, 1));
    consumer.ack(&[fine[0].id.clone()]).await.unwrap();

    let error = poison[0].record.clone().unwrap_err();
    consumer.dead_letter(&poison[0], &error).await.unwrap();

    assert_eq!(pending(&stream), 0);
    let letters = dead.entries();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["original_id"], poison[0].id);
    assert!(letters[0]["error"].contains("version"), "{:?}", letters[0]);
    assert_eq!(letters[0]["field.junk"], "yes");
}

#[tokio::test]
async fn trimming_keeps_everything_from_the_oldest_unacknowledged_entry() {
    let (stream, dead) = (TestStream::new(), TestStream::new());
    let mut consumer = StreamConsumer::connect(&redis_url(), settings(&stream, &dead, "a"))
        .await
        .unwrap();
    for n in 0..4 {
        add(&stream, &record(&format!("g{n}")));
    }
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
    add(&stream, &record("unread"));

    consumer.trim().await.unwrap();
    assert_eq!(
        stream.len(),
        4,
        "only the first, acknowledged, entry may go"
    );

    consumer.ack(&[batch[1].id.clone()]).await.unwrap();
    consumer.trim().await.unwrap();
    let left = stream.entries();
    assert_eq!(left.len(), 1, "the unread entry stays");
    assert_eq!(left[0]["resource_id"], "unread");
}
