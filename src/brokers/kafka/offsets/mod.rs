//! The contiguous-offset tracker.
//!
//! Per assigned partition it keeps the offsets that were polled but are not
//! settled yet. The offset to commit is the lowest of those, or one past the
//! highest polled offset when none is pending (Kafka's "next offset to
//! read"). So a commit never passes a message that is still in flight, even
//! when later offsets finished first.
//!
//! Each assignment of a partition gets a fresh *epoch*. Settle tokens carry
//! the epoch they were issued under, so that a late ack for a partition that
//! was revoked (and perhaps assigned again) cannot move the new owner's
//! offsets.
//!
//! The tracker also drives backpressure: a partition whose pending count
//! reaches the window is to be paused, and resumed once half of it drained.
//!
//! This module holds the message side (poll, dispatch, settle, requeue,
//! commit points, pause and resume); [`assignment`] holds the rebalance side
//! (assign, revoke, wait, release).

mod assignment;

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use rustc_hash::FxHashMap;

/// A topic and partition.
///
/// The topic is shared: every record carries its `Tp`, and a `String`
/// would cost an allocation per record.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tp {
    /// The topic.
    pub topic: Arc<str>,
    /// The partition.
    pub partition: i32,
}

impl Tp {
    /// A topic-partition.
    pub fn new(topic: &str, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

impl std::fmt::Display for Tp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// Where an unsettled offset is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Polled, waiting in mqfn to be handed to the route (or to be
    /// redelivered after a nack).
    Queued,
    /// Handed to the route: a handler or a publish is working on it.
    Running,
}

#[derive(Debug)]
struct Part {
    epoch: u64,
    revoking: bool,
    paused: bool,
    pending: BTreeMap<i64, Stage>,
    /// One past the highest offset polled.
    next: Option<i64>,
    /// The last commit point handed to the broker.
    committed: Option<i64>,
}

impl Part {
    fn commit_point(&self) -> Option<i64> {
        self.pending.keys().next().copied().or(self.next)
    }

    fn running(&self) -> usize {
        self.pending
            .values()
            .filter(|s| **s == Stage::Running)
            .count()
    }
}

/// The partitions are looked up three times per record; the keys come
/// from the broker's assignment, so a fast hash needs no DoS resistance.
#[derive(Debug, Default)]
struct Inner {
    parts: FxHashMap<Tp, Part>,
    epochs: u64,
}

/// A polled message accepted by the tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// The assignment epoch to settle it under.
    pub epoch: u64,
    /// The partition's window is now full: pause it.
    pub pause: bool,
}

/// Settled-offset bookkeeping for one consumer.
#[derive(Debug)]
pub struct Tracker {
    inner: Mutex<Inner>,
    settled: Condvar,
    window: usize,
}

impl Tracker {
    /// A tracker that pauses a partition at `window` pending messages.
    pub fn new(window: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            settled: Condvar::new(),
            window: window.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every
        // method finishes its update before anything can panic).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a polled offset. `None` when the partition is not assigned
    /// here or is being revoked: the message must be dropped.
    pub fn polled(&self, tp: &Tp, offset: i64) -> Option<Accepted> {
        let mut inner = self.lock();
        let part = inner.parts.get_mut(tp).filter(|p| !p.revoking)?;
        part.pending.insert(offset, Stage::Queued);
        part.next = Some(part.next.map_or(offset + 1, |n| n.max(offset + 1)));
        let pause = !part.paused && part.pending.len() >= self.window;
        part.paused |= pause;
        Some(Accepted {
            epoch: part.epoch,
            pause,
        })
    }

    /// Hands a queued offset to the route. `false` when its partition was
    /// revoked (or is being revoked) since: the message must be dropped.
    pub fn dispatch(&self, tp: &Tp, epoch: u64, offset: i64) -> bool {
        let mut inner = self.lock();
        let Some(part) = inner
            .parts
            .get_mut(tp)
            .filter(|p| p.epoch == epoch && !p.revoking)
        else {
            return false;
        };
        match part.pending.get_mut(&offset) {
            Some(stage) => {
                *stage = Stage::Running;
                true
            }
            None => false,
        }
    }

    /// Marks an offset settled: its results are confirmed.
    pub fn settle(&self, tp: &Tp, epoch: u64, offset: i64) {
        let mut inner = self.lock();
        if let Some(part) = inner.parts.get_mut(tp).filter(|p| p.epoch == epoch) {
            part.pending.remove(&offset);
            if part.revoking {
                self.settled.notify_all();
            }
        }
    }

    /// Puts a running offset back in the queue (a nack): it stays pending,
    /// so the commit cannot pass it. `false` when its partition is gone.
    pub fn requeue(&self, tp: &Tp, epoch: u64, offset: i64) -> bool {
        let mut inner = self.lock();
        let Some(part) = inner.parts.get_mut(tp).filter(|p| p.epoch == epoch) else {
            return false;
        };
        let Some(stage) = part.pending.get_mut(&offset) else {
            return false;
        };
        *stage = Stage::Queued;
        if part.revoking {
            self.settled.notify_all();
        }
        !part.revoking
    }

    /// Commit points that moved since the last call, marked as committed.
    pub fn to_commit(&self) -> Vec<(Tp, i64)> {
        let mut inner = self.lock();
        let mut out = Vec::new();
        for (tp, part) in inner.parts.iter_mut() {
            if let Some(point) = part.commit_point() {
                if part.committed != Some(point) {
                    part.committed = Some(point);
                    out.push((tp.clone(), point));
                }
            }
        }
        out
    }

    /// A commit did not go through: try these points again next time.
    pub fn commit_failed(&self, points: &[(Tp, i64)]) {
        let mut inner = self.lock();
        for (tp, point) in points {
            if let Some(p) = inner.parts.get_mut(tp) {
                if p.committed == Some(*point) {
                    p.committed = None;
                }
            }
        }
    }

    /// Paused partitions that drained to half the window: resume them.
    pub fn to_resume(&self) -> Vec<Tp> {
        let mut inner = self.lock();
        let low = self.window / 2;
        inner
            .parts
            .iter_mut()
            .filter(|(_, p)| p.paused && p.pending.len() <= low)
            .map(|(tp, p)| {
                p.paused = false;
                tp.clone()
            })
            .collect()
    }

    /// Whether the partition is paused for a full window.
    pub fn is_paused(&self, tp: &Tp) -> bool {
        self.lock().parts.get(tp).is_some_and(|p| p.paused)
    }

    /// Messages polled and waiting in mqfn: the local part of the backlog.
    pub fn queued(&self) -> usize {
        self.lock()
            .parts
            .values()
            .flat_map(|p| p.pending.values())
            .filter(|s| **s == Stage::Queued)
            .count()
    }

    /// The current commit point of a partition.
    #[cfg(test)]
    pub fn commit_point(&self, tp: &Tp) -> Option<i64> {
        self.lock().parts.get(tp).and_then(Part::commit_point)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn tp() -> Tp {
        Tp::new("t", 0)
    }

    pub(super) fn poll_run(t: &Tracker, offsets: std::ops::Range<i64>) -> u64 {
        let mut epoch = 0;
        for o in offsets {
            epoch = t.polled(&tp(), o).expect("assigned").epoch;
            assert!(t.dispatch(&tp(), epoch, o));
        }
        epoch
    }

    #[test]
    fn commits_stop_at_the_lowest_unsettled_offset() {
        let t = Tracker::new(100);
        t.assign(tp());
        assert_eq!(t.to_commit(), vec![], "nothing polled, nothing to commit");
        let e = poll_run(&t, 10..15);
        for o in [11, 12, 14] {
            t.settle(&tp(), e, o);
        }
        assert_eq!(t.to_commit(), vec![(tp(), 10)], "10 is still in flight");
        t.settle(&tp(), e, 10);
        assert_eq!(t.to_commit(), vec![(tp(), 13)], "13 is still in flight");
        assert_eq!(
            t.to_commit(),
            vec![],
            "unchanged points are not recommitted"
        );
        t.settle(&tp(), e, 13);
        assert_eq!(t.to_commit(), vec![(tp(), 15)], "one past the last polled");
    }

    #[test]
    fn gaps_in_offsets_do_not_block_commits() {
        // Compaction and transaction markers leave holes in the offsets.
        let t = Tracker::new(100);
        t.assign(tp());
        let e = t.polled(&tp(), 3).unwrap().epoch;
        t.polled(&tp(), 7).unwrap();
        assert!(t.dispatch(&tp(), e, 3) && t.dispatch(&tp(), e, 7));
        t.settle(&tp(), e, 7);
        t.settle(&tp(), e, 3);
        assert_eq!(t.to_commit(), vec![(tp(), 8)]);
    }

    #[test]
    fn a_nacked_offset_stays_pending_and_holds_the_commit() {
        let t = Tracker::new(100);
        t.assign(tp());
        let e = poll_run(&t, 0..3);
        assert!(t.requeue(&tp(), e, 0));
        t.settle(&tp(), e, 1);
        t.settle(&tp(), e, 2);
        assert_eq!(t.to_commit(), vec![(tp(), 0)]);
        assert_eq!(t.queued(), 1, "the nacked one waits for redelivery");
        assert!(t.dispatch(&tp(), e, 0), "redelivered");
        t.settle(&tp(), e, 0);
        assert_eq!(t.to_commit(), vec![(tp(), 3)]);
    }

    #[test]
    fn the_window_pauses_and_half_a_window_resumes() {
        let t = Tracker::new(4);
        t.assign(tp());
        let pauses: Vec<bool> = (0..5).map(|o| t.polled(&tp(), o).unwrap().pause).collect();
        assert_eq!(pauses, vec![false, false, false, true, false], "pause once");
        let e = t.polled(&tp(), 5).unwrap().epoch;
        for o in 0..3 {
            assert!(t.dispatch(&tp(), e, o));
            t.settle(&tp(), e, o);
        }
        assert_eq!(t.to_resume(), vec![], "3 pending > 2");
        assert!(t.dispatch(&tp(), e, 3));
        t.settle(&tp(), e, 3);
        assert_eq!(t.to_resume(), vec![tp()]);
        assert_eq!(t.to_resume(), vec![], "resumed once");
    }

    #[test]
    fn failed_commits_are_retried() {
        let t = Tracker::new(10);
        t.assign(tp());
        let e = poll_run(&t, 0..1);
        t.settle(&tp(), e, 0);
        let points = t.to_commit();
        assert_eq!(points, vec![(tp(), 1)]);
        t.commit_failed(&points);
        assert_eq!(t.to_commit(), points);
    }
}
