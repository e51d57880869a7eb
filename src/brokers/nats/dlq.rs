//! Dead-letter tools on JetStream: browse a subject without consuming it,
//! and take messages for good (ack deletes them from the stream).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, AckKind};
use async_trait::async_trait;
use futures::StreamExt;

use super::headers::from_header_map;
use crate::brokers::{BacklogProbe, BrokerError, Delivery, Settle, Source};
use crate::message::{Message, Position};

/// Finds the stream that stores `subject`.
pub async fn stream_for(
    broker: &str,
    js: &jetstream::Context,
    subject: &str,
) -> Result<jetstream::stream::Stream, BrokerError> {
    let setup = |message: String| BrokerError::setup(broker.to_owned(), message);
    let name = js
        .stream_by_subject(subject)
        .await
        .map_err(|e| setup(format!("no stream stores subject {subject:?} ({e})")))?;
    js.get_stream(&name)
        .await
        .map_err(|e| setup(format!("stream {name}: {e}")))
}

async fn reader(
    broker: &str,
    stream: &jetstream::stream::Stream,
    subject: &str,
    ack_policy: consumer::AckPolicy,
) -> Result<consumer::PullConsumer, BrokerError> {
    stream
        .create_consumer(consumer::pull::Config {
            filter_subject: subject.to_owned(),
            ack_policy,
            ack_wait: Duration::from_secs(60),
            inactive_threshold: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .map_err(|e| BrokerError::setup(broker.to_owned(), format!("cannot read {subject:?}: {e}")))
}

fn to_message(stream: &str, m: &jetstream::Message) -> Message {
    let sequence = m.info().map(|i| i.stream_sequence).unwrap_or(0);
    let mut msg = Message {
        payload: m.payload.clone(),
        subject: m.subject.to_string(),
        position: Position::stable(stream, itoa::Buffer::new().format(sequence)),
        attempt: 1,
        ..Message::default()
    };
    from_header_map(m.headers.as_ref(), &mut msg);
    msg
}

/// Up to `limit` messages on `subject`, oldest first, left in place.
pub async fn browse(
    broker: &str,
    js: &jetstream::Context,
    subject: &str,
    limit: usize,
) -> Result<Vec<Message>, BrokerError> {
    let stream = stream_for(broker, js, subject).await?;
    let name = stream.cached_info().config.name.clone();
    let c = reader(broker, &stream, subject, consumer::AckPolicy::None).await?;
    let mut out = Vec::new();
    while out.len() < limit {
        let mut batch = c
            .fetch()
            .max_messages((limit - out.len()).min(500))
            .messages()
            .await
            .map_err(|e| BrokerError::receive(broker.to_owned(), e.to_string()).with_source(e))?;
        let before = out.len();
        while let Some(Ok(m)) = batch.next().await {
            out.push(to_message(&name, &m));
        }
        if out.len() == before {
            break;
        }
    }
    Ok(out)
}

/// Takes messages on a subject: ack deletes each from its stream. Only the
/// messages there when it opened are taken, so that a redriven message that
/// fails again is not redriven twice in one run.
pub struct TakeSource {
    left: u64,
    broker: String,
    name: String,
    stream: jetstream::stream::Stream,
    consumer: consumer::PullConsumer,
}

impl TakeSource {
    /// Opens a taker on `subject`.
    pub async fn open(
        broker: &str,
        js: &jetstream::Context,
        subject: &str,
    ) -> Result<Self, BrokerError> {
        let stream = stream_for(broker, js, subject).await?;
        let name = stream.cached_info().config.name.clone();
        let consumer = reader(broker, &stream, subject, consumer::AckPolicy::Explicit).await?;
        let left = consumer.cached_info().num_pending;
        Ok(Self {
            left,
            broker: broker.to_owned(),
            name,
            stream,
            consumer,
        })
    }
}

#[async_trait]
impl Source for TakeSource {
    async fn next(&mut self) -> Result<Delivery, BrokerError> {
        if self.left == 0 {
            return Err(BrokerError::drained(self.broker.clone()));
        }
        self.left -= 1;
        let mut batch = self
            .consumer
            .fetch()
            .max_messages(1)
            .messages()
            .await
            .map_err(|e| BrokerError::receive(self.broker.clone(), e.to_string()).with_source(e))?;
        match batch.next().await {
            Some(Ok(m)) => {
                let msg = to_message(&self.name, &m);
                let sequence = m.info().map(|i| i.stream_sequence).unwrap_or(0);
                let settle = Taken {
                    broker: self.broker.clone(),
                    stream: self.stream.clone(),
                    sequence,
                    msg: m,
                };
                Ok(Delivery::new(msg, Box::new(settle)))
            }
            Some(Err(e)) => {
                Err(BrokerError::receive(self.broker.clone(), e.to_string()).with_source(e))
            }
            None => Err(BrokerError::drained(self.broker.clone())),
        }
    }

    fn backlog_probe(&self) -> Option<Arc<dyn BacklogProbe>> {
        None
    }
}

struct Taken {
    broker: String,
    stream: jetstream::stream::Stream,
    sequence: u64,
    msg: jetstream::Message,
}

#[async_trait]
impl Settle for Taken {
    async fn ack(&self) -> Result<(), BrokerError> {
        self.stream
            .delete_message(self.sequence)
            .await
            .map_err(|e| {
                BrokerError::settle(
                    self.broker.clone(),
                    format!("cannot delete message {}: {e}", self.sequence),
                )
            })?;
        let _ = self.msg.ack().await;
        Ok(())
    }

    async fn nack(&self, _msg: &Message, _delay: Duration) -> Result<(), BrokerError> {
        // Leave it where it is; the reader consumer is ephemeral.
        let _ = self
            .msg
            .ack_with(AckKind::Nak(Some(Duration::from_secs(60))))
            .await;
        Ok(())
    }
}
