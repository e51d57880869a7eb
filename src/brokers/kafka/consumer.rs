//! The consumer's poll thread and its rebalance callbacks.
//!
//! One OS thread per route source owns the librdkafka consumer. It polls,
//! registers each record with the [`Tracker`], hands it to the async side
//! through a channel, pauses and resumes partitions, commits on an
//! interval, and samples the lag. Rebalance callbacks run on this thread
//! too (inside `poll`), so on revoke it may block, boundedly, while the
//! route finishes the revoked partitions' messages; no async worker thread
//! is ever blocked.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientContext, Message as _, Offset, TopicPartitionList};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, info, warn};

use super::offsets::{Tp, Tracker};
use crate::message::Message;
use crate::telemetry::names;

/// How long one `poll` waits for a record.
const POLL: Duration = Duration::from_millis(100);
/// How long a revoke waits for the revoked partitions' running messages
/// before it commits what is settled and lets them go (the rest is then
/// processed again by the new owner).
pub const REVOKE_WAIT: Duration = Duration::from_secs(10);
/// How often the lag is sampled.
const LAG_EVERY: Duration = Duration::from_secs(1);
/// The most time one lag sample may spend asking the broker for the
/// watermarks of paused partitions (the poll thread waits meanwhile).
const LAG_QUERY_BUDGET: Duration = Duration::from_millis(500);
/// The least time between two errors forwarded to the route.
const ERROR_EVERY: Duration = Duration::from_secs(1);

/// What the poll thread hands to the async side.
pub enum Polled {
    /// A record, registered with the tracker under `epoch`.
    Message {
        /// Its partition.
        tp: Tp,
        /// The assignment epoch.
        epoch: u64,
        /// Its offset.
        offset: i64,
        /// The envelope.
        msg: Box<Message>,
    },
    /// A consume error, for the route's log and status.
    Error(String),
}

/// The consumer lag, summed over the assigned partitions.
#[derive(Debug, Default)]
pub struct Lag(AtomicU64);

impl Lag {
    /// The latest sample.
    pub fn total(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Callbacks of one route's group consumer.
pub struct GroupContext {
    broker: String,
    route: String,
    tracker: Arc<Tracker>,
    /// Set at shutdown: revokes then skip waiting (the route already
    /// drained or gave up).
    closing: AtomicBool,
}

impl GroupContext {
    /// Callbacks that report to `tracker`.
    pub fn new(broker: &str, route: &str, tracker: Arc<Tracker>) -> Self {
        Self {
            broker: broker.to_owned(),
            route: route.to_owned(),
            tracker,
            closing: AtomicBool::new(false),
        }
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
        super::log(&self.broker, level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        super::on_error(&self.broker, &error, reason);
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

fn partitions(tps: &[Tp]) -> Vec<i32> {
    tps.iter().map(|tp| tp.partition).collect()
}

/// Stores and commits `points` (next offsets to read).
fn commit(
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

/// The running poll thread; dropping it stops the thread.
pub struct PollThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl PollThread {
    /// Starts polling `consumer` (already subscribed).
    pub fn spawn(
        consumer: BaseConsumer<GroupContext>,
        tx: UnboundedSender<Polled>,
        lag: Arc<Lag>,
        commit_interval: Duration,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let route = consumer.context().route.clone();
        let poller = Poller {
            consumer,
            tx,
            lag,
            commit_interval,
            paused: Cell::new(0),
            reported: RefCell::new(HashSet::new()),
            last_error: Cell::new(None),
        };
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name(format!("kafka-{route}"))
            .spawn(move || poller.run(&flag))?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops polling, commits the settled offsets and leaves the group.
    pub async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

impl Drop for PollThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct Poller {
    consumer: BaseConsumer<GroupContext>,
    tx: UnboundedSender<Polled>,
    lag: Arc<Lag>,
    commit_interval: Duration,
    /// Partitions paused for a full window.
    paused: Cell<usize>,
    /// Partitions with a lag gauge.
    reported: RefCell<HashSet<i32>>,
    last_error: Cell<Option<Instant>>,
}

impl Poller {
    fn run(self, stop: &AtomicBool) {
        let ctx = self.consumer.context().clone();
        let mut last_commit = Instant::now();
        let mut last_lag = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let alive = match self.consumer.poll(POLL) {
                None => true,
                Some(Ok(m)) => self.on_message(&m),
                Some(Err(e)) => self.on_error(&e),
            };
            if !alive {
                break;
            }
            if self.paused.get() > 0 {
                self.resume_drained();
            }
            if last_commit.elapsed() >= self.commit_interval {
                let points = ctx.tracker.to_commit();
                commit(&self.consumer, &ctx.tracker, &points, CommitMode::Async);
                last_commit = Instant::now();
            }
            if last_lag.elapsed() >= LAG_EVERY {
                self.sample_lag();
                last_lag = Instant::now();
            }
        }
        let points = ctx.tracker.to_commit();
        commit(&self.consumer, &ctx.tracker, &points, CommitMode::Sync);
        ctx.closing.store(true, Ordering::Relaxed);
        info!(route = %ctx.route, "Leaving the consumer group.");
        // Dropping closes the consumer: a final revoke (committing anything
        // settled since) and a clean leave, so that the group rebalances at
        // once rather than after the session timeout.
        drop(self.consumer);
    }

    /// Registers and forwards one record; `false` once the source is gone.
    fn on_message(&self, m: &BorrowedMessage<'_>) -> bool {
        let ctx = self.consumer.context();
        let tp = Tp::new(m.topic(), m.partition());
        let Some(accepted) = ctx.tracker.polled(&tp, m.offset()) else {
            return true; // revoked meanwhile; the next owner reads it
        };
        if accepted.pause {
            self.pause(&tp);
        }
        let msg = Box::new(super::to_message(m, &ctx.route));
        self.tx
            .send(Polled::Message {
                tp,
                epoch: accepted.epoch,
                offset: m.offset(),
                msg,
            })
            .is_ok()
    }

    fn on_error(&self, e: &KafkaError) -> bool {
        if self
            .last_error
            .get()
            .is_some_and(|t| t.elapsed() < ERROR_EVERY)
        {
            return true;
        }
        self.last_error.set(Some(Instant::now()));
        self.tx.send(Polled::Error(e.to_string())).is_ok()
    }

    fn pause(&self, tp: &Tp) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&tp.topic, tp.partition);
        match self.consumer.pause(&tpl) {
            Ok(()) => {
                self.paused.set(self.paused.get() + 1);
                debug!(route = %self.consumer.context().route, partition = tp.partition, "Partition window full; paused.");
            }
            Err(e) => warn!(error = %e, "Could not pause a full partition."),
        }
    }

    fn resume_drained(&self) {
        let ctx = self.consumer.context();
        let drained = ctx.tracker.to_resume();
        if drained.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for tp in &drained {
            tpl.add_partition(&tp.topic, tp.partition);
        }
        match self.consumer.resume(&tpl) {
            Ok(()) => {
                debug!(route = %ctx.route, partitions = ?partitions(&drained), "Partitions drained; resumed.")
            }
            Err(e) => warn!(error = %e, "Could not resume drained partitions."),
        }
        self.paused
            .set(self.paused.get().saturating_sub(drained.len()));
    }

    /// Lag per partition: the high watermark minus the position, clamped
    /// at 0. The watermark is the one cached from the latest fetch, which is
    /// exact; a paused partition is not fetched, so for those the broker is
    /// asked too (ListOffsets, which may trail) and the larger one wins.
    fn sample_lag(&self) {
        let Ok(positions) = self.consumer.position() else {
            return;
        };
        let ctx = self.consumer.context();
        let route = ctx.route.clone();
        let start = Instant::now();
        let mut total = 0;
        let mut seen = HashSet::new();
        for e in positions.elements() {
            let Offset::Offset(at) = e.offset() else {
                continue; // nothing read yet
            };
            let cached = super::admin::cached_high(&self.consumer, e.topic(), e.partition());
            let tp = Tp::new(e.topic(), e.partition());
            let budget = LAG_QUERY_BUDGET.saturating_sub(start.elapsed());
            let queried = (ctx.tracker.is_paused(&tp) && !budget.is_zero())
                .then(|| {
                    self.consumer
                        .fetch_watermarks(e.topic(), e.partition(), budget)
                        .ok()
                })
                .flatten()
                .map(|(_, high)| high);
            let Some(high) = cached.max(queried) else {
                continue;
            };
            let lag = u64::try_from(high - at).unwrap_or(0);
            total += lag;
            seen.insert(e.partition());
            metrics::gauge!(names::KAFKA_PARTITION_LAG, "route" => route.clone(), "partition" => e.partition().to_string())
                .set(lag as f64);
        }
        for gone in self.reported.borrow().difference(&seen) {
            metrics::gauge!(names::KAFKA_PARTITION_LAG, "route" => route.clone(), "partition" => gone.to_string())
                .set(0.0);
        }
        *self.reported.borrow_mut() = seen;
        self.lag.0.store(total, Ordering::Relaxed);
    }
}
