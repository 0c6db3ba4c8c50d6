//! Directory replication lag: Graph is eventually consistent across its replicas, and an object
//! new or recently changed can be missing from one read while another lists it. A lagging user
//! or group is left out of `directoryObjects/getByIds` and the users listing, and answers 404 to
//! `GET /users/{id}` and `GET /groups/{id}` (and to a lagging group's members and owners reads),
//! while group membership reads, groups delta and the app's assignments still list it, with
//! its properties.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::state::{Inner, lock};

/// The objects lagging now, each until cleared (`None`) or until an instant of the clock that
/// token expiry also uses.
#[derive(Debug, Default)]
pub(crate) struct Lagging(HashMap<Uuid, Option<Instant>>);

impl Lagging {
    pub fn start(&mut self, id: Uuid, duration: Option<Duration>) {
        let until = duration.map(|d| Instant::now().checked_add(d));
        // A duration too long for the clock lasts until cleared.
        self.0.insert(id, until.flatten());
    }

    pub fn end(&mut self, id: Uuid) {
        self.0.remove(&id);
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// Whether `id` lags now; a lag whose time ran out is forgotten.
    pub fn lags(&mut self, id: Uuid) -> bool {
        match self.0.get(&id) {
            None => false,
            Some(None) => true,
            Some(Some(until)) if *until > Instant::now() => true,
            Some(Some(_)) => {
                self.0.remove(&id);
                false
            }
        }
    }

    /// The objects lagging now, in id order.
    pub fn now(&mut self) -> Vec<Uuid> {
        let now = Instant::now();
        self.0
            .retain(|_, until| until.is_none_or(|until| until > now));
        let mut ids: Vec<Uuid> = self.0.keys().copied().collect();
        ids.sort_unstable();
        ids
    }
}

impl Inner {
    /// Whether reads of `id` itself miss it now.
    pub(crate) fn lags(&self, id: Uuid) -> bool {
        lock(&self.lagging).lags(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lag_lasts_until_cleared_or_until_its_time_runs_out() {
        let mut lagging = Lagging::default();
        let (forever, over, long) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        lagging.start(forever, None);
        lagging.start(over, Some(Duration::ZERO));
        lagging.start(long, Some(Duration::from_secs(3600)));
        assert!(lagging.lags(forever));
        assert!(!lagging.lags(over));
        assert!(lagging.lags(long));
        assert!(!lagging.lags(Uuid::from_u128(4)));
        assert_eq!(lagging.now(), [forever, long]);
        lagging.end(forever);
        assert_eq!(lagging.now(), [long]);
        lagging.clear();
        assert!(lagging.now().is_empty());
    }

    #[test]
    fn a_duration_too_long_for_the_clock_lasts_until_cleared() {
        let mut lagging = Lagging::default();
        lagging.start(Uuid::from_u128(1), Some(Duration::MAX));
        assert!(lagging.lags(Uuid::from_u128(1)));
    }
}
