//! The consumer's poll thread.
//!
//! One OS thread per route source owns the librdkafka consumer. It polls,
//! registers each record with the tracker, hands it to the async side
//! through a channel, pauses and resumes partitions, commits on an
//! interval, and samples the lag.
//!
//! The hand-off channel is bounded (about the route's in-flight window):
//! when the route is busy the thread stops taking records from librdkafka,
//! whose own prefetch queue (bounded by `queued.max.messages.kbytes`) then
//! stops fetching. Pausing partitions is kept for the per-partition window
//! only, because a pause purges librdkafka's prefetched records for that
//! partition and a resume fetches them again: used for flow control, it
//! cost a broker round trip per window. While the channel is full the
//! thread still polls once per [`HOLD_MAX`], so that group callbacks are
//! served and `max.poll.interval.ms` is never exceeded. The group callbacks
//! ([`super::rebalance`]) run on this thread too (inside `poll`), so a
//! revoke may block it, boundedly, while the route finishes the revoked
//! partitions' messages; no async worker thread is ever blocked.

use std::cell::{Cell, RefCell};
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message as _, Offset, TopicPartitionList};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::mpsc::Sender;
use tracing::{debug, info, warn};

use super::offsets::Tp;
use super::rebalance::{commit, partitions, GroupContext};
use crate::message::Message;
use crate::telemetry::names;

/// How long one `poll` waits for a record, and one wait for room in the
/// hand-off channel.
const POLL: Duration = Duration::from_millis(100);
/// The longest the thread goes without polling while the route is full.
const HOLD_MAX: Duration = Duration::from_secs(1);
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

/// The running poll thread; dropping it stops the thread.
pub struct PollThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl PollThread {
    /// Starts polling `consumer` (already subscribed).
    pub fn spawn(
        consumer: BaseConsumer<GroupContext>,
        tx: Sender<Polled>,
        lag: Arc<Lag>,
        commit_interval: Duration,
    ) -> std::io::Result<Self> {
        // Waiting for room in the channel needs the runtime's timer.
        let runtime = tokio::runtime::Handle::current();
        let stop = Arc::new(AtomicBool::new(false));
        let route = consumer.context().route.clone();
        let poller = Poller {
            consumer,
            tx,
            runtime,
            held: RefCell::new(VecDeque::new()),
            lag,
            commit_interval,
            paused: Cell::new(0),
            reported: RefCell::new(HashSet::new()),
            last_error: Cell::new(None),
            topic: RefCell::new(None),
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

/// Whether the route can take more records.
enum Room {
    Free,
    Full,
    Closed,
}

struct Poller {
    consumer: BaseConsumer<GroupContext>,
    tx: Sender<Polled>,
    runtime: tokio::runtime::Handle,
    /// Records polled while the channel was full, oldest first.
    held: RefCell<VecDeque<Polled>>,
    lag: Arc<Lag>,
    commit_interval: Duration,
    /// Partitions paused for a full window.
    paused: Cell<usize>,
    /// Partitions with a lag gauge.
    reported: RefCell<HashSet<i32>>,
    last_error: Cell<Option<Instant>>,
    /// The last record's topic name, shared by the next record's `Tp`.
    topic: RefCell<Option<Arc<str>>>,
}

impl Poller {
    fn run(self, stop: &AtomicBool) {
        let ctx = self.consumer.context().clone();
        let mut last_commit = Instant::now();
        let mut last_lag = Instant::now();
        let mut last_poll = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let mut polled = false;
            let alive = match self.forward_held() {
                Room::Closed => false,
                Room::Full if last_poll.elapsed() < HOLD_MAX => true,
                Room::Free | Room::Full => {
                    polled = true;
                    match self.consumer.poll(POLL) {
                        None => true,
                        Some(Ok(m)) => self.on_message(&m),
                        Some(Err(e)) => self.on_error(&e),
                    }
                }
            };
            if !alive {
                break;
            }
            if self.paused.get() > 0 {
                self.resume_drained();
            }
            // One clock read per record, for the poll time and both
            // intervals; the poll time is when the poll returned.
            let now = Instant::now();
            if polled {
                last_poll = now;
            }
            if now.duration_since(last_commit) >= self.commit_interval {
                let points = ctx.tracker.to_commit();
                commit(&self.consumer, &ctx.tracker, &points, CommitMode::Async);
                last_commit = now;
            }
            if now.duration_since(last_lag) >= LAG_EVERY {
                self.sample_lag();
                last_lag = now;
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
        let tp = self.tp_of(m.topic(), m.partition());
        let Some(accepted) = ctx.tracker.polled(&tp, m.offset()) else {
            return true; // revoked meanwhile; the next owner reads it
        };
        if accepted.pause {
            self.pause(&tp);
        }
        let msg = Box::new(super::to_message(m, &ctx.route));
        self.send(Polled::Message {
            tp,
            epoch: accepted.epoch,
            offset: m.offset(),
            msg,
        })
    }

    /// The record's partition, without allocating its topic name again.
    fn tp_of(&self, topic: &str, partition: i32) -> Tp {
        let mut name = self.topic.borrow_mut();
        let shared = match name.as_ref() {
            Some(n) if **n == *topic => n.clone(),
            _ => name.insert(topic.into()).clone(),
        };
        Tp {
            topic: shared,
            partition,
        }
    }

    /// Hands a record to the route, or holds it while the channel is full;
    /// `false` once the source is gone.
    fn send(&self, p: Polled) -> bool {
        let mut held = self.held.borrow_mut();
        if !held.is_empty() {
            held.push_back(p);
            return true;
        }
        match self.tx.try_send(p) {
            Ok(()) => true,
            Err(TrySendError::Full(p)) => {
                held.push_back(p);
                true
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }

    /// Forwards held records, waiting up to [`POLL`] for room.
    ///
    /// A full channel is waited on until half of it is free, not one slot:
    /// woken for every slot, this thread cost a futex wake and two context
    /// switches per record while the route was saturated
    /// (docs/benchmarks.md, "CPU per message").
    fn forward_held(&self) -> Room {
        let mut held = self.held.borrow_mut();
        while let Some(p) = held.pop_front() {
            match self.tx.try_send(p) {
                Ok(()) => continue,
                Err(TrySendError::Closed(_)) => return Room::Closed,
                Err(TrySendError::Full(p)) => held.push_front(p),
            }
            let room = (self.tx.max_capacity() / 2).max(1);
            let reserved = self
                .runtime
                .block_on(async { tokio::time::timeout(POLL, self.tx.reserve_many(room)).await });
            match reserved {
                Ok(Ok(permits)) => {
                    for permit in permits {
                        match held.pop_front() {
                            Some(p) => permit.send(p),
                            None => break,
                        }
                    }
                }
                Ok(Err(_closed)) => return Room::Closed,
                Err(_elapsed) => return Room::Full,
            }
        }
        Room::Free
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
        self.send(Polled::Error(e.to_string()))
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
