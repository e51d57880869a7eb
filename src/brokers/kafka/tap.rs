//! Watching a topic from its current end, for `mqfn invoke`.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use tracing::debug;

use super::KafkaConfig;
use super::{admin, base_config, to_message, LogContext, REQUEST_TIMEOUT};
use crate::brokers::BrokerError;
use crate::message::Message;

/// Every record appended to `topic` from now on.
///
/// A throwaway group that never subscribes or commits reads each partition
/// from its current end, given as an explicit offset, not through
/// `auto.offset.reset=latest`. A trailing end (some brokers report one)
/// only means a few older records are read, for the caller to filter out;
/// a new one is never missed.
pub async fn open(
    broker: &str,
    cfg: &KafkaConfig,
    topic: &str,
) -> Result<BoxStream<'static, Message>, BrokerError> {
    let err = |message: String| {
        BrokerError::receive(
            broker.to_owned(),
            format!("cannot watch topic {topic}: {message}"),
        )
    };
    let mut config = base_config(cfg, &[("enable.partition.eof", "false")]);
    config
        .set(
            "group.id",
            format!("mqfn-tap-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("enable.auto.commit", "false");
    let ctx = LogContext {
        broker: broker.to_owned(),
        up: None,
    };
    let consumer: StreamConsumer<LogContext> = config
        .create_with_context(ctx)
        .map_err(|e| err(e.to_string()))?;
    let consumer = Arc::new(consumer);
    let ends = admin::ends(consumer.clone(), topic, REQUEST_TIMEOUT)
        .await
        .map_err(|e| err(e.to_string()))?;
    let mut tpl = TopicPartitionList::new();
    for (partition, end) in ends {
        tpl.add_partition_offset(topic, partition, Offset::Offset(end))
            .map_err(|e| err(e.to_string()))?;
    }
    consumer.assign(&tpl).map_err(|e| err(e.to_string()))?;
    let broker = broker.to_owned();
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
