//! The schedule trigger's keys: `[schedule]` and a route's
//! `source = { schedule = "*/5 * * * *", timezone = "Europe/Paris" }`.

use std::any::Any;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;

use super::plan::Plan;
use crate::brokers::{
    typed, Broker, BrokerError, BrokerSpec, Described, EndpointSpec, Guarantee, KeyError, Kind,
    Role, TypedKind,
};
use crate::config::Endpoint;

/// The registry entry, for [`crate::brokers::KINDS`].
pub static KIND: TypedKind<ScheduleConfig> = TypedKind::trigger("schedule", "schedule");

/// `[schedule]`: settings shared by every schedule.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Where each schedule's last firing is kept (a file per route), so
    /// that `catch_up = "last"` knows what was missed while mqfn was down.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
}

/// What a schedule does about slots that passed while mqfn was down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    /// Nothing: the next firing is the next slot.
    #[default]
    None,
    /// Fire the last missed slot once, at start.
    Last,
}

/// A schedule, as a route's source.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleEndpoint {
    /// A cron expression (5 fields, or 6 with seconds first; `@daily`,
    /// `@hourly`, ...) or `@every DURATION`.
    pub schedule: String,
    /// The IANA time zone of the cron expression (default UTC).
    #[serde(default)]
    pub timezone: Option<String>,
    /// `none` (default) or `last`; `last` needs `[schedule] state_dir`.
    #[serde(default)]
    pub catch_up: CatchUp,
    /// The payload of each firing (empty by default); the slot is in the
    /// `mqfn-scheduled-at` header.
    #[serde(default)]
    pub payload: String,
    /// A broker place the firings go through: each replica publishes each
    /// firing there with a deduplication id made of the route and the
    /// slot, and the route consumes from it. On a JetStream stream, the
    /// stream keeps one per slot, however many replicas fire.
    #[serde(default)]
    #[schemars(with = "Option<crate::config::schema::EndpointTable>")]
    pub via: Option<Endpoint>,
}

impl ScheduleEndpoint {
    /// The slots.
    pub fn plan(&self) -> Result<Plan, KeyError> {
        Plan::parse(&self.schedule, self.timezone.as_deref()).map_err(|(k, m)| KeyError::new(k, m))
    }
}

impl crate::brokers::Endpoints for ScheduleConfig {
    type Source = ScheduleEndpoint;
    type Target = ScheduleEndpoint;
}

#[async_trait]
impl BrokerSpec for ScheduleConfig {
    fn kind(&self) -> &'static str {
        KIND.name()
    }

    fn endpoint(&self, role: Role, keys: toml::Table) -> Result<Arc<dyn EndpointSpec>, KeyError> {
        if role == Role::Target {
            return Err(KeyError::new(
                "",
                "a schedule is a source only: send outputs and dead letters to a broker",
            ));
        }
        let ep = typed::<ScheduleEndpoint>(keys)?;
        if ep.catch_up == CatchUp::Last && self.state_dir.is_none() {
            return Err(KeyError::new(
                "catch_up",
                "\"last\" needs to remember the last firing across restarts: set [schedule] state_dir = \"/var/lib/mqfn\" (a writable directory)",
            ));
        }
        Ok(Arc::new(ep))
    }

    async fn connect(&self, name: &str, _wait: bool) -> Result<Arc<dyn Broker>, BrokerError> {
        Ok(Arc::new(super::ScheduleBroker::new(name, self.clone())))
    }

    fn describe(&self) -> Described {
        Described {
            protocol: "mqfn-schedule".to_owned(),
            hosts: vec!["in-process".to_owned()],
            pathname: None,
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl EndpointSpec for ScheduleEndpoint {
    fn address(&self) -> String {
        self.schedule.clone()
    }

    fn validate(&self) -> Vec<KeyError> {
        self.plan().err().into_iter().collect()
    }

    fn guarantee(&self) -> Guarantee {
        // In process, a firing lost to a crash is what catch_up is for.
        match &self.via {
            Some(via) => via.spec().guarantee(),
            None => Guarantee::AtMostOnce,
        }
    }

    fn nested(&self) -> Vec<&Endpoint> {
        self.via.iter().collect()
    }

    fn nested_mut(&mut self) -> Vec<(&'static str, Role, &mut Endpoint)> {
        self.via
            .iter_mut()
            .map(|v| ("via", Role::Source, v))
            .collect()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
