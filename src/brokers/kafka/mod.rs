//! Kafka: consumer groups with contiguous offset commits, an idempotent
//! producer whose delivery reports drive the settle step, topic creation
//! through the admin API.
//!
//! - [`source`]: the route's consumer ([`consumer`] runs its poll thread,
//!   [`rebalance`] its group callbacks, [`offsets`] tracks what may be
//!   committed);
//! - [`sink`]: the producer for outputs and dead letters;
//! - [`admin`]: topic creation, reachability and watermarks;
//! - [`tap`] (`mqfn invoke`) and [`dlq`] (`mqfn dlq`).

mod admin;
mod client;
pub mod config;
mod consumer;
mod dlq;
mod offsets;
mod rebalance;
mod sink;
mod source;
mod tap;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use rdkafka::message::{BorrowedMessage, Headers as _};
use rdkafka::producer::FutureProducer;
use rdkafka::Message as _;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{BacklogProbe, Broker, BrokerError, Kind as _, Publisher, Source};
pub use config::{KafkaConfig, KafkaSource, KafkaTarget, Latency, OffsetReset, TopicCreate, KIND};

use crate::config::{Endpoint, RouteConfig};
use crate::message::{
    Headers, Message, Position, CORRELATION_HEADER, REPLY_HEADER, TRACEPARENT_HEADER,
};
use crate::telemetry::names;

pub use admin::Topics;
pub use client::group_of;
use client::{base_config, consumer_config, producer_config, LogContext};

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
            .map_err(|e| BrokerError::connect(name.to_owned(), e.to_string()).with_source(e))?;
        let topics = Arc::new(Topics::new(name, cfg));
        if wait {
            if !admin::ping(producer.clone(), REQUEST_TIMEOUT).await {
                return Err(BrokerError::connect(
                    name.to_owned(),
                    format!(
                        "no answer from {} within {}s; is the broker running and bootstrap right?",
                        cfg.bootstrap,
                        REQUEST_TIMEOUT.as_secs()
                    ),
                ));
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
                let suppressed = crate::telemetry::quiet::Quiet::of(&name).recovered();
                info!(broker = %name, suppressed, "Connected to Kafka.");
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
        position: position(m.topic(), m.partition(), m.offset()),
        attempt: 1,
        traceparent: headers.get(TRACEPARENT_HEADER).map(str::to_owned),
        correlation_id: headers.get(CORRELATION_HEADER).map(str::to_owned),
        reply_to: headers.get(REPLY_HEADER).map(str::to_owned),
        headers,
        deadline: None,
    }
}

/// `partition/offset` in the topic, stable across redeliveries.
fn position(topic: &str, partition: i32, offset: i64) -> Position {
    let (mut p, mut o) = (itoa::Buffer::new(), itoa::Buffer::new());
    Position::stable_parts(topic, &[p.format(partition), "/", o.format(offset)])
        .in_partition(partition)
}

#[async_trait]
impl Broker for KafkaBroker {
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
        let Some(src) = route.source.get::<KafkaSource>() else {
            return Err(self.not_mine(&route.source));
        };
        self.topics.require(&self.producer, &route.source).await?;
        let config = consumer_config(&self.name, &self.cfg, route, src);
        let s = source::KafkaSource::subscribe(&self.name, &self.cfg, route, src, &config, window)?;
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
        tap::open(&self.name, &self.cfg, &at.address()).await
    }

    async fn browse(&self, at: &Endpoint, limit: usize) -> Result<Vec<Message>, BrokerError> {
        dlq::browse(&self.name, &self.cfg, &at.address(), limit).await
    }

    async fn take(&self, at: &Endpoint) -> Result<Box<dyn Source>, BrokerError> {
        let topic = at.address();
        let s = dlq::TakeSource::open(&self.name, &self.cfg, self.producer.clone(), &topic).await?;
        Ok(Box::new(s))
    }

    async fn inbox(&self) -> Result<(String, BoxStream<'static, Message>), BrokerError> {
        Err(BrokerError::unsupported(
            self.name.clone(),
            "Kafka has no reply channel; give the route an `output` so that \
                      `mqfn invoke` can wait for the result there"
                .to_owned(),
        ))
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
