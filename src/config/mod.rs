//! The configuration: one TOML file of brokers, handlers and routes.
//!
//! Loading happens in three steps, each with errors that name the file and
//! the key path:
//! 1. parse the TOML,
//! 2. expand `${VAR}` and `${VAR:-default}` in every string ([`env`]),
//! 3. deserialize into typed structs (unknown keys are errors), hand each
//!    broker and endpoint table to its broker kind ([`resolve`]), then
//!    check the rules that span fields ([`validate`]).

mod broker;
pub mod checks;
mod env;
mod error;
mod handler;
mod resolve;
mod route;
pub mod schema;
mod triggers;
mod validate;

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use broker::BrokerConfig;
pub use error::{ConfigError, ConfigErrors};
pub use handler::{BuiltinConfig, HandlerConfig, HttpConfig, ProcessConfig, DEFAULT_PROCESS_ENV};
pub use route::{Endpoint, Filter, Ordering, RetryConfig, RouteConfig, WorkersConfig};

/// The default config locations, tried in order when `--config` is absent.
pub const DEFAULT_PATHS: &[&str] = &["mqfn.toml", "config/mqfn.toml"];

/// A whole mqfn configuration.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The admin HTTP listener (`/metrics`, `/healthz`, `/readyz`, `/status`).
    #[serde(default)]
    pub admin: AdminConfig,
    /// How long a shutdown may take to finish in-flight work before it is
    /// cut short (the unfinished messages are redelivered by the broker).
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Threads that run mqfn's own work (the async runtime's workers).
    /// Unset: half the CPUs available to the process, at least one; see
    /// [`Config::worker_threads`].
    #[serde(default)]
    pub worker_threads: Option<NonZeroUsize>,
    /// Named broker connections.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, schema::BrokerTable>")]
    pub brokers: BTreeMap<String, BrokerConfig>,
    /// Named handlers. The built-ins (`echo`, `fail`, `json-transform`) exist
    /// without a declaration.
    #[serde(default)]
    pub handlers: BTreeMap<String, HandlerConfig>,
    /// Routes: each ties one source to one handler.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// The file this came from, for error messages.
    #[serde(skip)]
    pub file: PathBuf,
}

/// The admin listener.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Listen address. Loopback by default so that metrics and status are
    /// not exposed to the network unless asked for.
    #[serde(default = "default_admin_listen")]
    pub listen: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
        }
    }
}

fn default_admin_listen() -> String {
    "127.0.0.1:9090".to_owned()
}

fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}

/// The deserializer's message, first line only, with a hint where the
/// expected form is not obvious.
pub(crate) fn describe_serde_error(raw: &str) -> String {
    let first = raw.lines().next().unwrap_or(raw).trim().to_owned();
    if first.contains("expected a duration") {
        format!("{first}: write it like \"250ms\", \"30s\" or \"5m\"")
    } else if first.contains("expected a nonzero") {
        format!("{first}: write 1 or more, or leave the key out for the default")
    } else {
        first
    }
}

impl Config {
    /// The runtime's worker threads: `worker_threads` when set, else half
    /// the CPUs available to the process (its cgroup quota included), at
    /// least one.
    ///
    /// mqfn's own work per message is short and mostly waits on brokers;
    /// the rest of the machine's CPUs go to the broker clients' own threads
    /// (librdkafka, lapin), process handlers and, often, the broker. On two
    /// CPUs one worker used 18% less CPU per message than two, and moved
    /// the JetStream throughput ratio from 0.78 to 0.90 (docs/benchmarks.md):
    /// idle workers woken for every handed-over task cost more than they
    /// add.
    pub fn worker_threads(&self) -> usize {
        self.worker_threads
            .map(NonZeroUsize::get)
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get() / 2)
                    .unwrap_or(1)
                    .max(1)
            })
    }

    /// Reads, expands, parses and validates the config at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            ConfigErrors::one(ConfigError::Read {
                file: path.to_owned(),
                source,
            })
        })?;
        Self::from_str(&text, path)
    }

    /// Parses and validates config text; `file` is only used in messages.
    pub fn from_str(text: &str, file: &Path) -> Result<Self, ConfigErrors> {
        let at = |key: String, message: String| ConfigError::Invalid {
            file: file.to_owned(),
            key,
            message,
        };
        let mut value: toml::Value = toml::from_str(text).map_err(|e| {
            ConfigErrors::one(ConfigError::Syntax {
                file: file.to_owned(),
                message: e.to_string(),
            })
        })?;
        env::expand(&mut value, &mut |var| std::env::var(var).ok())
            .map_err(|(key, message)| ConfigErrors::one(at(key, message)))?;
        triggers::lift(&mut value).map_err(|(key, message)| ConfigErrors::one(at(key, message)))?;
        let mut cfg: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let key = e.path().to_string();
            ConfigErrors::one(at(key, describe_serde_error(&e.into_inner().to_string())))
        })?;
        cfg.file = file.to_owned();
        // Both steps report everything they find, in one list.
        let mut errors = resolve::resolve(&mut cfg);
        if let Err(more) = validate::validate(&cfg) {
            errors.extend(more.0);
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(cfg)
    }

    /// Finds the config file: `explicit`, else the first default that exists.
    pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, ConfigErrors> {
        if let Some(p) = explicit {
            return Ok(p.to_owned());
        }
        DEFAULT_PATHS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or_else(|| ConfigErrors::one(ConfigError::NotFound))
    }

    /// The entry point of the `config` fuzz target: parse and validate, and
    /// check that every error message names the file.
    #[doc(hidden)]
    pub fn fuzz_load(text: &str) {
        let file = Path::new("fuzz.toml");
        if let Err(errors) = Self::from_str(text, file) {
            for e in errors.0 {
                assert!(e.to_string().starts_with("fuzz.toml: "), "{e}");
            }
        }
    }

    /// The route called `name`.
    pub fn route(&self, name: &str) -> Option<&RouteConfig> {
        self.routes.iter().find(|r| r.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str = r#"
[brokers.js]
kind = "nats"
url = "nats://127.0.0.1:4222"

[[routes]]
name = "r"
source = { broker = "js", subject = "in" }
handler = "echo"
"#;

    #[test]
    fn worker_threads_default_to_half_the_cpus() {
        let file = Path::new("t.toml");
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cfg = Config::from_str(ROUTE, file).unwrap();
        assert_eq!(cfg.worker_threads(), (cpus / 2).max(1));
        let cfg = Config::from_str(&format!("worker_threads = 3\n{ROUTE}"), file).unwrap();
        assert_eq!(cfg.worker_threads(), 3);
    }
}
