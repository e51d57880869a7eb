//! Broker connections. One folder per broker, each with the same shape:
//! `mod.rs` (connection), `source.rs` (consuming), `sink.rs` (publishing).
//! Adding a broker means one folder and one arm in [`connect`].

pub mod amqp;
pub mod kafka;
pub mod nats;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

use crate::config::{BrokerConfig, BrokerKind, Endpoint, RouteConfig};
use crate::message::{Delivery, Headers, Message};

/// A broker failure, sorted by what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Could not connect (or reconnect).
    #[error("broker {broker}: cannot connect: {message}")]
    Connect {
        /// The broker's config name.
        broker: String,
        /// Why.
        message: String,
    },
    /// Topology (stream, consumer, queue, topic) could not be set up.
    #[error("broker {broker}: {message}")]
    Setup {
        /// The broker's config name.
        broker: String,
        /// What is missing or refused, and the fix.
        message: String,
    },
    /// Consuming failed; the source retries.
    #[error("broker {broker}: receive failed: {message}")]
    Receive {
        /// The broker's config name.
        broker: String,
        /// Why.
        message: String,
    },
    /// An ack or nack did not reach the broker (it will redeliver).
    #[error("broker {broker}: settle failed: {message}")]
    Settle {
        /// The broker's config name.
        broker: String,
        /// Why.
        message: String,
    },
    /// Nothing is left to take (`Broker::take` sources end with this).
    #[error("broker {broker}: nothing left")]
    Drained {
        /// The broker's config name.
        broker: String,
    },
    /// The broker cannot do this (e.g. request/reply on Kafka).
    #[error("broker {broker}: {message}")]
    Unsupported {
        /// The broker's config name.
        broker: String,
        /// What and why.
        message: String,
    },
}

/// Whether a failed publish may succeed if tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishErrorKind {
    /// Connection trouble, timeouts, a missing stream: the input is handed
    /// back to the broker and comes again.
    Transient,
    /// The broker refused this message for good (too large, invalid
    /// header): the input goes to the dead letter with this reason.
    Rejected,
}

/// A publish that the broker did not confirm.
#[derive(Debug, Clone, thiserror::Error)]
#[error("publish to {to} failed: {message}")]
pub struct PublishError {
    /// What to do about it.
    pub kind: PublishErrorKind,
    /// `broker/address`.
    pub to: String,
    /// Why.
    pub message: String,
}

/// A message to publish.
#[derive(Debug, Clone, Default)]
pub struct OutMessage {
    /// The payload.
    pub payload: Bytes,
    /// Headers.
    pub headers: Headers,
    /// The key (native on Kafka, the `mqfn-key` header elsewhere).
    pub key: Option<Bytes>,
    /// AMQP `correlation_id` (also sent as the `mqfn-correlation-id` header).
    pub correlation_id: Option<String>,
    /// Where the handler's result should be sent (AMQP `reply_to`; the
    /// `mqfn-reply-to` header on NATS).
    pub reply_to: Option<String>,
    /// A deduplication id, where the broker supports one (JetStream
    /// `Nats-Msg-Id`), so that a redelivered input does not double its
    /// outputs within the broker's duplicate window.
    pub dedup_id: Option<String>,
}

/// What the broker made of a confirmed publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// It stored a new message.
    New,
    /// It already held a message with the same deduplication id within its
    /// duplicate window (JetStream `PubAck.duplicate`) and stored nothing.
    Duplicate,
}

/// Publishes and waits for the broker's confirmation.
#[async_trait]
pub trait Publisher: Send + Sync {
    /// Publishes `msg` to `to` and returns once the broker confirmed it. A
    /// duplicate counts as confirmed: for a route's output, the copy the
    /// broker already holds is the result of an earlier delivery.
    async fn publish(&self, to: &Endpoint, msg: OutMessage) -> Result<(), PublishError>;
    /// Publishes `msg` to `to` like [`Publisher::publish`], and says whether
    /// the broker stored it as a new message, for callers that remove the
    /// original only once a copy exists (`mqfn dlq redrive`). Brokers without
    /// deduplication store every confirmed message.
    async fn publish_new(&self, to: &Endpoint, msg: OutMessage) -> Result<Published, PublishError> {
        self.publish(to, msg).await.map(|()| Published::New)
    }
    /// Publishes `msg` to a reply address taken from a request.
    async fn reply(&self, reply_to: &str, msg: OutMessage) -> Result<(), PublishError>;
}

/// Reports how many messages wait on the broker for one source.
#[async_trait]
pub trait BacklogProbe: Send + Sync {
    /// Messages not yet delivered to mqfn.
    async fn backlog(&self) -> Result<u64, BrokerError>;
}

/// A subscription that yields deliveries, one at a time.
#[async_trait]
pub trait Source: Send {
    /// The next delivery. The route calls it only when it has room for
    /// one more; what a source prefetches is bounded by the window it was
    /// opened with.
    async fn next(&mut self) -> Result<Delivery, BrokerError>;
    /// A probe for the broker-side backlog, when the broker has one.
    fn backlog_probe(&self) -> Option<Arc<dyn BacklogProbe>>;
    /// Stops consuming; pending acks are flushed.
    async fn close(&mut self) {}
}

/// A connected broker.
#[async_trait]
pub trait Broker: Send + Sync {
    /// The config name.
    fn name(&self) -> &str;
    /// The kind.
    fn kind(&self) -> BrokerKind;
    /// Whether the connection is up.
    fn is_up(&self) -> bool;
    /// Creates or binds the topology for `route` and subscribes to its
    /// source. `window` bounds the messages in flight.
    async fn source(
        &self,
        route: &RouteConfig,
        window: usize,
    ) -> Result<Box<dyn Source>, BrokerError>;
    /// The publisher for outputs, replies and dead letters.
    fn publisher(&self) -> Arc<dyn Publisher>;
    /// Watches `at` without consuming from anyone else (for `mqfn invoke`).
    async fn tap(&self, at: &Endpoint) -> Result<BoxStream<'static, Message>, BrokerError>;
    /// A fresh reply address and the stream of replies sent to it.
    async fn inbox(&self) -> Result<(String, BoxStream<'static, Message>), BrokerError>;
    /// Reads up to `limit` messages at `at` without consuming them, oldest
    /// first (for `mqfn dlq list`).
    async fn browse(&self, at: &Endpoint, limit: usize) -> Result<Vec<Message>, BrokerError> {
        let _ = (at, limit);
        Err(self.unsupported("browsing"))
    }
    /// A source over the messages at `at` whose `ack` removes a message for
    /// good and whose `nack` leaves it (for `mqfn dlq redrive`). It ends
    /// with [`BrokerError::Drained`] once nothing is left.
    async fn take(&self, at: &Endpoint) -> Result<Box<dyn Source>, BrokerError> {
        let _ = at;
        Err(self.unsupported("taking dead letters"))
    }
    /// Flushes pending publishes and acks, then disconnects.
    async fn close(&self);

    /// The error for an operation this broker does not offer.
    fn unsupported(&self, what: &str) -> BrokerError {
        BrokerError::Unsupported {
            broker: self.name().to_owned(),
            message: format!(
                "{what} is not supported on {} brokers",
                self.kind().as_str()
            ),
        }
    }
}

/// Connects to the broker `name`. `wait` says whether to wait for the first
/// connection (CLI commands) or to connect in the background (`run`, which
/// reports not-ready meanwhile).
pub async fn connect(
    name: &str,
    cfg: &BrokerConfig,
    wait: bool,
) -> Result<Arc<dyn Broker>, BrokerError> {
    Ok(match cfg {
        BrokerConfig::Nats(c) => Arc::new(nats::NatsBroker::connect(name, c, wait).await?),
        BrokerConfig::Kafka(c) => Arc::new(kafka::KafkaBroker::connect(name, c, wait).await?),
        BrokerConfig::Amqp(c) => Arc::new(amqp::AmqpBroker::connect(name, c, wait).await?),
    })
}

/// Backoff for reconnect and setup loops: 100ms doubling to 10s.
pub fn reconnect_delay(attempt: u32) -> Duration {
    let ms = 100u64.saturating_mul(1 << attempt.min(7));
    Duration::from_millis(ms.min(10_000))
}
