//! Around the handler: worker slot, time limit, panic catching, keepalive
//! and in-process retries with exponential backoff and full jitter.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use mqfn_handlers::{HandlerError, Message, Output};
use rand::Rng;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::meters::Invocation;
use super::Route;
use crate::brokers::Settle;

/// A message that failed for good.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The last error.
    pub error: HandlerError,
    /// Attempts made, the broker's earlier deliveries included.
    pub attempts: u32,
    /// Whether the last attempt ran past its time limit.
    pub timed_out: bool,
}

impl Failure {
    /// A failure that was not a time limit.
    pub fn new(error: HandlerError, attempts: u32) -> Self {
        Self {
            error,
            attempts,
            timed_out: false,
        }
    }
}

/// How the attempts at one message ended.
#[derive(Debug)]
pub enum Attempted {
    /// The handler returned outputs.
    Done(Vec<Output>),
    /// Out of attempts, or a permanent error.
    Failed(Failure),
    /// Shutdown came while waiting: hand the message back, to be tried again
    /// no sooner than this.
    Abandoned(Duration),
}

/// The backoff before retry number `retry` (1-based): a uniformly random
/// duration up to `min(max, initial × 2^(retry-1))` (full jitter), and no
/// less than the handler's hint, capped at `max`.
pub fn backoff(initial: Duration, max: Duration, retry: u32, hint: Option<Duration>) -> Duration {
    let ceiling = initial
        .saturating_mul(
            1u32.checked_shl(retry.saturating_sub(1))
                .unwrap_or(u32::MAX),
        )
        .min(max);
    let jitter = if ceiling.is_zero() {
        Duration::ZERO
    } else {
        rand::rng().random_range(Duration::ZERO..=ceiling)
    };
    jitter.max(hint.unwrap_or_default()).min(max)
}

impl Route {
    /// Runs the handler on `msg` until it succeeds, fails for good or runs
    /// out of attempts.
    /// `msg.attempt` and `msg.deadline` are set for each invocation.
    pub async fn attempt(
        &self,
        msg: &mut Message,
        settle: &dyn Settle,
        shutdown: &CancellationToken,
    ) -> Attempted {
        let mut attempt = msg.attempt.max(1);
        // A waiting caller gets the first outcome and retries itself.
        let max_attempts = match settle.waits() {
            true => attempt,
            false => self.retry.max_attempts,
        };
        loop {
            if self.pool.size() == 0 {
                self.wake.notify_one();
            }
            let worker = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Attempted::Abandoned(Duration::ZERO),
                w = self.pool.acquire() => w,
            };
            msg.attempt = attempt;
            let (result, label) = self.invoke_once(msg, settle).await;
            drop(worker);
            let error = match result {
                Ok(outputs) => return Attempted::Done(outputs),
                Err(e) => e,
            };
            if !error.is_retryable() || attempt >= max_attempts {
                return Attempted::Failed(Failure {
                    error,
                    attempts: attempt,
                    timed_out: label == Invocation::Timeout,
                });
            }
            let hint = match &error {
                HandlerError::Retryable { retry_after, .. } => *retry_after,
                _ => None,
            };
            let delay = backoff(
                self.retry.initial_backoff,
                self.retry.max_backoff,
                attempt,
                hint,
            );
            self.meters.retried();
            debug!(route = %self.name, attempt, ?delay, error = %error, "Retrying.");
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Attempted::Abandoned(delay),
                _ = within(std::future::pending::<()>(), delay, settle) => {}
            }
            attempt += 1;
        }
    }

    /// One invocation, with the time limit, panic catching and metrics;
    /// returns how it ended, and its label.
    async fn invoke_once(
        &self,
        msg: &mut Message,
        settle: &dyn Settle,
    ) -> (Result<Vec<Output>, HandlerError>, Invocation) {
        let start = Instant::now();
        msg.deadline = Some(start + self.timeout);
        let handler = Arc::clone(&self.handler);
        let call = AssertUnwindSafe(handler.call(msg)).catch_unwind();
        let outcome = within(call, self.timeout, settle).await;
        let elapsed = start.elapsed();
        let (result, label) = match outcome {
            None => (
                Err(HandlerError::retryable(format!(
                    "timed out after {}",
                    humantime::format_duration(self.timeout)
                ))),
                Invocation::Timeout,
            ),
            Some(Err(panic)) => {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned());
                warn!(route = %self.name, handler = %self.handler_name, panic = %why, "Handler panicked.");
                (
                    Err(HandlerError::crashed(format!("handler panicked: {why}"))),
                    Invocation::Crash,
                )
            }
            Some(Ok(Ok(outputs))) => (Ok(outputs), Invocation::Ok),
            Some(Ok(Err(e))) => {
                let label = match &e {
                    HandlerError::Retryable { .. } => Invocation::Retry,
                    HandlerError::Crashed { .. } => Invocation::Crash,
                    HandlerError::Permanent { .. } => Invocation::Fail,
                };
                (Err(e), label)
            }
        };
        self.meters.invoked(label, elapsed);
        (result, label)
    }
}

/// Awaits `fut` for at most `limit` (`None` past it), telling the broker at
/// the settle token's keepalive interval that the message is still being
/// worked on.
///
/// One timer, moved forward at each keepalive: a time limit and a separate
/// interval cost two timer registrations per invocation (docs/benchmarks.md).
async fn within<F: std::future::Future>(
    fut: F,
    limit: Duration,
    settle: &dyn Settle,
) -> Option<F::Output> {
    use tokio::time::Instant;
    let start = Instant::now();
    let deadline = start + limit;
    let every = settle.keepalive();
    let wake_after = |now: Instant| match every {
        Some(every) if now + every < deadline => now + every,
        _ => deadline,
    };
    let timer = tokio::time::sleep_until(wake_after(start));
    tokio::pin!(fut, timer);
    loop {
        tokio::select! {
            biased;
            out = &mut fut => return Some(out),
            _ = &mut timer => {
                let now = Instant::now();
                if now >= deadline {
                    return None;
                }
                if let Err(e) = settle.in_progress().await {
                    warn!(error = %e, "Could not extend the ack deadline.");
                }
                timer.as_mut().reset(wake_after(Instant::now()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::brokers::BrokerError;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Counts keepalives, sent every `every`.
    struct Beats {
        every: Option<Duration>,
        sent: AtomicU32,
    }

    #[async_trait::async_trait]
    impl Settle for Beats {
        async fn ack(&self) -> Result<(), BrokerError> {
            Ok(())
        }
        async fn nack(&self, _msg: &Message, _delay: Duration) -> Result<(), BrokerError> {
            Ok(())
        }
        async fn in_progress(&self) -> Result<(), BrokerError> {
            self.sent.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        fn keepalive(&self) -> Option<Duration> {
            self.every
        }
    }

    fn beats(every: Option<u64>) -> Beats {
        Beats {
            every: every.map(Duration::from_secs),
            sent: AtomicU32::new(0),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn within_beats_while_waiting_and_gives_up_at_the_limit() {
        let settle = beats(Some(10));
        let slow = tokio::time::sleep(Duration::from_secs(100));
        let out = within(slow, Duration::from_secs(35), &settle).await;
        assert_eq!(out, None, "past the limit");
        assert_eq!(settle.sent.load(Ordering::Relaxed), 3, "at 10, 20 and 30 s");

        let settle = beats(Some(10));
        let quick = async {
            tokio::time::sleep(Duration::from_secs(25)).await;
            7
        };
        assert_eq!(
            within(quick, Duration::from_secs(60), &settle).await,
            Some(7)
        );
        assert_eq!(settle.sent.load(Ordering::Relaxed), 2, "at 10 and 20 s");

        let settle = beats(None);
        let slow = tokio::time::sleep(Duration::from_secs(100));
        assert_eq!(within(slow, Duration::from_secs(5), &settle).await, None);
        assert_eq!(
            settle.sent.load(Ordering::Relaxed),
            0,
            "no keepalive asked for"
        );
    }

    #[test]
    fn backoff_is_bounded_by_the_exponential_ceiling() {
        let (i, m) = (Duration::from_millis(100), Duration::from_secs(1));
        for _ in 0..200 {
            assert!(backoff(i, m, 1, None) <= Duration::from_millis(100));
            assert!(backoff(i, m, 3, None) <= Duration::from_millis(400));
            assert!(backoff(i, m, 30, None) <= m);
        }
    }

    #[test]
    fn backoff_honours_the_hint_up_to_max() {
        let (i, m) = (Duration::from_millis(1), Duration::from_secs(2));
        assert_eq!(
            backoff(i, m, 1, Some(Duration::from_secs(1))),
            Duration::from_secs(1)
        );
        assert_eq!(backoff(i, m, 1, Some(Duration::from_secs(60))), m);
    }
}
