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

/// Where a message sits on its broker, in the broker's own terms.
///
/// Each broker kind builds it; handlers and mqfn's core treat it as opaque.
/// It prints as the broker shows it (`42` for a stream sequence, `3/1017`
/// for a partition and offset, `7` for a delivery tag). Where the broker
/// gives the same message the same position on every delivery, the position
/// is also a stable identity (its scope, such as the stream, and the shown
/// part), which deduplication ids are built from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    /// `scope:shown`, or `shown` alone.
    text: String,
    /// Where the shown part starts in `text`.
    shown: usize,
    /// Whether every delivery of this message carries the same position.
    stable: bool,
    /// The sub-stream within which the broker keeps order (a Kafka
    /// partition), for `ordering = "partition"`.
    partition: Option<i32>,
}

impl Position {
    /// A position that every delivery of the message shares: `at` within
    /// `scope` (a stream name, a topic; empty when the source address is
    /// scope enough).
    pub fn stable(scope: &str, at: &str) -> Self {
        Self::stable_parts(scope, &[at])
    }

    /// As [`Position::stable`], with the shown part given in pieces
    /// (`["3", "/", "1017"]`), so that it is built in one allocation.
    pub fn stable_parts(scope: &str, at: &[&str]) -> Self {
        let len: usize = at.iter().map(|p| p.len()).sum();
        let mut text = String::with_capacity(scope.len() + len + 1);
        if !scope.is_empty() {
            text.push_str(scope);
            text.push(':');
        }
        let shown = text.len();
        for part in at {
            text.push_str(part);
        }
        Self {
            text,
            shown,
            stable: true,
            partition: None,
        }
    }

    /// A position that only names this delivery (an AMQP delivery tag,
    /// scoped to its channel): printable, but no identity.
    pub fn transient(at: impl Into<String>) -> Self {
        Self {
            text: at.into(),
            shown: 0,
            stable: false,
            partition: None,
        }
    }

    /// The same position, inside `partition`.
    pub fn in_partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// The position as the broker shows it; empty when it has none (core
    /// NATS, `mqfn call`).
    pub fn as_str(&self) -> &str {
        &self.text[self.shown..]
    }

    /// An identity shared by every delivery of this message, when the
    /// broker has one.
    pub fn identity(&self) -> Option<&str> {
        (self.stable && !self.text.is_empty()).then_some(self.text.as_str())
    }

    /// The partition, where the broker keeps order per partition.
    pub fn partition(&self) -> Option<i32> {
        self.partition
    }

    /// Whether the broker gave no position at all.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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
    /// Where the message sits on its broker (printable; opaque).
    pub position: Position,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_print_their_shown_part_and_keep_their_scope_for_identity() {
        let p = Position::stable("ORDERS", "42");
        assert_eq!(p.to_string(), "42");
        assert_eq!(p.identity(), Some("ORDERS:42"));
        let p = Position::stable("", "3/17").in_partition(3);
        let q = Position::stable_parts("t", &["3", "/", "17"]).in_partition(3);
        assert_eq!((q.as_str(), q.identity()), ("3/17", Some("t:3/17")));
        assert_eq!(
            (p.as_str(), p.identity(), p.partition()),
            ("3/17", Some("3/17"), Some(3))
        );
        let t = Position::transient("7");
        assert_eq!((t.as_str(), t.identity()), ("7", None));
        assert!(Position::default().is_empty());
        assert_eq!(Position::default().identity(), None);
    }
}
