use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// A named broker connection, tagged by `kind`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum BrokerConfig {
    /// NATS (core and JetStream).
    Nats(NatsConfig),
    /// Apache Kafka or a Kafka-compatible broker.
    Kafka(KafkaConfig),
    /// AMQP 0.9.1 (RabbitMQ).
    Amqp(AmqpConfig),
}

/// The kind of a broker, as a label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// NATS.
    Nats,
    /// Kafka.
    Kafka,
    /// AMQP.
    Amqp,
}

impl BrokerKind {
    /// The name used in config and labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Nats => "nats",
            Self::Kafka => "kafka",
            Self::Amqp => "amqp",
        }
    }
}

impl BrokerConfig {
    /// This broker's kind.
    pub fn kind(&self) -> BrokerKind {
        match self {
            Self::Nats(_) => BrokerKind::Nats,
            Self::Kafka(_) => BrokerKind::Kafka,
            Self::Amqp(_) => BrokerKind::Amqp,
        }
    }
}

/// A NATS connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated: `nats://user:pass@host:4222`.
    pub url: String,
    /// Publish outputs and dead letters through JetStream and wait for the
    /// PubAck (at-least-once). Off, they are core publishes confirmed by a
    /// flush only.
    #[serde(default = "yes")]
    pub jetstream: bool,
    /// JetStream streams to create when missing (existing ones are bound
    /// as they are).
    #[serde(default)]
    pub streams: Vec<NatsStream>,
    /// A `.creds` file (JWT + nkey seed) for decentralised auth.
    #[serde(default)]
    pub credentials_file: Option<String>,
    /// A file holding an nkey seed.
    #[serde(default)]
    pub nkey_file: Option<String>,
    /// Require TLS even if the URL says `nats://`.
    #[serde(default)]
    pub tls_required: bool,
    /// A PEM file of CA certificates to trust, for a private CA.
    #[serde(default)]
    pub tls_ca_file: Option<String>,
    /// A PEM client certificate, for mutual TLS (with `tls_key_file`).
    #[serde(default)]
    pub tls_cert_file: Option<String>,
    /// The PEM private key of `tls_cert_file`.
    #[serde(default)]
    pub tls_key_file: Option<String>,
    /// How long one connection attempt may take.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
}

/// A JetStream stream declaration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsStream {
    /// The stream name.
    pub name: String,
    /// The subjects it captures.
    pub subjects: Vec<String>,
    /// `file` (default) or `memory`.
    #[serde(default = "default_storage")]
    pub storage: String,
    /// How long messages are kept; unlimited when absent.
    #[serde(default, with = "humantime_serde")]
    pub max_age: Option<Duration>,
}

/// A Kafka connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port...]`.
    pub bootstrap: String,
    /// Any librdkafka property, passed through as is (SASL, SSL, timeouts).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// How often stored offsets are committed.
    #[serde(default = "default_commit_interval", with = "humantime_serde")]
    pub commit_interval: Duration,
    /// In-flight messages per partition before the partition is paused.
    #[serde(default = "default_partition_window")]
    pub partition_window: usize,
}

/// An AMQP 0.9.1 connection and the topology mqfn declares on it.
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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
    pub arguments: BTreeMap<String, toml::Value>,
}

/// An AMQP exchange declaration.
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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

fn yes() -> bool {
    true
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_storage() -> String {
    "file".to_owned()
}
fn default_commit_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_partition_window() -> usize {
    1000
}
fn default_queue_type() -> String {
    "classic".to_owned()
}
fn default_exchange_type() -> String {
    "direct".to_owned()
}
