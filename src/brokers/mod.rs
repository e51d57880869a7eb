//! Broker kinds and the contract they implement.
//!
//! Each kind lives in one folder with the same shape: `config.rs` (its typed
//! connection and endpoint keys, their validation, and its [`Kind`]),
//! `mod.rs` (the connection, [`Broker`]), `source.rs` (consuming) and
//! `sink.rs` (publishing). The core (config, routes, pools, handlers, CLI,
//! telemetry) sees only the traits of this module. [`KINDS`] is the one
//! place that names the kinds: adding a broker means one folder and one line
//! there.

pub mod amqp;
pub mod http;
pub mod kafka;
pub mod memory;
pub mod nats;
pub mod schedule;
mod settle;
mod spec;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

pub use settle::{Answer, Delivery, NoSettle, Settle};
pub use spec::{
    kind, kind_names, non_empty, triggers, typed, BrokerSpec, Described, EndpointSpec, Endpoints,
    Guarantee, KeyError, Kind, KindSchemas, Role, TypedKind,
};

use crate::config::{BrokerConfig, Endpoint, RouteConfig};
use crate::message::{Headers, Message};

/// The brokers of a running app, by name.
pub type Peers = std::collections::BTreeMap<String, Arc<dyn Broker>>;

/// Every broker kind, one line each.
pub static KINDS: &[&dyn Kind] = &[
    &nats::KIND,
    &kafka::KIND,
    &amqp::KIND,
    &memory::KIND,
    &http::KIND,
    &schedule::KIND,
];

/// What kind of broker failure, sorted by what the caller can do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerErrorKind {
    /// Could not connect (or reconnect); comes right by itself.
    Connect,
    /// Topology (stream, consumer, queue, topic) could not be set up;
    /// retried with backoff, as an operator may fix it meanwhile.
    Setup,
    /// Consuming failed for now; the source retries.
    Receive,
    /// An ack or nack did not reach the broker (it will redeliver).
    Settle,
    /// The source is gone for good (a closed subscription, a stopped
    /// client thread): only a new subscription helps, so the route is
    /// restarted.
    Terminal,
    /// Nothing is left to take (`Broker::take` sources end with this).
    Drained,
    /// The broker cannot do this (e.g. request/reply on Kafka).
    Unsupported,
}

impl BrokerErrorKind {
    /// The words the message starts with.
    fn prefix(self) -> &'static str {
        match self {
            Self::Connect => "cannot connect: ",
            Self::Receive => "receive failed: ",
            Self::Settle => "settle failed: ",
            Self::Terminal => "the source stopped for good: ",
            Self::Drained => "nothing left",
            Self::Setup | Self::Unsupported => "",
        }
    }
}

/// A broker failure: its kind, the broker, what happened and, where there
/// is one, the client library's own error.
#[derive(Debug, thiserror::Error)]
#[error("broker {broker}: {}{message}", kind.prefix())]
pub struct BrokerError {
    /// What the caller can do about it.
    pub kind: BrokerErrorKind,
    /// The broker's config name.
    pub broker: String,
    /// What happened, and the fix where there is one.
    pub message: String,
    /// The underlying error.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl BrokerError {
    /// A failure of `kind`.
    pub fn new(
        kind: BrokerErrorKind,
        broker: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            broker: broker.into(),
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the client library's error.
    pub fn with_source(mut self, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        self.source = Some(e.into());
        self
    }

    /// See [`BrokerErrorKind::Connect`].
    pub fn connect(broker: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(BrokerErrorKind::Connect, broker, message)
    }
    /// See [`BrokerErrorKind::Setup`].
    pub fn setup(broker: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(BrokerErrorKind::Setup, broker, message)
    }
    /// See [`BrokerErrorKind::Receive`].
    pub fn receive(broker: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(BrokerErrorKind::Receive, broker, message)
    }
    /// See [`BrokerErrorKind::Settle`].
    pub fn settle(broker: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(BrokerErrorKind::Settle, broker, message)
    }
    /// See [`BrokerErrorKind::Terminal`].
    pub fn terminal(broker: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(BrokerErrorKind::Terminal, broker, message)
    }
    /// See [`BrokerErrorKind::Drained`].
    pub fn drained(broker: impl Into<String>) -> Self {
        Self::new(BrokerErrorKind::Drained, broker, "")
    }
    /// See [`BrokerErrorKind::Unsupported`].
    pub fn unsupported(broker: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(BrokerErrorKind::Unsupported, broker, message)
    }
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

/// The publisher of a trigger, which takes messages and publishes none:
/// every publish is refused, with the message saying what to do instead.
pub struct Refusing(pub String);

#[async_trait]
impl Publisher for Refusing {
    async fn publish(&self, to: &Endpoint, _msg: OutMessage) -> Result<(), PublishError> {
        self.reply(&to.describe(), OutMessage::default()).await
    }

    async fn reply(&self, reply_to: &str, _msg: OutMessage) -> Result<(), PublishError> {
        Err(PublishError {
            kind: PublishErrorKind::Rejected,
            to: reply_to.to_owned(),
            message: self.0.clone(),
        })
    }
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
    /// Whether the source has been given its share of the input yet, for
    /// a source that is not receiving as soon as it is subscribed (a Kafka
    /// group member before its first assignment). `None`: subscribed is
    /// receiving. The route is not ready (`/readyz`) until it turns true.
    fn joined(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        None
    }
    /// Stops consuming; pending acks are flushed.
    async fn close(&mut self) {}
}

/// A connected broker.
#[async_trait]
pub trait Broker: Send + Sync {
    /// The config name.
    fn name(&self) -> &str;
    /// The kind, as in config and labels (`nats`, `kafka`, ...).
    fn kind(&self) -> &'static str;
    /// Whether the connection is up.
    fn is_up(&self) -> bool;
    /// Creates or binds the topology for `route` and subscribes to its
    /// source. `window` bounds the messages in flight.
    async fn source(
        &self,
        route: &RouteConfig,
        window: usize,
    ) -> Result<Box<dyn Source>, BrokerError>;
    /// Subscribes `route` like [`Broker::source`], with the app's brokers
    /// at hand (`peers`, by name), for a trigger that goes through another
    /// broker: a schedule's ticks, an HTTP request queued on the route's
    /// source. Also called for a route's second trigger: the HTTP
    /// broker is asked for a route whose `http` key names it, whatever its
    /// source.
    async fn subscribe(
        &self,
        route: &RouteConfig,
        window: usize,
        peers: &Peers,
    ) -> Result<Box<dyn Source>, BrokerError> {
        let _ = peers;
        self.source(route, window).await
    }
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

    /// Whether the broker lives in this process only (`memory`): no other
    /// process can reach its queues.
    fn is_local(&self) -> bool {
        false
    }

    /// Prefixes of the header names this broker reserves: set by it on
    /// delivery, or directives to it (`Nats-Msg-Id`, `x-death`). mqfn never
    /// copies them from a message of this broker onto what it publishes,
    /// where they would mean something they do not.
    fn reserved_headers(&self) -> &'static [&'static str] {
        &[]
    }

    /// The error for an endpoint that another kind parsed (a bug: the
    /// config resolves each endpoint with its own broker's kind).
    fn not_mine(&self, at: &Endpoint) -> BrokerError {
        BrokerError::setup(
            self.name(),
            format!(
                "endpoint {} was not parsed as a {} endpoint",
                at.describe(),
                self.kind()
            ),
        )
    }

    /// The error for an operation this broker does not offer.
    fn unsupported(&self, what: &str) -> BrokerError {
        BrokerError::unsupported(
            self.name(),
            format!("{what} is not supported on {} brokers", self.kind()),
        )
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
    cfg.spec().connect(name, wait).await
}

/// How long closing a source or a broker connection may take at shutdown.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Backoff for reconnect and setup loops: 100ms doubling to 10s.
pub fn reconnect_delay(attempt: u32) -> Duration {
    let ms = 100u64.saturating_mul(1 << attempt.min(7));
    Duration::from_millis(ms.min(10_000))
}
