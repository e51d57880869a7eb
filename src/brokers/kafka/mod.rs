//! Kafka: consumer groups with contiguous offset commits, an idempotent
//! producer whose delivery reports drive the settle step, topic creation
//! through the admin API.
//!
//! - [`source`]: the route's consumer ([`consumer`] runs its poll thread and
//!   rebalance callbacks; [`offsets`] tracks what may be committed);
//! - [`sink`]: the producer for outputs and dead letters;
//! - [`admin`]: topic creation, reachability and watermarks.

mod admin;
mod consumer;
mod dlq;
pub mod offsets;
mod sink;
mod source;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers as _};
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext, Message as _, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::{BacklogProbe, Broker, BrokerError, Publisher, Source};
use crate::config::{BrokerKind, Endpoint, KafkaConfig, RouteConfig};
use crate::message::{
    Headers, Message, SourceMeta, CORRELATION_HEADER, REPLY_HEADER, TRACEPARENT_HEADER,
};
use crate::telemetry::names;

pub use admin::Topics;

/// How often the broker's reachability is checked.
const PING_EVERY: Duration = Duration::from_secs(5);
/// How long one reachability check or metadata request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A Kafka cluster: one idempotent producer shared by every route, and a
/// consumer per route source.
pub struct KafkaBroker {
    name: String,
    cfg: KafkaConfig,
    producer: FutureProducer<LogContext>,
    topics: Arc<Topics>,
    up: Arc<AtomicBool>,
    stop: CancellationToken,
}

impl KafkaBroker {
    /// Creates the producer. With `wait`, checks that the cluster answers
    /// first; without, reachability is watched in the background (`run`
    /// reports not-ready meanwhile).
    pub async fn connect(name: &str, cfg: &KafkaConfig, wait: bool) -> Result<Self, BrokerError> {
        let up = Arc::new(AtomicBool::new(false));
        let ctx = LogContext {
            broker: name.to_owned(),
            up: Some(up.clone()),
        };
        let producer: FutureProducer<LogContext> = producer_config(name, cfg)
            .create_with_context(ctx)
            .map_err(|e| BrokerError::Connect {
                broker: name.to_owned(),
                message: e.to_string(),
            })?;
        let topics = Arc::new(Topics::new(name, cfg));
        if wait {
            if !admin::ping(producer.clone(), REQUEST_TIMEOUT).await {
                return Err(BrokerError::Connect {
                    broker: name.to_owned(),
                    message: format!(
                        "no answer from {} within {}s; is the broker running and bootstrap right?",
                        cfg.bootstrap,
                        REQUEST_TIMEOUT.as_secs()
                    ),
                });
            }
            set_up(&up, name, true);
        }
        let stop = CancellationToken::new();
        tokio::spawn(watch(
            name.to_owned(),
            producer.clone(),
            up.clone(),
            stop.clone(),
        ));
        Ok(Self {
            name: name.to_owned(),
            cfg: cfg.clone(),
            producer,
            topics,
            up,
            stop,
        })
    }
}

/// Pings the cluster every [`PING_EVERY`] and keeps the up flag current.
async fn watch(
    name: String,
    producer: FutureProducer<LogContext>,
    up: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    loop {
        let ok = admin::ping(producer.clone(), REQUEST_TIMEOUT).await;
        if ok != up.load(Ordering::Relaxed) {
            if ok {
                info!(broker = %name, "Connected to Kafka.");
            } else {
                warn!(broker = %name, "Kafka does not answer; retrying.");
            }
        }
        set_up(&up, &name, ok);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PING_EVERY) => {}
        }
    }
}

fn set_up(flag: &AtomicBool, broker: &str, up: bool) {
    flag.store(up, Ordering::Relaxed);
    metrics::gauge!(names::BROKER_UP, "broker" => broker.to_owned()).set(if up {
        1.0
    } else {
        0.0
    });
}

/// A client config: bootstrap and mqfn's `defaults`, then the user's
/// properties (which may override those defaults).
fn base_config(cfg: &KafkaConfig, defaults: &[(&str, &str)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.bootstrap);
    // Topics are created by `create = { .. }` through the admin API only.
    c.set("allow.auto.create.topics", "false");
    for (k, v) in defaults {
        c.set(*k, *v);
    }
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
    // librdkafka filters by a level taken from the `log` crate at startup;
    // with a `debug` property, let everything through to `tracing`
    // (shown with RUST_LOG=mqfn::brokers::kafka=debug).
    c.set_log_level(if cfg.properties.contains_key("debug") {
        RDKafkaLogLevel::Debug
    } else {
        RDKafkaLogLevel::Info
    });
    c
}

/// Sets `key` to `value`, warning when the user's properties said otherwise.
fn force(c: &mut ClientConfig, broker: &str, key: &str, value: &str) {
    if let Some(given) = c.get(key).filter(|g| *g != value) {
        warn!(
            broker,
            key, given, value, "mqfn needs this Kafka property; overriding it."
        );
    }
    c.set(key, value);
}

fn producer_config(name: &str, cfg: &KafkaConfig) -> ClientConfig {
    let client_id = format!("mqfn/{name}");
    let mut c = base_config(cfg, &[("client.id", &client_id)]);
    // No duplicates or reordering from producer retries; implies acks=all.
    force(&mut c, name, "enable.idempotence", "true");
    c
}

/// The group consumer of one route.
fn consumer_config(name: &str, cfg: &KafkaConfig, route: &RouteConfig) -> ClientConfig {
    let client_id = format!("mqfn/{name}/{}", route.name);
    let reset = route
        .source
        .auto_offset_reset
        .as_deref()
        .unwrap_or("earliest");
    let mut c = base_config(
        cfg,
        &[
            ("client.id", &client_id),
            ("auto.offset.reset", reset),
            ("enable.partition.eof", "false"),
        ],
    );
    // The route's own group, whatever a shared property says.
    c.set("group.id", group_of(route));
    // Offsets are stored and committed by mqfn, contiguously, after the
    // results are confirmed.
    force(&mut c, name, "enable.auto.offset.store", "false");
    force(&mut c, name, "enable.auto.commit", "false");
    c
}

/// The route's consumer group: `group`, else `mqfn-ROUTE`.
pub fn group_of(route: &RouteConfig) -> String {
    route
        .source
        .group
        .clone()
        .unwrap_or_else(|| format!("mqfn-{}", route.name))
}

/// Forwards librdkafka's logs to `tracing` and tracks reachability.
#[derive(Debug, Clone)]
pub struct LogContext {
    broker: String,
    up: Option<Arc<AtomicBool>>,
}

impl ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log(&self.broker, level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            if let Some(up) = &self.up {
                set_up(up, &self.broker, false);
            }
        }
        on_error(&self.broker, &error, reason);
    }
}

impl ConsumerContext for LogContext {}

/// Logs one librdkafka line at a matching level. Property warnings (a
/// consumer property given to the producer) are expected: the properties
/// table is shared by both.
fn log(broker: &str, level: RDKafkaLogLevel, fac: &str, line: &str) {
    use RDKafkaLogLevel as L;
    match level {
        L::Emerg | L::Alert | L::Critical | L::Error => {
            error!(broker, facility = fac, "librdkafka: {line}")
        }
        L::Warning if fac != "CONFWARN" => warn!(broker, facility = fac, "librdkafka: {line}"),
        _ => debug!(broker, facility = fac, "librdkafka: {line}"),
    }
}

fn on_error(broker: &str, error: &KafkaError, reason: &str) {
    warn!(broker, error = %error, reason, "Kafka client error; it reconnects by itself.");
}

/// Builds the envelope of a consumed record. Header values that are not
/// UTF-8 are converted lossily; a header without a value becomes "".
pub fn to_message(m: &BorrowedMessage<'_>, route: &str) -> Message {
    let mut headers = Headers::new();
    if let Some(hs) = m.headers() {
        for h in hs.iter() {
            let value = h.value.map(String::from_utf8_lossy).unwrap_or_default();
            headers.append(h.key, value);
        }
    }
    Message {
        payload: bytes::Bytes::copy_from_slice(m.payload().unwrap_or_default()),
        key: m.key().map(bytes::Bytes::copy_from_slice),
        subject: m.topic().to_owned(),
        route: route.to_owned(),
        meta: SourceMeta::Kafka {
            partition: m.partition(),
            offset: m.offset(),
        },
        attempt: 1,
        traceparent: headers.get(TRACEPARENT_HEADER).map(str::to_owned),
        correlation_id: headers.get(CORRELATION_HEADER).map(str::to_owned),
        reply_to: headers.get(REPLY_HEADER).map(str::to_owned),
        headers,
        deadline: None,
    }
}

#[async_trait]
impl Broker for KafkaBroker {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> BrokerKind {
        BrokerKind::Kafka
    }

    fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    async fn source(
        &self,
        route: &RouteConfig,
        _window: usize,
    ) -> Result<Box<dyn Source>, BrokerError> {
        for ep in [
            Some(&route.source),
            route.output.as_ref(),
            route.dead_letter.as_ref(),
        ]
        .into_iter()
        .flatten()
        .filter(|ep| ep.broker == self.name)
        {
            self.topics.ensure(&self.producer, ep).await?;
        }
        self.topics.require(&self.producer, &route.source).await?;
        let config = consumer_config(&self.name, &self.cfg, route);
        let s = source::KafkaSource::subscribe(&self.name, &self.cfg, route, &config)?;
        Ok(Box::new(s))
    }

    fn publisher(&self) -> Arc<dyn Publisher> {
        Arc::new(sink::KafkaPublisher::new(
            &self.name,
            self.producer.clone(),
            self.topics.clone(),
        ))
    }

    async fn tap(&self, at: &Endpoint) -> Result<BoxStream<'static, Message>, BrokerError> {
        self.topics.ensure(&self.producer, at).await?;
        let topic = at.address().unwrap_or_default().to_owned();
        let err = |message: String| BrokerError::Receive {
            broker: self.name.clone(),
            message: format!("cannot watch topic {topic}: {message}"),
        };
        // A fresh group that never subscribes or commits: it reads the
        // partitions assigned below and leaves no trace on the cluster.
        let mut config = base_config(&self.cfg, &[("enable.partition.eof", "false")]);
        config
            .set(
                "group.id",
                format!("mqfn-tap-{}", uuid::Uuid::new_v4().simple()),
            )
            .set("enable.auto.commit", "false");
        let ctx = LogContext {
            broker: self.name.clone(),
            up: None,
        };
        let consumer: StreamConsumer<LogContext> = config
            .create_with_context(ctx)
            .map_err(|e| err(e.to_string()))?;
        let consumer = Arc::new(consumer);
        // Start at the current end of every partition, from explicit
        // offsets. A trailing end (some brokers report one) only means a
        // few older records are read and filtered out by the caller; never
        // that a new one is missed.
        let ends = admin::ends(consumer.clone(), &topic, REQUEST_TIMEOUT)
            .await
            .map_err(|e| err(e.to_string()))?;
        let mut tpl = TopicPartitionList::new();
        for (partition, end) in ends {
            tpl.add_partition_offset(&topic, partition, Offset::Offset(end))
                .map_err(|e| err(e.to_string()))?;
        }
        consumer.assign(&tpl).map_err(|e| err(e.to_string()))?;
        let broker = self.name.clone();
        Ok(futures::stream::unfold(consumer, move |c| {
            let broker = broker.clone();
            async move {
                loop {
                    match c.recv().await {
                        Ok(m) => {
                            let msg = to_message(&m, "");
                            drop(m);
                            return Some((msg, c));
                        }
                        Err(e) => {
                            debug!(broker = %broker, error = %e, "Tap receive error.");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
        })
        .boxed())
    }

    async fn browse(&self, at: &Endpoint, limit: usize) -> Result<Vec<Message>, BrokerError> {
        dlq::browse(
            &self.name,
            &self.cfg,
            at.address().unwrap_or_default(),
            limit,
        )
        .await
    }

    async fn take(&self, at: &Endpoint) -> Result<Box<dyn Source>, BrokerError> {
        let topic = at.address().unwrap_or_default();
        let s = dlq::TakeSource::open(&self.name, &self.cfg, self.producer.clone(), topic).await?;
        Ok(Box::new(s))
    }

    async fn inbox(&self) -> Result<(String, BoxStream<'static, Message>), BrokerError> {
        Err(BrokerError::Unsupported {
            broker: self.name.clone(),
            message: "Kafka has no reply channel; give the route an `output` so that \
                      `mqfn invoke` can wait for the result there"
                .to_owned(),
        })
    }

    async fn close(&self) {
        self.stop.cancel();
        let producer = self.producer.clone();
        let flushed = tokio::task::spawn_blocking(move || {
            use rdkafka::producer::Producer;
            producer.flush(REQUEST_TIMEOUT)
        })
        .await;
        if let Ok(Err(e)) = flushed {
            warn!(broker = %self.name, error = %e, "Could not flush the Kafka producer before closing.");
        }
    }
}

/// The consumer's lag, sampled by its poll thread, plus what it buffers.
struct ConsumerBacklog {
    lag: Arc<consumer::Lag>,
    tracker: Arc<offsets::Tracker>,
}

#[async_trait]
impl BacklogProbe for ConsumerBacklog {
    async fn backlog(&self) -> Result<u64, BrokerError> {
        Ok(self.lag.total() + self.tracker.queued() as u64)
    }
}
