//! A route's metric handles, registered once when the route is built.
//!
//! `metrics::counter!` with labels builds a key from cloned label strings
//! and looks it up in the registry on every call: about a tenth of mqfn's
//! instructions per message in a profile (docs/benchmarks.md). The handles
//! here are looked up once; updating one is an atomic add.

use metrics::{Counter, Histogram};

use crate::telemetry::billing::Account;
use crate::telemetry::names;

/// How a message was settled (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Results published (or none to publish).
    Ok,
    /// A reply was sent.
    Replied,
    /// Skipped by the route's filter.
    Filtered,
    /// Sent to the dead letter.
    DeadLettered,
    /// Failed on a route without a dead letter (at-most-once sources).
    Dropped,
}

impl Outcome {
    const ALL: [Outcome; 5] = [
        Outcome::Ok,
        Outcome::Replied,
        Outcome::Filtered,
        Outcome::DeadLettered,
        Outcome::Dropped,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Replied => "replied",
            Outcome::Filtered => "filtered",
            Outcome::DeadLettered => "dead_lettered",
            Outcome::Dropped => "dropped",
        }
    }
}

/// How one invocation ended (the `result` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invocation {
    /// Returned outputs.
    Ok,
    /// A retryable error.
    Retry,
    /// Crashed or panicked.
    Crash,
    /// A permanent error.
    Fail,
    /// Ran past its time limit.
    Timeout,
}

impl Invocation {
    const ALL: [Invocation; 5] = [
        Invocation::Ok,
        Invocation::Retry,
        Invocation::Crash,
        Invocation::Fail,
        Invocation::Timeout,
    ];

    fn label(self) -> &'static str {
        match self {
            Invocation::Ok => "ok",
            Invocation::Retry => "retry",
            Invocation::Crash => "crash",
            Invocation::Fail => "fail",
            Invocation::Timeout => "timeout",
        }
    }
}

/// The per-message metrics of one route and its handler.
pub struct Meters {
    /// `mqfn_messages_received_total{route}`.
    pub received: Counter,
    settled: [Counter; Outcome::ALL.len()],
    /// `mqfn_retries_total{route}`.
    pub retries: Counter,
    /// `mqfn_dead_letters_total{route}`.
    pub dead_letters: Counter,
    /// `mqfn_messages_redelivered_total{route}`.
    pub redelivered: Counter,
    invocations: [Counter; Invocation::ALL.len()],
    /// `mqfn_handler_duration_seconds{handler}`.
    pub duration: Histogram,
    /// The handler's billing account.
    pub billed: Account,
}

impl Meters {
    /// Registers the handles of `route` running `handler`.
    pub fn new(route: &str, handler: &str) -> Self {
        let r = route.to_owned();
        let h = handler.to_owned();
        Self {
            received: metrics::counter!(names::MESSAGES_RECEIVED_TOTAL, "route" => r.clone()),
            settled: Outcome::ALL.map(|o| {
                metrics::counter!(names::MESSAGES_SETTLED_TOTAL, "route" => r.clone(), "outcome" => o.label())
            }),
            retries: metrics::counter!(names::RETRIES_TOTAL, "route" => r.clone()),
            dead_letters: metrics::counter!(names::DEAD_LETTERS_TOTAL, "route" => r.clone()),
            redelivered: metrics::counter!(names::MESSAGES_REDELIVERED_TOTAL, "route" => r),
            invocations: Invocation::ALL.map(|i| {
                metrics::counter!(names::HANDLER_INVOCATIONS_TOTAL, "handler" => h.clone(), "result" => i.label())
            }),
            duration: metrics::histogram!(names::HANDLER_DURATION_SECONDS, "handler" => h.clone()),
            billed: Account::of(&h),
        }
    }

    /// Counts a settled message.
    pub fn settled(&self, outcome: Outcome) {
        self.settled[outcome as usize].increment(1);
    }

    /// Counts an invocation.
    pub fn invoked(&self, result: Invocation) {
        self.invocations[result as usize].increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_index_their_own_labels() {
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i, "{}", o.label());
        }
        for (i, r) in Invocation::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{}", r.label());
        }
    }
}
