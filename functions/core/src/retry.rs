//! Retries with jittered exponential backoff for transient S3 failures (5xx, SlowDown,
//! timeouts, dropped connections), bounded in attempts so a broken run fails instead of hanging.

use std::future::Future;
use std::time::Duration;

use rand::Rng;

use crate::storage::StoreError;

/// How hard to retry.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all (the first one included).
    pub max_attempts: u32,
    /// Backoff before the second attempt.
    pub base_delay: Duration,
    /// Cap on one backoff.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt `attempt + 1` ("full jitter": uniform in 0..=cap), longer after
    /// a throttle so that S3 gets the pause it asked for.
    pub fn delay(&self, attempt: u32, throttled: bool) -> Duration {
        let factor = if throttled { 4 } else { 1 };
        let exp = self
            .base_delay
            .saturating_mul(factor * 2u32.saturating_pow(attempt.saturating_sub(1)));
        let cap = exp.min(self.max_delay);
        let millis = cap.as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(millis / 2..=millis.max(1)))
    }

    /// Runs `op` until it succeeds, fails with a non-retryable error, or runs out of attempts.
    pub async fn run<T, F, Fut>(&self, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut attempt = 1;
        loop {
            match op(attempt).await {
                Ok(value) => return Ok(value),
                Err(e) if e.kind.is_retryable() && attempt < self.max_attempts => {
                    let delay =
                        self.delay(attempt, e.kind == crate::storage::StoreErrorKind::Throttled);
                    tracing::warn!(operation = e.operation, bucket = %e.bucket, key = %e.key, attempt, ?delay, error = %e.message, "retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StoreErrorKind;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn err(kind: StoreErrorKind) -> StoreError {
        StoreError::new(kind, "PutObject", "b", "k", "injected")
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_then_succeeds_and_stops_on_permanent() {
        let policy = RetryPolicy::default();
        let calls = AtomicU32::new(0);
        let out = policy
            .run(|_| async {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                if n < 3 {
                    Err(err(StoreErrorKind::Throttled))
                } else {
                    Ok(n)
                }
            })
            .await;
        assert_eq!(out.unwrap(), 3);
        calls.store(0, Ordering::SeqCst);
        let out: Result<(), _> = policy
            .run(|_| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(err(StoreErrorKind::AccessDenied))
            })
            .await;
        assert_eq!(out.unwrap_err().kind, StoreErrorKind::AccessDenied);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        calls.store(0, Ordering::SeqCst);
        let out: Result<(), _> = policy
            .run(|_| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(err(StoreErrorKind::Transient))
            })
            .await;
        assert!(out.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), policy.max_attempts);
    }
}
