//! One module per broker, each with the same shape: a [`Harness`] that sets
//! up and watches a run from the outside, the baseline loop, and the mqfn
//! config for the same workload.

pub mod amqp;
pub mod kafka;
pub mod nats;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

use crate::names::Names;
use crate::opts::{Broker, Options, Urls};
use crate::Result;

/// Publishes awaiting their confirmation at once while pre-filling.
pub const FILL_WINDOW: usize = 4096;

/// Watches the output of a run: how many results are there now.
#[async_trait]
pub trait Counter: Send {
    /// The number of results on the output.
    async fn count(&mut self) -> Result<u64>;
}

/// Sets up, fills, watches and removes the topology of runs on one broker.
#[async_trait]
pub trait Harness: Send + Sync {
    /// Which broker.
    fn kind(&self) -> Broker;
    /// Creates the input, output and dead letter of `n`.
    async fn create(&self, n: &Names) -> Result<()>;
    /// Publishes every payload of `payloads` to the input, each confirmed
    /// by the broker; returns the count.
    async fn publish(&self, n: &Names, payloads: BoxStream<'static, Bytes>) -> Result<u64>;
    /// Readies the publisher of `n`'s input (a connection, topic
    /// metadata), so that a timed publish does not count it.
    async fn prepare(&self, n: &Names) -> Result<()> {
        let _ = n;
        Ok(())
    }
    /// Counts the results on the output.
    async fn counter(&self, n: &Names) -> Result<Box<dyn Counter>>;
    /// The payloads of results as they arrive on the output, from now on.
    async fn tap(&self, n: &Names) -> Result<BoxStream<'static, Bytes>>;
    /// Deletes everything `create` made.
    async fn delete(&self, n: &Names);
    /// The `[brokers.*]` section that serves the routes of `runs`.
    fn broker_toml(&self, runs: &[Names]) -> String;
    /// One `[[routes]]` entry: `n.input()` → `handler` → `n.output()`,
    /// with `workers` (an inline table) as its `workers`. `dedup` false
    /// adds `dedup = false` to outputs where it applies (NATS).
    fn route_toml(
        &self,
        n: &Names,
        route: &str,
        workers: &str,
        handler: &str,
        dedup: bool,
    ) -> String;
}

/// Connects the harness for `broker`.
pub async fn connect(broker: Broker, opts: &Options) -> Result<Arc<dyn Harness>> {
    Ok(match broker {
        Broker::Nats => Arc::new(nats::Nats::connect(&opts.urls.nats).await?),
        Broker::Kafka => Arc::new(
            kafka::Kafka::connect(&opts.urls.kafka, opts.partitions, opts.kafka_latency).await?,
        ),
        Broker::Amqp => Arc::new(amqp::Amqp::connect(&opts.urls.amqp).await?),
    })
}

/// Runs the baseline loop of `broker` on the run `id` until killed. Prints
/// `ready` on stdout once it consumes. `msg_id`: NATS outputs carry
/// `Nats-Msg-Id` as mqfn's do; `latency`: Kafka clients get that profile's
/// properties.
pub async fn baseline(
    broker: Broker,
    urls: &Urls,
    id: &str,
    window: usize,
    msg_id: bool,
    latency: mqfn::brokers::kafka::Latency,
) -> Result<()> {
    let n = Names::from_id(id);
    let window = window.max(1);
    match broker {
        Broker::Nats => nats::baseline(&urls.nats, &n, window, msg_id).await,
        Broker::Kafka => kafka::baseline(&urls.kafka, &n, window, latency).await,
        Broker::Amqp => amqp::baseline(&urls.amqp, &n, window).await,
    }
}

/// A full mqfn config: shutdown timeout, the broker and one echo route per
/// run, scaling from zero to `workers_max`.
pub fn mqfn_config(h: &dyn Harness, runs: &[Names], workers_max: usize, dedup: bool) -> String {
    let workers = format!("{{ min = 0, max = {workers_max} }}");
    mqfn_config_with(h, runs, &workers, "echo", dedup)
}

/// As [`mqfn_config`], with `workers` (an inline table) and `handler` on
/// every route.
pub fn mqfn_config_with(
    h: &dyn Harness,
    runs: &[Names],
    workers: &str,
    handler: &str,
    dedup: bool,
) -> String {
    let mut text = String::from("shutdown_timeout = \"10s\"\n\n");
    text.push_str(&h.broker_toml(runs));
    for (i, n) in runs.iter().enumerate() {
        text.push('\n');
        text.push_str(&h.route_toml(n, &format!("bench{i}"), workers, handler, dedup));
    }
    text
}

/// Tells the parent that the baseline consumes.
pub fn say_ready() {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "ready");
    let _ = out.flush();
}
