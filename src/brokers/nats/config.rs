//! `kind = "nats"`: the connection keys, the endpoint keys of sources and
//! targets, and their rules.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use crate::brokers::{
    non_empty, typed, Broker, BrokerError, BrokerSpec, Described, EndpointSpec, Guarantee,
    KeyError, Kind, Role, TypedKind,
};
use crate::config::checks;

/// The registry entry, for [`crate::brokers::KINDS`].
pub static KIND: TypedKind<NatsConfig> = TypedKind::new("nats");

/// A NATS connection.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated: `nats://user:pass@host:4222`.
    pub url: String,
    /// Publish outputs and dead letters through JetStream and wait for the
    /// PubAck (at-least-once). Off, they are core publishes confirmed by a
    /// flush only.
    #[serde(default = "yes")]
    pub jetstream: bool,
    /// JetStream streams to create when missing (existing ones are bound
    /// as they are).
    #[serde(default)]
    pub streams: Vec<NatsStream>,
    /// A `.creds` file (JWT + nkey seed) for decentralised auth.
    #[serde(default)]
    pub credentials_file: Option<String>,
    /// A file holding an nkey seed.
    #[serde(default)]
    pub nkey_file: Option<String>,
    /// Require TLS even if the URL says `nats://`.
    #[serde(default)]
    pub tls_required: bool,
    /// A PEM file of CA certificates to trust, for a private CA.
    #[serde(default)]
    pub tls_ca_file: Option<String>,
    /// A PEM client certificate, for mutual TLS (with `tls_key_file`).
    #[serde(default)]
    pub tls_cert_file: Option<String>,
    /// The PEM private key of `tls_cert_file`.
    #[serde(default)]
    pub tls_key_file: Option<String>,
    /// How long one connection attempt may take.
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
}

/// A JetStream stream declaration.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NatsStream {
    /// The stream name.
    pub name: String,
    /// The subjects it captures.
    pub subjects: Vec<String>,
    /// Where the server keeps it.
    #[serde(default)]
    pub storage: Storage,
    /// How long messages are kept; unlimited when absent.
    #[schemars(with = "Option<crate::config::schema::DurationText>")]
    #[serde(default, with = "humantime_serde")]
    pub max_age: Option<Duration>,
    /// The most messages kept (the oldest go first); unlimited when absent.
    #[serde(default)]
    pub max_messages: Option<u64>,
    /// The most bytes kept (the oldest go first); unlimited when absent.
    #[serde(default)]
    pub max_bytes: Option<u64>,
}

/// Where a stream is kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// On disk (the default).
    #[default]
    File,
    /// In the server's memory.
    Memory,
}

/// A NATS source: a core subject (at-most-once, queue groups), or with
/// `stream`, a durable JetStream pull consumer.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NatsSource {
    /// The subject (wildcards allowed).
    #[serde(alias = "topic", alias = "queue")]
    pub subject: String,
    /// JetStream: the stream; makes the source a durable pull consumer.
    #[serde(default)]
    pub stream: Option<String>,
    /// JetStream: the durable consumer name (default: the route name).
    #[serde(default)]
    pub durable: Option<String>,
    /// JetStream: how long the server waits for an ack before redelivery.
    #[schemars(with = "Option<crate::config::schema::DurationText>")]
    #[serde(default, with = "humantime_serde")]
    pub ack_wait: Option<Duration>,
    /// JetStream: deliveries before the server gives up (-1: unlimited).
    #[serde(default)]
    pub max_deliver: Option<i64>,
    /// JetStream: unacknowledged messages the server allows in flight.
    #[serde(default)]
    pub max_ack_pending: Option<i64>,
    /// Core NATS: the queue group (default: the route name).
    #[serde(default)]
    pub queue_group: Option<String>,
}

/// Where mqfn publishes on NATS.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NatsTarget {
    /// The subject.
    #[serde(alias = "topic", alias = "queue")]
    pub subject: String,
    /// Whether results of inputs with a stable position carry a
    /// `Nats-Msg-Id`, so that a redelivered input does not double its
    /// results within the stream's duplicate window (default true).
    #[serde(default = "yes")]
    pub dedup: bool,
}

impl NatsTarget {
    /// A target at `subject`, deduplicated.
    pub fn new(subject: impl Into<String>) -> Self {
        Self {
            subject: subject.into(),
            dedup: true,
        }
    }
}

impl crate::brokers::Endpoints for NatsConfig {
    type Source = NatsSource;
    type Target = NatsTarget;
}

#[async_trait]
impl BrokerSpec for NatsConfig {
    fn kind(&self) -> &'static str {
        KIND.name()
    }

    fn validate(&self) -> Vec<KeyError> {
        let mut errors = Vec::new();
        for (field, path) in [
            ("credentials_file", &self.credentials_file),
            ("nkey_file", &self.nkey_file),
            ("tls_ca_file", &self.tls_ca_file),
            ("tls_cert_file", &self.tls_cert_file),
            ("tls_key_file", &self.tls_key_file),
        ] {
            if let Some(e) = path.as_deref().and_then(checks::readable) {
                errors.push(KeyError::new(field, e));
            }
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            errors.push(KeyError::new(
                "tls_cert_file",
                "tls_cert_file and tls_key_file go together: give both for mutual TLS, or neither",
            ));
        }
        if self.credentials_file.is_some() && self.nkey_file.is_some() {
            errors.push(KeyError::new(
                "nkey_file",
                "give credentials_file or nkey_file, not both (a .creds file already holds the nkey)",
            ));
        }
        for u in self.url.split(',') {
            if let Some(e) = checks::url(u.trim(), &["nats", "tls", "ws", "wss"]) {
                errors.push(KeyError::new("url", e));
            }
        }
        for (i, s) in self.streams.iter().enumerate() {
            if s.subjects.is_empty() {
                errors.push(KeyError::new(
                    format!("streams[{i}].subjects"),
                    "a stream needs at least one subject",
                ));
            }
        }
        errors
    }

    fn endpoint(&self, role: Role, keys: toml::Table) -> Result<Arc<dyn EndpointSpec>, KeyError> {
        Ok(match role {
            Role::Source => Arc::new(typed::<NatsSource>(keys)?),
            Role::Target => Arc::new(typed::<NatsTarget>(keys)?),
        })
    }

    async fn connect(&self, name: &str, wait: bool) -> Result<Arc<dyn Broker>, BrokerError> {
        Ok(Arc::new(
            super::NatsBroker::connect(name, self, wait).await?,
        ))
    }

    fn describe(&self) -> Described {
        Described {
            protocol: "nats".to_owned(),
            hosts: Described::hosts_of_urls(&self.url, 4222),
            pathname: None,
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl EndpointSpec for NatsSource {
    fn address(&self) -> String {
        self.subject.clone()
    }

    fn validate(&self) -> Vec<KeyError> {
        let mut errors = non_empty("subject", &self.subject);
        if self.stream.is_none() {
            for (given, key) in [
                (self.durable.is_some(), "durable"),
                (self.ack_wait.is_some(), "ack_wait"),
                (self.max_deliver.is_some(), "max_deliver"),
                (self.max_ack_pending.is_some(), "max_ack_pending"),
            ] {
                if given {
                    errors.push(KeyError::new(
                        key,
                        format!("{key} applies to JetStream sources: add stream = \"...\", or remove {key}"),
                    ));
                }
            }
        } else if self.queue_group.is_some() {
            errors.push(KeyError::new(
                "queue_group",
                "queue_group applies to core NATS sources; JetStream replicas share the durable instead",
            ));
        }
        if let Some(md) = self.max_deliver {
            if md != -1 && md < 1 {
                errors.push(KeyError::new(
                    "max_deliver",
                    format!("{md} is invalid; use -1 (unlimited) or a positive number"),
                ));
            }
        }
        errors
    }

    fn guarantee(&self) -> Guarantee {
        match self.stream {
            Some(_) => Guarantee::AtLeastOnce,
            None => Guarantee::AtMostOnce,
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl EndpointSpec for NatsTarget {
    fn address(&self) -> String {
        self.subject.clone()
    }

    fn deduplicates(&self) -> bool {
        self.dedup
    }

    fn validate(&self) -> Vec<KeyError> {
        non_empty("subject", &self.subject)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

fn yes() -> bool {
    true
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
