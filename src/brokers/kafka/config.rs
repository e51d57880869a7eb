//! `kind = "kafka"`: the connection keys, the endpoint keys of sources and
//! targets, and their rules.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use crate::brokers::{
    non_empty, typed, Broker, BrokerError, BrokerSpec, Described, EndpointSpec, KeyError, Kind,
    Role, TypedKind,
};
use crate::config::checks;

/// The registry entry, for [`crate::brokers::KINDS`].
pub static KIND: TypedKind<KafkaConfig> = TypedKind::new("kafka");

/// A Kafka connection.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port...]`.
    pub bootstrap: String,
    /// Any librdkafka property, passed through as is (SASL, SSL, timeouts).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// How often stored offsets are committed.
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(default = "default_commit_interval", with = "humantime_serde")]
    pub commit_interval: Duration,
    /// In-flight messages per partition before the partition is paused.
    #[serde(default = "default_partition_window")]
    pub partition_window: usize,
    /// `"low"` trades some throughput and broker load for latency: fetches
    /// return at once, produces go out unbatched. See [`Latency`].
    #[serde(default)]
    pub latency: Latency,
}

/// The latency profile of a Kafka connection's clients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Latency {
    /// librdkafka's own defaults: a fetch waits up to 500 ms for data
    /// (`fetch.wait.max.ms`), a produce up to 5 ms for a batch
    /// (`linger.ms`).
    #[default]
    Default,
    /// `fetch.wait.max.ms = 5`, `linger.ms = 0`, `socket.nagle.disable =
    /// true`: for request/response routes at low rates. More fetch requests
    /// per second on the broker while a topic is idle. A key of the same
    /// name in `properties` still wins.
    Low,
}

impl Latency {
    /// The consumer properties of this profile.
    pub fn consumer(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::Default => &[],
            Self::Low => &[("fetch.wait.max.ms", "5"), ("socket.nagle.disable", "true")],
        }
    }

    /// The producer properties of this profile.
    pub fn producer(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::Default => &[],
            Self::Low => &[("linger.ms", "0"), ("socket.nagle.disable", "true")],
        }
    }
}

/// A Kafka source: a topic read by the route's consumer group.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSource {
    /// The topic.
    #[serde(alias = "subject", alias = "queue")]
    pub topic: String,
    /// The consumer group (default: `mqfn-` + the route name).
    #[serde(default)]
    pub group: Option<String>,
    /// Where a group without a committed offset starts.
    #[serde(default)]
    pub auto_offset_reset: OffsetReset,
    /// Create the topic at start when missing.
    #[serde(default)]
    pub create: Option<TopicCreate>,
}

/// Where mqfn publishes on Kafka.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaTarget {
    /// The topic.
    #[serde(alias = "subject", alias = "queue")]
    pub topic: String,
    /// Create the topic at start when missing.
    #[serde(default)]
    pub create: Option<TopicCreate>,
}

/// Where a new consumer group starts reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OffsetReset {
    /// At the oldest record (the default: nothing is skipped).
    #[default]
    Earliest,
    /// At the end: only records produced from now on.
    Latest,
}

impl OffsetReset {
    /// The librdkafka value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Earliest => "earliest",
            Self::Latest => "latest",
        }
    }
}

/// Kafka topic creation.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TopicCreate {
    /// Partitions of the new topic.
    pub partitions: i32,
    /// Replication factor (default 1).
    #[serde(default = "one")]
    pub replication: i32,
}

impl TopicCreate {
    fn validate(&self, errors: &mut Vec<KeyError>) {
        if self.partitions < 1 {
            errors.push(KeyError::new("create.partitions", "must be at least 1"));
        }
        if self.replication < 1 {
            errors.push(KeyError::new("create.replication", "must be at least 1"));
        }
    }
}

/// The topic and its creation, whichever side of a route it is on.
pub(super) fn topic_of(ep: &crate::config::Endpoint) -> Option<(&str, Option<&TopicCreate>)> {
    match (ep.get::<KafkaTarget>(), ep.get::<KafkaSource>()) {
        (Some(t), _) => Some((&t.topic, t.create.as_ref())),
        (None, Some(s)) => Some((&s.topic, s.create.as_ref())),
        (None, None) => None,
    }
}

/// The AsyncAPI Kafka channel binding of a topic (with its partitions
/// when mqfn creates it).
fn topic_binding(topic: &str, create: Option<&TopicCreate>) -> serde_json::Value {
    let mut b = serde_json::json!({ "topic": topic, "bindingVersion": "0.5.0" });
    if let Some(c) = create {
        b["partitions"] = c.partitions.into();
    }
    serde_json::json!({ "kafka": b })
}

impl crate::brokers::Endpoints for KafkaConfig {
    type Source = KafkaSource;
    type Target = KafkaTarget;
}

#[async_trait]
impl BrokerSpec for KafkaConfig {
    fn kind(&self) -> &'static str {
        KIND.name()
    }

    fn validate(&self) -> Vec<KeyError> {
        let mut errors = Vec::new();
        if let Some(e) = checks::host_ports(&self.bootstrap) {
            errors.push(KeyError::new("bootstrap", e));
        }
        if let Some(e) = self.property_error() {
            errors.push(KeyError::new("properties", e));
        }
        if self.partition_window == 0 {
            errors.push(KeyError::new("partition_window", "must be at least 1"));
        }
        errors
    }

    fn endpoint(&self, role: Role, keys: toml::Table) -> Result<Arc<dyn EndpointSpec>, KeyError> {
        Ok(match role {
            Role::Source => Arc::new(typed::<KafkaSource>(keys)?),
            Role::Target => Arc::new(typed::<KafkaTarget>(keys)?),
        })
    }

    async fn connect(&self, name: &str, wait: bool) -> Result<Arc<dyn Broker>, BrokerError> {
        Ok(Arc::new(
            super::KafkaBroker::connect(name, self, wait).await?,
        ))
    }

    fn describe(&self) -> Described {
        let secure = self
            .properties
            .get("security.protocol")
            .is_some_and(|p| p.to_ascii_uppercase().contains("SSL"));
        Described {
            protocol: if secure { "kafka-secure" } else { "kafka" }.to_owned(),
            hosts: self
                .bootstrap
                .split(',')
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .collect(),
            pathname: None,
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl KafkaConfig {
    /// Lets librdkafka judge the pass-through properties (names and
    /// values), so that a typo fails `validate`, not the first connection.
    fn property_error(&self) -> Option<String> {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        for (name, value) in &self.properties {
            c.set(name, value);
        }
        // Sets every property on a native librdkafka config (no client, no
        // threads, no connection): unknown names and bad values fail here.
        c.create_native_config().err().map(|e| {
            format!("librdkafka refuses these properties: {e}; see https://github.com/confluentinc/librdkafka/blob/master/CONFIGURATION.md")
        })
    }
}

fn topic_problems(topic: &str, create: Option<&TopicCreate>) -> Vec<KeyError> {
    let mut errors = non_empty("topic", topic);
    if let Some(c) = create {
        c.validate(&mut errors);
    }
    errors
}

impl EndpointSpec for KafkaSource {
    fn channel_binding(&self) -> Option<serde_json::Value> {
        Some(topic_binding(&self.topic, self.create.as_ref()))
    }
    fn address(&self) -> String {
        self.topic.clone()
    }
    fn validate(&self) -> Vec<KeyError> {
        topic_problems(&self.topic, self.create.as_ref())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl EndpointSpec for KafkaTarget {
    fn channel_binding(&self) -> Option<serde_json::Value> {
        Some(topic_binding(&self.topic, self.create.as_ref()))
    }
    fn address(&self) -> String {
        self.topic.clone()
    }
    fn validate(&self) -> Vec<KeyError> {
        topic_problems(&self.topic, self.create.as_ref())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

fn one() -> i32 {
    1
}
fn default_commit_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_partition_window() -> usize {
    1000
}
