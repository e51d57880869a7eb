use std::time::Instant;

use bytes::Bytes;

/// Message headers, in arrival order. A name may repeat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// The first value of `name` (case-sensitive, as NATS and Kafka are).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Appends a value, keeping any earlier ones.
    pub fn append(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.push((name.into(), value.into()));
    }

    /// Replaces every value of `name` with one value.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        self.0.retain(|(k, _)| *k != name);
        self.0.push((name, value.into()));
    }

    /// Removes every value of `name`.
    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(k, _)| k != name);
    }

    /// Iterates over `(name, value)` pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The number of header values.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Sets every header of `other` here, replacing values of the same name.
    pub fn merge(&mut self, other: &Headers) {
        for (k, _) in &other.0 {
            self.remove(k);
        }
        self.0.extend(other.0.iter().cloned());
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Headers {
    fn from_iter<T: IntoIterator<Item = (K, V)>>(iter: T) -> Self {
        Self(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

/// Where a message came from, in the broker's own terms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SourceMeta {
    /// No broker: `mqfn call` and unit tests.
    #[default]
    Local,
    /// Core NATS (at-most-once).
    Nats,
    /// A JetStream stream message.
    JetStream {
        /// The stream name.
        stream: String,
        /// The stream sequence.
        sequence: u64,
    },
    /// A Kafka record.
    Kafka {
        /// The partition.
        partition: i32,
        /// The offset within the partition.
        offset: i64,
    },
    /// An AMQP delivery.
    Amqp {
        /// The channel-scoped delivery tag.
        delivery_tag: u64,
        /// The exchange it was published to.
        exchange: String,
        /// Its routing key.
        routing_key: String,
    },
}

/// One message, as a handler sees it.
#[derive(Debug, Clone, Default)]
pub struct Message {
    /// The raw payload.
    pub payload: Bytes,
    /// Headers (NATS headers, Kafka headers, AMQP header table).
    pub headers: Headers,
    /// The message key (Kafka key, or the `mqfn-key` header elsewhere).
    pub key: Option<Bytes>,
    /// The subject, topic or queue it arrived on.
    pub subject: String,
    /// The route that delivered it.
    pub route: String,
    /// Broker position metadata.
    pub meta: SourceMeta,
    /// The delivery attempt, starting at 1.
    pub attempt: u32,
    /// The W3C `traceparent`, when the producer sent one.
    pub traceparent: Option<String>,
    /// Where a request/reply caller waits for the result.
    pub reply_to: Option<String>,
    /// Pairs a reply with its request.
    pub correlation_id: Option<String>,
    /// When the current invocation's time limit runs out.
    pub deadline: Option<Instant>,
}

impl Message {
    /// A message with this payload and nothing else, as `mqfn call` builds.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Self {
            payload: payload.into(),
            attempt: 1,
            ..Self::default()
        }
    }

    /// The key as text, lossily.
    pub fn key_str(&self) -> Option<String> {
        self.key
            .as_ref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
    }
}

/// One result of a handler.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// The payload to publish.
    pub payload: Bytes,
    /// Headers to set; they override the input's headers of the same name.
    pub headers: Headers,
    /// The key; `None` keeps the input's key.
    pub key: Option<Bytes>,
}

impl Output {
    /// An output with this payload.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Self {
            payload: payload.into(),
            ..Self::default()
        }
    }
}
