//! NATS JetStream: two file streams per run (input + dead letter, output),
//! and the baseline: a durable pull consumer, a JetStream publish awaiting
//! its PubAck, then the ack.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_nats::Subject;
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, FuturesUnordered};
use futures::{FutureExt, StreamExt};

use super::{say_ready, Counter, Harness, FILL_WINDOW};
use crate::names::Names;
use crate::opts::Broker;
use crate::Result;

/// The JetStream harness.
pub struct Nats {
    url: String,
    client: async_nats::Client,
    js: jetstream::Context,
}

impl Nats {
    /// Connects to `url`.
    pub async fn connect(url: &str) -> Result<Self> {
        let client = async_nats::connect(url)
            .await
            .map_err(|e| format!("NATS at {url}: {e}"))?;
        Ok(Self {
            url: url.to_owned(),
            js: jetstream::new(client.clone()),
            client,
        })
    }

    async fn add_stream(&self, name: String, subjects: Vec<String>) -> Result<()> {
        self.js
            .create_stream(stream::Config {
                name: name.clone(),
                subjects,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map(|_| ())
            .map_err(|e| format!("cannot create stream {name}: {e}"))
    }
}

fn confirmed(
    r: Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
) -> Result<()> {
    r.map(|_| ())
        .map_err(|e| format!("publish not confirmed: {e}"))
}

/// Counts the messages of the output stream.
struct StreamCount(stream::Stream);

#[async_trait]
impl Counter for StreamCount {
    async fn count(&mut self) -> Result<u64> {
        let info = self.0.info().await.map_err(|e| e.to_string())?;
        Ok(info.state.messages)
    }
}

#[async_trait]
impl Harness for Nats {
    fn kind(&self) -> Broker {
        Broker::Nats
    }

    async fn create(&self, n: &Names) -> Result<()> {
        self.add_stream(n.stream("IN"), vec![n.input(), n.dead_letter()])
            .await?;
        self.add_stream(n.stream("OUT"), vec![n.output()]).await
    }

    async fn publish(&self, n: &Names, mut payloads: BoxStream<'static, Bytes>) -> Result<u64> {
        let subject = Subject::from(n.input());
        let mut acks = FuturesUnordered::new();
        let mut sent = 0;
        while let Some(p) = payloads.next().await {
            if acks.len() >= FILL_WINDOW {
                if let Some(r) = acks.next().await {
                    confirmed(r)?;
                }
            }
            let ack = self
                .js
                .publish(subject.clone(), p)
                .await
                .map_err(|e| format!("publish failed: {e}"))?;
            acks.push(std::future::IntoFuture::into_future(ack));
            sent += 1;
        }
        while let Some(r) = acks.next().await {
            confirmed(r)?;
        }
        Ok(sent)
    }

    async fn counter(&self, n: &Names) -> Result<Box<dyn Counter>> {
        let s = self
            .js
            .get_stream(n.stream("OUT"))
            .await
            .map_err(|e| e.to_string())?;
        Ok(Box::new(StreamCount(s)))
    }

    async fn tap(&self, n: &Names) -> Result<BoxStream<'static, Bytes>> {
        let sub = self
            .client
            .subscribe(n.output())
            .await
            .map_err(|e| e.to_string())?;
        self.client.flush().await.map_err(|e| e.to_string())?;
        Ok(sub.map(|m| m.payload).boxed())
    }

    async fn delete(&self, n: &Names) {
        for s in [n.stream("IN"), n.stream("OUT")] {
            let _ = self.js.delete_stream(&s).await;
        }
    }

    fn broker_toml(&self, _runs: &[Names]) -> String {
        format!("[brokers.js]\nkind = \"nats\"\nurl = \"{}\"\n", self.url)
    }

    fn route_toml(
        &self,
        n: &Names,
        route: &str,
        workers: &str,
        handler: &str,
        dedup: bool,
    ) -> String {
        let dedup = if dedup { "" } else { ", dedup = false" };
        format!(
            r#"[[routes]]
name = "{route}"
source = {{ broker = "js", subject = "{input}", stream = "{stream}", durable = "{id}" }}
handler = "{handler}"
output = {{ broker = "js", subject = "{output}"{dedup} }}
dead_letter = {{ broker = "js", subject = "{dlq}"{dedup} }}
workers = {workers}
"#,
            input = n.input(),
            stream = n.stream("IN"),
            id = n.id,
            output = n.output(),
            dlq = n.dead_letter(),
        )
    }
}

/// Set, the NATS baseline spawns a task per message, as mqfn does: a
/// diagnostic that shows what that costs on its own (see
/// `docs/benchmarks.md`).
pub const SPAWN_VAR: &str = "MQFN_BENCH_BASELINE_SPAWN";

/// The baseline: pull (batches of `window`), publish, await the PubAck,
/// ack; at most `window` messages in flight, all driven by one task. The
/// consumer has mqfn's settings: explicit ack, 30s ack wait,
/// `max_ack_pending` = max(2 × window, 1000). With `msg_id`, each output
/// carries the `Nats-Msg-Id` that mqfn's route `bench0` would give it.
pub async fn baseline(url: &str, n: &Names, window: usize, msg_id: bool) -> Result<()> {
    let client = async_nats::connect(url)
        .await
        .map_err(|e| format!("NATS at {url}: {e}"))?;
    let js = jetstream::new(client);
    let stream = js
        .get_stream(n.stream("IN"))
        .await
        .map_err(|e| e.to_string())?;
    let config = consumer::pull::Config {
        durable_name: Some(n.id.clone()),
        filter_subject: n.input(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        max_ack_pending: (window as i64 * 2).max(1000),
        ..Default::default()
    };
    let consumer = stream
        .get_or_create_consumer(&n.id, config)
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(window)
        .messages()
        .await
        .map_err(|e| e.to_string())?;
    let out = Subject::from(n.output());
    let scope = msg_id.then(|| format!("mqfn:bench0:{}:", n.stream("IN")));
    let mut inflight = FuturesUnordered::new();
    let spawn = std::env::var_os(SPAWN_VAR).is_some();
    say_ready();
    loop {
        if inflight.len() >= window {
            if let Some(r) = inflight.next().await {
                r?;
            }
            continue;
        }
        tokio::select! {
            biased;
            Some(r) = inflight.next(), if !inflight.is_empty() => r?,
            m = messages.next() => {
                let m = m.ok_or("the pull stream ended")?.map_err(|e| e.to_string())?;
                let id = match &scope {
                    Some(scope) => Some(msg_id_of(scope, &m)?),
                    None => None,
                };
                let f = forward(js.clone(), out.clone(), m, id);
                inflight.push(if spawn {
                    let task = tokio::spawn(f);
                    async move { task.await.map_err(|e| e.to_string())? }.boxed()
                } else {
                    f.boxed()
                });
            }
        }
    }
}

/// `mqfn:bench0:<stream>:<sequence>:0`, as mqfn's `dedup_id`.
fn msg_id_of(scope: &str, m: &jetstream::Message) -> Result<String> {
    let seq = m.info().map_err(|e| e.to_string())?.stream_sequence;
    Ok(format!("{scope}{seq}:0"))
}

async fn forward(
    js: jetstream::Context,
    out: Subject,
    m: jetstream::Message,
    msg_id: Option<String>,
) -> Result<()> {
    let publish = jetstream::message::PublishMessage::build().payload(m.payload.clone());
    let publish = match msg_id {
        Some(id) => publish.message_id(id),
        None => publish,
    };
    js.send_publish(out, publish)
        .await
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    m.ack().await.map_err(|e| e.to_string())
}
