//! NATS: core subjects (at-most-once, queue groups) and JetStream (durable
//! pull consumers, PubAck-confirmed publishes).

pub mod config;
mod connection;
mod dlq;
mod headers;
mod sink;
mod source;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_nats::jetstream;
use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use tracing::warn;

use super::{BacklogProbe, Broker, BrokerError, Kind as _, Publisher, Source};
pub use config::{NatsConfig, NatsSource, NatsStream, NatsTarget, Storage, KIND};

use crate::config::{Endpoint, RouteConfig};
use crate::message::Message;
use crate::telemetry::{names, redact_url};
use connection::{
    connect_on_io_thread, declare_streams_when_up, ensure_streams, on_event, IoThread,
};
use headers::core_message;

/// A NATS connection with its JetStream context.
pub struct NatsBroker {
    name: String,
    cfg: NatsConfig,
    client: async_nats::Client,
    js: jetstream::Context,
    up: Arc<AtomicBool>,
    _io: IoThread,
}

impl NatsBroker {
    /// Connects. With `wait` false the connection is made in the background
    /// and retried for ever, so that `run` starts while NATS is down.
    pub async fn connect(name: &str, cfg: &NatsConfig, wait: bool) -> Result<Self, BrokerError> {
        let err = |message: String| BrokerError::connect(name.to_owned(), message);
        let mut opts = match (&cfg.credentials_file, &cfg.nkey_file) {
            (Some(path), _) => async_nats::ConnectOptions::with_credentials_file(path)
                .await
                .map_err(|e| err(format!("cannot read credentials_file {path}: {e}")))?,
            (None, Some(path)) => {
                let seed = std::fs::read_to_string(path)
                    .map_err(|e| err(format!("cannot read nkey_file {path}: {e}")))?;
                async_nats::ConnectOptions::with_nkey(seed.trim().to_owned())
            }
            (None, None) => async_nats::ConnectOptions::new(),
        };
        let up = Arc::new(AtomicBool::new(false));
        let flag = up.clone();
        let broker = name.to_owned();
        let url = redact_url(&cfg.url);
        if let Some(ca) = &cfg.tls_ca_file {
            opts = opts.add_root_certificates(ca.into()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&cfg.tls_cert_file, &cfg.tls_key_file) {
            opts = opts
                .add_client_certificate(cert.into(), key.into())
                .require_tls(true);
        }
        opts = opts
            .name(format!("mqfn/{name}"))
            .connection_timeout(cfg.connect_timeout)
            .max_reconnects(None)
            .event_callback(move |event| {
                let (flag, broker, url) = (flag.clone(), broker.clone(), url.clone());
                async move { on_event(&flag, &broker, &url, event) }
            });
        if cfg.tls_required {
            opts = opts.require_tls(true);
        }
        if !wait {
            opts = opts.retry_on_initial_connect();
        }
        let addrs: Vec<String> = cfg.url.split(',').map(|a| a.trim().to_owned()).collect();
        let (client, io) = connect_on_io_thread(name, opts, addrs).await.map_err(|e| {
            err(format!(
                "{e} (url {}); is the server running and the URL right?",
                redact_url(&cfg.url)
            ))
        })?;
        if client.connection_state() == async_nats::connection::State::Connected {
            up.store(true, Ordering::Relaxed);
            metrics::gauge!(names::BROKER_UP, "broker" => name.to_owned()).set(1.0);
        }
        let js = jetstream::new(client.clone());
        if !cfg.streams.is_empty() {
            let task = declare_streams_when_up(name.to_owned(), js.clone(), cfg.streams.clone());
            if wait {
                // CLI commands: declare before publishing, within a bound.
                let _ = tokio::time::timeout(cfg.connect_timeout, task).await;
            } else {
                tokio::spawn(task);
            }
        }
        Ok(Self {
            name: name.to_owned(),
            cfg: cfg.clone(),
            client,
            js,
            up,
            _io: io,
        })
    }

    /// Creates the declared streams that are missing.
    async fn ensure_streams(&self) -> Result<(), BrokerError> {
        ensure_streams(&self.name, &self.js, &self.cfg.streams).await
    }
}

#[async_trait]
impl Broker for NatsBroker {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        KIND.name()
    }

    fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    async fn source(
        &self,
        route: &RouteConfig,
        window: usize,
    ) -> Result<Box<dyn Source>, BrokerError> {
        let Some(src) = route.source.get::<NatsSource>() else {
            return Err(self.not_mine(&route.source));
        };
        if let Some(stream) = &src.stream {
            self.ensure_streams().await?;
            let s = source::JetStreamSource::bind(&self.name, &self.js, route, src, stream, window)
                .await?;
            Ok(Box::new(s))
        } else {
            let s = source::CoreSource::subscribe(&self.name, &self.client, route, src).await?;
            Ok(Box::new(s))
        }
    }

    fn publisher(&self) -> Arc<dyn Publisher> {
        Arc::new(sink::NatsPublisher::new(
            &self.name,
            self.client.clone(),
            self.cfg.jetstream.then(|| self.js.clone()),
        ))
    }

    async fn tap(&self, at: &Endpoint) -> Result<BoxStream<'static, Message>, BrokerError> {
        let subject = at.address();
        let sub =
            self.client.subscribe(subject).await.map_err(|e| {
                BrokerError::receive(self.name.clone(), e.to_string()).with_source(e)
            })?;
        self.client
            .flush()
            .await
            .map_err(|e| BrokerError::receive(self.name.clone(), e.to_string()).with_source(e))?;
        Ok(sub.map(|m| core_message(m, "")).boxed())
    }

    async fn inbox(&self) -> Result<(String, BoxStream<'static, Message>), BrokerError> {
        let inbox = self.client.new_inbox();
        let at = Endpoint::new(&self.name, Arc::new(NatsTarget::new(inbox.clone())));
        let stream = self.tap(&at).await?;
        Ok((inbox, stream))
    }

    async fn browse(&self, at: &Endpoint, limit: usize) -> Result<Vec<Message>, BrokerError> {
        dlq::browse(&self.name, &self.js, &at.address(), limit).await
    }

    async fn take(&self, at: &Endpoint) -> Result<Box<dyn Source>, BrokerError> {
        let s = dlq::TakeSource::open(&self.name, &self.js, &at.address()).await?;
        Ok(Box::new(s))
    }

    fn reserved_headers(&self) -> &'static [&'static str] {
        &["Nats-"]
    }

    async fn close(&self) {
        if let Err(e) = self.client.flush().await {
            warn!(broker = %self.name, error = %e, "Could not flush NATS before closing.");
        }
    }
}

/// The JetStream consumer's pending count, for the autoscaler.
struct ConsumerBacklog {
    broker: String,
    consumer: jetstream::consumer::Consumer<jetstream::consumer::pull::Config>,
}

#[async_trait]
impl BacklogProbe for ConsumerBacklog {
    async fn backlog(&self) -> Result<u64, BrokerError> {
        let info =
            self.consumer.get_info().await.map_err(|e| {
                BrokerError::receive(self.broker.clone(), e.to_string()).with_source(e)
            })?;
        Ok(info.num_pending)
    }
}
