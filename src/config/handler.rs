use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// A named handler, tagged by `kind`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum HandlerConfig {
    /// Rust code compiled into mqfn (`handlers/`).
    Builtin(BuiltinConfig),
    /// A long-lived worker process speaking the frame protocol.
    Process(ProcessConfig),
    /// An HTTP endpoint that receives each message as a CloudEvents POST.
    Http(HttpConfig),
}

impl HandlerConfig {
    /// The handler's own time limit per invocation, if it sets one.
    pub fn timeout(&self) -> Option<Duration> {
        match self {
            Self::Builtin(b) => b.timeout,
            Self::Process(p) => Some(p.timeout),
            Self::Http(h) => Some(h.timeout),
        }
    }
}

/// A configured built-in handler.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BuiltinConfig {
    /// Which built-in: `echo`, `fail` or `json-transform`.
    pub builtin: String,
    /// The built-in's own options.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, serde_json::Value>")]
    pub options: toml::Table,
    /// Time limit per invocation; the route's `timeout` wins when set.
    #[schemars(with = "Option<crate::config::schema::DurationText>")]
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

/// Environment variables a process handler gets when its config names none:
/// enough to find programs and pick a locale, nothing that could be a secret.
pub const DEFAULT_PROCESS_ENV: &[&str] = &["PATH", "HOME", "LANG", "LC_ALL", "TZ"];

/// A process handler: instances are spawned processes that read requests
/// on stdin and write responses on stdout (see `docs/handlers.md`).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProcessConfig {
    /// The program and its first arguments, e.g. `["python3", "h.py"]`.
    /// An array, never a shell line, so that nothing is re-parsed.
    pub command: Vec<String>,
    /// More arguments, appended to `command`.
    #[serde(default)]
    pub args: Vec<String>,
    /// The names of mqfn's environment variables the process may see. The
    /// process starts from an empty environment so that broker passwords
    /// and tokens do not leak into handler code; absent, only
    /// `PATH`, `HOME`, `LANG`, `LC_ALL` and `TZ` pass through.
    #[serde(default = "default_process_env")]
    pub env: Vec<String>,
    /// The working directory (default: mqfn's own). Relative paths in
    /// `command` are resolved from it.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Time limit per invocation; the route's `timeout` wins when set. On
    /// expiry the process is killed, replaced, and the message retried.
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(default = "default_handler_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Most processes at once (each runs one request at a time). Workers
    /// beyond this wait for a free instance.
    #[serde(default = "default_max_instances")]
    pub max_instances: usize,
    /// An instance idle for this long is stopped (a later message pays a
    /// cold start).
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
}

/// An HTTP handler: each message is POSTed to `url` in CloudEvents binary
/// mode; a 2xx body is the result.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// The endpoint (`http://` or `https://`).
    pub url: String,
    /// Extra request headers, e.g. `Authorization = "Bearer ${TOKEN}"`
    /// (they override message headers of the same name).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The CloudEvents `ce-type` sent with every message.
    #[serde(default = "default_ce_type")]
    pub ce_type: String,
    /// Time limit per request; the route's `timeout` wins when set. A
    /// timeout is retried.
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(default = "default_handler_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Most requests in flight at once; each in-flight slot counts as one
    /// instance, with its keep-alive connection.
    #[serde(default = "default_max_instances")]
    pub max_instances: usize,
    /// An idle slot (and its keep-alive connection) is closed after this.
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
}

fn default_process_env() -> Vec<String> {
    DEFAULT_PROCESS_ENV
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}

fn default_handler_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_max_instances() -> usize {
    8
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(300)
}

fn default_ce_type() -> String {
    "io.mqfn.message".to_owned()
}
