//! The inbox between the stream's reader and the work that follows: what the entries read so
//! far ask for, gathered until the worker gets to them. Entries are triggers, so any number of
//! them asks for one round, plus a re-read of the users they name and their lifecycle events.
//! A poll, or failed items falling due, ask for a round the same way.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use entity::UserId;
use entra_sync_core::record::Kind;
use tokio::sync::Notify;

use crate::stream::Entry;

/// What a batch of entries (and any requests for a round) asks for.
#[derive(Debug, Default)]
pub(super) struct Work {
    /// The entries it covers, acknowledged once it committed.
    pub ids: Vec<String>,
    /// `(subscription id, event)`, in the order they came.
    pub lifecycle: Vec<(String, String)>,
    /// Users named by `users` notifications.
    pub users: BTreeSet<UserId>,
    /// Users named by `users` notifications of a deletion, with when the first of them arrived:
    /// one piece of evidence that the user is gone (see [`crate::store::Deletion`]).
    pub deleted: BTreeMap<UserId, chrono::DateTime<chrono::Utc>>,
    /// A round is due even without entries (after a poll, or for failed items).
    pub round: bool,
    /// Entries already in `ids`: an entry claimed again while it waits is counted once.
    seen: HashSet<String>,
}

impl Work {
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty() && !self.round
    }

    fn add(&mut self, entry: &Entry) {
        let Ok(record) = &entry.record else {
            return; // unreadable: the reader deals with it
        };
        if !self.seen.insert(entry.id.clone()) {
            return;
        }
        self.ids.push(entry.id.clone());
        match &record.kind {
            Kind::Lifecycle { event } => self
                .lifecycle
                .push((record.subscription_id.clone(), event.clone())),
            Kind::Change {
                resource,
                resource_id,
                change_type,
                ..
            } => {
                if let Some(user) = named::<UserId>(resource, "users/", resource_id.as_deref()) {
                    if change_type.eq_ignore_ascii_case("deleted") {
                        let first = self
                            .deleted
                            .entry(user.clone())
                            .or_insert(record.received_at);
                        *first = (*first).min(record.received_at);
                    }
                    self.users.insert(user);
                }
            }
        }
    }
}

/// The user or group a notification on `collection` (`users/` or `groups/`) is about: its
/// `resourceData.id`, or the id in its resource path (`Users/{id}`, `Groups/{id}`).
fn named<Id: std::str::FromStr>(
    resource: &str,
    collection: &str,
    resource_id: Option<&str>,
) -> Option<Id> {
    let is_in = resource
        .get(..collection.len())
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case(collection));
    if !is_in {
        return None;
    }
    resource_id
        .or_else(|| resource.get(collection.len()..))
        .and_then(|id| id.parse().ok())
}

/// Shared by the reader, which puts entries in, and the stream's worker, which takes them out.
#[derive(Clone, Debug, Default)]
pub(super) struct Inbox {
    work: Arc<Mutex<Work>>,
    arrived: Arc<Notify>,
    taken: Arc<Notify>,
}

impl Inbox {
    fn work(&self) -> MutexGuard<'_, Work> {
        // A panic while holding the lock leaves `Work` whole (every change to it is one push).
        self.work
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds the readable entries.
    pub fn put(&self, entries: &[Entry]) {
        let mut work = self.work();
        for entry in entries {
            work.add(entry);
        }
        if !work.is_empty() {
            self.arrived.notify_one();
        }
    }

    /// Asks for a round, with or without entries.
    pub fn ask_for_round(&self) {
        self.work().round = true;
        self.arrived.notify_one();
    }

    /// How many entries wait.
    pub fn waiting(&self) -> usize {
        self.work().ids.len()
    }

    /// Everything that waits, now (possibly nothing).
    pub fn take_now(&self) -> Work {
        let work = std::mem::take(&mut *self.work());
        self.taken.notify_waiters();
        work
    }

    /// Everything that waits, once there is something. Cancel-safe: nothing is taken until it
    /// returns.
    pub async fn take(&self) -> Work {
        loop {
            let arrived = self.arrived.notified();
            if !self.work().is_empty() {
                return self.take_now();
            }
            arrived.await;
        }
    }

    /// Returns once fewer than `limit` entries wait.
    pub async fn room_for(&self, limit: usize) {
        loop {
            let taken = self.taken.notified();
            if self.waiting() < limit {
                return;
            }
            taken.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use entity::GroupId;
    use entra_sync_core::record::StreamRecord;
    use std::collections::HashMap;

    fn entry(id: &str, kind: Kind) -> Entry {
        Entry {
            id: id.into(),
            deliveries: 1,
            record: Ok(StreamRecord {
                subscription_id: "sub".into(),
                tenant_id: "tenant".into(),
                kind,
                subscription_expires: None,
                received_at: chrono::Utc::now(),
            }),
            fields: HashMap::new(),
        }
    }

    fn user_change(id: &str, user: &str) -> Entry {
        entry(
            id,
            Kind::Change {
                change_type: "updated".into(),
                resource: format!("Users/{user}"),
                resource_id: None,
                odata_type: None,
            },
        )
    }

    const USER: &str = "5b000000-0000-4000-8000-000000000001";

    #[test]
    fn entries_gather_into_one_piece_of_work_each_counted_once() {
        let inbox = Inbox::default();
        inbox.put(&[user_change("1-0", USER), user_change("2-0", USER)]);
        inbox.put(&[
            user_change("1-0", USER),
            entry(
                "3-0",
                Kind::Lifecycle {
                    event: "missed".into(),
                },
            ),
        ]);
        assert_eq!(inbox.waiting(), 3);
        let work = inbox.take_now();
        assert_eq!(work.ids, ["1-0", "2-0", "3-0"]);
        assert_eq!(work.users.len(), 1);
        assert_eq!(work.lifecycle, [("sub".to_owned(), "missed".to_owned())]);
        assert!(inbox.take_now().is_empty());
    }

    #[test]
    fn unreadable_entries_stay_out_and_a_round_can_be_asked_for_without_entries() {
        let inbox = Inbox::default();
        let mut poison = user_change("1-0", USER);
        poison.record = Err("unreadable".into());
        inbox.put(&[poison]);
        assert!(inbox.take_now().is_empty());
        inbox.ask_for_round();
        let work = inbox.take_now();
        assert!(work.round && work.ids.is_empty());
    }

    #[tokio::test]
    async fn take_waits_for_work_and_room_for_waits_for_a_take() {
        let inbox = Inbox::default();
        let taker = tokio::spawn({
            let inbox = inbox.clone();
            async move { inbox.take().await }
        });
        inbox.put(&[user_change("1-0", USER)]);
        assert_eq!(taker.await.unwrap().ids, ["1-0"]);

        inbox.put(&[user_change("2-0", USER)]);
        let waiter = tokio::spawn({
            let inbox = inbox.clone();
            async move { inbox.room_for(1).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        inbox.take_now();
        waiter.await.unwrap();
    }

    #[test]
    fn a_notification_names_its_user_or_group_by_id_or_by_path() {
        let user = |resource: &str, id| named::<UserId>(resource, "users/", id);
        let group = |resource: &str, id| named::<GroupId>(resource, "groups/", id);
        assert_eq!(
            user(&format!("Users/{USER}"), None).map(|u| u.to_string()),
            Some(USER.to_owned())
        );
        assert_eq!(
            user("users/anything", Some(USER)).map(|u| u.to_string()),
            Some(USER.to_owned())
        );
        assert!(user(&format!("Groups/{USER}"), None).is_none());
        assert_eq!(
            group(&format!("Groups/{USER}"), None).map(|g| g.to_string()),
            Some(USER.to_owned())
        );
    }
}
