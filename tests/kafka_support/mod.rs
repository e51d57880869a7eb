//! Helpers for the Kafka tests (`tests/kafka.rs`,
//! `tests/reliability_kafka.rs`): random topics and group, a producer, a
//! reader that counts results by consuming them, and a private broker
//! ([`tansu::PrivateKafka`]) that a test may kill and restart.
//!
//! Results are counted by consuming them (the test broker's reported high
//! watermark can trail the log end). Time limits only bound a hung test.

#![allow(dead_code)] // each test crate uses a different part

pub mod tansu;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};

use crate::common::{kafka_bootstrap, metric, rand_name, Mqfn};

/// Bounds for a hung test, never timing assertions.
pub const LONG: Duration = Duration::from_secs(120);
pub const READY: Duration = Duration::from_secs(60);

/// A client of the broker at `bootstrap`.
pub fn client(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("allow.auto.create.topics", "false");
    c
}

/// Random topics `{p}.in`, `{p}.out`, `{p}.dlq` and a random group. mqfn
/// creates the topics (`create = { .. }`) before it reports ready.
#[derive(Clone)]
pub struct Fixture {
    pub p: String,
    pub group: String,
    pub partitions: i32,
    pub bootstrap: String,
    /// Where outputs and dead letters go (broker `o`), when not to the
    /// source's broker.
    pub sinks: Option<String>,
    pub producer: FutureProducer,
}

/// One record to produce: its `n` header identifies it.
pub struct Rec {
    pub n: usize,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Rec {
    pub fn new(n: usize, payload: impl Into<Vec<u8>>) -> Self {
        Self {
            n,
            key: None,
            payload: payload.into(),
            headers: vec![],
        }
    }

    pub fn key(mut self, k: impl Into<String>) -> Self {
        self.key = Some(k.into());
        self
    }

    /// A header; its value may be any bytes.
    pub fn header(mut self, k: &str, v: impl Into<Vec<u8>>) -> Self {
        self.headers.push((k.to_owned(), v.into()));
        self
    }
}

impl Fixture {
    /// On the shared test broker.
    pub fn new(partitions: i32) -> Self {
        Self::on(&kafka_bootstrap(), partitions)
    }

    /// On the broker at `bootstrap`.
    pub fn on(bootstrap: &str, partitions: i32) -> Self {
        let producer = client(bootstrap)
            .set("enable.idempotence", "true")
            .create()
            .expect("producer");
        Self {
            p: rand_name("kt"),
            group: rand_name("g"),
            partitions,
            bootstrap: bootstrap.to_owned(),
            sinks: None,
            producer,
        }
    }

    /// Sends outputs and dead letters to the broker at `bootstrap`.
    pub fn sinks_on(mut self, bootstrap: &str) -> Self {
        self.sinks = Some(bootstrap.to_owned());
        self
    }

    pub fn topic(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.p)
    }

    /// A config with one route `r`: `{p}.in` → handler → `{p}.out`, dead
    /// letters to `{p}.dlq`. `props` go under the broker's properties,
    /// `extra` is appended to the route.
    pub fn config(&self, handler: &str, props: &str, extra: &str) -> String {
        let (sink, sink_broker) = match &self.sinks {
            Some(b) => (
                "o",
                format!("\n[brokers.o]\nkind = \"kafka\"\nbootstrap = \"{b}\"\n"),
            ),
            None => ("k", String::new()),
        };
        format!(
            r#"
shutdown_timeout = "20s"

[brokers.k]
kind = "kafka"
bootstrap = "{bootstrap}"
commit_interval = "500ms"

[brokers.k.properties]
"session.timeout.ms" = "6000"
{props}
{sink_broker}
[[routes]]
name = "r"
source = {{ broker = "k", topic = "{p}.in", group = "{g}", create = {{ partitions = {n} }} }}
handler = "{handler}"
output = {{ broker = "{sink}", topic = "{p}.out", create = {{ partitions = {n} }} }}
dead_letter = {{ broker = "{sink}", topic = "{p}.dlq", create = {{ partitions = 1 }} }}
retry = {{ max_attempts = 3, initial_backoff = "10ms", max_backoff = "50ms" }}
{extra}
"#,
            bootstrap = self.bootstrap,
            p = self.p,
            g = self.group,
            n = self.partitions,
        )
    }

    /// Produces the records to `{p}.in`; see [`Fixture::produce_to`].
    pub async fn produce(&self, recs: impl IntoIterator<Item = Rec>) -> BTreeMap<i32, i64> {
        self.produce_to("in", recs).await
    }

    /// Produces the records to `{p}.{suffix}` in order (per partition order
    /// is kept by the idempotent producer) and waits for every delivery
    /// report. Returns the records produced per partition.
    pub async fn produce_to(
        &self,
        suffix: &str,
        recs: impl IntoIterator<Item = Rec>,
    ) -> BTreeMap<i32, i64> {
        let topic = self.topic(suffix);
        let mut pending = Vec::new();
        for r in recs {
            let mut h = OwnedHeaders::new().insert(Header {
                key: "n",
                value: Some(r.n.to_string().as_str()),
            });
            for (k, v) in &r.headers {
                h = h.insert(Header {
                    key: k,
                    value: Some(v.as_slice()),
                });
            }
            let mut rec = FutureRecord::to(&topic).payload(&r.payload).headers(h);
            if let Some(k) = &r.key {
                rec = rec.key(k);
            }
            match self.producer.send_result(rec) {
                Ok(f) => pending.push(f),
                Err((e, _)) => panic!("produce: {e}"),
            }
        }
        let mut per_partition = BTreeMap::new();
        for f in pending {
            let d = f.await.expect("delivery report").expect("delivered");
            *per_partition.entry(d.partition).or_insert(0) += 1;
        }
        per_partition
    }

    /// The group's committed offset on `{p}.in`, per partition (-1: none).
    pub async fn committed(&self) -> Vec<i64> {
        let (group, topic, n) = (self.group.clone(), self.topic("in"), self.partitions);
        let bootstrap = self.bootstrap.clone();
        tokio::task::spawn_blocking(move || {
            let c: BaseConsumer = client(&bootstrap)
                .set("group.id", &group)
                .set("enable.auto.commit", "false")
                .create()
                .expect("consumer");
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_range(&topic, 0, n - 1);
            let got = c
                .committed_offsets(tpl, Duration::from_secs(10))
                .expect("committed offsets");
            (0..n)
                .map(
                    |p| match got.find_partition(&topic, p).map(|e| e.offset()) {
                        Some(Offset::Offset(o)) => o,
                        _ => -1,
                    },
                )
                .collect()
        })
        .await
        .expect("join")
    }

    /// Reads `{p}.{suffix}` from the start with a fresh group (`out` and
    /// `dlq` on the sinks' broker).
    pub fn reader(&self, suffix: &str, partitions: i32) -> Reader {
        let bootstrap = match (&self.sinks, suffix) {
            (Some(sinks), "out" | "dlq") => sinks,
            _ => &self.bootstrap,
        };
        Reader::new(bootstrap, &self.topic(suffix), partitions)
    }
}

/// One consumed record.
#[derive(Debug, Clone)]
pub struct Out {
    pub partition: i32,
    pub key: Option<String>,
    /// The payload as text (lossy).
    pub payload: String,
    /// The payload, byte for byte.
    pub raw: Vec<u8>,
    pub headers: HashMap<String, String>,
    pub timestamp_ms: i64,
}

impl Out {
    pub fn n(&self) -> usize {
        self.headers["n"].parse().expect("n is a number")
    }
}

/// Prints librdkafka's log lines (set `KT_DEBUG=fetch,...` to see them).
struct Printer;

impl rdkafka::ClientContext for Printer {
    fn log(&self, _level: rdkafka::config::RDKafkaLogLevel, fac: &str, line: &str) {
        eprintln!("reader {fac}: {line}");
    }
}

impl rdkafka::consumer::ConsumerContext for Printer {}

/// Reads a topic from the beginning of every partition, on a thread that
/// polls a `BaseConsumer` (as mqfn's own source does).
pub struct Reader {
    rx: tokio::sync::mpsc::UnboundedReceiver<Out>,
    stop: Arc<AtomicBool>,
    pub records: Vec<Out>,
    /// How often each `n` was seen.
    pub counts: BTreeMap<usize, usize>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn to_out(m: &rdkafka::message::BorrowedMessage<'_>) -> Out {
    let headers = m
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| {
                    let v = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                    (h.key.to_owned(), v.into_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    let raw = m.payload().unwrap_or_default().to_vec();
    Out {
        partition: m.partition(),
        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        payload: String::from_utf8_lossy(&raw).into_owned(),
        raw,
        headers,
        timestamp_ms: m.timestamp().to_millis().unwrap_or(0),
    }
}

impl Reader {
    pub fn new(bootstrap: &str, topic: &str, partitions: i32) -> Self {
        let mut config = client(bootstrap);
        config
            .set("group.id", rand_name("reader"))
            .set("enable.auto.commit", "false");
        if let Ok(d) = std::env::var("KT_DEBUG") {
            config
                .set("debug", d)
                .set_log_level(rdkafka::config::RDKafkaLogLevel::Debug);
        }
        let consumer: BaseConsumer<Printer> = config.create_with_context(Printer).expect("reader");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Offset(0))
                .expect("partition");
        }
        consumer.assign(&tpl).expect("assign");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match consumer.poll(Duration::from_millis(100)) {
                    Some(Ok(m)) if tx.send(to_out(&m)).is_err() => return,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => eprintln!("reader error: {e}"),
                    None => {}
                }
            }
        });
        Self {
            rx,
            stop,
            records: Vec::new(),
            counts: BTreeMap::new(),
        }
    }

    fn push(&mut self, out: Out) {
        *self.counts.entry(out.n()).or_insert(0) += 1;
        self.records.push(out);
    }

    /// Takes what arrived, waiting up to `wait` for the first record.
    /// `false` when nothing came.
    pub async fn next(&mut self, wait: Duration) -> bool {
        match tokio::time::timeout(wait, self.rx.recv()).await {
            Ok(Some(out)) => self.push(out),
            Ok(None) => panic!("the reader thread stopped"),
            Err(_) => return false,
        }
        while let Ok(out) = self.rx.try_recv() {
            self.push(out);
        }
        true
    }

    /// Distinct `n` values read.
    pub fn distinct(&self) -> usize {
        self.counts.len()
    }

    /// Results read more than once.
    pub fn duplicates(&self) -> usize {
        self.records.len() - self.distinct()
    }

    /// The first record read with this `n`.
    pub fn get(&self, n: usize) -> Option<&Out> {
        self.records.iter().find(|r| r.n() == n)
    }

    /// Reads until `done(records)`, panicking after `limit`.
    pub async fn until(&mut self, limit: Duration, what: &str, done: impl Fn(&Self) -> bool) {
        let start = Instant::now();
        while !done(self) {
            if start.elapsed() >= limit {
                let mut per: BTreeMap<i32, usize> = BTreeMap::new();
                for x in &self.records {
                    *per.entry(x.partition).or_insert(0) += 1;
                }
                eprintln!("reader stalled: per partition {per:?}");
            }
            assert!(
                start.elapsed() < limit,
                "gave up after {limit:?} waiting for {what}; read {} record(s)",
                self.records.len()
            );
            self.next(Duration::from_millis(500)).await;
        }
    }

    /// Reads until `want` distinct `n` headers arrived.
    pub async fn until_distinct(&mut self, want: usize, limit: Duration) {
        self.until(limit, &format!("{want} distinct results"), |r| {
            r.distinct() >= want
        })
        .await;
    }

    /// Keeps reading until nothing new came for `quiet`, to catch late
    /// duplicates.
    pub async fn drain(&mut self, quiet: Duration) {
        while self.next(quiet).await {}
    }
}

/// A log line without colour codes.
pub fn plain(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| *c == 'm');
        } else {
            out.push(c);
        }
    }
    out.trim().to_owned()
}

/// Prints the tail of an mqfn log when the test fails.
pub struct DumpOnPanic(&'static str, std::path::PathBuf);

impl Drop for DumpOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.1).unwrap_or_default();
            let lines: Vec<&str> = text.lines().filter(|l| !l.contains("librdkafka")).collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!("--- mqfn {} log (last {} lines) ---", self.0, tail.len());
            for l in tail {
                eprintln!("{}", plain(l));
            }
        }
    }
}

pub fn dump(name: &'static str, m: &Mqfn) -> DumpOnPanic {
    DumpOnPanic(name, m.log.clone())
}

/// `mqfn run` with this config, once it reports ready.
pub async fn started(config: &str) -> Mqfn {
    let m = Mqfn::start(config);
    m.wait_ready(READY).await;
    m
}

/// Messages route `r` received so far.
pub async fn received(m: &Mqfn) -> f64 {
    metric(
        &m.metrics().await,
        "mqfn_messages_received_total{route=\"r\"}",
    )
    .unwrap_or(0.0)
}
