//! The typed-config half of the broker contract: how a kind turns its
//! `[brokers.NAME]` table and the endpoint tables of routes into typed
//! values, checks them, and connects.

use std::any::Any;
use std::fmt::Debug;
use std::marker::PhantomData;
use std::sync::Arc;

use async_trait::async_trait;
use serde::de::DeserializeOwned;

use super::{Broker, BrokerError, KINDS};

/// A problem with one key, relative to the table it sits in (`topic`,
/// `streams[0].storage`; empty for the table itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    /// The key path inside the table.
    pub key: String,
    /// What is wrong and what is expected.
    pub message: String,
}

impl KeyError {
    /// A problem with `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Which side of a route an endpoint is on: a kind may take other keys on
/// each (a JetStream `durable` on a source, `dedup` on an output).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Where messages come from.
    Source,
    /// Where mqfn publishes: an output, a dead letter, `mqfn publish`.
    Target,
}

impl Role {
    /// The word error messages use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Target => "output or dead letter",
        }
    }
}

/// What a source promises about a message mqfn received and has not yet
/// acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guarantee {
    /// The broker redelivers it (a route must then have a dead letter).
    AtLeastOnce,
    /// It is gone if mqfn dies (core NATS).
    AtMostOnce,
}

/// One broker kind: the registry entry that parses its `[brokers.NAME]`
/// table.
pub trait Kind: Sync {
    /// The `kind = "..."` value.
    fn name(&self) -> &'static str;
    /// Parses the broker's keys (all but `kind`) into its typed config.
    fn config(&self, keys: toml::Table) -> Result<Arc<dyn BrokerSpec>, KeyError>;
    /// JSON Schemas of its broker table (without `kind`) and of its source
    /// and target endpoints (without `broker`), for `mqfn schema`.
    fn schemas(&self, generator: &mut schemars::SchemaGenerator) -> KindSchemas;
    /// For a trigger (a source that is not a queue: HTTP, a schedule), the
    /// key that names it in a source table with no `broker`
    /// (`source = { schedule = "..." }`). Its one broker is implicit,
    /// called like the kind, and configured by the top-level table of that
    /// name (`[http]`), if any.
    fn trigger_key(&self) -> Option<&'static str> {
        None
    }
}

/// What [`Kind::schemas`] returns.
pub struct KindSchemas {
    /// The broker table's keys.
    pub broker: schemars::Schema,
    /// A source endpoint's keys.
    pub source: schemars::Schema,
    /// A target endpoint's keys.
    pub target: schemars::Schema,
}

/// The endpoint types of a kind's typed config, for its schemas.
pub trait Endpoints {
    /// A source's keys.
    type Source: schemars::JsonSchema;
    /// A target's keys (outputs, dead letters).
    type Target: schemars::JsonSchema;
}

/// The usual [`Kind`]: one whose broker table deserializes into the typed
/// config `C` (`deny_unknown_fields`).
pub struct TypedKind<C> {
    name: &'static str,
    trigger_key: Option<&'static str>,
    config: PhantomData<fn() -> C>,
}

impl<C> TypedKind<C> {
    /// The kind called `name` (`kind = "name"`).
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            trigger_key: None,
            config: PhantomData,
        }
    }

    /// The trigger called `name`, named in a source by `key` (see
    /// [`Kind::trigger_key`]).
    pub const fn trigger(name: &'static str, key: &'static str) -> Self {
        Self {
            name,
            trigger_key: Some(key),
            config: PhantomData,
        }
    }
}

impl<C> Kind for TypedKind<C>
where
    C: DeserializeOwned + BrokerSpec + schemars::JsonSchema + Endpoints + 'static,
{
    fn name(&self) -> &'static str {
        self.name
    }
    fn config(&self, keys: toml::Table) -> Result<Arc<dyn BrokerSpec>, KeyError> {
        Ok(Arc::new(typed::<C>(keys)?))
    }
    fn schemas(&self, generator: &mut schemars::SchemaGenerator) -> KindSchemas {
        KindSchemas {
            broker: generator.root_schema_for::<C>(),
            source: generator.root_schema_for::<C::Source>(),
            target: generator.root_schema_for::<C::Target>(),
        }
    }
    fn trigger_key(&self) -> Option<&'static str> {
        self.trigger_key
    }
}

/// The error for an address key given empty, or none.
pub fn non_empty(key: &str, value: &str) -> Vec<KeyError> {
    match value.is_empty() {
        true => vec![KeyError::new(key, format!("the {key} is empty"))],
        false => Vec::new(),
    }
}

/// A broker's typed, parsed config.
#[async_trait]
pub trait BrokerSpec: Debug + Send + Sync {
    /// The kind's name.
    fn kind(&self) -> &'static str;
    /// Rules that span keys or need the outside world (readable files);
    /// keys are relative to `brokers.NAME`.
    fn validate(&self) -> Vec<KeyError> {
        Vec::new()
    }
    /// Parses the keys of an endpoint on this broker (all but `broker`).
    fn endpoint(&self, role: Role, keys: toml::Table) -> Result<Arc<dyn EndpointSpec>, KeyError>;
    /// Connects. With `wait` false the first connection may be made in the
    /// background (`run` reports not-ready meanwhile).
    async fn connect(&self, name: &str, wait: bool) -> Result<Arc<dyn Broker>, BrokerError>;
    /// How other tools (AsyncAPI) see this broker: its protocol and the
    /// addresses clients connect to, never its credentials.
    fn describe(&self) -> Described;
    /// For the kind's own code to get its type back.
    fn as_any(&self) -> &dyn Any;
}

/// A broker as `mqfn asyncapi` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    /// The AsyncAPI protocol name (`nats`, `kafka`, `amqp`, `amqps`, ...).
    pub protocol: String,
    /// `host:port` of each server, without user or password.
    pub hosts: Vec<String>,
    /// The path part, where the protocol has one (an AMQP vhost).
    pub pathname: Option<String>,
}

impl Described {
    /// The hosts of comma-separated URLs, with the credentials cut off and
    /// `default_port` where a URL names none.
    pub fn hosts_of_urls(urls: &str, default_port: u16) -> Vec<String> {
        urls.split(',')
            .filter_map(|u| url::Url::parse(u.trim()).ok())
            .filter_map(|u| {
                let host = u.host_str()?.to_owned();
                Some(format!("{host}:{}", u.port().unwrap_or(default_port)))
            })
            .collect()
    }
}

/// A typed endpoint of one kind: where on the broker, and how.
pub trait EndpointSpec: Debug + Send + Sync + 'static {
    /// The place on the broker, as logs and `mqfn-source` show it, without
    /// the broker's name: `orders`, `exchange/routing-key`.
    fn address(&self) -> String;
    /// Rules on values; keys are relative to the endpoint.
    fn validate(&self) -> Vec<KeyError> {
        Vec::new()
    }
    /// Whether publishes here drop a message whose deduplication id the
    /// broker has seen lately (JetStream `Nats-Msg-Id`), so that the core
    /// gives each result one (targets only).
    fn deduplicates(&self) -> bool {
        false
    }
    /// What a source of this shape promises (sources only).
    fn guarantee(&self) -> Guarantee {
        Guarantee::AtLeastOnce
    }
    /// The endpoints inside this one, on other brokers (a schedule's
    /// `via`), with their keys: the config resolves each with its own
    /// broker's kind, and the app connects their brokers.
    fn nested(&self) -> Vec<&crate::config::Endpoint> {
        Vec::new()
    }
    /// [`Self::nested`], to resolve: each with its key and the side of
    /// the route it is on.
    fn nested_mut(&mut self) -> Vec<(&'static str, Role, &mut crate::config::Endpoint)> {
        Vec::new()
    }
    /// The `workers.target_backlog` of a route on this source that sets
    /// none, where the queue default (100) does not fit: callers that each
    /// wait for their answer want a worker each.
    fn target_backlog(&self) -> Option<u64> {
        None
    }
    /// Whether one route at most may use this place as its source (an HTTP
    /// path: a request has one route to go to).
    fn exclusive(&self) -> bool {
        false
    }
    /// For a trigger that hands its messages to the route's own broker
    /// source (an HTTP route in async mode), the key that asks for it: the
    /// route then needs a broker source.
    fn forwards(&self) -> Option<&'static str> {
        None
    }
    /// The AsyncAPI channel address of this place: [`Self::address`]
    /// unless the protocol's binding says otherwise (an AMQP routing key,
    /// whose exchange is in the binding).
    fn channel_address(&self) -> String {
        self.address()
    }
    /// The AsyncAPI channel binding of this place, if the protocol has one
    /// (an AMQP queue or exchange, a Kafka topic).
    fn channel_binding(&self) -> Option<serde_json::Value> {
        None
    }
    /// For the kind's own code to get its type back.
    fn as_any(&self) -> &dyn Any;
}

/// The kind called `name`.
pub fn kind(name: &str) -> Option<&'static dyn Kind> {
    KINDS.iter().copied().find(|k| k.name() == name)
}

/// The trigger kinds (see [`Kind::trigger_key`]).
pub fn triggers() -> impl Iterator<Item = (&'static dyn Kind, &'static str)> {
    KINDS
        .iter()
        .copied()
        .filter_map(|k| k.trigger_key().map(|key| (k, key)))
}

/// Every kind's name, for error messages.
pub fn kind_names() -> Vec<&'static str> {
    KINDS.iter().map(|k| k.name()).collect()
}

/// Deserializes a kind's typed struct from its table; the error names the
/// key, and says how a duration is written.
pub fn typed<T: DeserializeOwned>(keys: toml::Table) -> Result<T, KeyError> {
    serde_path_to_error::deserialize(toml::Value::Table(keys)).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." { String::new() } else { key };
        KeyError::new(
            key,
            crate::config::describe_serde_error(&e.into_inner().to_string()),
        )
    })
}
