//! Consuming a hub's queue: a route's source, and the taker of `mqfn dlq
//! redrive`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::queue::Stored;
use super::Queue;
use crate::brokers::{BacklogProbe, BrokerError, Delivery, Settle, Source};
use crate::message::Message;

/// A route's consumer of one queue.
pub struct MemorySource {
    queue: Arc<Queue>,
    route: String,
}

impl MemorySource {
    pub(super) fn new(queue: Arc<Queue>, route: &str) -> Self {
        Self {
            queue,
            route: route.to_owned(),
        }
    }
}

#[async_trait]
impl Source for MemorySource {
    async fn next(&mut self) -> Result<Delivery, BrokerError> {
        match self.queue.receive_fault() {
            Some(true) => panic!("a scripted panic in the memory source"),
            Some(false) => {
                return Err(BrokerError::terminal(
                    self.queue.name(),
                    "the subscription ended (a scripted fault)",
                ))
            }
            None => {}
        }
        let m = self.queue.next().await;
        let msg = self.queue.message(&m, &self.route);
        Ok(Delivery::new(msg, Box::new(Token::new(&self.queue, &m))))
    }

    fn backlog_probe(&self) -> Option<Arc<dyn BacklogProbe>> {
        Some(Arc::new(Backlog(self.queue.clone())))
    }

    fn joined(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        Some(self.queue.joined())
    }
}

/// What waits on the queue.
struct Backlog(Arc<Queue>);

#[async_trait]
impl BacklogProbe for Backlog {
    async fn backlog(&self) -> Result<u64, BrokerError> {
        Ok(self.0.probe() as u64)
    }
}

/// Settles one delivery. Dropped unsettled (a route cut short at
/// shutdown), it hands the message back, as a broker does when its
/// consumer goes away.
struct Token {
    queue: Arc<Queue>,
    seq: u64,
    delivery: u32,
}

impl Token {
    fn new(queue: &Arc<Queue>, m: &Stored) -> Self {
        Self {
            queue: queue.clone(),
            seq: m.seq,
            delivery: m.deliveries,
        }
    }

    fn done(&self, nack: Option<Duration>) -> Result<(), BrokerError> {
        self.queue
            .settle(self.seq, self.delivery, nack)
            .map_err(|()| {
                BrokerError::settle(
                    self.queue.name().to_owned(),
                    "not confirmed (a scripted fault); the message is redelivered".to_owned(),
                )
            })
    }
}

#[async_trait]
impl Settle for Token {
    async fn ack(&self) -> Result<(), BrokerError> {
        self.done(None)
    }

    async fn nack(&self, _msg: &Message, delay: Duration) -> Result<(), BrokerError> {
        self.done(Some(delay))
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        let _ = self
            .queue
            .settle(self.seq, self.delivery, Some(Duration::ZERO));
    }
}

/// Takes the messages that waited when it opened, one by one; ends with
/// [`BrokerError::Drained`].
pub struct TakeSource {
    broker: String,
    queue: Arc<Queue>,
    cursor: std::vec::IntoIter<u64>,
}

impl TakeSource {
    pub(super) fn new(broker: &str, queue: Arc<Queue>) -> Self {
        let cursor = queue.waiting().into_iter();
        Self {
            broker: broker.to_owned(),
            queue,
            cursor,
        }
    }
}

#[async_trait]
impl Source for TakeSource {
    async fn next(&mut self) -> Result<Delivery, BrokerError> {
        for seq in self.cursor.by_ref() {
            if let Ok(m) = self.queue.poll(Some(seq)) {
                let msg = self.queue.message(&m, "");
                return Ok(Delivery::new(msg, Box::new(Token::new(&self.queue, &m))));
            }
        }
        Err(BrokerError::drained(self.broker.clone()))
    }

    fn backlog_probe(&self) -> Option<Arc<dyn BacklogProbe>> {
        None
    }
}
