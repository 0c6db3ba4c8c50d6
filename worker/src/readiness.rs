//! Whether the worker is ready, beyond its database answering: one state that the run loop
//! writes and `/readyz` reads. Today it holds whether the last read of the stream worked; other
//! conditions that should take a replica out of service belong here too.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Clone, Debug)]
pub struct Readiness {
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    stream_readable: AtomicBool,
}

impl Readiness {
    /// Ready: the worker starts only once it has reached Redis.
    pub fn new() -> Self {
        Self {
            state: Arc::new(State {
                stream_readable: AtomicBool::new(true),
            }),
        }
    }

    /// Records how the last read of the stream went.
    pub fn stream_read(&self, succeeded: bool) {
        self.state
            .stream_readable
            .store(succeeded, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.state.stream_readable.load(Ordering::Relaxed)
    }
}

impl Default for Readiness {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::Readiness;

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
}
