//! What a route knows about itself, for `/status`, the gauges and the
//! autoscaler.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime};

use slab::Slab;

/// Live counters of one route.
#[derive(Debug, Default)]
pub struct RouteStats {
    /// Arrival times of the messages in flight. A slab, not a hash map:
    /// its insert and remove index a vector (a SipHash per message showed
    /// in the profile).
    inflight: Mutex<Slab<Instant>>,
    /// The latest broker backlog figure.
    pub broker_backlog: AtomicU64,
    /// Workers the autoscaler wants.
    pub desired: AtomicUsize,
    /// Whether the source is subscribed.
    subscribed: AtomicBool,
    last_error: Mutex<Option<(SystemTime, String)>>,
}

/// Removes its message from the in-flight set when dropped.
#[derive(Debug)]
pub struct InflightGuard {
    stats: Arc<RouteStats>,
    id: usize,
}

impl RouteStats {
    /// Records a message as in flight since `since`.
    pub fn begin(self: &Arc<Self>, since: Instant) -> InflightGuard {
        let id = self
            .inflight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(since);
        InflightGuard {
            stats: self.clone(),
            id,
        }
    }

    /// Messages in flight (queued or running).
    pub fn inflight(&self) -> usize {
        self.inflight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Seconds since the oldest in-flight message arrived.
    pub fn oldest_age_secs(&self) -> f64 {
        let now = Instant::now();
        self.inflight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(_, t)| t)
            .map(|t| now.saturating_duration_since(*t).as_secs_f64())
            .fold(0.0, f64::max)
    }

    /// Marks the source subscribed, or not.
    pub fn set_subscribed(&self, on: bool) {
        self.subscribed
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the source is subscribed.
    pub fn is_subscribed(&self) -> bool {
        self.subscribed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Records an error for `/status` (the text never goes into a label).
    pub fn error(&self, message: impl Into<String>) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some((SystemTime::now(), message.into()));
    }

    /// The last error and when it happened.
    pub fn last_error(&self) -> Option<(SystemTime, String)> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.stats
            .inflight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Panics while holding `lock`, leaving it poisoned.
    fn poison<T>(lock: &Mutex<T>) {
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _held = lock.lock();
            panic!("a panic while holding the stats lock");
        }));
        assert!(panicked.is_err());
        assert!(lock.is_poisoned());
    }

    #[test]
    fn a_panic_while_holding_a_lock_does_not_stop_the_stats() {
        let stats = Arc::new(RouteStats::default());
        let first = stats.begin(Instant::now());
        poison(&stats.inflight);
        poison(&stats.last_error);
        let second = stats.begin(Instant::now());
        assert_eq!(stats.inflight(), 2);
        assert!(stats.oldest_age_secs() >= 0.0);
        drop(first);
        drop(second);
        assert_eq!(stats.inflight(), 0, "the guards still remove their entries");
        stats.error("after the panic");
        assert_eq!(
            stats.last_error().map(|(_, m)| m).as_deref(),
            Some("after the panic")
        );
    }
}
