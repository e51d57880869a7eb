use std::time::Duration;

use serde::Deserialize;

/// A named handler, tagged by `kind`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum HandlerConfig {
    /// Rust code compiled into mqfn (`handlers/`).
    Builtin(BuiltinConfig),
}

impl HandlerConfig {
    /// The handler's own time limit per invocation, if it sets one.
    pub fn timeout(&self) -> Option<Duration> {
        match self {
            Self::Builtin(b) => b.timeout,
        }
    }
}

/// A configured built-in handler.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuiltinConfig {
    /// Which built-in: `echo`, `fail` or `json-transform`.
    pub builtin: String,
    /// The built-in's own options.
    #[serde(default)]
    pub options: toml::Table,
    /// Time limit per invocation; the route's `timeout` wins when set.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
}
