//! The assignment side of the [`Tracker`], driven by the rebalance
//! callbacks: a partition is assigned under a fresh epoch; on revocation it
//! stops dispatching, waits (bounded) for its running messages to settle,
//! and is released with the commit point that still needs committing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{Part, Tp, Tracker};

impl Tracker {
    /// Starts tracking a newly assigned partition under a fresh epoch.
    pub fn assign(&self, tp: Tp) -> u64 {
        let mut inner = self.lock();
        inner.epochs += 1;
        let epoch = inner.epochs;
        inner.parts.insert(
            tp,
            Part {
                epoch,
                revoking: false,
                paused: false,
                pending: BTreeMap::new(),
                next: None,
                committed: None,
            },
        );
        epoch
    }

    /// Stops dispatching these partitions; their queued messages are dropped
    /// from now on.
    pub fn begin_revoke(&self, tps: &[Tp]) {
        let mut inner = self.lock();
        for tp in tps {
            if let Some(p) = inner.parts.get_mut(tp) {
                p.revoking = true;
            }
        }
    }

    /// Messages of `tps` handed to the route and not settled yet.
    pub fn running(&self, tps: &[Tp]) -> usize {
        let inner = self.lock();
        tps.iter()
            .filter_map(|tp| inner.parts.get(tp))
            .map(Part::running)
            .sum()
    }

    /// Waits until no message of `tps` is running, at most `limit`. Returns
    /// how many are still running.
    pub fn wait_idle(&self, tps: &[Tp], limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        let mut inner = self.lock();
        loop {
            let left: usize = tps
                .iter()
                .filter_map(|tp| inner.parts.get(tp))
                .map(Part::running)
                .sum();
            let now = Instant::now();
            if left == 0 || now >= deadline {
                return left;
            }
            inner = self
                .settled
                .wait_timeout(inner, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Forgets these partitions and returns the commit points that still
    /// need committing.
    pub fn release(&self, tps: &[Tp]) -> Vec<(Tp, i64)> {
        let mut inner = self.lock();
        tps.iter()
            .filter_map(|tp| {
                let part = inner.parts.remove(tp)?;
                let point = part.commit_point()?;
                (part.committed != Some(point)).then(|| (tp.clone(), point))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::tests::{poll_run, tp};
    use super::*;

    #[test]
    fn acks_from_an_old_assignment_are_ignored() {
        let t = Tracker::new(100);
        t.assign(tp());
        let old = poll_run(&t, 0..2);
        t.begin_revoke(&[tp()]);
        assert_eq!(t.release(&[tp()]), vec![(tp(), 0)]);
        let new = t.assign(tp());
        assert_ne!(old, new);
        let e = poll_run(&t, 0..2);
        t.settle(&tp(), old, 0);
        t.settle(&tp(), old, 1);
        assert_eq!(t.commit_point(&tp()), Some(0), "stale acks moved nothing");
        t.settle(&tp(), e, 0);
        assert_eq!(t.commit_point(&tp()), Some(1));
    }

    #[test]
    fn revoking_stops_dispatch_and_drops_new_polls() {
        let t = Tracker::new(100);
        let e = t.assign(tp());
        t.polled(&tp(), 0).unwrap();
        t.begin_revoke(&[tp()]);
        assert!(
            !t.dispatch(&tp(), e, 0),
            "queued messages are not handed out"
        );
        assert_eq!(t.polled(&tp(), 1), None);
        assert!(t.polled(&Tp::new("t", 9), 0).is_none(), "not assigned here");
    }

    #[test]
    fn revoke_waits_for_running_messages_only() {
        let t = Arc::new(Tracker::new(10));
        t.assign(tp());
        let e = poll_run(&t, 0..2);
        t.polled(&tp(), 2).unwrap(); // queued, never dispatched
        t.begin_revoke(&[tp()]);
        let settler = {
            let t = t.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                t.settle(&tp(), e, 1);
                t.settle(&tp(), e, 0);
            })
        };
        assert_eq!(t.wait_idle(&[tp()], Duration::from_secs(10)), 0);
        settler.join().unwrap();
        assert_eq!(
            t.release(&[tp()]),
            vec![(tp(), 2)],
            "the queued one is redone by the next owner"
        );
    }

    #[test]
    fn revoke_wait_is_bounded() {
        let t = Tracker::new(10);
        t.assign(tp());
        poll_run(&t, 0..1);
        t.begin_revoke(&[tp()]);
        assert_eq!(t.wait_idle(&[tp()], Duration::from_millis(10)), 1);
        assert_eq!(t.release(&[tp()]), vec![(tp(), 0)]);
    }
}
