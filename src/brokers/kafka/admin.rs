//! Questions to the cluster rather than to a topic's log: topic creation,
//! reachability, partition ends, and the watermarks the consumer cached.
//!
//! Every blocking librdkafka call runs on the blocking pool.

use std::collections::HashSet;
use std::ffi::CString;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::bindings as rd;
use rdkafka::client::{Client, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use tracing::info;

use super::KafkaConfig;
use super::{base_config, LogContext, REQUEST_TIMEOUT};
use crate::brokers::BrokerError;
use crate::config::Endpoint;

/// Creates the topics that endpoints ask for with `create = { .. }`, once
/// per topic and process, and never through broker auto-creation.
pub struct Topics {
    broker: String,
    cfg: KafkaConfig,
    ensured: Mutex<HashSet<String>>,
}

impl Topics {
    /// Nothing ensured yet.
    pub fn new(broker: &str, cfg: &KafkaConfig) -> Self {
        Self {
            broker: broker.to_owned(),
            cfg: cfg.clone(),
            ensured: Mutex::new(HashSet::new()),
        }
    }

    fn done(&self, topic: &str) -> bool {
        self.ensured
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(topic)
    }

    /// Fails with a setup error naming the fix when `ep`'s topic does not
    /// exist and `ep` does not ask for it to be created.
    pub async fn require(
        &self,
        producer: &FutureProducer<LogContext>,
        ep: &Endpoint,
    ) -> Result<(), BrokerError> {
        let Some((topic, create)) = super::config::topic_of(ep) else {
            return Ok(());
        };
        if create.is_some() {
            return self.ensure(producer, ep).await;
        }
        let topic = topic.to_owned();
        let p = producer.clone();
        let t = topic.clone();
        let exists = tokio::task::spawn_blocking(move || topic_exists(p.client(), &t))
            .await
            .map_err(|e| KafkaError::AdminOpCreation(e.to_string()));
        match exists {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(BrokerError::setup(self.broker.clone(), format!(
                    "topic {topic} does not exist; create it, or add `create = {{ partitions = N }}` \
                     to the endpoint so that mqfn creates it"
                ))),
            Ok(Err(e)) | Err(e) => Err(BrokerError::setup(self.broker.clone(), format!("cannot look up topic {topic}: {e}"))),
        }
    }

    /// Creates the endpoint's topic when it says `create` and the topic is
    /// missing. Existing topics are left as they are.
    pub async fn ensure(
        &self,
        producer: &FutureProducer<LogContext>,
        ep: &Endpoint,
    ) -> Result<(), BrokerError> {
        let Some((topic, Some(create))) = super::config::topic_of(ep) else {
            return Ok(());
        };
        if self.done(topic) {
            return Ok(());
        }
        let setup = |message: String| BrokerError::setup(self.broker.clone(), message);
        let exists = {
            let (p, t) = (producer.clone(), topic.to_owned());
            tokio::task::spawn_blocking(move || topic_exists(p.client(), &t))
                .await
                .map_err(|e| setup(e.to_string()))?
                .map_err(|e| setup(format!("cannot look up topic {topic}: {e}")))?
        };
        if !exists {
            self.create(topic, create.partitions, create.replication)
                .await
                .map_err(|e| setup(format!("cannot create topic {topic}: {e}")))?;
        }
        self.ensured
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(topic.to_owned());
        Ok(())
    }

    async fn create(&self, topic: &str, partitions: i32, replication: i32) -> KafkaResult<()> {
        let admin: AdminClient<DefaultClientContext> = base_config(&self.cfg, &[]).create()?;
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
        let opts = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
        for result in admin.create_topics([&new], &opts).await? {
            match result {
                Ok(_) => {
                    info!(broker = %self.broker, topic, partitions, replication, "Created topic.")
                }
                // Another process created it meanwhile.
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => return Err(KafkaError::AdminOp(code)),
            }
        }
        Ok(())
    }
}

/// The partitions of `topic`, or `None` when the cluster does not know it.
///
/// The request lists all topics rather than naming this one: a request that
/// names a missing topic creates it on brokers with auto-creation on (and
/// on tansu whatever the client asks).
pub fn partitions_of<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
) -> KafkaResult<Option<Vec<i32>>> {
    let md = client.fetch_metadata(None, REQUEST_TIMEOUT)?;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        return Ok(None);
    };
    match t.error().map(RDKafkaErrorCode::from) {
        None => Ok(Some(t.partitions().iter().map(|p| p.id()).collect())),
        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
            Ok(None)
        }
        Some(code) => Err(KafkaError::MetadataFetch(code)),
    }
}

fn topic_exists<C: ClientContext>(client: &Client<C>, topic: &str) -> KafkaResult<bool> {
    Ok(partitions_of(client, topic)?.is_some_and(|p| !p.is_empty()))
}

/// Whether the cluster answers a metadata request within `timeout`.
pub async fn ping(producer: FutureProducer<LogContext>, timeout: Duration) -> bool {
    tokio::task::spawn_blocking(move || brokers_answer(producer.client(), timeout))
        .await
        .unwrap_or(false)
}

/// A metadata request for the topics this client already knows (none at
/// first: then it is a request for the broker list only), so that the check
/// stays cheap on clusters with many topics.
fn brokers_answer<C: ClientContext>(client: &Client<C>, timeout: Duration) -> bool {
    let mut md: *const rd::rd_kafka_metadata = std::ptr::null();
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: the client pointer is valid while `client` is borrowed; on
    // success librdkafka hands us a metadata object that we destroy once.
    unsafe {
        let err = rd::rd_kafka_metadata(client.native_ptr(), 0, std::ptr::null_mut(), &mut md, ms);
        if !md.is_null() {
            rd::rd_kafka_metadata_destroy(md);
        }
        err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
    }
}

/// The end offset of every partition of `topic`, asked from the broker.
pub async fn ends<K, C>(
    consumer: Arc<K>,
    topic: &str,
    timeout: Duration,
) -> KafkaResult<Vec<(i32, i64)>>
where
    K: Consumer<C> + Send + Sync + 'static,
    C: ConsumerContext + 'static,
{
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let partitions = partitions_of(consumer.client(), &topic)?
            .ok_or(KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopic))?;
        partitions
            .into_iter()
            .map(|p| {
                let (_, high) = consumer.fetch_watermarks(&topic, p, timeout)?;
                Ok((p, high))
            })
            .collect()
    })
    .await
    .map_err(|_| KafkaError::Canceled)?
}

/// The high watermark from the consumer's latest fetch response, without a
/// request. Unlike a ListOffsets query (`fetch_watermarks`), it is exact on
/// brokers whose ListOffsets answer trails the log end. `None` before the
/// partition's first fetch.
pub fn cached_high<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    let topic = CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer is valid while `consumer` is borrowed; the
    // call reads librdkafka's cached partition state into the two locals.
    let err = unsafe {
        rd::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0).then_some(high)
}
