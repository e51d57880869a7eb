//! What a route knows about itself, for `/status`, the gauges and the
//! autoscaler.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

/// Live counters of one route.
#[derive(Debug, Default)]
pub struct RouteStats {
    next_id: AtomicU64,
    inflight: Mutex<HashMap<u64, Instant>>,
    /// Messages received.
    pub received: AtomicU64,
    /// Messages settled with a result, reply or filter.
    pub succeeded: AtomicU64,
    /// Messages dead-lettered.
    pub dead_lettered: AtomicU64,
    /// Messages handed back to the broker.
    pub redelivered: AtomicU64,
    /// The latest broker backlog figure.
    pub broker_backlog: AtomicU64,
    /// Workers the autoscaler wants.
    pub desired: AtomicUsize,
    /// Whether the source is subscribed.
    pub subscribed: AtomicBool,
    last_error: Mutex<Option<(SystemTime, String)>>,
}

/// Removes its message from the in-flight set when dropped.
#[derive(Debug)]
pub struct InflightGuard {
    stats: Arc<RouteStats>,
    id: u64,
}

impl RouteStats {
    /// Records a message as in flight since `since`.
    pub fn begin(self: &Arc<Self>, since: Instant) -> InflightGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.inflight.lock().expect("stats lock").insert(id, since);
        InflightGuard {
            stats: self.clone(),
            id,
        }
    }

    /// Messages in flight (queued or running).
    pub fn inflight(&self) -> usize {
        self.inflight.lock().expect("stats lock").len()
    }

    /// Seconds since the oldest in-flight message arrived.
    pub fn oldest_age_secs(&self) -> f64 {
        let now = Instant::now();
        self.inflight
            .lock()
            .expect("stats lock")
            .values()
            .map(|t| now.saturating_duration_since(*t).as_secs_f64())
            .fold(0.0, f64::max)
    }

    /// Records an error for `/status` (the text never goes into a label).
    pub fn error(&self, message: impl Into<String>) {
        *self.last_error.lock().expect("stats lock") = Some((SystemTime::now(), message.into()));
    }

    /// The last error and when it happened.
    pub fn last_error(&self) -> Option<(SystemTime, String)> {
        self.last_error.lock().expect("stats lock").clone()
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.stats
            .inflight
            .lock()
            .expect("stats lock")
            .remove(&self.id);
    }
}
