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
use crate::message::Settle;

/// A message that failed for good.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The last error.
    pub error: HandlerError,
    /// Attempts made, the broker's earlier deliveries included.
    pub attempts: u32,
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
            let result = self.invoke_once(msg, settle).await;
            drop(worker);
            let error = match result {
                Ok(outputs) => return Attempted::Done(outputs),
                Err(e) => e,
            };
            if !error.is_retryable() || attempt >= self.retry.max_attempts {
                return Attempted::Failed(Failure {
                    error,
                    attempts: attempt,
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
            self.meters.retries.increment(1);
            debug!(route = %self.name, attempt, ?delay, error = %error, "Retrying.");
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Attempted::Abandoned(delay),
                _ = keepalive(tokio::time::sleep(delay), settle) => {}
            }
            attempt += 1;
        }
    }

    /// One invocation, with the time limit, panic catching and metrics.
    async fn invoke_once(
        &self,
        msg: &mut Message,
        settle: &dyn Settle,
    ) -> Result<Vec<Output>, HandlerError> {
        let start = Instant::now();
        msg.deadline = Some(start + self.timeout);
        let handler = Arc::clone(&self.handler);
        let call = AssertUnwindSafe(handler.call(msg)).catch_unwind();
        let outcome = tokio::time::timeout(self.timeout, keepalive(call, settle)).await;
        let elapsed = start.elapsed();
        let (result, label) = match outcome {
            Err(_) => (
                Err(HandlerError::retryable(format!(
                    "timed out after {}",
                    humantime::format_duration(self.timeout)
                ))),
                Invocation::Timeout,
            ),
            Ok(Err(panic)) => {
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
            Ok(Ok(Ok(outputs))) => (Ok(outputs), Invocation::Ok),
            Ok(Ok(Err(e))) => {
                let label = match &e {
                    HandlerError::Retryable { .. } => Invocation::Retry,
                    HandlerError::Crashed { .. } => Invocation::Crash,
                    HandlerError::Permanent { .. } => Invocation::Fail,
                };
                (Err(e), label)
            }
        };
        self.meters.invoked(label);
        self.meters.duration.record(elapsed.as_secs_f64());
        self.meters.billed.charge(elapsed);
        result
    }
}

/// Awaits `fut`, telling the broker at intervals that the message is still
/// being worked on.
async fn keepalive<F: std::future::Future>(fut: F, settle: &dyn Settle) -> F::Output {
    let Some(every) = settle.keepalive() else {
        return fut.await;
    };
    tokio::pin!(fut);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            out = &mut fut => return out,
            _ = tick.tick() => {
                if let Err(e) = settle.in_progress().await {
                    warn!(error = %e, "Could not extend the ack deadline.");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
