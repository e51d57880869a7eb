//! What to measure, and where the brokers and binaries are.

use std::path::PathBuf;

/// A broker kind under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broker {
    /// NATS JetStream.
    Nats,
    /// Kafka (here a Kafka-compatible broker).
    Kafka,
    /// AMQP 0.9.1 (RabbitMQ).
    Amqp,
}

impl Broker {
    /// Every broker, in report order.
    pub const ALL: [Broker; 3] = [Broker::Nats, Broker::Kafka, Broker::Amqp];

    /// The name on the command line and in the report.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Nats => "nats",
            Self::Kafka => "kafka",
            Self::Amqp => "amqp",
        }
    }

    /// Parses `nats`, `kafka`, `amqp` (or `all`, which gives every broker).
    pub fn parse_list(s: &str) -> Result<Vec<Broker>, String> {
        match s {
            "all" => Ok(Self::ALL.to_vec()),
            "nats" => Ok(vec![Self::Nats]),
            "kafka" => Ok(vec![Self::Kafka]),
            "amqp" => Ok(vec![Self::Amqp]),
            other => Err(format!(
                "{other:?} is not a broker; expected nats, kafka, amqp or all"
            )),
        }
    }
}

/// Broker addresses; the same environment variables as the tests.
#[derive(Debug, Clone)]
pub struct Urls {
    /// `NATS_URL`, default `nats://127.0.0.1:4222`.
    pub nats: String,
    /// `KAFKA_BOOTSTRAP`, default `127.0.0.1:9092`.
    pub kafka: String,
    /// `AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`.
    pub amqp: String,
}

impl Urls {
    /// From the environment, with localhost defaults.
    pub fn from_env() -> Self {
        let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
        Self {
            nats: var("NATS_URL", "nats://127.0.0.1:4222"),
            kafka: var("KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
            amqp: var("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
        }
    }
}

/// Everything one bench run needs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Brokers to measure, in order.
    pub brokers: Vec<Broker>,
    /// Messages per throughput run.
    pub messages: u64,
    /// Payload bytes.
    pub size: usize,
    /// Baseline/mqfn pairs (alternated).
    pub pairs: usize,
    /// In-flight window: the baseline's bound, and mqfn's `workers.max` ×
    /// its window factor (2).
    pub window: usize,
    /// Length of the paced latency run, seconds; 0 skips it.
    pub latency_secs: f64,
    /// Largest number of messages in a latency run.
    pub latency_max: u64,
    /// Pace the latency run at this many messages per second instead of
    /// half the baseline's median rate.
    pub latency_rate: Option<f64>,
    /// Messages waiting for the memory-under-backlog run; 0 skips it.
    pub backlog: u64,
    /// How long RSS is sampled under the backlog, seconds.
    pub backlog_secs: f64,
    /// Measure idle RSS with three routes.
    pub idle: bool,
    /// Measure process-handler overhead.
    pub handlers: bool,
    /// Invocations per handler measurement.
    pub handler_calls: usize,
    /// Process handler instances (and concurrent callers) for the
    /// throughput figure.
    pub handler_instances: usize,
    /// Broker addresses.
    pub urls: Urls,
    /// The `mqfn` binary.
    pub mqfn_bin: PathBuf,
    /// This bench's own binary (the baseline runs as `mqfn-bench baseline`).
    pub bench_bin: PathBuf,
    /// The repository root (for `handlers/examples/noop.py`).
    pub repo: PathBuf,
    /// Seconds without progress after which a run is declared stalled.
    pub stall_secs: f64,
    /// Record a `perf` profile of each throughput run's consumer here.
    pub perf: Option<PathBuf>,
    /// mqfn's NATS outputs carry `Nats-Msg-Id` (its default); false sets
    /// `dedup = false`: plain at-least-once, as the baseline.
    pub dedup: bool,
    /// Partitions of the Kafka input and output topics.
    pub partitions: i32,
    /// The NATS baseline sets `Nats-Msg-Id` on its outputs as mqfn does
    /// (`mqfn:<route>:<stream>:<sequence>:0`): the same guarantee, and the
    /// same work for the server.
    pub baseline_msg_id: bool,
    /// The Kafka latency profile of mqfn's broker, and the same client
    /// properties on the baseline.
    pub kafka_latency: mqfn::brokers::kafka::Latency,
}

impl Options {
    /// The defaults of issue 7: N = 200,000 messages of 256 bytes, 3 pairs.
    pub fn new(mqfn_bin: PathBuf, bench_bin: PathBuf) -> Self {
        Self {
            brokers: vec![Broker::Nats],
            messages: 200_000,
            size: 256,
            pairs: 3,
            window: 256,
            latency_secs: 5.0,
            latency_max: 200_000,
            latency_rate: None,
            backlog: 1_000_000,
            backlog_secs: 20.0,
            idle: true,
            handlers: true,
            handler_calls: 20_000,
            handler_instances: 2,
            urls: Urls::from_env(),
            mqfn_bin,
            bench_bin,
            repo: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."),
            stall_secs: 60.0,
            perf: None,
            dedup: true,
            partitions: crate::brokers::kafka::PARTITIONS,
            baseline_msg_id: false,
            kafka_latency: mqfn::brokers::kafka::Latency::Default,
        }
    }

    /// The smoke run: N = 2,000, one pair, a tiny latency run, a small
    /// backlog, few handler calls. Keeps the bench compiling and working;
    /// its figures mean nothing.
    pub fn smoke(mut self) -> Self {
        self.messages = 2_000;
        self.pairs = 1;
        self.latency_secs = 0.5;
        self.latency_max = 200;
        self.backlog = 2_000;
        self.backlog_secs = 1.0;
        self.handler_calls = 200;
        self.stall_secs = 30.0;
        self
    }

    /// `workers.max` for mqfn: the in-flight window is `workers.max` × 2.
    pub fn workers_max(&self) -> usize {
        (self.window / 2).max(1)
    }
}
