//! AMQP 0.9.1 (RabbitMQ): three durable classic queues per run, and the
//! baseline: `basic_consume` with a prefetch of the window, a publish to
//! the output on a confirm-select channel, the confirm awaited, then the
//! ack. Messages are persistent (delivery mode 2), as at-least-once needs.

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, FuturesUnordered};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use lapin::{Confirmation, PublisherConfirm};

use super::{say_ready, Counter, Harness, FILL_WINDOW};
use crate::names::Names;
use crate::opts::Broker;
use crate::Result;

/// The RabbitMQ harness.
pub struct Amqp {
    url: String,
    conn: Connection,
    channel: Channel,
}

async fn connect(url: &str) -> Result<Connection> {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .map_err(|e| format!("AMQP at {}: {e}", mqfn::telemetry::redact_url(url)))
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

async fn confirmed(c: PublisherConfirm) -> Result<()> {
    match c.await.map_err(|e| e.to_string())? {
        Confirmation::Nack(_) => Err("the broker refused the message (nack)".to_owned()),
        Confirmation::Ack(_) | Confirmation::NotRequested => Ok(()),
    }
}

impl Amqp {
    /// Connects and opens a channel for topology and counting.
    pub async fn connect(url: &str) -> Result<Self> {
        let conn = connect(url).await?;
        let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
        Ok(Self {
            url: url.to_owned(),
            conn,
            channel,
        })
    }
}

/// Counts the ready messages of the output queue (nobody consumes it).
struct QueueCount {
    channel: Channel,
    queue: String,
}

#[async_trait]
impl Counter for QueueCount {
    async fn count(&mut self) -> Result<u64> {
        let q = self
            .channel
            .queue_declare(
                self.queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(u64::from(q.message_count()))
    }
}

#[async_trait]
impl Harness for Amqp {
    fn kind(&self) -> Broker {
        Broker::Amqp
    }

    async fn create(&self, n: &Names) -> Result<()> {
        for q in [n.input(), n.output(), n.dead_letter()] {
            self.channel
                .queue_declare(
                    q.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(|e| format!("cannot declare queue {q}: {e}"))?;
        }
        Ok(())
    }

    async fn publish(&self, n: &Names, mut payloads: BoxStream<'static, Bytes>) -> Result<u64> {
        let ch = self
            .conn
            .create_channel()
            .await
            .map_err(|e| e.to_string())?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        let queue = n.input();
        let mut confirms = FuturesUnordered::new();
        let mut sent = 0;
        while let Some(p) = payloads.next().await {
            if confirms.len() >= FILL_WINDOW {
                if let Some(r) = confirms.next().await {
                    r?;
                }
            }
            let c = ch
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &p,
                    persistent(),
                )
                .await
                .map_err(|e| format!("publish failed: {e}"))?;
            confirms.push(confirmed(c));
            sent += 1;
        }
        while let Some(r) = confirms.next().await {
            r?;
        }
        let _ = ch.close(200, "done".into()).await;
        Ok(sent)
    }

    async fn counter(&self, n: &Names) -> Result<Box<dyn Counter>> {
        let channel = self
            .conn
            .create_channel()
            .await
            .map_err(|e| e.to_string())?;
        Ok(Box::new(QueueCount {
            channel,
            queue: n.output(),
        }))
    }

    async fn tap(&self, n: &Names) -> Result<BoxStream<'static, Bytes>> {
        let ch = self
            .conn
            .create_channel()
            .await
            .map_err(|e| e.to_string())?;
        let consumer = ch
            .basic_consume(
                n.output().as_str().into(),
                format!("{}-tap", n.id).as_str().into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| e.to_string())?;
        // The channel lives as long as the stream.
        Ok(consumer
            .filter_map(move |d| {
                let _keep = &ch;
                futures::future::ready(d.ok().map(|d| Bytes::from(d.data)))
            })
            .boxed())
    }

    async fn delete(&self, n: &Names) {
        for q in [n.input(), n.output(), n.dead_letter()] {
            let _ = self
                .channel
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }

    fn broker_toml(&self, runs: &[Names]) -> String {
        let mut s = format!("[brokers.r]\nkind = \"amqp\"\nurl = \"{}\"\n", self.url);
        for n in runs {
            for q in [n.input(), n.output(), n.dead_letter()] {
                s.push_str(&format!("\n[[brokers.r.queues]]\nname = \"{q}\"\n"));
            }
        }
        s
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
source = {{ broker = "r", queue = "{input}" }}
handler = "{handler}"
output = {{ broker = "r", queue = "{output}" }}
dead_letter = {{ broker = "r", queue = "{dlq}" }}
workers = {workers}
"#,
            input = n.input(),
            output = n.output(),
            dlq = n.dead_letter(),
        )
    }
}

/// The baseline: prefetch `window`, publish each payload to the output
/// with confirms, await the confirm, ack the delivery.
pub async fn baseline(url: &str, n: &Names, window: usize) -> Result<()> {
    let conn = connect(url).await?;
    let input = conn.create_channel().await.map_err(|e| e.to_string())?;
    let output = conn.create_channel().await.map_err(|e| e.to_string())?;
    output
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    input
        .basic_qos(
            window.min(u16::MAX as usize) as u16,
            BasicQosOptions::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut deliveries = input
        .basic_consume(
            n.input().as_str().into(),
            format!("{}-baseline", n.id).as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let queue = n.output();
    let mut inflight = FuturesUnordered::new();
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
            d = deliveries.next() => {
                let d = d.ok_or("the consumer was cancelled")?.map_err(|e| e.to_string())?;
                let (output, queue) = (output.clone(), queue.clone());
                inflight.push(async move {
                    let c = output
                        .basic_publish("".into(), queue.as_str().into(), BasicPublishOptions::default(), &d.data, persistent())
                        .await
                        .map_err(|e| e.to_string())?;
                    confirmed(c).await?;
                    d.ack(BasicAckOptions::default()).await.map(|_| ()).map_err(|e| e.to_string())
                });
            }
        }
    }
}
