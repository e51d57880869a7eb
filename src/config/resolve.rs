//! The step between parsing and validation: each broker table goes to its
//! kind, and each endpoint to the kind of the broker it names. Errors name
//! the whole key path, the route and the broker kind.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;

use super::{Config, ConfigError};
use crate::brokers::{Broker, BrokerError, BrokerSpec, EndpointSpec, KeyError, Role};

/// The keys of a broker or endpoint as parsed, before its kind has seen
/// them. Only [`resolve`] and the parsers of this module make one.
#[derive(Debug)]
pub(super) struct Unresolved {
    pub keys: toml::Table,
}

impl Unresolved {
    pub fn new(keys: toml::Table) -> Self {
        Self { keys }
    }

    fn not_resolved(name: &str) -> BrokerError {
        BrokerError::setup(
            name.to_owned(),
            "the config was not resolved (a bug: load configs with Config::load)".to_owned(),
        )
    }
}

#[async_trait]
impl BrokerSpec for Unresolved {
    fn kind(&self) -> &'static str {
        "unresolved"
    }
    fn endpoint(&self, _role: Role, keys: toml::Table) -> Result<Arc<dyn EndpointSpec>, KeyError> {
        Ok(Arc::new(Unresolved::new(keys)))
    }
    async fn connect(&self, name: &str, _wait: bool) -> Result<Arc<dyn Broker>, BrokerError> {
        Err(Self::not_resolved(name))
    }
    fn describe(&self) -> crate::brokers::Described {
        crate::brokers::Described {
            protocol: "unresolved".to_owned(),
            hosts: Vec::new(),
            pathname: None,
        }
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl EndpointSpec for Unresolved {
    fn address(&self) -> String {
        ["subject", "topic", "queue"]
            .iter()
            .find_map(|k| self.keys.get(*k).and_then(toml::Value::as_str))
            .unwrap_or_default()
            .to_owned()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Resolves every broker and endpoint of `cfg`; returns every problem.
pub(super) fn resolve(cfg: &mut Config) -> Vec<ConfigError> {
    let file = cfg.file.clone();
    let mut errors = Vec::new();
    let mut err = |key: String, message: String| {
        errors.push(ConfigError::Invalid {
            file: file.clone(),
            key,
            message,
        })
    };
    for (name, b) in cfg.brokers.iter_mut() {
        if let Err(e) = b.resolve() {
            err(
                join(&super::triggers::table_of(name, b.kind()), &e.key),
                e.message,
            );
        }
    }
    for (i, r) in cfg.routes.iter_mut().enumerate() {
        let eps = [
            ("source", Role::Source, Some(&mut r.source)),
            ("output", Role::Target, r.output.as_mut()),
            ("dead_letter", Role::Target, r.dead_letter.as_mut()),
            ("http", Role::Source, r.http.as_mut()),
        ];
        for (field, role, ep) in eps {
            let Some(ep) = ep else { continue };
            let at = format!("routes[{i}].{field}");
            endpoint(&cfg.brokers, &r.name, &at, role, ep, &mut err);
        }
        if r.workers.target_backlog.is_none() {
            r.workers.target_backlog = r.source.spec().target_backlog();
        }
    }
    errors
}

/// Resolves `ep` (at key path `at`, of route `route`) with its broker's
/// kind, then the endpoints inside it.
fn endpoint(
    brokers: &std::collections::BTreeMap<String, super::BrokerConfig>,
    route: &str,
    at: &str,
    role: Role,
    ep: &mut super::Endpoint,
    err: &mut impl FnMut(String, String),
) {
    let Some(b) = brokers.get(&ep.broker) else {
        let known: Vec<_> = brokers.keys().cloned().collect();
        err(
            format!("{at}.broker"),
            format!(
                "unknown broker {:?} (known: {})",
                ep.broker,
                if known.is_empty() {
                    "none; add a [brokers.NAME] table".to_owned()
                } else {
                    known.join(", ")
                }
            ),
        );
        return;
    };
    let raw = ep
        .spec()
        .as_any()
        .downcast_ref::<Unresolved>()
        .map(|u| u.keys.clone());
    let problems = match ep.resolve(b, role) {
        Err(e) => vec![e],
        Ok(()) => ep.spec().validate(),
    };
    for e in problems {
        let hint = raw
            .as_ref()
            .and_then(|keys| other_side(b, role, keys, &e))
            .unwrap_or_default();
        let message = format!(
            "{}{hint} (route {route:?}; broker {:?} is {}; see docs/brokers.md for the keys of each kind)",
            e.message,
            ep.broker,
            b.kind(),
        );
        err(join(at, &e.key), message);
    }
    for (key, role, inner) in ep.nested_mut() {
        endpoint(brokers, route, &join(at, key), role, inner, err);
    }
}

/// When `e` is an unknown key that the other side of a route takes (a
/// `dedup` on a source, a `durable` on an output), says where it goes.
fn other_side(
    b: &super::BrokerConfig,
    role: Role,
    keys: &toml::Table,
    e: &KeyError,
) -> Option<String> {
    if !e.message.starts_with("unknown field") {
        return None;
    }
    let other = match role {
        Role::Source => Role::Target,
        Role::Target => Role::Source,
    };
    let fits = match b.endpoint(other, keys.clone()) {
        Ok(_) => true,
        Err(o) => o.key != e.key,
    };
    fits.then(|| {
        let (takes, set_on) = match other {
            Role::Source => ("sources", "source"),
            Role::Target => ("outputs and dead letters", "output or dead_letter"),
        };
        format!(
            "; `{}` is a key of {} {takes}: set it on {set_on}",
            e.key,
            b.kind()
        )
    })
}

/// `table.key`, or `table` when the key is the table itself.
pub(super) fn join(table: &str, key: &str) -> String {
    if key.is_empty() {
        table.to_owned()
    } else {
        format!("{table}.{key}")
    }
}
