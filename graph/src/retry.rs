//! How hard Graph requests are retried: attempts, delays and the time budget of one call.

use std::time::Duration;

use backon::ExponentialBuilder;

/// How hard to retry.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub attempts: usize,
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// The most time all waits of one call may add up to.
    pub total_delay: Duration,
    /// How long one request may take, answer included; a slower one counts as a failed attempt.
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 6,
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            total_delay: Duration::from_secs(300),
            request_timeout: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    pub(crate) fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.attempts)
            .with_total_delay(Some(self.total_delay))
            .with_jitter()
    }
}
