use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// A route: one source, one handler, and where results and failures go.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique name; used in metrics labels, logs and default durable names.
    pub name: String,
    /// Where messages come from.
    pub source: Endpoint,
    /// The handler's name (declared under `[handlers]`, or a built-in).
    pub handler: String,
    /// Where results go. Without it, results go to the message's reply
    /// address when it has one, and are dropped otherwise.
    #[serde(default)]
    pub output: Option<Endpoint>,
    /// Where messages that failed for good go, with `mqfn-*` headers.
    /// Required for at-least-once sources: without it a failed message
    /// would have nowhere to go but away.
    #[serde(default)]
    pub dead_letter: Option<Endpoint>,
    /// The worker pool bounds and autoscaling knobs.
    #[serde(default)]
    pub workers: WorkersConfig,
    /// In-process retry policy.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Which messages may run at the same time.
    #[serde(default)]
    pub ordering: Ordering,
    /// Time limit per invocation; overrides the handler's own.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Only messages that match are handled; others are acknowledged and
    /// counted as `filtered`.
    #[serde(default)]
    pub filter: Option<Filter>,
    /// Larger payloads are dead-lettered without calling the handler.
    #[serde(default)]
    pub max_message_bytes: Option<usize>,
}

/// A broker address: the broker's name plus where on it.
///
/// `subject`, `topic` and `queue` are synonyms (give exactly one), so that a
/// route moves between brokers by changing `broker` alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// The broker's name under `[brokers]`.
    pub broker: String,
    /// NATS subject.
    #[serde(default)]
    pub subject: Option<String>,
    /// Kafka topic.
    #[serde(default)]
    pub topic: Option<String>,
    /// AMQP queue (published to through the default exchange).
    #[serde(default)]
    pub queue: Option<String>,
    /// AMQP exchange to publish to (with `routing_key`).
    #[serde(default)]
    pub exchange: Option<String>,
    /// AMQP routing key.
    #[serde(default)]
    pub routing_key: Option<String>,
    /// JetStream: the stream; makes a NATS source a durable pull consumer.
    #[serde(default)]
    pub stream: Option<String>,
    /// JetStream: the durable consumer name (default: the route name).
    #[serde(default)]
    pub durable: Option<String>,
    /// JetStream: how long the server waits for an ack before redelivery.
    #[serde(default, with = "humantime_serde")]
    pub ack_wait: Option<Duration>,
    /// JetStream: deliveries before the server gives up (-1: unlimited).
    #[serde(default)]
    pub max_deliver: Option<i64>,
    /// JetStream: unacknowledged messages the server allows in flight.
    #[serde(default)]
    pub max_ack_pending: Option<i64>,
    /// Core NATS: the queue group (default: the route name).
    #[serde(default)]
    pub queue_group: Option<String>,
    /// Kafka: the consumer group (default: `mqfn-` + route name).
    #[serde(default)]
    pub group: Option<String>,
    /// Kafka: `earliest` (default) or `latest`.
    #[serde(default)]
    pub auto_offset_reset: Option<String>,
    /// Kafka: create the topic at start when missing.
    #[serde(default)]
    pub create: Option<TopicCreate>,
    /// NATS output or dead letter: whether results of JetStream inputs
    /// carry a `Nats-Msg-Id` (default true; see [`Endpoint::dedup`]).
    #[serde(default)]
    pub dedup: Option<bool>,
}

impl Endpoint {
    /// The address on the broker: the subject, topic or queue.
    pub fn address(&self) -> Option<&str> {
        self.subject
            .as_deref()
            .or(self.topic.as_deref())
            .or(self.queue.as_deref())
    }

    /// Whether publishes here carry a deduplication id (`Nats-Msg-Id` on
    /// NATS, from the input's stream position). On unless `dedup = false`.
    pub fn dedup(&self) -> bool {
        self.dedup != Some(false)
    }

    /// `broker/address`, as logs and `mqfn-source` show it.
    pub fn describe(&self) -> String {
        let addr = match (&self.exchange, self.address()) {
            (Some(x), _) => format!("{x}/{}", self.routing_key.as_deref().unwrap_or("")),
            (None, Some(a)) => a.to_owned(),
            (None, None) => String::new(),
        };
        format!("{}/{}", self.broker, addr)
    }

    /// Whether two endpoints name the same place on the same broker.
    pub fn same_place(&self, other: &Endpoint) -> bool {
        self.broker == other.broker
            && self.address() == other.address()
            && self.exchange == other.exchange
            && self.routing_key == other.routing_key
    }
}

/// Kafka topic creation.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicCreate {
    /// Partitions of the new topic.
    pub partitions: i32,
    /// Replication factor (default 1).
    #[serde(default = "one")]
    pub replication: i32,
}

fn one() -> i32 {
    1
}

/// Worker pool bounds and autoscaling.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkersConfig {
    /// Fewest workers; 0 lets the route scale to zero when idle.
    #[serde(default = "default_min")]
    pub min: usize,
    /// Most workers: the bound on concurrent invocations.
    #[serde(default = "default_max")]
    pub max: usize,
    /// Backlog one worker is expected to keep up with.
    #[serde(default = "default_target_backlog")]
    pub target_backlog: u64,
    /// How often the autoscaler looks at the backlog.
    #[serde(default = "default_scale_interval", with = "humantime_serde")]
    pub scale_interval: Duration,
    /// The wait between two scale-down steps.
    #[serde(default = "default_cooldown", with = "humantime_serde")]
    pub cooldown: Duration,
    /// How long the backlog must stay at zero before scaling to zero.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl Default for WorkersConfig {
    fn default() -> Self {
        Self {
            min: default_min(),
            max: default_max(),
            target_backlog: default_target_backlog(),
            scale_interval: default_scale_interval(),
            cooldown: default_cooldown(),
            idle_timeout: default_idle_timeout(),
        }
    }
}

fn default_min() -> usize {
    1
}
fn default_max() -> usize {
    16
}
fn default_target_backlog() -> u64 {
    100
}
fn default_scale_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_cooldown() -> Duration {
    Duration::from_secs(60)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(300)
}

/// In-process retries: exponential backoff with full jitter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in all, the first included, before the dead letter.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// The backoff ceiling of the first retry.
    #[serde(default = "default_initial_backoff", with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// The largest backoff.
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
        }
    }
}

fn default_max_attempts() -> u32 {
    5
}
fn default_initial_backoff() -> Duration {
    Duration::from_millis(200)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(30)
}

/// Which messages of a route may be handled at the same time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    /// Any of them.
    #[default]
    None,
    /// One at a time per message key; different keys in parallel.
    Key,
    /// One at a time per partition (Kafka) or subject.
    Partition,
}

/// A header filter: every listed header must have the listed value.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Header name to required value.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}
