//! One line per outage, not thirty a second.
//!
//! While a broker is unreachable, its clients report every reconnect
//! attempt: librdkafka from every client (the shared producer, each route's
//! consumer, the admin client), so that with one route and Kafka down mqfn
//! logged about 60 `AllBrokersDown` warnings a second; the NATS client and
//! the AMQP reconnect loop once per attempt. Each broker name gets one
//! [`Quiet`], shared by all its clients: the first complaint of an outage is logged,
//! the rest are counted (and logged at debug), and a summary line comes
//! once per [`SUMMARY_EVERY`] while they go on. The outage ends when the
//! broker answers again, or after a minute without a complaint.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How often a summary of suppressed complaints is logged during an outage.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// What to do with one complaint.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Log it: the first of an outage.
    Log,
    /// Log a summary instead: this many were suppressed since the last line.
    Summary(u64),
    /// Count it and say nothing.
    Drop,
}

#[derive(Debug, Default)]
struct State {
    /// When the last line (the first complaint or a summary) was logged,
    /// while complaints go on.
    logged_at: Option<Instant>,
    /// Complaints suppressed since then.
    suppressed: u64,
    /// Suppressed in the whole outage.
    outage: u64,
    /// The latest complaint: a minute without one ends the outage.
    last: Option<Instant>,
}

/// The complaint limiter of one broker.
#[derive(Debug, Default)]
pub struct Quiet(Mutex<State>);

impl Quiet {
    /// The limiter of `broker`, shared by all of its clients in the process.
    pub fn of(broker: &str) -> Arc<Self> {
        static ALL: LazyLock<Mutex<HashMap<String, Arc<Quiet>>>> = LazyLock::new(Mutex::default);
        let mut all = ALL.lock().unwrap_or_else(PoisonError::into_inner);
        all.entry(broker.to_owned()).or_default().clone()
    }

    /// Decides about one complaint made at `now`.
    pub fn complain(&self, now: Instant) -> Verdict {
        let mut s = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if s.last
            .is_some_and(|t| now.duration_since(t) >= SUMMARY_EVERY)
        {
            // Quiet for a minute: whatever comes now is news.
            let pending = std::mem::take(&mut *s).suppressed;
            s.last = Some(now);
            s.logged_at = Some(now);
            return match pending {
                0 => Verdict::Log,
                n => Verdict::Summary(n + 1),
            };
        }
        s.last = Some(now);
        match s.logged_at {
            None => {
                s.logged_at = Some(now);
                Verdict::Log
            }
            Some(at) if now.duration_since(at) >= SUMMARY_EVERY => {
                let n = std::mem::take(&mut s.suppressed) + 1;
                s.outage += 1;
                s.logged_at = Some(now);
                Verdict::Summary(n)
            }
            Some(_) => {
                s.suppressed += 1;
                s.outage += 1;
                Verdict::Drop
            }
        }
    }

    /// The broker answers again: the next complaint is logged at once.
    /// Returns how many complaints the outage suppressed.
    pub fn recovered(&self) -> u64 {
        let mut s = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::take(&mut *s).outage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_outage_and_a_summary_per_minute() {
        let q = Quiet::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(q.complain(at(0)), Verdict::Log, "the first is logged");
        // 30 a second for a minute: all counted, none logged...
        let mut dropped = 0;
        for i in 1..1800 {
            assert_eq!(q.complain(at(i * 33)), Verdict::Drop);
            dropped += 1;
        }
        // ...until a minute after the first line.
        assert_eq!(q.complain(at(60_000)), Verdict::Summary(dropped + 1));
        assert_eq!(q.complain(at(60_500)), Verdict::Drop);
        assert_eq!(q.recovered(), dropped + 2, "the whole outage's count");
        // The next outage is logged at once.
        assert_eq!(q.complain(at(61_000)), Verdict::Log);
    }

    #[test]
    fn a_quiet_minute_ends_an_outage() {
        let q = Quiet::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(q.complain(at(0)), Verdict::Log);
        assert_eq!(q.complain(at(1)), Verdict::Drop);
        // Never recovered (the broker stayed up: a passing error), but
        // nothing for a minute: the next is logged, with the one pending.
        assert_eq!(q.complain(at(70)), Verdict::Summary(2));
        assert_eq!(q.complain(at(200)), Verdict::Log, "nothing pending");
        assert_eq!(q.complain(at(201)), Verdict::Drop);
    }

    #[test]
    fn clients_of_one_broker_share_a_limiter() {
        let name = "quiet-test-shared";
        assert!(Arc::ptr_eq(&Quiet::of(name), &Quiet::of(name)));
        assert!(!Arc::ptr_eq(
            &Quiet::of(name),
            &Quiet::of("quiet-test-other")
        ));
    }
}
