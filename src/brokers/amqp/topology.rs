//! Topology from config: exchanges, then queues, then bindings, declared on
//! every (re)connection. Entries with `passive = true` are only checked.
//! Every failure names the entity, what the broker said, and the fix.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Connection, ExchangeKind};

use super::headers::short;
use super::{AmqpConfig, AmqpExchange, AmqpQueue};
use crate::brokers::BrokerError;

/// Declares (or checks) everything `cfg` lists, on a channel of its own
/// (a refused declaration closes its channel).
pub(super) async fn declare(
    conn: &Connection,
    broker: &str,
    cfg: &AmqpConfig,
) -> Result<(), BrokerError> {
    let setup = |message: String| BrokerError::setup(broker.to_owned(), message);
    let ch = conn.create_channel().await.map_err(|e| {
        setup(format!(
            "cannot open a channel to declare the topology: {e}"
        ))
    })?;
    for (i, x) in cfg.exchanges.iter().enumerate() {
        let key = format!("brokers.{broker}.exchanges[{i}]");
        let opts = ExchangeDeclareOptions {
            passive: x.passive,
            durable: x.durable,
            ..ExchangeDeclareOptions::default()
        };
        let name = short("exchange name", &x.name).map_err(|m| setup(format!("{key}: {m}")))?;
        ch.exchange_declare(name, kind(x), opts, FieldTable::default())
            .await
            .map_err(|e| setup(explain("exchange", &x.name, x.passive, &key, &e)))?;
    }
    for (i, q) in cfg.queues.iter().enumerate() {
        let key = format!("brokers.{broker}.queues[{i}]");
        let opts = QueueDeclareOptions {
            passive: q.passive,
            durable: q.durable,
            ..QueueDeclareOptions::default()
        };
        let name = short("queue name", &q.name).map_err(|m| setup(format!("{key}: {m}")))?;
        let args = if q.passive {
            FieldTable::default()
        } else {
            arguments(q).map_err(|m| setup(format!("{key}.arguments: {m}")))?
        };
        ch.queue_declare(name, opts, args)
            .await
            .map_err(|e| setup(explain("queue", &q.name, q.passive, &key, &e)))?;
    }
    for (i, b) in cfg.bindings.iter().enumerate() {
        let key = format!("brokers.{broker}.bindings[{i}]");
        let names = (|| {
            Ok::<_, String>((
                short("queue name", &b.queue)?,
                short("exchange name", &b.exchange)?,
                short("routing key", &b.routing_key)?,
            ))
        })();
        let (queue, exchange, routing_key) = names.map_err(|m| setup(format!("{key}: {m}")))?;
        ch.queue_bind(
            queue,
            exchange,
            routing_key,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| {
            setup(format!(
                "{key}: cannot bind queue {:?} to exchange {:?} with routing key {:?}: {}; \
                 both must exist: declare them under [[brokers.{broker}.queues]] and \
                 [[brokers.{broker}.exchanges]] or create them on the broker",
                b.queue,
                b.exchange,
                b.routing_key,
                reason(&e)
            ))
        })?;
    }
    let _ = ch.close(200, "OK".into()).await;
    Ok(())
}

fn kind(x: &AmqpExchange) -> ExchangeKind {
    match x.kind.as_str() {
        "direct" => ExchangeKind::Direct,
        "fanout" => ExchangeKind::Fanout,
        "topic" => ExchangeKind::Topic,
        "headers" => ExchangeKind::Headers,
        other => ExchangeKind::Custom(other.to_owned()),
    }
}

/// The queue's declare arguments: `x-queue-type` plus the configured ones.
pub(super) fn arguments(q: &AmqpQueue) -> Result<FieldTable, String> {
    let mut t = FieldTable::default();
    if q.queue_type == "quorum" {
        t.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from("quorum")),
        );
    }
    for (k, v) in &q.arguments {
        let value = match v {
            toml::Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
            toml::Value::Integer(n) => AMQPValue::LongLongInt(*n),
            toml::Value::Boolean(b) => AMQPValue::Boolean(*b),
            toml::Value::Float(f) => AMQPValue::Double(*f),
            other => {
                return Err(format!(
                    "{k} is a {}; expected a string, integer, float or boolean",
                    other.type_str()
                ))
            }
        };
        t.insert(short("argument name", k)?, value);
    }
    Ok(t)
}

/// What the broker said, without lapin's wrapping.
pub(super) fn reason(e: &lapin::Error) -> String {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(p) => {
            format!("{} ({})", p.get_message(), p.get_id())
        }
        _ => e.to_string(),
    }
}

fn explain(what: &str, name: &str, passive: bool, key: &str, e: &lapin::Error) -> String {
    let soft = match e.kind() {
        lapin::ErrorKind::ProtocolError(p) => match p.kind() {
            AMQPErrorKind::Soft(s) => Some(s.clone()),
            AMQPErrorKind::Hard(_) => None,
        },
        _ => None,
    };
    let fix = match (soft, passive) {
        (Some(AMQPSoftError::NOTFOUND), true) => format!(
            "it does not exist and {key}.passive = true: create it on the broker, \
             or set passive = false so that mqfn declares it"
        ),
        (Some(AMQPSoftError::PRECONDITIONFAILED), _) => format!(
            "it exists with other settings: make {key} match the existing {what} \
             (durable, type, arguments), delete it, or set passive = true to use it as it is"
        ),
        (Some(AMQPSoftError::ACCESSREFUSED), _) => {
            "the user may not configure it: grant configure permission, or set passive = true"
                .to_owned()
        }
        _ => "check the broker and the URL".to_owned(),
    };
    format!("{key}: {what} {name:?}: {}; {fix}", reason(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_queues_get_their_type_and_arguments() {
        let mut q = AmqpQueue {
            name: "q".into(),
            durable: true,
            queue_type: "quorum".into(),
            passive: false,
            arguments: Default::default(),
        };
        q.arguments
            .insert("x-delivery-limit".into(), toml::Value::Integer(10));
        let t = arguments(&q).unwrap();
        assert_eq!(
            t.inner().get("x-queue-type"),
            Some(&AMQPValue::LongString("quorum".into()))
        );
        assert_eq!(
            t.inner().get("x-delivery-limit"),
            Some(&AMQPValue::LongLongInt(10))
        );
        q.arguments
            .insert("bad".into(), toml::Value::Array(Vec::new()));
        assert!(arguments(&q).unwrap_err().contains("bad is a array"));
    }
}
