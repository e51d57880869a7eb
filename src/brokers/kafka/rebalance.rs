//! The group callbacks of a route's consumer: assignment, revocation and
//! commit results. librdkafka runs them on the poll thread, inside `poll`,
//! so a revoke may wait there, boundedly, for the route to finish the
//! revoked partitions' running messages.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use super::offsets::{Tp, Tracker};

/// How long a revoke waits for the revoked partitions' running messages
/// before it commits what is settled and lets them go (the rest is then
/// processed again by the new owner).
pub const REVOKE_WAIT: Duration = Duration::from_secs(10);

/// Callbacks of one route's group consumer.
pub struct GroupContext {
    broker: String,
    pub(super) route: String,
    pub(super) tracker: Arc<Tracker>,
    /// Set at shutdown: revokes then skip waiting (the route already
    /// drained or gave up).
    pub(super) closing: AtomicBool,
    /// Turns true at the first assignment, even an empty one (more members
    /// than partitions): the member has joined the group.
    joined: tokio::sync::watch::Sender<bool>,
}

impl GroupContext {
    /// Callbacks that report to `tracker`.
    pub fn new(broker: &str, route: &str, tracker: Arc<Tracker>) -> Self {
        Self {
            broker: broker.to_owned(),
            route: route.to_owned(),
            tracker,
            closing: AtomicBool::new(false),
            joined: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Watches whether the member has joined (had its first assignment).
    pub fn joined(&self) -> tokio::sync::watch::Receiver<bool> {
        self.joined.subscribe()
    }

    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        if tpl.count() == 0 {
            return;
        }
        let tps = tps_of(tpl);
        self.tracker.begin_revoke(&tps);
        let lost = consumer.assignment_lost();
        let running = self.tracker.running(&tps);
        let start = Instant::now();
        let mut unfinished = 0;
        if !lost && !self.closing.load(Ordering::Relaxed) {
            unfinished = self.tracker.wait_idle(&tps, REVOKE_WAIT);
        }
        let waited_ms = start.elapsed().as_millis();
        let points = self.tracker.release(&tps);
        if lost {
            warn!(route = %self.route, partitions = ?partitions(&tps), "Partitions lost; their unsettled messages will be processed again by the new owner.");
            return;
        }
        commit(consumer, &self.tracker, &points, CommitMode::Sync);
        info!(route = %self.route, partitions = ?partitions(&tps), running, waited_ms, unfinished, "Partitions revoked; settled offsets committed.");
    }
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        super::client::log(&self.broker, level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        super::client::on_error(&self.broker, &error, reason);
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) if tpl.count() == 0 => {}
            Rebalance::Assign(tpl) => {
                let tps = tps_of(tpl);
                for tp in &tps {
                    self.tracker.assign(tp.clone());
                }
                info!(route = %self.route, partitions = ?partitions(&tps), "Partitions assigned.");
            }
            Rebalance::Revoke(tpl) => self.revoke(consumer, tpl),
            Rebalance::Error(e) => warn!(route = %self.route, error = %e, "Rebalance error."),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // A partition assigned again starts unpaused, like its fresh
        // tracker state.
        if let Rebalance::Assign(tpl) = rebalance {
            if let Err(e) = consumer.resume(tpl) {
                debug!(route = %self.route, error = %e, "Could not resume newly assigned partitions.");
            }
            // After the assignment is in place, and after its log line.
            self.joined.send_replace(true);
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(e) = result {
            let points = points_of(offsets);
            warn!(route = %self.route, error = %e, "Offset commit failed; retrying at the next interval.");
            self.tracker.commit_failed(&points);
        }
    }
}

fn tps_of(tpl: &TopicPartitionList) -> Vec<Tp> {
    tpl.elements()
        .iter()
        .map(|e| Tp::new(e.topic(), e.partition()))
        .collect()
}

fn points_of(tpl: &TopicPartitionList) -> Vec<(Tp, i64)> {
    tpl.elements()
        .iter()
        .filter_map(|e| Some((Tp::new(e.topic(), e.partition()), e.offset().to_raw()?)))
        .collect()
}

pub(super) fn partitions(tps: &[Tp]) -> Vec<i32> {
    tps.iter().map(|tp| tp.partition).collect()
}

/// Stores and commits `points` (next offsets to read).
pub(super) fn commit(
    consumer: &BaseConsumer<GroupContext>,
    tracker: &Tracker,
    points: &[(Tp, i64)],
    mode: CommitMode,
) {
    if points.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::with_capacity(points.len());
    for (tp, offset) in points {
        if let Err(e) = tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*offset)) {
            warn!(error = %e, "Bad offset; not committed.");
            return;
        }
    }
    if let Err(e) = consumer.store_offsets(&tpl) {
        debug!(error = %e, "Could not store offsets; committing them explicitly.");
    }
    match consumer.commit(&tpl, mode) {
        Ok(()) => {
            let points: Vec<String> = points.iter().map(|(tp, o)| format!("{tp}@{o}")).collect();
            debug!(offsets = ?points, "Committed.");
        }
        Err(e) => {
            warn!(error = %e, "Offset commit failed; retrying at the next interval.");
            tracker.commit_failed(points);
        }
    }
}
