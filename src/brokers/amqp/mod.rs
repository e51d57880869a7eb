//! AMQP 0.9.1 (RabbitMQ): prefetch-bounded consumers with manual acks,
//! publisher-confirmed publishes, topology from config, RPC replies.
//!
//! Each broker keeps two connections. The consuming one carries sources,
//! backlog probes, taps and inboxes; a supervisor opens it, declares the
//! topology, and after a loss reconnects with backoff and declares again,
//! while [`Broker::is_up`] reports false. The publishing one is pooled by
//! deadpool (see [`sink`]), so that flow control on publishes never holds up
//! acks.

mod headers;
mod sink;
mod source;
mod topology;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, Event};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{reconnect_delay, Broker, BrokerError, Publisher, Source};
use crate::config::{AmqpConfig, BrokerKind, Endpoint, RouteConfig};
use crate::message::Message;
use crate::telemetry::{names, redact_url};
use headers::short;

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `source`, `tap` and `inbox` wait for a connection that is down.
const UP_WAIT: Duration = Duration::from_secs(10);
/// How often the supervisor checks the connection besides its events.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The name a connection shows in RabbitMQ: broker, process and purpose.
fn connection_name(broker: &str, purpose: &str) -> String {
    format!("mqfn/{broker}/{}/{purpose}", std::process::id())
}

/// The consuming connection, as the supervisor keeps it.
pub(crate) struct Link {
    broker: String,
    cfg: AmqpConfig,
    current: watch::Sender<Option<Arc<Connection>>>,
    up: AtomicBool,
    last_error: std::sync::Mutex<String>,
    /// Channels of taps and inboxes, closed before the connection so that
    /// a dropped stream never races the connection's close.
    private: std::sync::Mutex<Vec<Channel>>,
}

impl Link {
    fn receive_err(&self, message: impl Into<String>) -> BrokerError {
        BrokerError::Receive {
            broker: self.broker.clone(),
            message: message.into(),
        }
    }

    fn set(&self, conn: Option<Arc<Connection>>, why: &str) {
        let up = conn.is_some();
        self.up.store(up, Ordering::Relaxed);
        self.current.send_replace(conn);
        metrics::gauge!(names::BROKER_UP, "broker" => self.broker.clone()).set(if up {
            1.0
        } else {
            0.0
        });
        let url = redact_url(&self.cfg.url);
        if up {
            info!(broker = %self.broker, url, "Connected to AMQP; topology declared.");
        } else {
            *self.last_error.lock().expect("last error lock") = why.to_owned();
            warn!(broker = %self.broker, url, reason = why, "Lost the AMQP connection; reconnecting.");
        }
    }

    /// A new channel on the current connection, waiting for one up to
    /// `wait` (`None`: for as long as it takes).
    async fn channel(&self, wait: Option<Duration>) -> Result<Channel, BrokerError> {
        let mut rx = self.current.subscribe();
        let conn = {
            let ready = rx.wait_for(Option::is_some);
            let got = match wait {
                Some(w) => tokio::time::timeout(w, ready).await.ok(),
                None => Some(ready.await),
            };
            match got {
                Some(Ok(c)) => c.clone(),
                _ => None,
            }
        };
        let Some(conn) = conn else {
            let why = self.last_error.lock().expect("last error lock").clone();
            return Err(BrokerError::Connect {
                broker: self.broker.clone(),
                message: format!("not connected ({why})"),
            });
        };
        conn.create_channel()
            .await
            .map_err(|e| self.receive_err(format!("cannot open a channel: {e}")))
    }

    /// Connects and declares the topology.
    async fn open(&self) -> Result<Connection, BrokerError> {
        let err = |message: String| BrokerError::Connect {
            broker: self.broker.clone(),
            message,
        };
        let props = ConnectionProperties::default()
            .with_connection_name(connection_name(&self.broker, "consume").into());
        let url = redact_url(&self.cfg.url);
        let conn =
            match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(&self.cfg.url, props))
                .await
            {
                Err(_) => {
                    return Err(err(format!(
                        "no answer from {url} within {CONNECT_TIMEOUT:?}"
                    )))
                }
                Ok(Err(e)) => {
                    return Err(err(format!(
                    "{} (url {url}); is RabbitMQ running and are the URL, user and vhost right?",
                    topology::reason(&e)
                )))
                }
                Ok(Ok(c)) => c,
            };
        if let Err(e) = topology::declare(&conn, &self.broker, &self.cfg).await {
            let _ = conn.close(200, "OK".into()).await;
            return Err(e);
        }
        Ok(conn)
    }
}

/// Keeps the consuming connection up until `stop`. With `first`, the
/// outcome of the first attempt is reported there, and a failure ends it
/// (CLI commands fail fast); otherwise it retries for ever.
async fn supervise(
    link: Arc<Link>,
    stop: CancellationToken,
    mut first: Option<oneshot::Sender<Result<(), BrokerError>>>,
) {
    let mut failures = 0u32;
    loop {
        let opened = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            c = link.open() => c,
        };
        match opened {
            Ok(conn) => {
                failures = 0;
                let conn = Arc::new(conn);
                let events = conn.events_listener();
                link.set(Some(conn.clone()), "");
                if let Some(tx) = first.take() {
                    let _ = tx.send(Ok(()));
                }
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => {
                        link.current.send_replace(None);
                        link.up.store(false, Ordering::Relaxed);
                        let private = std::mem::take(&mut *link.private.lock().expect("private lock"));
                        for ch in private {
                            let _ = ch.close(200, "OK".into()).await;
                        }
                        let _ = conn.close(200, "OK".into()).await;
                        return;
                    }
                    why = lost(&conn, events) => link.set(None, &why),
                }
            }
            Err(e) => {
                if let Some(tx) = first.take() {
                    let _ = tx.send(Err(e));
                    return;
                }
                failures += 1;
                warn!(broker = %link.broker, error = %e, "Cannot connect to AMQP yet; retrying.");
                let why = match &e {
                    BrokerError::Connect { message, .. } | BrokerError::Setup { message, .. } => {
                        message.clone()
                    }
                    other => other.to_string(),
                };
                *link.last_error.lock().expect("last error lock") = why;
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(reconnect_delay(failures)) => {}
                }
            }
        }
    }
}

/// Resolves with the reason once the connection is no longer usable.
async fn lost(conn: &Connection, events: impl futures::Stream<Item = Event>) -> String {
    let mut events = std::pin::pin!(events);
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    loop {
        tokio::select! {
            ev = events.next() => match ev {
                // Channel errors come here too; only a dead connection counts.
                Some(Event::Error(e)) if !conn.status().connected() => return topology::reason(&e),
                None => return "the connection closed".to_owned(),
                Some(_) => {}
            },
            _ = tick.tick() => if !conn.status().connected() {
                return "the connection closed".to_owned();
            },
        }
    }
}

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
        let link = Arc::new(Link {
            broker: name.to_owned(),
            cfg: cfg.clone(),
            current: watch::channel(None).0,
            up: AtomicBool::new(false),
            last_error: std::sync::Mutex::new("connecting".to_owned()),
            private: std::sync::Mutex::new(Vec::new()),
        });
        metrics::gauge!(names::BROKER_UP, "broker" => name.to_owned()).set(0.0);
        let publisher = Arc::new(sink::AmqpPublisher::new(name, &cfg.url)?);
        let stop = CancellationToken::new();
        let (tx, rx) = oneshot::channel();
        let supervisor = tokio::spawn(supervise(link.clone(), stop.clone(), wait.then_some(tx)));
        if wait {
            rx.await.map_err(|_| BrokerError::Connect {
                broker: name.to_owned(),
                message: "the connection task ended".to_owned(),
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
        let fail = |what: &str, e: lapin::Error| BrokerError::Setup {
            broker: self.name.clone(),
            message: format!("cannot {what}: {}", topology::reason(&e)),
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
            let (x, k) = names.map_err(|m| BrokerError::Setup {
                broker: self.name.clone(),
                message: m,
            })?;
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
        {
            let mut private = self.link.private.lock().expect("private lock");
            private.retain(|c| c.status().connected());
            private.push(ch);
        }
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

    fn kind(&self) -> BrokerKind {
        BrokerKind::Amqp
    }

    fn is_up(&self) -> bool {
        self.link.up.load(Ordering::Relaxed)
    }

    async fn source(
        &self,
        route: &RouteConfig,
        window: usize,
    ) -> Result<Box<dyn Source>, BrokerError> {
        let s = source::AmqpSource::bind(
            self.link.clone(),
            self.publisher.clone(),
            route,
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
        let Some(exchange) = &at.exchange else {
            return Err(BrokerError::Unsupported {
                broker: self.name.clone(),
                message: format!(
                    "cannot watch queue {:?} without taking its messages from its consumers; \
                     publish there through an exchange (exchange = \"...\", routing_key = \"...\", \
                     bound to the queue) or leave the route without an output so that results \
                     come back as RPC replies",
                    at.address().unwrap_or_default()
                ),
            });
        };
        let (_, key) = sink::route_of(at);
        let (_, stream) = self.private_queue(Some((exchange, key))).await?;
        Ok(stream)
    }

    async fn inbox(&self) -> Result<(String, BoxStream<'static, Message>), BrokerError> {
        self.private_queue(None).await
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
