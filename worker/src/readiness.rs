//! Whether the worker is ready, beyond its database answering: one state that the run loop
//! writes and `/readyz` reads. A replica is taken out of service while it cannot read the
//! stream, or once its rounds have failed as a whole [`FAILED_ROUNDS_LIMIT`] times in a row (the
//! database or Graph away for it): it would only pile up pending entries.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// Rounds failing in a row after which the replica says it is not ready.
pub const FAILED_ROUNDS_LIMIT: u32 = 5;

#[derive(Clone, Debug)]
pub struct Readiness {
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    stream_readable: AtomicBool,
    failed_rounds: AtomicU32,
}

impl Readiness {
    /// Ready: the worker starts only once it has reached Redis.
    pub fn new() -> Self {
        Self {
            state: Arc::new(State {
                stream_readable: AtomicBool::new(true),
                failed_rounds: AtomicU32::new(0),
            }),
        }
    }

    /// Records how the last read of the stream went.
    pub fn stream_read(&self, succeeded: bool) {
        self.state
            .stream_readable
            .store(succeeded, Ordering::Relaxed);
    }

    /// Records how the last round went; returns the rounds failed in a row since one committed.
    pub fn round(&self, committed: bool) -> u32 {
        if committed {
            self.state.failed_rounds.store(0, Ordering::Relaxed);
            return 0;
        }
        let before = self
            .state
            .failed_rounds
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_add(1))
            })
            .unwrap_or(u32::MAX);
        before.saturating_add(1)
    }

    pub fn is_ready(&self) -> bool {
        self.state.stream_readable.load(Ordering::Relaxed)
            && self.state.failed_rounds.load(Ordering::Relaxed) < FAILED_ROUNDS_LIMIT
    }
}

impl Default for Readiness {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::{FAILED_ROUNDS_LIMIT, Readiness};

    #[test]
    fn a_failed_read_makes_every_copy_not_ready_until_a_read_works() {
        let worker = Readiness::new();
        let health = worker.clone();
        assert!(health.is_ready());
        worker.stream_read(false);
        assert!(!health.is_ready());
        worker.stream_read(true);
        assert!(health.is_ready());
    }

    #[test]
    fn rounds_failing_in_a_row_make_it_not_ready_until_one_commits() {
        let worker = Readiness::new();
        for n in 1..FAILED_ROUNDS_LIMIT {
            assert_eq!(worker.round(false), n);
            assert!(worker.is_ready(), "not ready after {n} failures");
        }
        assert_eq!(worker.round(false), FAILED_ROUNDS_LIMIT);
        assert!(!worker.is_ready());
        assert_eq!(worker.round(true), 0);
        assert!(worker.is_ready());
    }
}
