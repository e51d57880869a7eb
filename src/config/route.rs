use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::resolve::Unresolved;
use super::BrokerConfig;
use crate::brokers::{EndpointSpec, KeyError, Role};

/// A route: one source, one handler, and where results and failures go.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique name; used in metrics labels, logs and default durable names.
    pub name: String,
    /// Where messages come from.
    #[schemars(with = "super::schema::EndpointTable")]
    pub source: Endpoint,
    /// The handler's name (declared under `[handlers]`, or a built-in).
    pub handler: String,
    /// Where results go. Without it, results go to the message's reply
    /// address when it has one, and are dropped otherwise.
    #[serde(default)]
    #[schemars(with = "Option<super::schema::EndpointTable>")]
    pub output: Option<Endpoint>,
    /// Where messages that failed for good go, with `mqfn-*` headers.
    /// Required for at-least-once sources: without it a failed message
    /// would have nowhere to go but away.
    #[serde(default)]
    #[schemars(with = "Option<super::schema::EndpointTable>")]
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
    #[schemars(with = "Option<crate::config::schema::DurationText>")]
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Only messages that match are handled; others are acknowledged and
    /// counted as `filtered`.
    #[serde(default)]
    pub filter: Option<Filter>,
    /// Larger payloads are dead-lettered without calling the handler.
    #[serde(default)]
    pub max_message_bytes: Option<usize>,
    /// Also exposes the route over HTTP, whatever its source: a path
    /// (`"/orders"`), or a table of the HTTP trigger's keys
    /// (`{ path = "/orders", mode = "async" }`); see docs/triggers.md.
    #[serde(default, deserialize_with = "exposure")]
    #[schemars(with = "Option<super::schema::Exposure>")]
    pub http: Option<Endpoint>,
}

/// Reads the route's `http` key: a path, or the keys of an HTTP source.
fn exposure<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Endpoint>, D::Error> {
    let keys = match toml::Value::deserialize(d)? {
        toml::Value::String(path) => {
            toml::Table::from_iter([("http".to_owned(), toml::Value::String(path))])
        }
        toml::Value::Table(mut t) => {
            if let Some(path) = t.remove("path") {
                t.insert("http".to_owned(), path);
            }
            t
        }
        _ => return Err(serde::de::Error::custom(
            "expected a path (\"/orders\") or a table ({ path = \"/orders\", mode = \"async\" })",
        )),
    };
    let broker = super::triggers::named_by(&keys).map_err(serde::de::Error::custom)?;
    Ok(Some(Endpoint::new(broker, Arc::new(Unresolved::new(keys)))))
}

/// A broker address: the broker's name plus where on it, in the keys of
/// the broker's kind (`src/brokers/<kind>/config.rs`).
///
/// Every kind takes `subject`, `topic` and `queue` as synonyms for its
/// address, so that a route moves between brokers by changing `broker`
/// alone.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The broker's name under `[brokers]`.
    pub broker: String,
    spec: Arc<dyn EndpointSpec>,
}

impl Endpoint {
    /// An endpoint of `broker` with its kind's typed keys.
    pub fn new(broker: impl Into<String>, spec: Arc<dyn EndpointSpec>) -> Self {
        Self {
            broker: broker.into(),
            spec,
        }
    }

    /// Parses `keys` (without `broker`) as an endpoint of `broker`, whose
    /// config is `cfg`.
    pub fn parse(
        broker: &str,
        cfg: &BrokerConfig,
        role: Role,
        keys: toml::Table,
    ) -> Result<Self, KeyError> {
        Ok(Self::new(broker, cfg.endpoint(role, keys)?))
    }

    /// Hands the raw keys to the broker's kind.
    pub(super) fn resolve(&mut self, cfg: &BrokerConfig, role: Role) -> Result<(), KeyError> {
        if let Some(raw) = self.spec.as_any().downcast_ref::<Unresolved>() {
            self.spec = cfg.endpoint(role, raw.keys.clone())?;
        }
        Ok(())
    }

    /// The endpoints inside this one ([`EndpointSpec::nested_mut`]), while
    /// the config is being resolved and the spec is not shared yet.
    pub(super) fn nested_mut(&mut self) -> Vec<(&'static str, Role, &mut Endpoint)> {
        match Arc::get_mut(&mut self.spec) {
            Some(spec) => spec.nested_mut(),
            None => Vec::new(),
        }
    }

    /// The kind's typed keys.
    pub fn spec(&self) -> &dyn EndpointSpec {
        self.spec.as_ref()
    }

    /// The typed keys of kind `T`, for the kind's own code.
    pub fn get<T: 'static>(&self) -> Option<&T> {
        self.spec.as_any().downcast_ref()
    }

    /// The place on the broker: the subject, topic or queue, or
    /// `exchange/routing-key`.
    pub fn address(&self) -> String {
        self.spec.address()
    }

    /// `broker/address`, as logs and `mqfn-source` show it.
    pub fn describe(&self) -> String {
        format!("{}/{}", self.broker, self.spec.address())
    }

    /// Whether two endpoints name the same place on the same broker.
    pub fn same_place(&self, other: &Endpoint) -> bool {
        self.broker == other.broker && self.spec.address() == other.spec.address()
    }
}

/// Nowhere: no broker, no address (`mqfn call`, which needs no source).
impl Default for Endpoint {
    fn default() -> Self {
        Self::new("", Arc::new(Unresolved::new(toml::Table::new())))
    }
}

/// Reads `broker` and keeps the other keys for the broker's kind, which
/// [`super::resolve`] hands them to.
impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut keys = toml::Table::deserialize(d)?;
        let broker = match keys.remove("broker") {
            Some(toml::Value::String(b)) => b,
            Some(_) => return Err(serde::de::Error::custom("broker: expected a string")),
            None => super::triggers::named_by(&keys)
                .map_err(serde::de::Error::custom)?
                .to_owned(),
        };
        Ok(Self {
            broker,
            spec: Arc::new(Unresolved::new(keys)),
        })
    }
}

/// Worker pool bounds and autoscaling.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkersConfig {
    /// Fewest workers; 0 lets the route scale to zero when idle.
    #[serde(default = "default_min")]
    pub min: usize,
    /// Most workers: the bound on concurrent invocations.
    #[serde(default = "default_max")]
    pub max: usize,
    /// Backlog one worker is expected to keep up with. Unset: 100, or what
    /// the source asks for (1 for an HTTP trigger, whose callers each wait:
    /// a worker per waiting request); see [`WorkersConfig::target_backlog`].
    #[serde(default)]
    pub target_backlog: Option<u64>,
    /// How often the autoscaler looks at the backlog.
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(default = "default_scale_interval", with = "humantime_serde")]
    pub scale_interval: Duration,
    /// The wait between two scale-down steps.
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(default = "default_cooldown", with = "humantime_serde")]
    pub cooldown: Duration,
    /// How long the backlog must stay at zero before scaling to zero.
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl Default for WorkersConfig {
    fn default() -> Self {
        Self {
            min: default_min(),
            max: default_max(),
            target_backlog: None,
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
/// The backlog per worker of a route that sets none, on a queue.
pub const DEFAULT_TARGET_BACKLOG: u64 = 100;

impl WorkersConfig {
    /// The backlog one worker is expected to keep up with.
    pub fn target_backlog(&self) -> u64 {
        self.target_backlog.unwrap_or(DEFAULT_TARGET_BACKLOG)
    }
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
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in all, the first included, before the dead letter.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// The backoff ceiling of the first retry.
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(default = "default_initial_backoff", with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// The largest backoff.
    #[schemars(with = "crate::config::schema::DurationText")]
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
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
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Header name to required value.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}
