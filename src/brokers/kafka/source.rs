//! A route's Kafka source: the async side of the consumer.
//!
//! Records arrive from the poll thread ([`super::consumer`]) already
//! registered with the [`Tracker`]. `next` hands them out, and with them a
//! settle token: `ack` marks the offset settled (the poll thread commits the
//! contiguous part on an interval); `nack` keeps the offset pending and
//! yields the record again after the delay: the copy the route hands back
//! with the nack, so that no record is copied for a nack that rarely comes.
//! A Kafka broker cannot take a message back, so redelivery is local, and
//! the attempt count it carries lives in this process only: it starts at 1
//! again after a restart or a rebalance.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use tokio::sync::mpsc::{self, Receiver, UnboundedReceiver, UnboundedSender};
use tokio::time::Instant;
use tracing::info;

use super::consumer::{Lag, PollThread, Polled};
use super::offsets::{Tp, Tracker};
use super::rebalance::GroupContext;
use super::ConsumerBacklog;
use super::{KafkaConfig, KafkaSource as SourceKeys};
use crate::brokers::{BacklogProbe, BrokerError, Delivery, Settle, Source};
use crate::config::RouteConfig;
use crate::message::Message;

/// Bounds of the hand-off channel: a tiny window still gets a few records
/// ahead, a huge one does not hold more than this many.
const HANDOFF_MIN: usize = 16;
const HANDOFF_MAX: usize = 4096;
/// Records the poll thread may hold beyond the hand-off channel (it polls
/// once per second while the channel is full).
const HELD_SLACK: usize = 64;

/// The pause threshold of each partition: `partition_window`, but never
/// below what the route itself keeps polled and unsettled in normal flow
/// (its in-flight window, the hand-off channel and what the poll thread
/// holds). Below that, a fast single-partition route paused (which drops
/// librdkafka's prefetch) and refetched every window: at
/// `workers.max = 256` it ran at 0.05 of a bare consumer
/// (docs/benchmarks.md, "The Kafka cliff").
fn pause_threshold(partition_window: usize, window: usize) -> usize {
    let buffered = window + window.clamp(HANDOFF_MIN, HANDOFF_MAX) + HELD_SLACK;
    partition_window.max(buffered)
}

/// A nacked record waiting to be yielded again.
struct Retry {
    due: Instant,
    tp: Tp,
    epoch: u64,
    offset: i64,
    msg: Message,
}

/// A consumer-group member for one route.
pub struct KafkaSource {
    broker: String,
    tracker: Arc<Tracker>,
    lag: Arc<Lag>,
    rx: Receiver<Polled>,
    retry_tx: UnboundedSender<Retry>,
    retry_rx: UnboundedReceiver<Retry>,
    /// Nacked records by due time (and arrival, to keep them apart).
    waiting: BTreeMap<(Instant, u64), Retry>,
    seq: u64,
    joined: tokio::sync::watch::Receiver<bool>,
    thread: Option<PollThread>,
}

impl KafkaSource {
    /// Joins the route's consumer group on its topic and starts polling.
    /// Up to `window` records (the route's in-flight window) are polled
    /// ahead of the route, so that it never waits on the poll thread and
    /// nothing piles up beyond it.
    pub fn subscribe(
        broker: &str,
        cfg: &KafkaConfig,
        route: &RouteConfig,
        src: &SourceKeys,
        config: &ClientConfig,
        window: usize,
    ) -> Result<Self, BrokerError> {
        let setup = |message: String| {
            BrokerError::setup(
                broker.to_owned(),
                format!("route {}: {message}", route.name),
            )
        };
        let topic = src.topic.as_str();
        let threshold = pause_threshold(cfg.partition_window, window);
        if threshold > cfg.partition_window {
            info!(
                route = %route.name,
                partition_window = cfg.partition_window,
                pause_at = threshold,
                "partition_window is below what the route buffers; a partition is paused only past that."
            );
        }
        let tracker = Arc::new(Tracker::new(threshold));
        let ctx = GroupContext::new(broker, &route.name, tracker.clone());
        let joined = ctx.joined();
        let consumer: BaseConsumer<GroupContext> = config
            .create_with_context(ctx)
            .map_err(|e| setup(format!("cannot create the consumer: {e}")))?;
        consumer
            .subscribe(&[topic])
            .map_err(|e| setup(format!("cannot subscribe to {topic}: {e}")))?;
        let (tx, rx) = mpsc::channel(window.clamp(HANDOFF_MIN, HANDOFF_MAX));
        let (retry_tx, retry_rx) = mpsc::unbounded_channel();
        let lag = Arc::new(Lag::default());
        let thread = PollThread::spawn(consumer, tx, lag.clone(), cfg.commit_interval)
            .map_err(|e| setup(format!("cannot start the poll thread: {e}")))?;
        info!(route = %route.name, topic, group = %super::group_of(route, src), "Joining the consumer group.");
        Ok(Self {
            broker: broker.to_owned(),
            tracker,
            lag,
            rx,
            retry_tx,
            retry_rx,
            waiting: BTreeMap::new(),
            seq: 0,
            joined,
            thread: Some(thread),
        })
    }

    fn park(&mut self, r: Retry) {
        self.seq += 1;
        self.waiting.insert((r.due, self.seq), r);
    }

    /// A redelivery that is due, if any.
    fn due(&mut self) -> Option<Delivery> {
        if self.waiting.is_empty() {
            return None; // the usual case: no clock read
        }
        let now = Instant::now();
        while let Some(entry) = self.waiting.first_entry() {
            if entry.key().0 > now {
                return None;
            }
            let r = entry.remove();
            if let Some(d) = self.dispatch(r.tp, r.epoch, r.offset, r.msg) {
                return Some(d);
            }
        }
        None
    }

    /// Hands a record to the route, unless its partition was revoked.
    fn dispatch(&self, tp: Tp, epoch: u64, offset: i64, msg: Message) -> Option<Delivery> {
        if !self.tracker.dispatch(&tp, epoch, offset) {
            return None;
        }
        let settle = KafkaSettle {
            tracker: self.tracker.clone(),
            tp,
            epoch,
            offset,
            attempt: msg.attempt,
            retry: self.retry_tx.clone(),
        };
        Some(Delivery::new(msg, Box::new(settle)))
    }

    fn receive_err(&self, message: String) -> BrokerError {
        BrokerError::receive(self.broker.clone(), message)
    }
}

#[async_trait]
impl Source for KafkaSource {
    async fn next(&mut self) -> Result<Delivery, BrokerError> {
        loop {
            while let Ok(r) = self.retry_rx.try_recv() {
                self.park(r);
            }
            if let Some(d) = self.due() {
                return Ok(d);
            }
            // No timer at all while nothing waits: a disabled `select!`
            // branch still builds its future, a clock read and a timer
            // handle per record.
            let wake = self.waiting.keys().next().map(|(t, _)| *t);
            let timer = async move {
                match wake {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                polled = self.rx.recv() => match polled {
                    Some(Polled::Message { tp, epoch, offset, msg }) => {
                        if let Some(d) = self.dispatch(tp, epoch, offset, *msg) {
                            return Ok(d);
                        }
                    }
                    Some(Polled::Error(e)) => return Err(self.receive_err(e)),
                    // The poll thread ended: this consumer can never deliver
                    // again; the route subscribes anew.
                    None => return Err(BrokerError::terminal(
                        self.broker.clone(),
                        "the consumer thread stopped",
                    )),
                },
                Some(r) = self.retry_rx.recv() => self.park(r),
                () = timer => {}
            }
        }
    }

    fn backlog_probe(&self) -> Option<Arc<dyn BacklogProbe>> {
        Some(Arc::new(ConsumerBacklog {
            lag: self.lag.clone(),
            tracker: self.tracker.clone(),
        }))
    }

    fn joined(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        Some(self.joined.clone())
    }

    async fn close(&mut self) {
        if let Some(t) = self.thread.take() {
            t.stop().await;
        }
    }
}

/// Settles one record in the tracker.
struct KafkaSettle {
    tracker: Arc<Tracker>,
    tp: Tp,
    epoch: u64,
    offset: i64,
    /// The attempt this delivery carried: a redelivery is the next, as a
    /// broker's delivery count would make it, whatever in-process retries
    /// the route made meanwhile (they stay under `max_attempts` each time).
    attempt: u32,
    retry: UnboundedSender<Retry>,
}

#[async_trait]
impl Settle for KafkaSettle {
    async fn ack(&self) -> Result<(), BrokerError> {
        self.tracker.settle(&self.tp, self.epoch, self.offset);
        Ok(())
    }

    /// Redelivers `msg` (the route's copy) as the next delivery.
    async fn nack(&self, msg: &Message, delay: Duration) -> Result<(), BrokerError> {
        if self.tracker.requeue(&self.tp, self.epoch, self.offset) {
            let mut msg = msg.clone();
            msg.attempt = self.attempt.saturating_add(1);
            msg.deadline = None;
            // A closed channel means the source is gone: the offset stays
            // uncommitted and the next owner reads the record again.
            let _ = self.retry.send(Retry {
                due: Instant::now() + delay,
                tp: self.tp.clone(),
                epoch: self.epoch,
                offset: self.offset,
                msg,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_nack_redelivers_the_routes_copy_as_the_next_delivery() {
        let tracker = Arc::new(Tracker::new(10));
        let tp = Tp::new("t", 0);
        tracker.assign(tp.clone());
        let epoch = tracker.polled(&tp, 7).expect("assigned").epoch;
        assert!(tracker.dispatch(&tp, epoch, 7));
        let (retry, mut retried) = mpsc::unbounded_channel();
        let settle = KafkaSettle {
            tracker: tracker.clone(),
            tp,
            epoch,
            offset: 7,
            attempt: 1,
            retry,
        };
        // The route tried it three times in process before handing it back.
        let mut tried = Message::new("p");
        tried.attempt = 3;
        tried.deadline = Some(std::time::Instant::now());
        settle.nack(&tried, Duration::ZERO).await.expect("nack");
        let r = retried.try_recv().expect("queued for redelivery");
        assert_eq!(r.offset, 7);
        assert_eq!(&r.msg.payload[..], b"p", "the route's copy");
        assert_eq!(
            r.msg.attempt, 2,
            "the delivery's attempt + 1, as a broker counts"
        );
        assert_eq!(r.msg.deadline, None);
        assert_eq!(tracker.queued(), 1, "pending again, so the commit waits");
    }

    #[test]
    fn a_partition_is_never_paused_for_what_the_route_itself_buffers() {
        // The cliff: workers.max = 256 gives a window of 512, which with
        // the hand-off channel keeps 1,024 records pending, above the
        // default partition_window of 1,000.
        assert_eq!(pause_threshold(1000, 512), 512 + 512 + HELD_SLACK);
        assert_eq!(
            pause_threshold(1000, 256),
            1000,
            "small routes keep the setting"
        );
        assert_eq!(pause_threshold(10, 2), 2 + HANDOFF_MIN + HELD_SLACK);
        assert_eq!(pause_threshold(1000, 8192), 8192 + HANDOFF_MAX + HELD_SLACK);
        assert_eq!(pause_threshold(100_000, 512), 100_000);
    }
}
