//! `[brokers.NAME]`: a `kind` and the keys that kind defines. The kinds own
//! their keys (`src/brokers/<kind>/config.rs`); this module only finds the
//! kind and hands it the rest.

use std::sync::Arc;

use serde::{Deserialize, Deserializer};

use super::resolve::Unresolved;
use crate::brokers::{BrokerSpec, EndpointSpec, KeyError, Role};

/// A named broker connection.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    kind: String,
    spec: Arc<dyn BrokerSpec>,
}

impl BrokerConfig {
    /// Parses `keys` (without `kind`) as a broker of `kind`.
    pub fn parse(kind: &str, keys: toml::Table) -> Result<Self, KeyError> {
        let Some(k) = crate::brokers::kind(kind) else {
            return Err(KeyError::new(
                "kind",
                format!(
                    "unknown broker kind {kind:?}; expected one of {}",
                    crate::brokers::kind_names().join(", ")
                ),
            ));
        };
        Ok(Self {
            kind: kind.to_owned(),
            spec: k.config(keys)?,
        })
    }

    /// The kind's name, as in config and labels.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The kind's typed config.
    pub fn spec(&self) -> &dyn BrokerSpec {
        self.spec.as_ref()
    }

    /// Parses the keys of an endpoint on this broker.
    pub fn endpoint(
        &self,
        role: Role,
        keys: toml::Table,
    ) -> Result<Arc<dyn EndpointSpec>, KeyError> {
        self.spec.endpoint(role, keys)
    }
}

/// Reads the table as it is; [`super::resolve`] then hands it to its kind.
impl<'de> Deserialize<'de> for BrokerConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let keys = toml::Table::deserialize(d)?;
        let kind = match keys.get("kind") {
            Some(toml::Value::String(k)) => k.clone(),
            Some(_) => return Err(serde::de::Error::custom("kind: expected a string")),
            None => return Err(serde::de::Error::missing_field("kind")),
        };
        Ok(Self {
            kind,
            spec: Arc::new(Unresolved::new(keys)),
        })
    }
}

impl BrokerConfig {
    /// Hands the raw keys to the kind; the errors name keys inside the
    /// broker's table.
    pub(super) fn resolve(&mut self) -> Result<(), KeyError> {
        let Some(raw) = self.spec.as_any().downcast_ref::<Unresolved>() else {
            return Ok(());
        };
        let mut keys = raw.keys.clone();
        keys.remove("kind");
        *self = Self::parse(&self.kind, keys)?;
        Ok(())
    }
}
