//! `kind = "amqp"`: the connection and the topology it declares, the
//! endpoint keys of sources (a queue) and targets (a queue, or an exchange
//! and routing key), and their rules.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;

use crate::brokers::{
    non_empty, typed, Broker, BrokerError, BrokerSpec, Described, EndpointSpec, KeyError, Kind,
    Role, TypedKind,
};
use crate::config::checks;

/// The registry entry, for [`crate::brokers::KINDS`].
pub static KIND: TypedKind<AmqpConfig> = TypedKind::new("amqp");

/// An AMQP 0.9.1 connection and the topology mqfn declares on it.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AmqpConfig {
    /// `amqp://user:pass@host:5672/%2f` or `amqps://...`.
    pub url: String,
    /// Queues to declare (or, with `passive`, to check).
    #[serde(default)]
    pub queues: Vec<AmqpQueue>,
    /// Exchanges to declare (or check).
    #[serde(default)]
    pub exchanges: Vec<AmqpExchange>,
    /// Bindings of queues to exchanges.
    #[serde(default)]
    pub bindings: Vec<AmqpBinding>,
}

/// An AMQP queue declaration.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AmqpQueue {
    /// The queue name.
    pub name: String,
    /// Survives a broker restart.
    #[serde(default = "yes")]
    pub durable: bool,
    /// `classic` (default) or `quorum` (`x-queue-type`).
    #[serde(default = "default_queue_type")]
    pub queue_type: String,
    /// Only check that it exists; never create it.
    #[serde(default)]
    pub passive: bool,
    /// Extra `x-` arguments (string, integer or boolean values).
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, serde_json::Value>")]
    pub arguments: BTreeMap<String, toml::Value>,
}

/// An AMQP exchange declaration.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AmqpExchange {
    /// The exchange name.
    pub name: String,
    /// `direct`, `topic`, `fanout` or `headers`.
    #[serde(rename = "type", default = "default_exchange_type")]
    pub kind: String,
    /// Survives a broker restart.
    #[serde(default = "yes")]
    pub durable: bool,
    /// Only check that it exists.
    #[serde(default)]
    pub passive: bool,
}

/// An AMQP binding of a queue to an exchange.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AmqpBinding {
    /// The exchange.
    pub exchange: String,
    /// The queue.
    pub queue: String,
    /// The routing key (pattern for topic exchanges).
    #[serde(default)]
    pub routing_key: String,
}

/// An AMQP source: a queue (bind it to exchanges under
/// `[[brokers.NAME.bindings]]`).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AmqpSource {
    /// The queue.
    #[serde(alias = "subject", alias = "topic")]
    pub queue: String,
}

/// Where mqfn publishes on AMQP: a queue (through the default exchange),
/// or an exchange with a routing key.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AmqpTarget {
    /// The queue, published to through the default exchange; with
    /// `exchange`, the routing key when `routing_key` is absent.
    #[serde(default, alias = "subject", alias = "topic")]
    pub queue: Option<String>,
    /// The exchange to publish to.
    #[serde(default)]
    pub exchange: Option<String>,
    /// The routing key, with `exchange`.
    #[serde(default)]
    pub routing_key: Option<String>,
}

impl AmqpTarget {
    /// The exchange and routing key: the exchange with its routing key
    /// (the queue name when none is given), or the default exchange with
    /// the queue's name.
    pub fn route(&self) -> (&str, &str) {
        let queue = self.queue.as_deref().unwrap_or_default();
        match &self.exchange {
            Some(x) => (x.as_str(), self.routing_key.as_deref().unwrap_or(queue)),
            None => ("", queue),
        }
    }
}

impl crate::brokers::Endpoints for AmqpConfig {
    type Source = AmqpSource;
    type Target = AmqpTarget;
}

#[async_trait]
impl BrokerSpec for AmqpConfig {
    fn kind(&self) -> &'static str {
        KIND.name()
    }

    fn validate(&self) -> Vec<KeyError> {
        let mut errors = Vec::new();
        if let Some(e) = checks::url(&self.url, &["amqp", "amqps"]) {
            errors.push(KeyError::new("url", e));
        }
        for (i, q) in self.queues.iter().enumerate() {
            if !matches!(q.queue_type.as_str(), "classic" | "quorum") {
                errors.push(KeyError::new(
                    format!("queues[{i}].queue_type"),
                    format!(
                        "{:?} is not a queue type; expected \"classic\" or \"quorum\"",
                        q.queue_type
                    ),
                ));
            }
            if q.queue_type == "quorum" && !q.durable && !q.passive {
                errors.push(KeyError::new(
                    format!("queues[{i}].durable"),
                    "a quorum queue is always durable; remove durable = false",
                ));
            }
            for (name, v) in &q.arguments {
                if !matches!(
                    v,
                    toml::Value::String(_)
                        | toml::Value::Integer(_)
                        | toml::Value::Float(_)
                        | toml::Value::Boolean(_)
                ) {
                    errors.push(KeyError::new(
                        format!("queues[{i}].arguments.{name}"),
                        format!(
                            "is a {}; expected a string, integer, float or boolean",
                            v.type_str()
                        ),
                    ));
                }
            }
        }
        for (i, x) in self.exchanges.iter().enumerate() {
            if !matches!(x.kind.as_str(), "direct" | "topic" | "fanout" | "headers") {
                errors.push(KeyError::new(
                    format!("exchanges[{i}].type"),
                    format!(
                        "{:?} is not an exchange type; expected direct, topic, fanout or headers",
                        x.kind
                    ),
                ));
            }
        }
        errors
    }

    fn endpoint(&self, role: Role, keys: toml::Table) -> Result<Arc<dyn EndpointSpec>, KeyError> {
        Ok(match role {
            Role::Source => {
                if let Some(key) = ["exchange", "routing_key"]
                    .into_iter()
                    .find(|k| keys.contains_key(*k))
                {
                    return Err(KeyError::new(
                        key,
                        format!("`{key}` is for outputs and dead letters: a source consumes a queue; give queue, and bind it under [[brokers.NAME.bindings]]"),
                    ));
                }
                Arc::new(typed::<AmqpSource>(keys)?)
            }
            Role::Target => Arc::new(typed::<AmqpTarget>(keys)?),
        })
    }

    async fn connect(&self, name: &str, wait: bool) -> Result<Arc<dyn Broker>, BrokerError> {
        Ok(Arc::new(
            super::AmqpBroker::connect(name, self, wait).await?,
        ))
    }

    fn describe(&self) -> Described {
        let parsed = url::Url::parse(&self.url).ok();
        let tls = parsed.as_ref().is_some_and(|u| u.scheme() == "amqps");
        Described {
            protocol: if tls { "amqps" } else { "amqp" }.to_owned(),
            hosts: Described::hosts_of_urls(&self.url, if tls { 5671 } else { 5672 }),
            // The vhost, decoded: `/%2f` is the default vhost `/`.
            pathname: parsed.map(|u| {
                let vhost = u.path().trim_start_matches('/');
                let vhost = percent_encoding::percent_decode_str(vhost)
                    .decode_utf8_lossy()
                    .into_owned();
                if vhost.is_empty() {
                    "/".to_owned()
                } else {
                    vhost
                }
            }),
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl EndpointSpec for AmqpSource {
    fn address(&self) -> String {
        self.queue.clone()
    }
    fn validate(&self) -> Vec<KeyError> {
        non_empty("queue", &self.queue)
    }
    fn channel_binding(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({
            "amqp": { "is": "queue", "queue": { "name": self.queue }, "bindingVersion": "0.3.0" }
        }))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl EndpointSpec for AmqpTarget {
    fn address(&self) -> String {
        match &self.exchange {
            Some(x) => format!("{x}/{}", self.routing_key.as_deref().unwrap_or_default()),
            None => self.queue.clone().unwrap_or_default(),
        }
    }
    fn channel_address(&self) -> String {
        match &self.exchange {
            Some(_) => self.routing_key.clone().unwrap_or_default(),
            None => self.address(),
        }
    }
    fn channel_binding(&self) -> Option<serde_json::Value> {
        let mut binding = match (&self.exchange, &self.queue) {
            (Some(x), _) => serde_json::json!({ "is": "routingKey", "exchange": { "name": x } }),
            // The default exchange, routed by the queue's name.
            (None, q) => serde_json::json!({ "is": "queue", "queue": { "name": q } }),
        };
        binding["bindingVersion"] = "0.3.0".into();
        Some(serde_json::json!({ "amqp": binding }))
    }
    fn validate(&self) -> Vec<KeyError> {
        let mut errors = Vec::new();
        match (&self.queue, &self.exchange) {
            (None, None) => errors.push(KeyError::new(
                "",
                "missing the address: give queue, or exchange (with routing_key)",
            )),
            (Some(q), _) if q.is_empty() => {
                errors.push(KeyError::new("queue", "the queue is empty"))
            }
            _ => {}
        }
        if self.routing_key.is_some() && self.exchange.is_none() {
            errors.push(KeyError::new(
                "routing_key",
                "routing_key goes with exchange; without one, messages go to the queue through the default exchange",
            ));
        }
        errors
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

fn yes() -> bool {
    true
}
fn default_queue_type() -> String {
    "classic".to_owned()
}
fn default_exchange_type() -> String {
    "direct".to_owned()
}
