//! Publishing, on a connection of its own (kept by deadpool-lapin), so
//! that broker flow control on publishes never holds up the consumers'
//! acks. Outputs and dead letters go through a pipelined [`Lane`] per
//! destination; replies (one reply queue per caller) and re-queued copies
//! through a deadpool of confirm-mode channels, one publish per channel.
//!
//! Every publish is `mandatory` and waits for its publisher confirm: a
//! message that no queue takes (basic.return) or that the broker nacks is a
//! failure, and the input goes back to its queue.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool::managed::{self, Metrics, Object, PoolError, RecycleError, RecycleResult};
use deadpool::Runtime;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation};
use tracing::warn;

use super::headers::{properties, short};
use super::lane::Lane;
use super::{AmqpSource, AmqpTarget};
use crate::brokers::{BrokerError, OutMessage, PublishError, PublishErrorKind, Publisher};
use crate::config::Endpoint;

/// Channels kept for replies and re-queues: the most of those awaiting a
/// confirm at once. One publish holds its channel until confirmed, so that
/// a basic.return is never paired with another message's confirm.
const PUBLISH_CHANNELS: usize = 64;
/// How long a publish may wait for its confirm before it counts as failed.
pub(super) const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
/// How long opening a publishing connection or channel may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a publish was not confirmed.
#[derive(Debug)]
pub(super) enum Failure {
    /// No channel: the connection is down or could not be opened.
    NoChannel(String),
    /// The client or the broker failed the publish (channel closed, 404 on
    /// a missing exchange, connection lost).
    Client(lapin::Error),
    /// The broker nacked the message (it could not store it).
    Nacked,
    /// No queue took it (basic.return to a `mandatory` publish).
    Returned(u16, String),
    /// No confirm within [`CONFIRM_TIMEOUT`].
    TimedOut,
    /// The message cannot be expressed in AMQP (a header name over 255
    /// bytes, say).
    Unencodable(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoChannel(why) => write!(f, "no channel to the broker: {why}"),
            Self::Client(e) => write!(f, "{}", super::topology::reason(e)),
            Self::Nacked => write!(f, "the broker nacked the message"),
            Self::Returned(code, text) => write!(
                f,
                "unroutable: returned by the broker ({code} {text}); no queue is bound for it"
            ),
            Self::TimedOut => write!(f, "no publisher confirm within {CONFIRM_TIMEOUT:?}"),
            Self::Unencodable(why) => write!(f, "{why}"),
        }
    }
}

/// Sorts publish failures into retriable and final: the one place that
/// decides whether an input goes back to its queue or to the dead letter.
pub(super) fn classify(f: &Failure) -> PublishErrorKind {
    match f {
        Failure::Unencodable(_) => PublishErrorKind::Rejected,
        Failure::Client(e) => match e.kind() {
            lapin::ErrorKind::ProtocolError(p) => match p.kind() {
                // Larger than the broker's max_message_size: it never fits.
                AMQPErrorKind::Soft(AMQPSoftError::CONTENTTOOLARGE)
                | AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) => {
                    PublishErrorKind::Rejected
                }
                // A missing exchange or a permission may be fixed.
                _ => PublishErrorKind::Transient,
            },
            lapin::ErrorKind::SerialisationError(_) => PublishErrorKind::Rejected,
            _ => PublishErrorKind::Transient,
        },
        Failure::NoChannel(_) | Failure::Nacked | Failure::Returned(..) | Failure::TimedOut => {
            PublishErrorKind::Transient
        }
    }
}

/// The exchange and routing key as AMQP short strings, or why they cannot
/// be (longer than 255 bytes).
fn names(exchange: &str, routing_key: &str) -> Result<(ShortString, ShortString), Failure> {
    match (
        short("exchange", exchange),
        short("routing key", routing_key),
    ) {
        (Ok(x), Ok(k)) => Ok((x, k)),
        (Err(m), _) | (_, Err(m)) => Err(Failure::Unencodable(m)),
    }
}

/// A confirm-mode channel on the pooled publishing connection (opened
/// on first use).
pub(super) async fn open_channel(connections: &deadpool_lapin::Pool) -> Result<Channel, String> {
    let conn = connections.get().await.map_err(|e| match e {
        PoolError::Backend(e) => super::topology::reason(&e),
        other => other.to_string(),
    })?;
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    Ok(ch)
}

/// Opens confirm-mode channels on the pooled publishing connection.
pub(super) struct ChannelManager {
    connections: deadpool_lapin::Pool,
}

impl managed::Manager for ChannelManager {
    type Type = Channel;
    type Error = String;

    async fn create(&self) -> Result<Channel, String> {
        open_channel(&self.connections).await
    }

    async fn recycle(&self, ch: &mut Channel, _: &Metrics) -> RecycleResult<String> {
        if ch.status().connected() {
            Ok(())
        } else {
            Err(RecycleError::message("the channel is closed"))
        }
    }
}

/// Publishes outputs, replies and dead letters with publisher confirms:
/// outputs and dead letters through a [`Lane`] per destination (pipelined),
/// replies and requeues one per pooled channel.
pub struct AmqpPublisher {
    broker: String,
    channels: managed::Pool<ChannelManager>,
    /// By exchange, then routing key: looked up without allocating.
    lanes: std::sync::Mutex<HashMap<String, HashMap<String, Arc<Lane>>>>,
}

impl AmqpPublisher {
    /// A publisher for `url`. Connects lazily, on the first publish, and
    /// reconnects on the next publish after a loss.
    pub(super) fn new(broker: &str, url: &str) -> Result<Self, BrokerError> {
        let setup = |e: String| {
            BrokerError::setup(
                broker.to_owned(),
                format!("cannot set up the publishing pool: {e}"),
            )
        };
        let name = super::connection::connection_name(broker, "publish");
        let connections = deadpool_lapin::Config {
            url: Some(super::connection::tuned_url(url)),
            pool: None,
        }
        .builder(
            move || {
                lapin::ConnectionProperties::default().with_connection_name(name.clone().into())
            },
            Runtime::Tokio1,
        )
        .map_err(|e| setup(e.to_string()))?
        .max_size(1)
        .create_timeout(Some(OPEN_TIMEOUT))
        .wait_timeout(Some(OPEN_TIMEOUT))
        .build()
        .map_err(|e| setup(e.to_string()))?;
        let channels = managed::Pool::builder(ChannelManager { connections })
            .max_size(PUBLISH_CHANNELS)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(OPEN_TIMEOUT))
            .wait_timeout(Some(CONFIRM_TIMEOUT))
            .build()
            .map_err(|e| setup(e.to_string()))?;
        Ok(Self {
            broker: broker.to_owned(),
            channels,
            lanes: Default::default(),
        })
    }

    /// The lane to `exchange`/`routing_key`, started on first use.
    fn lane(&self, exchange: &str, routing_key: &str) -> Result<Arc<Lane>, Failure> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(lane) = lanes
            .get(exchange)
            .and_then(|by_key| by_key.get(routing_key))
        {
            return Ok(lane.clone());
        }
        let (x, k) = names(exchange, routing_key)?;
        let connections = self.channels.manager().connections.clone();
        let lane = Arc::new(Lane::start(connections, x, k));
        lanes
            .entry(exchange.to_owned())
            .or_default()
            .insert(routing_key.to_owned(), lane.clone());
        Ok(lane)
    }

    /// Publishes one message and waits for its confirm.
    pub(super) async fn send(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        props: BasicProperties,
    ) -> Result<(), Failure> {
        let (exchange, routing_key) = names(exchange, routing_key)?;
        let ch = self.channels.get().await.map_err(|e| match e {
            PoolError::Backend(why) => Failure::NoChannel(why),
            other => Failure::NoChannel(other.to_string()),
        })?;
        let opts = BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        let confirm = async {
            ch.basic_publish(exchange, routing_key, opts, payload, props)
                .await?
                .await
        };
        let result = match tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await {
            Err(_) => Err(Failure::TimedOut),
            Ok(Err(e)) => Err(Failure::Client(e)),
            Ok(Ok(Confirmation::Ack(None))) | Ok(Ok(Confirmation::NotRequested)) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(r)))) | Ok(Ok(Confirmation::Nack(Some(r)))) => Err(
                Failure::Returned(r.reply_code, r.reply_text.as_str().to_owned()),
            ),
            Ok(Ok(Confirmation::Nack(None))) => Err(Failure::Nacked),
        };
        if matches!(result, Err(Failure::TimedOut)) {
            // A confirm may still arrive on it; never hand it out again.
            drop(Object::take(ch));
        }
        result
    }

    fn fail(&self, to: &str, f: &Failure) -> PublishError {
        PublishError {
            kind: classify(f),
            to: format!("{}/{to}", self.broker),
            message: f.to_string(),
        }
    }

    /// Closes the pooled channels and, gracefully, the publishing
    /// connection (if one is open).
    pub(super) async fn close(&self) {
        self.lanes.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.channels.close();
        let connections = &self.channels.manager().connections;
        connections.close();
    }
}

/// The exchange and routing key for an endpoint (see
/// [`AmqpTarget::route`]); a source is its queue, through the default
/// exchange.
pub(super) fn route_of(to: &Endpoint) -> Option<(&str, &str)> {
    match (to.get::<AmqpTarget>(), to.get::<AmqpSource>()) {
        (Some(t), _) => Some(t.route()),
        (None, Some(s)) => Some(("", s.queue.as_str())),
        (None, None) => None,
    }
}

#[async_trait]
impl Publisher for AmqpPublisher {
    async fn publish(&self, to: &Endpoint, msg: OutMessage) -> Result<(), PublishError> {
        let Some((exchange, routing_key)) = route_of(to) else {
            let m = format!("{} is not an AMQP endpoint", to.describe());
            return Err(self.fail(&to.address(), &Failure::Unencodable(m)));
        };
        let target = if exchange.is_empty() {
            routing_key.to_owned()
        } else {
            format!("{exchange}/{routing_key}")
        };
        let props = properties(&msg).map_err(|m| self.fail(&target, &Failure::Unencodable(m)))?;
        let lane = self
            .lane(exchange, routing_key)
            .map_err(|f| self.fail(&target, &f))?;
        lane.send(msg.payload, props)
            .await
            .map_err(|f| self.fail(&target, &f))
    }

    /// Replies go through the default exchange to the reply queue. A reply
    /// that no queue takes is dropped with a warning: the caller is gone (its
    /// exclusive reply queue went with it), and keeping the request would
    /// only loop it for nobody.
    async fn reply(&self, reply_to: &str, msg: OutMessage) -> Result<(), PublishError> {
        let props = properties(&msg).map_err(|m| self.fail(reply_to, &Failure::Unencodable(m)))?;
        match self.send("", reply_to, &msg.payload, props).await {
            Err(Failure::Returned(code, text)) => {
                warn!(broker = %self.broker, reply_to, code, %text, "The reply queue is gone; reply dropped.");
                Ok(())
            }
            other => other.map_err(|f| self.fail(reply_to, &f)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::protocol::AMQPError;

    fn protocol(kind: AMQPSoftError) -> Failure {
        let e = AMQPError::new(AMQPErrorKind::Soft(kind), "x".into());
        Failure::Client(lapin::ErrorKind::ProtocolError(e).into())
    }

    #[test]
    fn only_messages_that_can_never_fit_are_rejected() {
        use PublishErrorKind::{Rejected, Transient};
        assert_eq!(classify(&protocol(AMQPSoftError::NOTFOUND)), Transient);
        assert_eq!(classify(&protocol(AMQPSoftError::ACCESSREFUSED)), Transient);
        assert_eq!(
            classify(&protocol(AMQPSoftError::CONTENTTOOLARGE)),
            Rejected
        );
        assert_eq!(
            classify(&Failure::Returned(312, "NO_ROUTE".into())),
            Transient
        );
        assert_eq!(classify(&Failure::Nacked), Transient);
        assert_eq!(classify(&Failure::TimedOut), Transient);
        assert_eq!(classify(&Failure::Unencodable("long".into())), Rejected);
    }

    #[test]
    fn endpoints_map_to_exchange_and_routing_key() {
        let t =
            |queue: Option<&str>, exchange: Option<&str>, routing_key: Option<&str>| AmqpTarget {
                queue: queue.map(Into::into),
                exchange: exchange.map(Into::into),
                routing_key: routing_key.map(Into::into),
            };
        assert_eq!(t(Some("q"), None, None).route(), ("", "q"));
        assert_eq!(t(None, Some("x"), Some("k")).route(), ("x", "k"));
        assert_eq!(t(Some("q"), Some("x"), None).route(), ("x", "q"));
        assert_eq!(t(None, Some("fan"), None).route(), ("fan", ""));
    }
}
