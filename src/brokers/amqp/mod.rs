//! AMQP 0.9.1 (RabbitMQ): prefetch-bounded consumers with manual acks,
//! publisher-confirmed publishes, topology from config, RPC replies.
//!
//! Each broker keeps two connections. The consuming one carries sources,
//! backlog probes, taps and inboxes; a supervisor opens it, declares the
//! topology, and after a loss reconnects with backoff and declares again,
//! while [`Broker::is_up`] reports false. The publishing one is pooled by
//! deadpool (see [`sink`]), so that flow control on publishes never holds up
//! acks.

pub mod config;
mod connection;
mod dlq;
mod headers;
mod lane;
mod sink;
mod source;
mod topology;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{Broker, BrokerError, Kind as _, Publisher, Source};
pub use config::{AmqpBinding, AmqpConfig, AmqpExchange, AmqpQueue, AmqpSource, AmqpTarget, KIND};

use crate::config::{Endpoint, RouteConfig};
use crate::message::Message;
use connection::{supervise, Link};
use headers::short;

/// How long `source`, `tap` and `inbox` wait for a connection that is down.
const UP_WAIT: Duration = Duration::from_secs(10);

/// A RabbitMQ broker: a supervised consuming connection and a pooled
/// publisher.
pub struct AmqpBroker {
    name: String,
    link: Arc<Link>,
    publisher: Arc<sink::AmqpPublisher>,
    stop: CancellationToken,
    supervisor: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl AmqpBroker {
    /// Starts the supervisor. With `wait`, returns once connected and the
    /// topology is declared, or with the first error (CLI commands);
    /// without, returns at once and connects in the background (`run`).
    pub async fn connect(name: &str, cfg: &AmqpConfig, wait: bool) -> Result<Self, BrokerError> {
        let link = Arc::new(Link::new(name, cfg));
        let publisher = Arc::new(sink::AmqpPublisher::new(name, &cfg.url)?);
        let stop = CancellationToken::new();
        let (tx, rx) = oneshot::channel();
        let supervisor = tokio::spawn(supervise(link.clone(), stop.clone(), wait.then_some(tx)));
        if wait {
            rx.await.map_err(|_| {
                BrokerError::connect(name.to_owned(), "the connection task ended".to_owned())
            })??;
        }
        Ok(Self {
            name: name.to_owned(),
            link,
            publisher,
            stop,
            supervisor: tokio::sync::Mutex::new(Some(supervisor)),
        })
    }

    /// An exclusive, auto-deleted, server-named queue and its messages
    /// (auto-acked: they belong to this process alone).
    async fn private_queue(
        &self,
        bind: Option<(&str, &str)>,
    ) -> Result<(String, BoxStream<'static, Message>), BrokerError> {
        let ch = self.link.channel(Some(UP_WAIT)).await?;
        let fail = |what: &str, e: lapin::Error| {
            BrokerError::setup(
                self.name.clone(),
                format!("cannot {what}: {}", topology::reason(&e)),
            )
        };
        let opts = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        let q = ch
            .queue_declare("".into(), opts, FieldTable::default())
            .await
            .map_err(|e| fail("declare a private queue", e))?;
        let queue = q.name().as_str().to_owned();
        if let Some((exchange, key)) = bind {
            let names =
                short("exchange", exchange).and_then(|x| Ok((x, short("routing key", key)?)));
            let (x, k) = names.map_err(|m| BrokerError::setup(self.name.clone(), m))?;
            ch.queue_bind(
                q.name().clone(),
                x,
                k,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| fail(&format!("bind a private queue to exchange {exchange:?}"), e))?;
        }
        let opts = BasicConsumeOptions {
            no_ack: true,
            exclusive: true,
            ..BasicConsumeOptions::default()
        };
        let consumer = ch
            .basic_consume(
                q.name().clone(),
                "mqfn/private".into(),
                opts,
                FieldTable::default(),
            )
            .await
            .map_err(|e| fail("consume from a private queue", e))?;
        self.link.keep_private(ch);
        let name = queue.clone();
        let stream = consumer
            .take_while(|d| futures::future::ready(d.is_ok()))
            .filter_map(move |d| {
                futures::future::ready(d.ok().map(|d| headers::message(&d, &name, "").0))
            });
        Ok((queue, stream.boxed()))
    }
}

#[async_trait]
impl Broker for AmqpBroker {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        KIND.name()
    }

    fn is_up(&self) -> bool {
        self.link.is_up()
    }

    async fn source(
        &self,
        route: &RouteConfig,
        window: usize,
    ) -> Result<Box<dyn Source>, BrokerError> {
        let Some(src) = route.source.get::<AmqpSource>() else {
            return Err(self.not_mine(&route.source));
        };
        let s = source::AmqpSource::bind(
            self.link.clone(),
            self.publisher.clone(),
            route,
            &src.queue,
            window,
            UP_WAIT,
        )
        .await?;
        Ok(Box::new(s))
    }

    fn publisher(&self) -> Arc<dyn Publisher> {
        self.publisher.clone()
    }

    /// Watches an exchange through a private queue bound with the
    /// endpoint's routing key. A plain queue cannot be watched without
    /// taking messages from its consumers, so that is refused.
    async fn tap(&self, at: &Endpoint) -> Result<BoxStream<'static, Message>, BrokerError> {
        let Some(exchange) = at.get::<AmqpTarget>().and_then(|t| t.exchange.as_ref()) else {
            return Err(BrokerError::unsupported(
                self.name.clone(),
                format!(
                    "cannot watch queue {:?} without taking its messages from its consumers; \
                     publish there through an exchange (exchange = \"...\", routing_key = \"...\", \
                     bound to the queue) or leave the route without an output so that results \
                     come back as RPC replies",
                    at.address()
                ),
            ));
        };
        let (_, key) = sink::route_of(at).unwrap_or_default();
        let (_, stream) = self.private_queue(Some((exchange, key))).await?;
        Ok(stream)
    }

    async fn inbox(&self) -> Result<(String, BoxStream<'static, Message>), BrokerError> {
        self.private_queue(None).await
    }

    async fn browse(&self, at: &Endpoint, limit: usize) -> Result<Vec<Message>, BrokerError> {
        dlq::browse(&self.link, UP_WAIT, &at.address(), limit).await
    }

    async fn take(&self, at: &Endpoint) -> Result<Box<dyn Source>, BrokerError> {
        let s = dlq::TakeSource::open(self.link.clone(), UP_WAIT, &at.address()).await?;
        Ok(Box::new(s))
    }

    fn reserved_headers(&self) -> &'static [&'static str] {
        &[
            "x-death",
            "x-delivery-count",
            "x-first-death-",
            "x-last-death-",
        ]
    }

    async fn close(&self) {
        // The supervisor closes the consuming connection on its way out.
        self.stop.cancel();
        if let Some(task) = self.supervisor.lock().await.take() {
            let _ = task.await;
        }
        self.publisher.close().await;
    }
}
