//! `kind = "memory"`: in-process queues, for a first run with no broker at
//! all and for tests of routes and handlers. One process, not durable.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;

use crate::brokers::{
    non_empty, typed, Broker, BrokerError, BrokerSpec, Described, EndpointSpec, KeyError, Kind,
    Role, TypedKind,
};

/// The registry entry, for [`crate::brokers::KINDS`].
pub static KIND: TypedKind<MemoryConfig> = TypedKind::new("memory");

/// An in-process broker.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// The hub whose queues this broker uses (default: the broker's name).
    /// Brokers that name the same hub share its queues, and a test reaches
    /// them with [`super::Hub::named`].
    #[serde(default)]
    pub hub: Option<String>,
}

/// A queue of the hub, as a source or a target.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MemoryEndpoint {
    /// The queue (created on first use).
    #[serde(alias = "subject", alias = "topic")]
    pub queue: String,
}

impl crate::brokers::Endpoints for MemoryConfig {
    type Source = MemoryEndpoint;
    type Target = MemoryEndpoint;
}

#[async_trait]
impl BrokerSpec for MemoryConfig {
    fn kind(&self) -> &'static str {
        KIND.name()
    }

    fn endpoint(&self, _role: Role, keys: toml::Table) -> Result<Arc<dyn EndpointSpec>, KeyError> {
        Ok(Arc::new(typed::<MemoryEndpoint>(keys)?))
    }

    async fn connect(&self, name: &str, _wait: bool) -> Result<Arc<dyn Broker>, BrokerError> {
        let hub = super::Hub::named(self.hub.as_deref().unwrap_or(name));
        Ok(Arc::new(super::MemoryBroker::new(name, hub)))
    }

    fn describe(&self) -> Described {
        Described {
            protocol: "mqfn-memory".to_owned(),
            hosts: vec!["in-process".to_owned()],
            pathname: None,
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl EndpointSpec for MemoryEndpoint {
    fn address(&self) -> String {
        self.queue.clone()
    }
    fn validate(&self) -> Vec<KeyError> {
        non_empty("queue", &self.queue)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}
