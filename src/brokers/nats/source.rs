use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, AckKind};
use async_trait::async_trait;
use futures::{FutureExt, StreamExt};

use super::headers::{core_message, from_header_map};
use super::{ConsumerBacklog, NatsSource};
use crate::brokers::{BacklogProbe, BrokerError, Delivery, NoSettle, Settle, Source};
use crate::config::RouteConfig;
use crate::message::{Message, Position};

/// How often the server proves an idle pull alive; two missed beats end
/// the pull with an error, and the next receive opens a new one.
const PULL_HEARTBEAT: Duration = Duration::from_secs(5);

/// A durable JetStream pull consumer.
pub struct JetStreamSource {
    /// Shared with every settle token: no copy per message.
    broker: Arc<str>,
    route: String,
    stream: String,
    consumer: consumer::Consumer<consumer::pull::Config>,
    messages: Option<consumer::pull::Stream>,
    batch: usize,
    keepalive: Duration,
}

impl JetStreamSource {
    /// Binds the route's durable consumer, creating it when missing.
    pub async fn bind(
        broker: &str,
        js: &jetstream::Context,
        route: &RouteConfig,
        src: &NatsSource,
        stream_name: &str,
        window: usize,
    ) -> Result<Self, BrokerError> {
        let setup = |message: String| BrokerError::setup(broker.to_owned(), message);
        let stream = js.get_stream(stream_name).await.map_err(|e| {
            setup(format!(
                "route {}: stream {stream_name:?} is not available ({e}); declare it under \
                 [[brokers.{broker}.streams]] or create it with `nats stream add`",
                route.name
            ))
        })?;
        let durable = src.durable.clone().unwrap_or_else(|| route.name.clone());
        let ack_wait = src.ack_wait.unwrap_or(Duration::from_secs(30));
        let config = consumer::pull::Config {
            durable_name: Some(durable.clone()),
            filter_subject: src.subject.clone(),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait,
            max_deliver: src.max_deliver.unwrap_or(-1),
            max_ack_pending: src.max_ack_pending.unwrap_or((window as i64 * 2).max(1000)),
            ..Default::default()
        };
        let consumer = stream
            .get_or_create_consumer(&durable, config)
            .await
            .map_err(|e| {
                setup(format!(
                    "route {}: cannot create or bind durable {durable:?}: {e}",
                    route.name
                ))
            })?;
        Ok(Self {
            broker: Arc::from(broker),
            route: route.name.clone(),
            stream: stream_name.to_owned(),
            consumer,
            messages: None,
            batch: window.max(1),
            keepalive: ack_wait / 2,
        })
    }

    fn receive_err(&self, e: impl std::fmt::Display) -> BrokerError {
        BrokerError::receive(self.broker.to_string(), e.to_string())
    }
}

#[async_trait]
impl Source for JetStreamSource {
    async fn next(&mut self) -> Result<Delivery, BrokerError> {
        loop {
            // One continuous pull, as the JetStream clients do it: the next
            // pull request leaves when half of the last one has arrived, so
            // the server is never left waiting for a request. The client
            // asks for more only while mqfn takes messages, so at most one
            // and a half windows wait in the client.
            let messages = match &mut self.messages {
                Some(m) => m,
                None => {
                    let m = self
                        .consumer
                        .stream()
                        .max_messages_per_batch(self.batch)
                        .heartbeat(PULL_HEARTBEAT)
                        .messages()
                        .await
                        .map_err(|e| self.receive_err(e))?;
                    self.messages.insert(m)
                }
            };
            match messages.next().await {
                None => self.messages = None,
                Some(Err(e)) => {
                    self.messages = None;
                    // A deleted durable never delivers again: the route
                    // binds (and so creates) it anew.
                    if e.kind() == consumer::pull::MessagesErrorKind::ConsumerDeleted {
                        return Err(BrokerError::terminal(
                            self.broker.to_string(),
                            format!("durable consumer of route {} was deleted", self.route),
                        )
                        .with_source(e));
                    }
                    return Err(self.receive_err(e));
                }
                Some(Ok(m)) => return Ok(self.delivery(m)),
            }
        }
    }

    async fn close(&mut self) {
        // Messages the server already sent for the open pull request would
        // otherwise wait out `ack_wait`: hand them back at once.
        if let Some(mut messages) = self.messages.take() {
            while let Some(Some(Ok(m))) = messages.next().now_or_never() {
                let _ = m.ack_with(AckKind::Nak(None)).await;
            }
        }
    }

    fn backlog_probe(&self) -> Option<Arc<dyn BacklogProbe>> {
        Some(Arc::new(ConsumerBacklog {
            broker: self.broker.to_string(),
            consumer: self.consumer.clone(),
        }))
    }
}

impl JetStreamSource {
    fn delivery(&self, m: jetstream::Message) -> Delivery {
        let (delivered, sequence) = m.reply.as_deref().and_then(ack_position).unwrap_or((1, 0));
        let mut msg = Message {
            subject: m.subject.as_str().to_owned(),
            route: self.route.clone(),
            position: Position::stable(&self.stream, itoa::Buffer::new().format(sequence)),
            attempt: u32::try_from(delivered.max(1)).unwrap_or(u32::MAX),
            payload: m.payload.clone(),
            ..Message::default()
        };
        from_header_map(m.headers.as_ref(), &mut msg);
        let settle = JsSettle {
            broker: Arc::clone(&self.broker),
            msg: m,
            keepalive: self.keepalive,
        };
        Delivery::new(msg, Box::new(settle))
    }
}

/// The delivery count and the stream sequence of a JetStream message, from
/// its `$JS.ACK.` reply subject (ADR-15): `STREAM.CONSUMER.DELIVERED.SEQ.…`
/// (7 tokens after the prefix), or `DOMAIN.ACCOUNT.STREAM.CONSUMER.
/// DELIVERED.SEQ.…` (9 or more).
///
/// `async_nats::jetstream::Message::info` parses every token and converts
/// the timestamp: 5% of mqfn's instructions per message (docs/benchmarks.md),
/// for two numbers. The tokens are split as bytes: `str::split('.')` was
/// another 2%.
fn ack_position(reply: &str) -> Option<(u64, u64)> {
    let rest = reply.strip_prefix("$JS.ACK.")?.as_bytes();
    let skip = match rest.iter().filter(|&&b| b == b'.').count() + 1 {
        7 => 2,
        n if n >= 9 => 4,
        _ => return None,
    };
    let mut tokens = rest.split(|&b| b == b'.').skip(skip);
    let delivered = number(tokens.next()?)?;
    let sequence = number(tokens.next()?)?;
    Some((delivered, sequence))
}

/// A token of decimal digits, or `None` (empty, other bytes, overflow).
fn number(token: &[u8]) -> Option<u64> {
    if token.is_empty() {
        return None;
    }
    token.iter().try_fold(0u64, |n, &b| {
        let digit = b.checked_sub(b'0').filter(|d| *d <= 9)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// Acks, naks and extends one JetStream message.
struct JsSettle {
    broker: Arc<str>,
    msg: jetstream::Message,
    keepalive: Duration,
}

impl JsSettle {
    async fn send(&self, kind: AckKind) -> Result<(), BrokerError> {
        self.msg
            .ack_with(kind)
            .await
            .map_err(|e| BrokerError::settle(self.broker.to_string(), e.to_string()).with_source(e))
    }
}

#[async_trait]
impl Settle for JsSettle {
    async fn ack(&self) -> Result<(), BrokerError> {
        self.send(AckKind::Ack).await
    }

    async fn nack(&self, _msg: &Message, delay: Duration) -> Result<(), BrokerError> {
        self.send(AckKind::Nak(Some(delay))).await
    }

    async fn in_progress(&self) -> Result<(), BrokerError> {
        self.send(AckKind::Progress).await
    }

    fn keepalive(&self) -> Option<Duration> {
        Some(self.keepalive)
    }
}

/// A core NATS subscription in a queue group: at-most-once.
pub struct CoreSource {
    broker: String,
    route: String,
    sub: async_nats::Subscriber,
}

impl CoreSource {
    /// Subscribes in the route's queue group.
    pub async fn subscribe(
        broker: &str,
        client: &async_nats::Client,
        route: &RouteConfig,
        src: &NatsSource,
    ) -> Result<Self, BrokerError> {
        let subject = src.subject.clone();
        let group = src
            .queue_group
            .clone()
            .unwrap_or_else(|| route.name.clone());
        let sub = client.queue_subscribe(subject, group).await.map_err(|e| {
            BrokerError::setup(
                broker.to_owned(),
                format!("route {}: cannot subscribe: {e}", route.name),
            )
        })?;
        Ok(Self {
            broker: broker.to_owned(),
            route: route.name.clone(),
            sub,
        })
    }
}

#[async_trait]
impl Source for CoreSource {
    async fn next(&mut self) -> Result<Delivery, BrokerError> {
        match self.sub.next().await {
            Some(m) => Ok(Delivery::new(
                core_message(m, &self.route),
                Box::new(NoSettle),
            )),
            // A closed subscription never yields again: subscribe anew.
            None => Err(BrokerError::terminal(
                self.broker.clone(),
                "the subscription closed",
            )),
        }
    }

    fn backlog_probe(&self) -> Option<Arc<dyn BacklogProbe>> {
        None
    }

    async fn close(&mut self) {
        let _ = self.sub.unsubscribe().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_position_reads_both_reply_subject_formats() {
        assert_eq!(
            ack_position("$JS.ACK.ORDERS.worker.3.1042.1040.1700000000000000000.17"),
            Some((3, 1042))
        );
        assert_eq!(
            ack_position("$JS.ACK.hub.ACCHASH.ORDERS.worker.1.7.7.1700000000000000000.0.rand0m"),
            Some((1, 7))
        );
        assert_eq!(
            ack_position("$JS.ACK.hub.ACCHASH.ORDERS.worker.2.9.9.1700000000000000000.0"),
            Some((2, 9))
        );
        assert_eq!(ack_position("$JS.ACK.ORDERS.worker.x.1.1.1.1"), None);
        assert_eq!(ack_position("$JS.ACK.ORDERS.worker..1.1.1.1"), None);
        assert_eq!(ack_position("$JS.ACK.ORDERS.worker.+1.1.1.1.1"), None);
        assert_eq!(
            ack_position("$JS.ACK.ORDERS.worker.1.18446744073709551616.1.1.1"),
            None
        );
        assert_eq!(
            ack_position("$JS.ACK.ORDERS.worker.1.18446744073709551615.1.1.1"),
            Some((1, u64::MAX))
        );
        assert_eq!(ack_position("$JS.ACK.too.short"), None);
        assert_eq!(ack_position("_INBOX.abc"), None);
    }
}
