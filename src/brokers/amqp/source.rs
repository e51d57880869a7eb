//! Consuming one queue: a channel of its own with `basic_qos` prefetch set
//! to the route's window, manual acks, and a delivery count that survives
//! restarts on every queue type.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Acker, BasicProperties, Channel, Consumer};
use tokio::sync::Mutex;
use tracing::{debug, warn};

use super::connection::Link;
use super::headers::{self, short, Counts, ATTEMPT_HEADER};
use super::sink::AmqpPublisher;
use super::topology;
use crate::brokers::{BacklogProbe, BrokerError, Delivery, Settle, Source};
use crate::config::RouteConfig;
use crate::message::Message;

/// The longest a nack holds a delivery before handing it back, so that a
/// failing output does not spin messages through the broker in a hot loop,
/// and shutdown is not held up for long.
const MAX_NACK_HOLD: Duration = Duration::from_secs(1);

/// What to make of a delivery's counts.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// This is delivery number `n`.
    Known(u32),
    /// A classic queue redelivered it (a consumer crashed or handed it
    /// back) and cannot say how often: re-queue a copy carrying `n`, so that
    /// the count is stored in the broker before the message is worked on.
    Checkpoint(u32),
}

/// The delivery number of a message. Quorum queues count earlier
/// deliveries in `x-delivery-count`; classic queues only flag a redelivery,
/// so mqfn keeps its own count in `mqfn-attempt`. `max_attempts` then means
/// the same on both.
fn attempt_of(counts: Counts, redelivered: bool, quorum: bool) -> Attempt {
    let own = counts.own.unwrap_or(1).max(1);
    match counts.broker {
        Some(n) => Attempt::Known(own.max(n.saturating_add(1))),
        None if !redelivered => Attempt::Known(own),
        None if quorum => Attempt::Known(own.max(2)),
        None => Attempt::Checkpoint(own.saturating_add(1)),
    }
}

/// A prefetch-bounded consumer on one queue.
pub struct AmqpSource {
    link: Arc<Link>,
    publisher: Arc<AmqpPublisher>,
    route: String,
    queue: String,
    prefetch: u16,
    quorum: bool,
    consumer: Option<(Channel, Consumer)>,
}

impl AmqpSource {
    /// Subscribes to the route's queue, waiting up to `wait` for the
    /// connection.
    pub(super) async fn bind(
        link: Arc<Link>,
        publisher: Arc<AmqpPublisher>,
        route: &RouteConfig,
        queue: &str,
        window: usize,
        wait: Duration,
    ) -> Result<Self, BrokerError> {
        let queue = queue.to_owned();
        let quorum = link
            .cfg
            .queues
            .iter()
            .any(|q| q.name == queue && q.queue_type == "quorum");
        let mut s = Self {
            link,
            publisher,
            route: route.name.clone(),
            queue,
            prefetch: u16::try_from(window.max(1)).unwrap_or(u16::MAX),
            quorum,
            consumer: None,
        };
        s.subscribe(Some(wait)).await?;
        Ok(s)
    }

    async fn subscribe(&mut self, wait: Option<Duration>) -> Result<(), BrokerError> {
        let ch = self.link.channel(wait).await?;
        let setup = |message: String| BrokerError::setup(self.link.broker.clone(), message);
        ch.basic_qos(self.prefetch, BasicQosOptions { global: false })
            .await
            .map_err(|e| {
                setup(format!(
                    "route {}: cannot set the prefetch: {e}",
                    self.route
                ))
            })?;
        let queue = short("queue name", &self.queue).map_err(&setup)?;
        let consumer = ch
            .basic_consume(
                queue,
                format!("mqfn/{}", self.route).into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                setup(format!(
                    "route {}: cannot consume from queue {:?}: {}; declare it under \
                     [[brokers.{}.queues]] or create it on the broker",
                    self.route,
                    self.queue,
                    topology::reason(&e),
                    self.link.broker
                ))
            })?;
        debug!(route = %self.route, queue = %self.queue, prefetch = self.prefetch, "Consuming.");
        self.consumer = Some((ch, consumer));
        Ok(())
    }

    /// Re-queues a copy of a redelivered classic-queue message with its
    /// delivery number, then acks the original. False when that failed and
    /// the original should be worked on as it is.
    async fn checkpoint(&self, d: &lapin::message::Delivery, n: u32) -> bool {
        let mut table = d.properties.headers().clone().unwrap_or_default();
        table.insert(
            ATTEMPT_HEADER.into(),
            AMQPValue::LongString(LongString::from(n.to_string())),
        );
        let props: BasicProperties = d.properties.clone().with_headers(table);
        if let Err(f) = self.publisher.send("", &self.queue, &d.data, props).await {
            warn!(route = %self.route, error = %f, "Could not re-queue a redelivered message with its count; working on it as it is.");
            return false;
        }
        if let Err(e) = d.acker.ack(BasicAckOptions::default()).await {
            // The original comes again: a duplicate, never a loss.
            warn!(route = %self.route, error = %e, "Could not ack a re-queued message.");
        }
        debug!(route = %self.route, attempt = n, "Re-queued a redelivered message with its delivery count.");
        true
    }
}

#[async_trait]
impl Source for AmqpSource {
    async fn next(&mut self) -> Result<Delivery, BrokerError> {
        loop {
            if self.consumer.is_none() {
                self.subscribe(None).await?;
            }
            let item = match self.consumer.as_mut() {
                Some((_, c)) => c.next().await,
                None => continue,
            };
            let d = match item {
                Some(Ok(d)) => d,
                Some(Err(e)) => {
                    self.consumer = None;
                    return Err(self.link.receive_err(e.to_string()));
                }
                None => {
                    self.consumer = None;
                    return Err(self.link.receive_err("the broker cancelled the consumer"));
                }
            };
            let (mut msg, counts) = headers::message(&d, &self.queue, &self.route);
            msg.attempt = match attempt_of(counts, d.redelivered, self.quorum) {
                Attempt::Known(n) => n,
                Attempt::Checkpoint(n) => {
                    if self.checkpoint(&d, n).await {
                        continue;
                    }
                    n
                }
            };
            let settle = AmqpSettle {
                link: Arc::clone(&self.link),
                acker: d.acker,
            };
            return Ok(Delivery::new(msg, Box::new(settle)));
        }
    }

    fn backlog_probe(&self) -> Option<Arc<dyn BacklogProbe>> {
        Some(Arc::new(QueueBacklog {
            link: self.link.clone(),
            queue: self.queue.clone(),
            channel: Mutex::new(None),
        }))
    }

    async fn close(&mut self) {
        if let Some((ch, c)) = self.consumer.take() {
            let _ = ch
                .basic_cancel(c.tag(), BasicCancelOptions::default())
                .await;
            // Deliveries prefetched but never started go back to the queue.
            let _ = ch.close(200, "OK".into()).await;
        }
    }
}

/// Acks or nacks one delivery on the channel it came on. After a reconnect
/// that channel is gone: the settle fails and the broker redelivers.
struct AmqpSettle {
    /// Shared, for the broker's name in errors: no copy per message.
    link: Arc<Link>,
    acker: Acker,
}

impl AmqpSettle {
    fn sent(&self, r: lapin::Result<bool>) -> Result<(), BrokerError> {
        let message = match r {
            Ok(true) => return Ok(()),
            Ok(false) => "the channel closed; the broker redelivers the message".to_owned(),
            Err(e) => e.to_string(),
        };
        Err(BrokerError::settle(self.link.broker.clone(), message))
    }
}

#[async_trait]
impl Settle for AmqpSettle {
    async fn ack(&self) -> Result<(), BrokerError> {
        self.sent(self.acker.ack(BasicAckOptions { multiple: false }).await)
    }

    /// Holds the delivery for `delay` (at most [`MAX_NACK_HOLD`]), then
    /// `basic_nack`s it with requeue. Quorum queues count that in
    /// `x-delivery-count`; on classic queues the redelivery is counted when
    /// it arrives (see [`attempt_of`]).
    async fn nack(&self, _msg: &Message, delay: Duration) -> Result<(), BrokerError> {
        tokio::time::sleep(delay.min(MAX_NACK_HOLD)).await;
        let opts = BasicNackOptions {
            multiple: false,
            requeue: true,
        };
        self.sent(self.acker.nack(opts).await)
    }
}

/// The queue's ready count, from a passive declare.
struct QueueBacklog {
    link: Arc<Link>,
    queue: String,
    channel: Mutex<Option<Channel>>,
}

#[async_trait]
impl BacklogProbe for QueueBacklog {
    async fn backlog(&self) -> Result<u64, BrokerError> {
        let mut slot = self.channel.lock().await;
        let ch = match slot.as_ref() {
            Some(ch) if ch.status().connected() => ch.clone(),
            _ => {
                let ch = self.link.channel(Some(Duration::ZERO)).await?;
                *slot = Some(ch.clone());
                ch
            }
        };
        let queue = short("queue name", &self.queue).map_err(|m| self.link.receive_err(m))?;
        let opts = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        match ch.queue_declare(queue, opts, FieldTable::default()).await {
            Ok(q) => Ok(u64::from(q.message_count())),
            Err(e) => {
                *slot = None;
                Err(self.link.receive_err(format!(
                    "cannot read the backlog of queue {:?}: {}",
                    self.queue,
                    topology::reason(&e)
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(own: Option<u32>, broker: Option<u32>) -> Counts {
        Counts { own, broker }
    }

    #[test]
    fn first_deliveries_are_attempt_one() {
        assert_eq!(
            attempt_of(counts(None, None), false, false),
            Attempt::Known(1)
        );
        assert_eq!(
            attempt_of(counts(None, None), false, true),
            Attempt::Known(1)
        );
    }

    #[test]
    fn quorum_queues_count_with_x_delivery_count() {
        assert_eq!(
            attempt_of(counts(None, Some(2)), true, true),
            Attempt::Known(3)
        );
        // Whatever the queue type claims, the broker's count wins.
        assert_eq!(
            attempt_of(counts(None, Some(1)), true, false),
            Attempt::Known(2)
        );
        assert_eq!(
            attempt_of(counts(Some(4), Some(1)), true, true),
            Attempt::Known(4)
        );
    }

    #[test]
    fn classic_redeliveries_are_checkpointed_with_the_next_count() {
        assert_eq!(
            attempt_of(counts(None, None), true, false),
            Attempt::Checkpoint(2)
        );
        assert_eq!(
            attempt_of(counts(Some(3), None), true, false),
            Attempt::Checkpoint(4)
        );
        // The re-queued copy is a fresh delivery carrying the count.
        assert_eq!(
            attempt_of(counts(Some(4), None), false, false),
            Attempt::Known(4)
        );
    }
}
