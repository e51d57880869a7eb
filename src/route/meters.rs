//! A route's events: each is emitted once, here, and feeds both its
//! Prometheus counter and the figure `/status` shows.
//!
//! `metrics::counter!` with labels builds a key from cloned label strings
//! and looks it up in the registry on every call: about a tenth of mqfn's
//! instructions per message in a profile (docs/benchmarks.md). The handles
//! here are looked up once; updating one is an atomic add.

use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Failed, and the failure told to the caller that waited for it (a
    /// synchronous HTTP request).
    Answered,
}

impl Outcome {
    const ALL: [Outcome; 6] = [
        Outcome::Ok,
        Outcome::Replied,
        Outcome::Filtered,
        Outcome::DeadLettered,
        Outcome::Dropped,
        Outcome::Answered,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Replied => "replied",
            Outcome::Filtered => "filtered",
            Outcome::DeadLettered => "dead_lettered",
            Outcome::Dropped => "dropped",
            Outcome::Answered => "answered_error",
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

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Invocation::Ok => "ok",
            Invocation::Retry => "retry",
            Invocation::Crash => "crash",
            Invocation::Fail => "fail",
            Invocation::Timeout => "timeout",
        }
    }
}

/// A counter that can also be read: Prometheus handles are write-only.
struct Tally {
    counter: Counter,
    count: AtomicU64,
}

impl Tally {
    fn new(counter: Counter) -> Self {
        Self {
            counter,
            count: AtomicU64::new(0),
        }
    }

    fn add(&self) {
        self.counter.increment(1);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// The per-message events of one route and its handler.
pub struct Meters {
    received: Tally,
    settled: [Tally; Outcome::ALL.len()],
    retries: Tally,
    dead_letters: Tally,
    redelivered: Tally,
    invocations: [Counter; Invocation::ALL.len()],
    duration: Histogram,
    billed: Account,
}

impl Meters {
    /// Registers the handles of `route` running `handler`.
    pub fn new(route: &str, handler: &str) -> Self {
        let r = route.to_owned();
        let h = handler.to_owned();
        let tally = Tally::new;
        Self {
            received: tally(metrics::counter!(names::MESSAGES_RECEIVED_TOTAL, "route" => r.clone())),
            settled: Outcome::ALL.map(|o| {
                tally(metrics::counter!(names::MESSAGES_SETTLED_TOTAL, "route" => r.clone(), "outcome" => o.label()))
            }),
            retries: tally(metrics::counter!(names::RETRIES_TOTAL, "route" => r.clone())),
            dead_letters: tally(metrics::counter!(names::DEAD_LETTERS_TOTAL, "route" => r.clone())),
            redelivered: tally(metrics::counter!(names::MESSAGES_REDELIVERED_TOTAL, "route" => r)),
            invocations: Invocation::ALL.map(|i| {
                metrics::counter!(names::HANDLER_INVOCATIONS_TOTAL, "handler" => h.clone(), "result" => i.label())
            }),
            duration: metrics::histogram!(names::HANDLER_DURATION_SECONDS, "handler" => h.clone()),
            billed: Account::of(&h),
        }
    }

    /// A message arrived from the source.
    pub fn received(&self) {
        self.received.add();
    }

    /// A message was acknowledged with this outcome.
    pub fn settled(&self, outcome: Outcome) {
        self.settled[outcome as usize].add();
    }

    /// An attempt failed and will be retried in process.
    pub fn retried(&self) {
        self.retries.add();
    }

    /// A dead letter was published and confirmed.
    pub fn dead_lettered(&self) {
        self.dead_letters.add();
    }

    /// A message was handed back to the broker.
    pub fn redelivered(&self) {
        self.redelivered.add();
    }

    /// One invocation ended with `result` after `elapsed`: counted, timed
    /// and billed.
    pub fn invoked(&self, result: Invocation, elapsed: std::time::Duration) {
        self.invocations[result as usize].increment(1);
        self.duration.record(elapsed.as_secs_f64());
        self.billed.charge(elapsed);
    }

    /// The figures so far, for `/status`.
    pub fn counts(&self) -> Counts {
        let settled = |o: Outcome| self.settled[o as usize].get();
        Counts {
            received: self.received.get(),
            succeeded: settled(Outcome::Ok)
                + settled(Outcome::Replied)
                + settled(Outcome::Filtered),
            dead_lettered: self.dead_letters.get(),
            dropped: settled(Outcome::Dropped),
            answered_errors: settled(Outcome::Answered),
            redelivered: self.redelivered.get(),
            retries: self.retries.get(),
        }
    }
}

/// A route's totals since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Messages received.
    pub received: u64,
    /// Acknowledged with a result, a reply, or skipped by the filter.
    pub succeeded: u64,
    /// Dead letters published.
    pub dead_lettered: u64,
    /// Failed on a route without a dead letter (at-most-once sources).
    pub dropped: u64,
    /// Failures answered to a caller that waited (synchronous HTTP).
    pub answered_errors: u64,
    /// Handed back to the broker for redelivery.
    pub redelivered: u64,
    /// In-process retries.
    pub retries: u64,
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
