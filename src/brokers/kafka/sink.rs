//! Publishing to Kafka through the broker's idempotent producer. A publish
//! returns once the delivery report is in: the record is written with
//! acks=all, so the input may be settled.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

use super::{LogContext, Topics};
use crate::brokers::{OutMessage, PublishError, PublishErrorKind, Publisher};
use crate::config::Endpoint;
use crate::message::{CORRELATION_HEADER, REPLY_HEADER};

/// How long a publish may wait for room in the producer's local queue.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

/// Publishes outputs, replies and dead letters to Kafka topics.
pub struct KafkaPublisher {
    broker: String,
    producer: FutureProducer<LogContext>,
    topics: Arc<Topics>,
}

impl KafkaPublisher {
    pub(super) fn new(
        broker: &str,
        producer: FutureProducer<LogContext>,
        topics: Arc<Topics>,
    ) -> Self {
        Self {
            broker: broker.to_owned(),
            producer,
            topics,
        }
    }

    fn fail(&self, topic: &str, kind: PublishErrorKind, message: impl ToString) -> PublishError {
        PublishError {
            kind,
            to: format!("{}/{topic}", self.broker),
            message: message.to_string(),
        }
    }

    async fn send(&self, topic: &str, msg: OutMessage) -> Result<(), PublishError> {
        send(&self.producer, &self.broker, topic, msg).await
    }
}

/// Produces one record and waits for its delivery report.
pub(super) async fn send(
    producer: &FutureProducer<LogContext>,
    broker: &str,
    topic: &str,
    msg: OutMessage,
) -> Result<(), PublishError> {
    let mut record: FutureRecord<'_, [u8], [u8]> =
        FutureRecord::to(topic).payload(msg.payload.as_ref());
    if let Some(headers) = to_headers(&msg) {
        record = record.headers(headers);
    }
    if let Some(k) = &msg.key {
        record = record.key(k.as_ref());
    }
    match producer.send(record, QUEUE_TIMEOUT).await {
        Ok(_) => Ok(()),
        Err((e, _)) => Err(PublishError {
            kind: classify(&e),
            to: format!("{broker}/{topic}"),
            message: e.to_string(),
        }),
    }
}

/// Kafka headers from the message's headers, plus the correlation id and
/// reply address that `mqfn invoke` and request/reply rely on; `None` when
/// there are none (librdkafka allocates a header list even when empty).
fn to_headers(msg: &OutMessage) -> Option<OwnedHeaders> {
    let mut pairs: Vec<(&str, &str)> = msg
        .headers
        .iter()
        .filter(|(k, _)| *k != CORRELATION_HEADER && *k != REPLY_HEADER)
        .collect();
    let correlation = msg.correlation_id.as_deref();
    if let Some(c) = correlation.or_else(|| msg.headers.get(CORRELATION_HEADER)) {
        pairs.push((CORRELATION_HEADER, c));
    }
    if let Some(r) = msg
        .reply_to
        .as_deref()
        .or_else(|| msg.headers.get(REPLY_HEADER))
    {
        pairs.push((REPLY_HEADER, r));
    }
    if pairs.is_empty() {
        return None;
    }
    Some(pairs.into_iter().fold(
        OwnedHeaders::new_with_capacity(msg.headers.len() + 2),
        |headers, (key, value)| {
            headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            })
        },
    ))
}

/// Sorts produce errors into final (the broker refuses this record, so
/// the input is dead-lettered) and retriable (everything else: the input is
/// handed back and comes again).
pub fn classify(e: &KafkaError) -> PublishErrorKind {
    use RDKafkaErrorCode as C;
    match e.rdkafka_error_code() {
        Some(
            C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::MessageBatchTooLarge
            | C::InvalidMessage
            | C::InvalidRecord
            | C::BadMessage
            | C::InvalidTimestamp
            | C::UnsupportedForMessageFormat
            | C::InvalidTopic,
        ) => PublishErrorKind::Rejected,
        _ => PublishErrorKind::Transient,
    }
}

#[async_trait]
impl Publisher for KafkaPublisher {
    async fn publish(&self, to: &Endpoint, msg: OutMessage) -> Result<(), PublishError> {
        let Some((topic, _)) = super::config::topic_of(to) else {
            return Err(PublishError {
                kind: PublishErrorKind::Rejected,
                to: to.describe(),
                message: "not a Kafka endpoint".to_owned(),
            });
        };
        if let Err(e) = self.topics.ensure(&self.producer, to).await {
            return Err(self.fail(topic, PublishErrorKind::Transient, e));
        }
        self.send(topic, msg).await
    }

    /// Kafka has no reply channel of its own: a reply address (the
    /// `mqfn-reply-to` header) names a topic.
    async fn reply(&self, reply_to: &str, msg: OutMessage) -> Result<(), PublishError> {
        self.send(reply_to, msg).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Headers;
    use rdkafka::message::Headers as _;

    #[test]
    fn refused_records_are_final_and_the_rest_retriable() {
        let produce = |c| classify(&KafkaError::MessageProduction(c));
        assert_eq!(
            produce(RDKafkaErrorCode::MessageSizeTooLarge),
            PublishErrorKind::Rejected
        );
        assert_eq!(
            produce(RDKafkaErrorCode::InvalidRecord),
            PublishErrorKind::Rejected
        );
        assert_eq!(
            produce(RDKafkaErrorCode::MessageTimedOut),
            PublishErrorKind::Transient
        );
        assert_eq!(
            produce(RDKafkaErrorCode::UnknownTopicOrPartition),
            PublishErrorKind::Transient,
            "a topic may appear; nothing is lost by waiting"
        );
        assert_eq!(classify(&KafkaError::Canceled), PublishErrorKind::Transient);
    }

    #[test]
    fn headers_carry_correlation_and_reply_once() {
        let mut headers = Headers::new();
        headers.append("a", "1");
        headers.append(CORRELATION_HEADER, "old");
        let msg = OutMessage {
            headers,
            correlation_id: Some("c1".into()),
            reply_to: Some("replies".into()),
            ..OutMessage::default()
        };
        assert!(
            to_headers(&OutMessage::default()).is_none(),
            "no headers, no list"
        );
        let h = to_headers(&msg).expect("headers");
        let pairs: Vec<(String, String)> = h
            .iter()
            .map(|h| {
                (
                    h.key.to_owned(),
                    String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                )
            })
            .collect();
        assert_eq!(
            pairs,
            vec![
                ("a".into(), "1".into()),
                (CORRELATION_HEADER.into(), "c1".into()),
                (REPLY_HEADER.into(), "replies".into()),
            ]
        );
    }
}
