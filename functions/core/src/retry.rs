//! Retries with jittered exponential backoff for transient S3 failures (5xx, SlowDown,
//! timeouts, dropped connections), bounded in attempts so a broken run fails instead of hanging.

use std::future::Future;
use std::time::Duration;

use std::sync::atomic::{AtomicUsize, Ordering};

use rand::Rng;
use tokio::sync::Semaphore;

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
    /// The delay before attempt `attempt + 1` ("equal jitter": uniform in cap/2..=cap), longer after
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
    pub async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        self.run_with(None, op).await
    }

    /// [`RetryPolicy::run`] with each attempt holding a slot of `limit` while its request is in
    /// flight (so the limit counts requests, not objects: a copy and the HEAD beside it are
    /// two), and telling `limit` about throttles and successes so the number of requests in
    /// flight adapts to what S3 accepts. The backoff sleep holds no slot.
    pub async fn run_with<T, F, Fut>(
        &self,
        limit: Option<&AdaptiveLimit>,
        mut op: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut attempt = 1;
        loop {
            let result = match limit {
                Some(limit) => {
                    let _slot = limit.acquire().await;
                    op(attempt).await
                }
                None => op(attempt).await,
            };
            match result {
                Ok(value) => {
                    if let Some(limit) = limit {
                        limit.on_success();
                    }
                    return Ok(value);
                }
                Err(e) if e.kind.is_retryable() && attempt < self.max_attempts => {
                    let throttled = e.kind == crate::storage::StoreErrorKind::Throttled;
                    if throttled && let Some(limit) = limit {
                        limit.on_throttle();
                    }
                    let delay = self.delay(attempt, throttled);
                    tracing::warn!(operation = e.operation, bucket = %e.bucket, key = %e.key, attempt, ?delay, error = %e.message, "retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// A concurrency limit that halves on S3 throttling (503 SlowDown) and grows back by one per
/// window of successes (AIMD), so a run slows down when S3 asks instead of hammering it.
///
/// Slots are the permits of a FIFO semaphore: a freed slot wakes exactly one waiter (in the
/// order they came), so hundreds of parts and objects waiting cost nothing while they wait. A
/// lower limit is reached by withholding permits as they are freed (`debt`), never by
/// cancelling a request in flight.
#[derive(Debug)]
pub struct AdaptiveLimit {
    max: usize,
    limit: AtomicUsize,
    /// Until the first throttle, every success allows one more (the limit doubles per round)
    /// instead of one per round.
    slow_start: std::sync::atomic::AtomicBool,
    permits: Semaphore,
    /// Permits to withhold as they are freed, after the limit went down.
    debt: AtomicUsize,
    successes: AtomicUsize,
}

/// A slot held while one request (or one object's work) is in flight.
pub struct LimitSlot<'a>(&'a AdaptiveLimit);

impl Drop for LimitSlot<'_> {
    fn drop(&mut self) {
        self.0.give_back(1);
    }
}

impl AdaptiveLimit {
    /// A limit starting (and capped) at `max`.
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        AdaptiveLimit {
            max,
            limit: AtomicUsize::new(max),
            slow_start: std::sync::atomic::AtomicBool::new(false),
            permits: Semaphore::new(max),
            debt: AtomicUsize::new(0),
            successes: AtomicUsize::new(0),
        }
    }

    /// A limit starting at `initial` that grows by one per success (doubling per round of
    /// requests) up to `max`, until S3 first throttles; from then on as [`AdaptiveLimit::new`].
    /// For many processes writing one prefix at once (a fleet of copier Lambdas): each starts
    /// small, so together they find S3's rate instead of starting far above it.
    pub fn slow_start(initial: usize, max: usize) -> Self {
        let limit = AdaptiveLimit::new(max);
        let initial = initial.clamp(1, limit.max);
        limit.limit.store(initial, Ordering::Release);
        limit.withhold(limit.max - initial);
        limit.slow_start.store(true, Ordering::Release);
        limit
    }

    /// The most this limit ever allows.
    pub fn max(&self) -> usize {
        self.max
    }

    /// The current limit.
    pub fn current(&self) -> usize {
        self.limit.load(Ordering::Acquire)
    }

    /// Waits for a slot under the current limit (first come, first served).
    pub async fn acquire(&self) -> LimitSlot<'_> {
        match self.permits.acquire().await {
            Ok(permit) => permit.forget(),
            Err(_) => unreachable!("the limit's semaphore is never closed"),
        }
        LimitSlot(self)
    }

    /// Returns `n` slots: each pays off withheld debt first, the rest become free permits.
    fn give_back(&self, n: usize) {
        let mut left = n;
        while left > 0 {
            let debt = self.debt.load(Ordering::Acquire);
            if debt == 0 {
                self.permits.add_permits(left);
                return;
            }
            let paid = debt.min(left);
            if self
                .debt
                .compare_exchange(debt, debt - paid, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                left -= paid;
            }
        }
    }

    /// Takes `n` slots out of circulation: free ones at once, the others as they are freed.
    fn withhold(&self, n: usize) {
        let mut left = n;
        while left > 0 {
            match self.permits.try_acquire() {
                Ok(permit) => {
                    permit.forget();
                    left -= 1;
                }
                Err(_) => break,
            }
        }
        if left > 0 {
            self.debt.fetch_add(left, Ordering::AcqRel);
        }
    }

    /// One more slot: cancels one withheld, or adds a permit.
    fn grow(&self) {
        if let Ok(old) = self
            .limit
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| {
                (l < self.max).then_some(l + 1)
            })
        {
            debug_assert!(old < self.max);
            let cancelled = self
                .debt
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
                .is_ok();
            if !cancelled {
                self.permits.add_permits(1);
            }
        }
    }

    /// S3 throttled a request: halve the limit (never below 1).
    pub fn on_throttle(&self) {
        if let Ok(old) = self
            .limit
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| {
                Some((l / 2).max(1))
            })
        {
            self.withhold(old - (old / 2).max(1));
        }
        self.slow_start.store(false, Ordering::Release);
        self.successes.store(0, Ordering::Release);
    }

    /// A request succeeded: after `limit` successes in a row, allow one more in flight.
    pub fn on_success(&self) {
        let limit = self.current();
        if limit >= self.max {
            return;
        }
        if self.slow_start.load(Ordering::Acquire) {
            self.grow();
            return;
        }
        if self.successes.fetch_add(1, Ordering::AcqRel) + 1 >= limit {
            self.successes.store(0, Ordering::Release);
            self.grow();
        }
    }
}

#[cfg(test)]
mod slow_start_tests {
    use super::*;

    #[test]
    fn a_slow_start_doubles_per_round_until_the_first_throttle() {
        let limit = AdaptiveLimit::slow_start(4, 64);
        assert_eq!(limit.current(), 4);
        // One round: 4 successes → 8; the next round of 8 → 16.
        (0..4).for_each(|_| limit.on_success());
        assert_eq!(limit.current(), 8);
        (0..8).for_each(|_| limit.on_success());
        assert_eq!(limit.current(), 16);
        limit.on_throttle();
        assert_eq!(limit.current(), 8);
        // Additive from now on: one more per full round.
        (0..7).for_each(|_| limit.on_success());
        assert_eq!(limit.current(), 8);
        limit.on_success();
        assert_eq!(limit.current(), 9);
        let capped = AdaptiveLimit::slow_start(4, 6);
        (0..100).for_each(|_| capped.on_success());
        assert_eq!(capped.current(), 6);
        assert_eq!(AdaptiveLimit::slow_start(0, 6).current(), 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StoreErrorKind;
    use std::sync::atomic::AtomicU32;

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

    #[tokio::test(start_paused = true)]
    async fn the_limit_halves_on_throttles_and_grows_back() {
        let limit = AdaptiveLimit::new(16);
        let policy = RetryPolicy::default();
        let calls = AtomicU32::new(0);
        policy
            .run_with(Some(&limit), |_| async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(err(StoreErrorKind::Throttled))
                } else {
                    Ok(())
                }
            })
            .await
            .unwrap();
        assert_eq!(limit.current(), 4, "two throttles: 16 → 8 → 4");
        for _ in 0..4 {
            limit.on_success();
        }
        assert_eq!(limit.current(), 5);
        let slots: Vec<_> = futures::future::join_all((0..5).map(|_| limit.acquire())).await;
        assert_eq!(slots.len(), 5);
        let waiting = tokio::time::timeout(Duration::from_millis(50), limit.acquire()).await;
        assert!(waiting.is_err(), "a sixth slot waits while five are held");
        drop(slots);
        let _slot = tokio::time::timeout(Duration::from_millis(50), limit.acquire())
            .await
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_lower_limit_takes_effect_as_held_slots_are_freed() {
        let limit = AdaptiveLimit::new(4);
        let held: Vec<_> = futures::future::join_all((0..4).map(|_| limit.acquire())).await;
        limit.on_throttle();
        assert_eq!(limit.current(), 2);
        drop(held);
        let two: Vec<_> = futures::future::join_all((0..2).map(|_| limit.acquire())).await;
        let third = tokio::time::timeout(Duration::from_millis(50), limit.acquire()).await;
        assert!(third.is_err(), "only two slots after halving 4");
        // Growing back cancels a withheld slot first: 3 may be held, never more.
        (0..2).for_each(|_| limit.on_success());
        assert_eq!(limit.current(), 3);
        let _third = tokio::time::timeout(Duration::from_millis(50), limit.acquire())
            .await
            .unwrap();
        let fourth = tokio::time::timeout(Duration::from_millis(50), limit.acquire()).await;
        assert!(fourth.is_err(), "three slots at a limit of three");
        drop(two);
        // A slow start withholds what is above its start.
        let slow = AdaptiveLimit::slow_start(2, 8);
        let _a = slow.acquire().await;
        let _b = slow.acquire().await;
        assert!(
            tokio::time::timeout(Duration::from_millis(50), slow.acquire())
                .await
                .is_err()
        );
    }
}
