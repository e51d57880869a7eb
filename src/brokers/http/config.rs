//! The HTTP trigger's keys: `[http]` (the listener) and the source keys
//! of a route (`source = { http = "/orders" }`, or the route's own
//! `http = { path = "/orders", mode = "async" }`).

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;

use crate::brokers::{
    typed, Broker, BrokerError, BrokerSpec, Described, EndpointSpec, Guarantee, KeyError, Kind,
    Role, TypedKind,
};

/// The registry entry, for [`crate::brokers::KINDS`].
pub static KIND: TypedKind<HttpConfig> = TypedKind::trigger("http", "http");

/// `[http]`: the listener that routes are exposed on, apart from the admin
/// listener.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address. Loopback by default, so that nothing is exposed to
    /// the network unless asked for; a gateway or ingress in front of it
    /// is the usual way in.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Larger request bodies get 413 and never reach a handler.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
}

fn default_listen() -> String {
    "127.0.0.1:8080".to_owned()
}

fn default_max_body() -> usize {
    1024 * 1024
}

/// How a request is handled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Run the handler and answer with its result; a request with
    /// `Prefer: respond-async` is queued instead, where the route has a
    /// broker source.
    #[default]
    Sync,
    /// Always queue the request on the route's broker source and answer
    /// 202 (a route's own `http` key only).
    Async,
}

/// Who may call: a bearer token or an HMAC signature of the body, with the
/// secret in an environment variable.
#[derive(Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// The variable holding the token that `Authorization: Bearer` must
    /// carry.
    #[serde(default)]
    pub bearer_env: Option<String>,
    /// The variable holding the HMAC-SHA256 key of webhook signatures.
    #[serde(default)]
    pub hmac_env: Option<String>,
    /// The header with the signature: hex, after an optional `sha256=`
    /// (GitHub's scheme).
    #[serde(default = "default_signature_header")]
    pub header: String,
}

fn default_signature_header() -> String {
    "X-Hub-Signature-256".to_owned()
}

/// Names the variables only: their values are secrets.
impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("bearer_env", &self.bearer_env)
            .field("hmac_env", &self.hmac_env)
            .field("header", &self.header)
            .finish()
    }
}

/// A path on the listener.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpEndpoint {
    /// The path, from `/`; requests must match it exactly.
    #[serde(alias = "path")]
    pub http: String,
    /// `sync` (default) or `async`.
    #[serde(default)]
    pub mode: Mode,
    /// Who may call; anyone when absent.
    #[serde(default)]
    pub auth: Option<Auth>,
}

impl crate::brokers::Endpoints for HttpConfig {
    type Source = HttpEndpoint;
    type Target = HttpEndpoint;
}

#[async_trait]
impl BrokerSpec for HttpConfig {
    fn kind(&self) -> &'static str {
        KIND.name()
    }

    fn validate(&self) -> Vec<KeyError> {
        match self.listen.parse::<std::net::SocketAddr>() {
            Ok(_) => Vec::new(),
            Err(_) => vec![KeyError::new(
                "listen",
                format!(
                    "{:?} is not an address: write IP:PORT, e.g. \"127.0.0.1:8080\"",
                    self.listen
                ),
            )],
        }
    }

    fn endpoint(&self, role: Role, keys: toml::Table) -> Result<Arc<dyn EndpointSpec>, KeyError> {
        match role {
            Role::Source => Ok(Arc::new(typed::<HttpEndpoint>(keys)?)),
            Role::Target => Err(KeyError::new(
                "",
                "the HTTP trigger is a source only: send outputs and dead letters to a broker",
            )),
        }
    }

    async fn connect(&self, name: &str, _wait: bool) -> Result<Arc<dyn Broker>, BrokerError> {
        Ok(Arc::new(super::HttpBroker::new(name, self.clone())))
    }

    fn describe(&self) -> Described {
        Described {
            protocol: "http".to_owned(),
            hosts: vec![self.listen.clone()],
            pathname: None,
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl EndpointSpec for HttpEndpoint {
    fn address(&self) -> String {
        self.http.clone()
    }

    fn validate(&self) -> Vec<KeyError> {
        let mut errors = Vec::new();
        let p = &self.http;
        if !p.starts_with('/') || p.contains(|c: char| c.is_whitespace() || "?#".contains(c)) {
            errors.push(KeyError::new(
                "http",
                format!("{p:?} is not a path: write it from `/`, without spaces, `?` or `#`, e.g. \"/orders\""),
            ));
        }
        if let Some(a) = &self.auth {
            errors.extend(a.validate());
        }
        errors
    }

    fn guarantee(&self) -> Guarantee {
        // The caller waits and is told of a failure: nothing to redeliver.
        Guarantee::AtMostOnce
    }

    fn exclusive(&self) -> bool {
        true
    }

    fn target_backlog(&self) -> Option<u64> {
        Some(1)
    }

    fn forwards(&self) -> Option<&'static str> {
        (self.mode == Mode::Async).then_some("mode")
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Auth {
    fn validate(&self) -> Vec<KeyError> {
        let var = match (&self.bearer_env, &self.hmac_env) {
            (Some(v), None) => ("auth.bearer_env", v),
            (None, Some(v)) => ("auth.hmac_env", v),
            _ => {
                return vec![KeyError::new(
                    "auth",
                    "set one of bearer_env (a bearer token) or hmac_env (a signature key), naming an environment variable",
                )]
            }
        };
        match std::env::var(var.1) {
            Ok(v) if !v.is_empty() => Vec::new(),
            _ => vec![KeyError::new(
                var.0,
                format!(
                    "the environment variable {} is not set (or empty): export the secret in it before starting mqfn",
                    var.1
                ),
            )],
        }
    }

    /// The secret, read from its variable (checked when the config loaded).
    pub(super) fn secret(&self) -> Vec<u8> {
        let var = self.bearer_env.as_ref().or(self.hmac_env.as_ref());
        var.and_then(|v| std::env::var(v).ok())
            .unwrap_or_default()
            .into_bytes()
    }
}
