//! Ordering lanes: messages that share a lane run one at a time, in arrival
//! order; different lanes run in parallel.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use crate::config::Ordering;
use crate::message::Message;

/// Which lane a message belongs to, or `None` when it may run at any time.
pub fn lane_of(ordering: Ordering, msg: &Message) -> Option<String> {
    match ordering {
        Ordering::None => None,
        // Messages without a key carry no ordering promise (as in Kafka).
        Ordering::Key => msg
            .key
            .as_ref()
            .map(|k| String::from_utf8_lossy(k).into_owned()),
        Ordering::Partition => Some(match msg.position.partition() {
            Some(partition) => format!("{}#{partition}", msg.subject),
            None => msg.subject.clone(),
        }),
    }
}

/// The queues of the busy lanes.
#[derive(Debug)]
pub struct Lanes<T> {
    busy: Mutex<HashMap<String, VecDeque<T>>>,
}

impl<T> Default for Lanes<T> {
    fn default() -> Self {
        Self {
            busy: Mutex::new(HashMap::new()),
        }
    }
}

impl<T> Lanes<T> {
    /// Queues `item` behind its lane. Returns it back when the lane was
    /// idle: the caller then runs it and must call [`Lanes::next`] after.
    pub fn enter(&self, lane: String, item: T) -> Option<T> {
        let mut busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        match busy.get_mut(&lane) {
            Some(q) => {
                q.push_back(item);
                None
            }
            None => {
                busy.insert(lane, VecDeque::new());
                Some(item)
            }
        }
    }

    /// The next item of a lane whose previous item finished; `None` frees
    /// the lane.
    pub fn next(&self, lane: &str) -> Option<T> {
        let mut busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        let q = busy.get_mut(lane)?;
        let item = q.pop_front();
        if item.is_none() {
            busy.remove(lane);
        }
        item
    }

    /// Items waiting behind busy lanes.
    pub fn queued(&self) -> usize {
        self.busy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(VecDeque::len)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lane_runs_one_at_a_time_in_order() {
        let lanes = Lanes::default();
        assert_eq!(lanes.enter("a".into(), 1), Some(1));
        assert_eq!(lanes.enter("a".into(), 2), None);
        assert_eq!(
            lanes.enter("b".into(), 10),
            Some(10),
            "other lanes run in parallel"
        );
        assert_eq!(lanes.enter("a".into(), 3), None);
        assert_eq!(lanes.queued(), 2);
        assert_eq!(lanes.next("a"), Some(2));
        assert_eq!(lanes.next("a"), Some(3));
        assert_eq!(lanes.next("a"), None);
        assert_eq!(lanes.enter("a".into(), 4), Some(4), "the lane was freed");
    }

    #[test]
    fn a_panic_while_holding_the_lock_does_not_stop_the_lanes() {
        let lanes = Lanes::default();
        assert_eq!(lanes.enter("a".into(), 1), Some(1));
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _held = lanes.busy.lock();
            panic!("a panic while holding the lanes lock");
        }));
        assert!(panicked.is_err());
        assert!(lanes.busy.is_poisoned());
        assert_eq!(lanes.enter("a".into(), 2), None, "the lane is still busy");
        assert_eq!(lanes.queued(), 1);
        assert_eq!(lanes.next("a"), Some(2));
        assert_eq!(lanes.next("a"), None);
        assert_eq!(lanes.enter("a".into(), 3), Some(3), "the lane was freed");
    }

    #[test]
    fn keys_and_partitions_pick_lanes() {
        use crate::message::Position;
        let mut m = Message::new("x");
        assert_eq!(lane_of(Ordering::Key, &m), None);
        m.key = Some("k1".into());
        assert_eq!(lane_of(Ordering::Key, &m).as_deref(), Some("k1"));
        m.subject = "t".into();
        m.position = Position::stable("", "3/9").in_partition(3);
        assert_eq!(lane_of(Ordering::Partition, &m).as_deref(), Some("t#3"));
        assert_eq!(lane_of(Ordering::None, &m), None);
    }
}
