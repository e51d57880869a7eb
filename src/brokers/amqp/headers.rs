//! AMQP properties and header tables ↔ the envelope.
//!
//! Headers travel as an AMQP field table. Outgoing values are long strings;
//! incoming scalar values (strings, numbers, booleans, timestamps) become
//! text, and nested ones (arrays and tables such as `x-death`) are skipped,
//! since the envelope carries text only. The key travels as the `mqfn-key`
//! header; `correlation_id` and `reply_to` use the AMQP properties.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;

use crate::brokers::OutMessage;
use crate::message::{
    Headers, Message, Position, CORRELATION_HEADER, KEY_HEADER, REPLY_HEADER, TRACEPARENT_HEADER,
};

/// Our delivery count on classic queues, which have none of their own.
/// Read and removed on the way in, so handlers and results never see it.
pub(super) const ATTEMPT_HEADER: &str = "mqfn-attempt";
/// The quorum queue's count of earlier deliveries.
pub(super) const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";
/// AMQP delivery mode 2: the broker writes the message to disk.
const PERSISTENT: u8 = 2;

/// A short string (at most 255 bytes), or why not.
pub(super) fn short(what: &str, s: &str) -> Result<ShortString, String> {
    ShortString::try_new(s).map_err(|_| {
        format!(
            "{what} {:?}… is {} bytes; AMQP allows at most 255",
            s.chars().take(32).collect::<String>(),
            s.len()
        )
    })
}

/// The text of a scalar header value; `None` for arrays, tables and void.
fn text(v: &AMQPValue) -> Option<String> {
    Some(match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::ByteArray(b) => String::from_utf8_lossy(b.as_slice()).into_owned(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        AMQPValue::Float(n) => n.to_string(),
        AMQPValue::Double(n) => n.to_string(),
        AMQPValue::DecimalValue(d) => format!("{}e-{}", d.value, d.scale),
        AMQPValue::FieldArray(_) | AMQPValue::FieldTable(_) | AMQPValue::Void => return None,
    })
}

/// A header table as envelope headers (in name order: tables are maps).
pub(super) fn from_table(table: Option<&FieldTable>) -> Headers {
    table
        .map(|t| {
            t.inner()
                .iter()
                .filter_map(|(k, v)| text(v).map(|v| (k.as_str().to_owned(), v)))
                .collect()
        })
        .unwrap_or_default()
}

/// Envelope headers as a header table. A repeated name keeps its first
/// value, as [`Headers::get`] does.
pub(super) fn to_table(headers: &Headers) -> Result<FieldTable, String> {
    let mut table = FieldTable::default();
    for (k, v) in headers.iter() {
        if !table.contains_key(k) {
            table.insert(
                short("header name", k)?,
                AMQPValue::LongString(LongString::from(v)),
            );
        }
    }
    Ok(table)
}

/// The properties of an outgoing message: persistent, with its headers,
/// key, correlation id and reply address.
pub(super) fn properties(msg: &OutMessage) -> Result<BasicProperties, String> {
    let mut headers = msg.headers.clone();
    if let Some(k) = &msg.key {
        headers.set(KEY_HEADER, String::from_utf8_lossy(k));
    }
    if let Some(c) = &msg.correlation_id {
        headers.set(CORRELATION_HEADER, c.clone());
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let mut props = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_timestamp(now)
        .with_headers(to_table(&headers)?);
    if let Some(c) = &msg.correlation_id {
        props = props.with_correlation_id(short("correlation_id", c)?);
    }
    if let Some(r) = &msg.reply_to {
        props = props.with_reply_to(short("reply_to", r)?);
    }
    if let Some(id) = &msg.dedup_id {
        props = props.with_message_id(short("message_id", id)?);
    }
    Ok(props)
}

/// How often a message was delivered before, as its headers tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Counts {
    /// `mqfn-attempt`: set by mqfn when it re-queues a copy (classic queues).
    pub own: Option<u32>,
    /// `x-delivery-count`: set by quorum queues on redelivery.
    pub broker: Option<u32>,
}

/// The envelope of a delivery, and the delivery counts read from (and
/// removed from) its headers. `attempt` is left at 1 for the source to set.
pub(super) fn message(d: &lapin::message::Delivery, queue: &str, route: &str) -> (Message, Counts) {
    let props = &d.properties;
    let mut headers = from_table(props.headers().as_ref());
    let number = |h: &Headers, name: &str| h.get(name).and_then(|v| v.trim().parse::<u32>().ok());
    let counts = Counts {
        own: number(&headers, ATTEMPT_HEADER),
        broker: number(&headers, DELIVERY_COUNT_HEADER),
    };
    headers.remove(ATTEMPT_HEADER);
    headers.remove(DELIVERY_COUNT_HEADER);
    let msg = Message {
        payload: Bytes::copy_from_slice(&d.data),
        key: headers
            .get(KEY_HEADER)
            .map(|k| Bytes::from(k.as_bytes().to_vec())),
        traceparent: headers.get(TRACEPARENT_HEADER).map(str::to_owned),
        correlation_id: props
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str().to_owned())
            .or_else(|| headers.get(CORRELATION_HEADER).map(str::to_owned)),
        reply_to: props
            .reply_to()
            .as_ref()
            .map(|r| r.as_str().to_owned())
            .or_else(|| headers.get(REPLY_HEADER).map(str::to_owned)),
        subject: queue.to_owned(),
        route: route.to_owned(),
        position: Position::transient(itoa::Buffer::new().format(d.delivery_tag)),
        attempt: 1,
        headers,
        ..Message::default()
    };
    (msg, counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_through_a_table() {
        let h: Headers = [("a", "1"), ("b", "two"), ("a", "ignored")]
            .into_iter()
            .collect();
        let table = to_table(&h).unwrap();
        let back = from_table(Some(&table));
        assert_eq!(back.get("a"), Some("1"));
        assert_eq!(back.get("b"), Some("two"));
        assert_eq!(back.len(), 2);
    }

    #[test]
    fn scalar_values_become_text_and_nested_ones_are_skipped() {
        let mut t = FieldTable::default();
        t.insert("n".into(), AMQPValue::LongLongInt(-3));
        t.insert("b".into(), AMQPValue::Boolean(true));
        t.insert("x-death".into(), AMQPValue::FieldArray(Default::default()));
        let h = from_table(Some(&t));
        assert_eq!(h.get("n"), Some("-3"));
        assert_eq!(h.get("b"), Some("true"));
        assert_eq!(h.get("x-death"), None);
    }

    #[test]
    fn overlong_names_are_refused_not_panicked_on() {
        let h: Headers = [("k".repeat(300), "v")].into_iter().collect();
        assert!(to_table(&h).unwrap_err().contains("at most 255"));
    }

    #[test]
    fn out_messages_are_persistent_and_carry_key_and_correlation() {
        let msg = OutMessage {
            key: Some(Bytes::from_static(b"k1")),
            correlation_id: Some("c1".into()),
            reply_to: Some("amq.gen-1".into()),
            ..OutMessage::default()
        };
        let p = properties(&msg).unwrap();
        assert_eq!(p.delivery_mode(), &Some(PERSISTENT));
        assert_eq!(p.correlation_id().as_ref().map(|c| c.as_str()), Some("c1"));
        assert_eq!(p.reply_to().as_ref().map(|c| c.as_str()), Some("amq.gen-1"));
        let h = from_table(p.headers().as_ref());
        assert_eq!(h.get(KEY_HEADER), Some("k1"));
        assert_eq!(h.get(CORRELATION_HEADER), Some("c1"));
    }

    #[test]
    fn delivery_counts_are_read_and_hidden_from_handlers() {
        let mut t = FieldTable::default();
        t.insert(ATTEMPT_HEADER.into(), AMQPValue::LongString("3".into()));
        t.insert(DELIVERY_COUNT_HEADER.into(), AMQPValue::LongLongInt(2));
        t.insert(KEY_HEADER.into(), AMQPValue::LongString("k".into()));
        let mut d = lapin::message::Delivery::mock(7, "".into(), "q".into(), true, b"x".to_vec());
        d.properties = BasicProperties::default()
            .with_headers(t)
            .with_correlation_id("c".into());
        let (m, counts) = message(&d, "q", "r");
        assert_eq!(
            counts,
            Counts {
                own: Some(3),
                broker: Some(2)
            }
        );
        assert_eq!(m.headers.get(ATTEMPT_HEADER), None);
        assert_eq!(m.headers.get(DELIVERY_COUNT_HEADER), None);
        assert_eq!(m.key_str().as_deref(), Some("k"));
        assert_eq!(m.correlation_id.as_deref(), Some("c"));
        assert_eq!(m.subject, "q");
    }
}
