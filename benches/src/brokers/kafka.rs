//! Kafka: three topics per run (input and output with `--partitions`
//! partitions, 4 by default; dead letter with 1), and the baseline: a `StreamConsumer` in a fresh group,
//! an idempotent `FutureProducer`, and the input offset stored only after
//! the output's delivery report, in consumption order.
//!
//! Results are counted by consuming the output: the test broker's
//! watermarks are not reliable.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, FuturesOrdered, FuturesUnordered};
use futures::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::{say_ready, Counter, Harness, FILL_WINDOW};
use mqfn::brokers::kafka::Latency;

use crate::names::Names;
use crate::opts::Broker;
use crate::Result;

/// Partitions of the input and output topics unless `--partitions` says.
pub const PARTITIONS: i32 = 4;
/// As the issue asks for the test broker: short, so a dead member is
/// noticed quickly.
const SESSION_TIMEOUT_MS: &str = "6000";

/// The Kafka harness.
pub struct Kafka {
    bootstrap: String,
    partitions: i32,
    latency: Latency,
    /// The publisher of every run, made at the first publish: a producer
    /// per publish would time its connection set-up too (`--wake`).
    producer: tokio::sync::OnceCell<FutureProducer>,
}

fn client(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c
}

fn producer_with(bootstrap: &str, props: &[(&str, &str)]) -> Result<FutureProducer> {
    let mut c = client(bootstrap);
    for (k, v) in props {
        c.set(*k, *v);
    }
    c.set("enable.idempotence", "true")
        .create()
        .map_err(|e| format!("Kafka producer: {e}"))
}

impl Kafka {
    /// Checks that the broker answers; runs get topics of `partitions`,
    /// and mqfn's broker the `latency` profile.
    pub async fn connect(bootstrap: &str, partitions: i32, latency: Latency) -> Result<Self> {
        let me = Self {
            bootstrap: bootstrap.to_owned(),
            partitions: partitions.max(1),
            latency,
            producer: tokio::sync::OnceCell::new(),
        };
        me.admin()?
            .inner()
            .fetch_metadata(Some("mqfn-bench-probe"), Duration::from_secs(10))
            .map_err(|e| format!("Kafka at {bootstrap}: {e}"))?;
        Ok(me)
    }

    /// A short-lived admin client. A long-lived one keeps deleted topics in
    /// its metadata cache, and librdkafka crashes on the test broker's
    /// metadata for them.
    fn admin(&self) -> Result<AdminClient<DefaultClientContext>> {
        client(&self.bootstrap)
            .create()
            .map_err(|e| format!("Kafka at {}: {e}", self.bootstrap))
    }

    /// The publisher of every run.
    async fn producer(&self) -> Result<&FutureProducer> {
        self.producer
            .get_or_try_init(|| async { producer_with(&self.bootstrap, self.latency.producer()) })
            .await
    }

    /// A consumer reading every partition of `n.output()` from the start,
    /// with no group membership to wait for; results go to `tx`.
    fn read_output(&self, n: &Names, tx: mpsc::UnboundedSender<Bytes>) -> Result<Reader> {
        let consumer: StreamConsumer = client(&self.bootstrap)
            .set(
                "group.id",
                format!("{}-tap-{}", n.id, uuid::Uuid::new_v4().simple()),
            )
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()
            .map_err(|e| e.to_string())?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions {
            tpl.add_partition_offset(&n.output(), p, Offset::Beginning)
                .map_err(|e| e.to_string())?;
        }
        consumer.assign(&tpl).map_err(|e| e.to_string())?;
        let task = tokio::spawn(async move {
            let mut s = consumer.stream();
            while let Some(m) = s.next().await {
                let Ok(m) = m else { continue };
                let p = Bytes::copy_from_slice(m.payload().unwrap_or_default());
                if tx.send(p).is_err() {
                    return;
                }
            }
        });
        Ok(Reader(task))
    }
}

/// Stops the output consumer when dropped.
struct Reader(tokio::task::JoinHandle<()>);

impl Drop for Reader {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Counts what the output consumer has read.
struct ReadCount {
    seen: Arc<AtomicU64>,
    _reader: Reader,
}

#[async_trait]
impl Counter for ReadCount {
    async fn count(&mut self) -> Result<u64> {
        Ok(self.seen.load(Ordering::Relaxed))
    }
}

fn delivered(
    r: Option<
        Result<
            rdkafka::producer::future_producer::OwnedDeliveryResult,
            futures::channel::oneshot::Canceled,
        >,
    >,
) -> Result<()> {
    match r {
        None | Some(Ok(Ok(_))) => Ok(()),
        Some(Ok(Err((e, _)))) => Err(format!("not delivered: {e}")),
        Some(Err(_)) => Err("the producer went away".to_owned()),
    }
}

#[async_trait]
impl Harness for Kafka {
    fn kind(&self) -> Broker {
        Broker::Kafka
    }

    async fn create(&self, n: &Names) -> Result<()> {
        let (input, output, dlq) = (n.input(), n.output(), n.dead_letter());
        let topics = [
            NewTopic::new(&input, self.partitions, TopicReplication::Fixed(1)),
            NewTopic::new(&output, self.partitions, TopicReplication::Fixed(1)),
            NewTopic::new(&dlq, 1, TopicReplication::Fixed(1)),
        ];
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = self
            .admin()?
            .create_topics(&topics, &opts)
            .await
            .map_err(|e| format!("cannot create topics: {e}"))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, e)) => return Err(format!("cannot create topic {t}: {e}")),
            }
        }
        Ok(())
    }

    async fn prepare(&self, n: &Names) -> Result<()> {
        let producer = self.producer().await?.clone();
        let topic = n.input();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(10))
                .map(|_| ())
                .map_err(|e| format!("metadata of {topic}: {e}"))
        })
        .await
        .map_err(|e| e.to_string())?
    }

    async fn publish(&self, n: &Names, mut payloads: BoxStream<'static, Bytes>) -> Result<u64> {
        let producer = self.producer().await?;
        let topic = n.input();
        let mut acks: FuturesUnordered<DeliveryFuture> = FuturesUnordered::new();
        let mut sent = 0;
        while let Some(p) = payloads.next().await {
            if acks.len() >= FILL_WINDOW {
                delivered(acks.next().await)?;
            }
            loop {
                match producer.send_result(FutureRecord::<(), [u8]>::to(&topic).payload(&p[..])) {
                    Ok(f) => {
                        acks.push(f);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        if acks.is_empty() {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        } else {
                            delivered(acks.next().await)?;
                        }
                    }
                    Err((e, _)) => return Err(format!("produce failed: {e}")),
                }
            }
            sent += 1;
        }
        while !acks.is_empty() {
            delivered(acks.next().await)?;
        }
        producer
            .flush(Timeout::After(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        Ok(sent)
    }

    async fn counter(&self, n: &Names) -> Result<Box<dyn Counter>> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let reader = self.read_output(n, tx)?;
        let seen = Arc::new(AtomicU64::new(0));
        let count = seen.clone();
        tokio::spawn(async move {
            while rx.recv().await.is_some() {
                count.fetch_add(1, Ordering::Relaxed);
            }
        });
        Ok(Box::new(ReadCount {
            seen,
            _reader: reader,
        }))
    }

    async fn tap(&self, n: &Names) -> Result<BoxStream<'static, Bytes>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let reader = self.read_output(n, tx)?;
        Ok(
            futures::stream::unfold((rx, reader), |(mut rx, reader)| async move {
                rx.recv().await.map(|p| (p, (rx, reader)))
            })
            .boxed(),
        )
    }

    /// Kafka topics are left in place. Deleting them made librdkafka crash
    /// in this process (a segfault in `rd_kafka_metadata_cache_find`, seen
    /// in a core dump) when tansu later answered metadata requests about
    /// the deleted topics. The names are random per run; restart the test
    /// broker to reclaim its memory.
    async fn delete(&self, _n: &Names) {}

    fn broker_toml(&self, _runs: &[Names]) -> String {
        let latency = match self.latency {
            Latency::Low => "latency = \"low\"\n",
            Latency::Default => "",
        };
        format!(
            "[brokers.k]\nkind = \"kafka\"\nbootstrap = \"{}\"\n{latency}properties = {{ \"session.timeout.ms\" = \"{SESSION_TIMEOUT_MS}\" }}\n",
            self.bootstrap
        )
    }

    fn route_toml(
        &self,
        n: &Names,
        route: &str,
        workers: &str,
        handler: &str,
        _dedup: bool,
    ) -> String {
        format!(
            r#"[[routes]]
name = "{route}"
source = {{ broker = "k", topic = "{input}", group = "{id}", create = {{ partitions = {partitions} }} }}
handler = "{handler}"
output = {{ broker = "k", topic = "{output}" }}
dead_letter = {{ broker = "k", topic = "{dlq}" }}
workers = {workers}
"#,
            input = n.input(),
            id = n.id,
            output = n.output(),
            dlq = n.dead_letter(),
            partitions = self.partitions,
        )
    }
}

/// The baseline: consume, produce the payload to the output, and store
/// the input offset once the delivery report is in; offsets are stored in
/// consumption order, so a stored offset never skips an unfinished
/// message. At most `window` messages in flight. Auto-commit of stored
/// offsets every 5s (librdkafka's default), as mqfn's `commit_interval`.
/// Its clients get the properties of mqfn's `latency` profile.
pub async fn baseline(bootstrap: &str, n: &Names, window: usize, latency: Latency) -> Result<()> {
    let mut config = client(bootstrap);
    for (k, v) in latency.consumer() {
        config.set(*k, *v);
    }
    let consumer: StreamConsumer = config
        .set("group.id", &n.id)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", SESSION_TIMEOUT_MS)
        .create()
        .map_err(|e| format!("Kafka consumer: {e}"))?;
    let producer = producer_with(bootstrap, latency.producer())?;
    let (input, output) = (n.input(), Arc::new(n.output()));
    consumer.subscribe(&[&input]).map_err(|e| e.to_string())?;
    let mut inflight = FuturesOrdered::new();
    let store = |r: Result<(i32, i64)>| -> Result<()> {
        let (p, o) = r?;
        consumer
            .store_offset(&input, p, o)
            .map_err(|e| format!("store offset: {e}"))
    };
    say_ready();
    loop {
        if inflight.len() >= window {
            if let Some(r) = inflight.next().await {
                store(r)?;
            }
            continue;
        }
        tokio::select! {
            biased;
            Some(r) = inflight.next(), if !inflight.is_empty() => store(r)?,
            m = consumer.recv() => {
                let m = m.map_err(|e| e.to_string())?;
                let (p, o) = (m.partition(), m.offset());
                let payload = Bytes::copy_from_slice(m.payload().unwrap_or_default());
                let (producer, output) = (producer.clone(), output.clone());
                inflight.push_back(async move {
                    producer
                        .send(FutureRecord::<(), [u8]>::to(&output).payload(&payload[..]), Timeout::Never)
                        .await
                        .map_err(|(e, _)| format!("not delivered: {e}"))?;
                    Ok((p, o))
                });
            }
        }
    }
}
