//! The message envelope, as handlers see it, and the headers mqfn gives a
//! meaning to on every broker.
//!
//! The runtime carries a [`Message`] in a [`crate::brokers::Delivery`],
//! together with the token that settles it on its broker.

pub use mqfn_handlers::{Headers, Message, Output, Position};

/// Header that carries the key on brokers without a native key (NATS, AMQP).
pub const KEY_HEADER: &str = "mqfn-key";
/// Header that pairs `mqfn invoke` requests with their results.
pub const CORRELATION_HEADER: &str = "mqfn-correlation-id";
/// Header that carries a reply address where the broker has none of its own
/// (JetStream: the native reply subject is taken by the PubAck).
pub const REPLY_HEADER: &str = "mqfn-reply-to";
/// The W3C trace context header.
pub const TRACEPARENT_HEADER: &str = "traceparent";
