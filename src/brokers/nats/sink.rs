use async_nats::header::NATS_MESSAGE_ID;
use async_nats::{jetstream, HeaderValue};
use async_trait::async_trait;

use super::headers::{header, to_header_map};
use super::{NatsSource, NatsTarget};
use crate::brokers::{OutMessage, PublishError, PublishErrorKind, Published, Publisher};
use crate::config::Endpoint;
use crate::message::{CORRELATION_HEADER, KEY_HEADER, REPLY_HEADER};

/// Publishes to NATS: through JetStream (waiting for the PubAck) when the
/// broker has `jetstream = true`, else as core publishes confirmed by flush.
pub struct NatsPublisher {
    broker: String,
    client: async_nats::Client,
    js: Option<jetstream::Context>,
}

impl NatsPublisher {
    pub(super) fn new(
        broker: &str,
        client: async_nats::Client,
        js: Option<jetstream::Context>,
    ) -> Self {
        Self {
            broker: broker.to_owned(),
            client,
            js,
        }
    }

    fn fail(&self, to: &str, kind: PublishErrorKind, message: impl ToString) -> PublishError {
        PublishError {
            kind,
            to: format!("{}/{to}", self.broker),
            message: message.to_string(),
        }
    }

    /// The message's NATS headers: its own, then the key, correlation id,
    /// reply address and deduplication id, each replacing any header of
    /// the same name.
    fn headers(
        &self,
        to: &str,
        msg: &mut OutMessage,
    ) -> Result<async_nats::HeaderMap, PublishError> {
        let rejected = |m| self.fail(to, PublishErrorKind::Rejected, m);
        let mut map = to_header_map(&msg.headers).map_err(rejected)?;
        let key = msg
            .key
            .as_ref()
            .map(|k| String::from_utf8_lossy(k).into_owned());
        for (name, value) in [
            (KEY_HEADER, key),
            (CORRELATION_HEADER, msg.correlation_id.take()),
            (REPLY_HEADER, msg.reply_to.take()),
        ] {
            if let Some(value) = value {
                let (name, value) = header(name, &value).map_err(rejected)?;
                map.insert(name, value);
            }
        }
        // On every result of a JetStream input: the name as a constant and
        // the value moved, not parsed and copied (callgrind, docs/benchmarks.md).
        if let Some(id) = msg.dedup_id.take() {
            if id.contains(['\r', '\n']) {
                return Err(rejected(format!(
                    "deduplication id {id:?} has a line break, which NATS cannot carry"
                )));
            }
            map.insert(NATS_MESSAGE_ID, HeaderValue::from(id));
        }
        Ok(map)
    }

    async fn core(&self, subject: &str, mut msg: OutMessage) -> Result<(), PublishError> {
        let headers = self.headers(subject, &mut msg)?;
        self.client
            .publish_with_headers(subject.to_owned(), headers, msg.payload)
            .await
            .map_err(|e| {
                use async_nats::client::PublishErrorKind as K;
                let kind = match e.kind() {
                    K::MaxPayloadExceeded | K::InvalidSubject => PublishErrorKind::Rejected,
                    K::Send => PublishErrorKind::Transient,
                };
                self.fail(subject, kind, e)
            })?;
        self.client
            .flush()
            .await
            .map_err(|e| self.fail(subject, PublishErrorKind::Transient, e))
    }
}

/// Sorts JetStream publish errors into retriable and final.
fn classify(kind: jetstream::context::PublishErrorKind) -> PublishErrorKind {
    use jetstream::context::PublishErrorKind as K;
    match kind {
        K::MaxPayloadExceeded => PublishErrorKind::Rejected,
        K::StreamNotFound
        | K::WrongLastMessageId
        | K::WrongLastSequence
        | K::TimedOut
        | K::BrokenPipe
        | K::MaxAckPending
        | K::Other => PublishErrorKind::Transient,
    }
}

impl NatsPublisher {
    /// Publishes through JetStream when the broker has it, else as a core
    /// publish (which has no deduplication).
    async fn send(&self, to: &Endpoint, mut msg: OutMessage) -> Result<Published, PublishError> {
        let subject = match (to.get::<NatsTarget>(), to.get::<NatsSource>()) {
            (Some(t), _) => {
                if !t.dedup {
                    msg.dedup_id = None;
                }
                t.subject.as_str()
            }
            // `mqfn invoke` and redrive publish to a route's source.
            (None, Some(s)) => s.subject.as_str(),
            (None, None) => {
                let e = format!("{} is not a NATS endpoint", to.describe());
                return Err(self.fail(&to.address(), PublishErrorKind::Rejected, e));
            }
        };
        let Some(js) = &self.js else {
            return self.core(subject, msg).await.map(|()| Published::New);
        };
        let headers = self.headers(subject, &mut msg)?;
        let ack = js
            .publish_with_headers(subject.to_owned(), headers, msg.payload)
            .await
            .map_err(|e| self.fail(subject, classify(e.kind()), e))?;
        let ack = ack
            .await
            .map_err(|e| self.fail(subject, classify(e.kind()), e))?;
        Ok(if ack.duplicate {
            Published::Duplicate
        } else {
            Published::New
        })
    }
}

#[async_trait]
impl Publisher for NatsPublisher {
    async fn publish(&self, to: &Endpoint, msg: OutMessage) -> Result<(), PublishError> {
        // A duplicate of a redelivered input's result is the dedup at work.
        self.send(to, msg).await.map(|_| ())
    }

    async fn publish_new(&self, to: &Endpoint, msg: OutMessage) -> Result<Published, PublishError> {
        self.send(to, msg).await
    }

    async fn reply(&self, reply_to: &str, msg: OutMessage) -> Result<(), PublishError> {
        self.core(reply_to, msg).await
    }
}
