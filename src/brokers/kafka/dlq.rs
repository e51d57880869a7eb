//! Dead-letter tools on Kafka (`mqfn dlq list|redrive`).
//!
//! Kafka cannot delete one record, so a dead-letter topic holds what lies
//! ahead of a *cursor*: the committed offsets of the group
//! `mqfn-dlq.TOPIC`. `list` reads from the cursor to the end without moving
//! it. `redrive` takes records: an ack moves the cursor past the record. A
//! record that is left in place (the filter did not match, or its redrive
//! failed: nack, or no settle at all) but that the cursor must pass is
//! first appended to the topic again, so that it stays a dead letter.
//!
//! Both read only up to the end the topic had when they opened (from the
//! exact, fetch-reported watermark), so records appended meanwhile are
//! never read twice in one run.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use rdkafka::{Message as _, Offset, TopicPartitionList};

use super::KafkaConfig;
use super::{admin, base_config, sink, LogContext, REQUEST_TIMEOUT};
use crate::brokers::{BacklogProbe, BrokerError, Delivery, OutMessage, Settle, Source};
use crate::message::Message;

/// How long a read may see nothing at all before the rest counts as read.
const IDLE_LIMIT: Duration = Duration::from_secs(10);

/// The group whose committed offsets mark what was taken from `topic`.
pub fn cursor_group(topic: &str) -> String {
    format!("mqfn-dlq.{topic}")
}

/// Reads a dead-letter topic from the cursor to the end it had at open.
struct Reader {
    broker: String,
    topic: String,
    consumer: Arc<BaseConsumer<LogContext>>,
    partitions: usize,
    ends: HashMap<i32, i64>,
    done: HashSet<i32>,
}

impl Reader {
    /// Blocking: looks the topic up and assigns it at the cursor.
    fn open(broker: &str, cfg: &KafkaConfig, topic: &str) -> Result<Self, BrokerError> {
        let fail = |e: KafkaError| {
            BrokerError::receive(
                broker.to_owned(),
                format!("cannot read dead letters on {topic}: {e}"),
            )
        };
        let mut config = base_config(cfg, &[("enable.partition.eof", "true")]);
        config
            .set("group.id", cursor_group(topic))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        let ctx = LogContext {
            broker: broker.to_owned(),
            up: None,
        };
        let consumer: BaseConsumer<LogContext> = config.create_with_context(ctx).map_err(fail)?;
        let partitions = admin::partitions_of(consumer.client(), topic)
            .map_err(fail)?
            .unwrap_or_default();
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            tpl.add_partition(topic, *p);
        }
        let cursor = if partitions.is_empty() {
            tpl.clone()
        } else {
            consumer
                .committed_offsets(tpl.clone(), REQUEST_TIMEOUT)
                .map_err(fail)?
        };
        let mut start = TopicPartitionList::new();
        for p in &partitions {
            let at = match cursor.find_partition(topic, *p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Offset::Offset(o),
                _ => Offset::Beginning,
            };
            start.add_partition_offset(topic, *p, at).map_err(fail)?;
        }
        consumer.assign(&start).map_err(fail)?;
        Ok(Self {
            broker: broker.to_owned(),
            topic: topic.to_owned(),
            consumer: Arc::new(consumer),
            partitions: partitions.len(),
            ends: HashMap::new(),
            done: HashSet::new(),
        })
    }

    /// Blocking: the next record before the end, or `None` when all is read.
    fn next(&mut self) -> Result<Option<Record>, BrokerError> {
        let mut idle = Instant::now();
        while self.done.len() < self.partitions {
            if idle.elapsed() > IDLE_LIMIT {
                return Ok(None);
            }
            match self.consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    self.done.insert(p);
                }
                Some(Err(e)) => {
                    return Err(
                        BrokerError::receive(self.broker.clone(), e.to_string()).with_source(e)
                    )
                }
                Some(Ok(m)) => {
                    idle = Instant::now();
                    let p = m.partition();
                    if self.done.contains(&p) {
                        continue;
                    }
                    // The end as of the first fetch: exact, unlike ListOffsets
                    // on some brokers.
                    let end = *self.ends.entry(p).or_insert_with(|| {
                        admin::cached_high(&self.consumer, &self.topic, p).unwrap_or(m.offset() + 1)
                    });
                    if m.offset() + 1 >= end {
                        self.done.insert(p);
                    }
                    if m.offset() < end {
                        return Ok(Some(Record {
                            msg: super::to_message(&m, ""),
                            partition: p,
                            offset: m.offset(),
                        }));
                    }
                }
            }
        }
        Ok(None)
    }
}

/// A dead letter read, with where it sits.
struct Record {
    msg: Message,
    partition: i32,
    offset: i64,
}

/// Runs a blocking read on the blocking pool and puts the reader back.
async fn read(reader: &mut Option<Reader>, broker: &str) -> Result<Option<Record>, BrokerError> {
    let Some(mut r) = reader.take() else {
        return Ok(None);
    };
    let (r, got) = tokio::task::spawn_blocking(move || {
        let got = r.next();
        (r, got)
    })
    .await
    .map_err(|e| BrokerError::receive(broker.to_owned(), e.to_string()).with_source(e))?;
    *reader = Some(r);
    got
}

/// Up to `limit` dead letters ahead of the cursor, oldest failure first.
pub async fn browse(
    broker: &str,
    cfg: &KafkaConfig,
    topic: &str,
    limit: usize,
) -> Result<Vec<Message>, BrokerError> {
    let (b, c, t) = (broker.to_owned(), cfg.clone(), topic.to_owned());
    let r = tokio::task::spawn_blocking(move || Reader::open(&b, &c, &t))
        .await
        .map_err(|e| BrokerError::receive(broker.to_owned(), e.to_string()).with_source(e))??;
    let mut reader = Some(r);
    let mut out = Vec::new();
    while out.len() < limit {
        match read(&mut reader, broker).await? {
            Some(r) => out.push(r),
            None => break,
        }
    }
    out.sort_by_cached_key(|r| {
        let failed_at = r.msg.headers.get("mqfn-failed-at").unwrap_or("").to_owned();
        (failed_at, r.partition, r.offset)
    });
    Ok(out.into_iter().map(|r| r.msg).collect())
}

/// What the settle tokens of one taker share.
struct Cursor {
    broker: String,
    topic: String,
    consumer: Arc<BaseConsumer<LogContext>>,
    producer: FutureProducer<LogContext>,
    /// Records handed out and not taken yet, by partition and offset.
    handed: Mutex<HashMap<i32, BTreeMap<i64, Message>>>,
}

impl Cursor {
    /// Removes `offset` for good: appends the records before it that were
    /// not taken again, then moves the cursor past it.
    async fn take(&self, partition: i32, offset: i64) -> Result<(), BrokerError> {
        let keep: Vec<Message> = {
            let mut handed = self.handed.lock().unwrap_or_else(|e| e.into_inner());
            let Some(p) = handed.get_mut(&partition) else {
                return Ok(());
            };
            let later = p.split_off(&(offset + 1));
            // Earlier taken records left the map with their own ack: what
            // is still here was left in place.
            std::mem::replace(p, later)
                .into_iter()
                .filter(|(o, _)| *o != offset)
                .map(|(_, m)| m)
                .collect()
        };
        for m in keep {
            sink::send(&self.producer, &self.broker, &self.topic, again(&m))
                .await
                .map_err(|e| self.settle_err(e.to_string()))?;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, partition, Offset::Offset(offset + 1))
            .map_err(|e| self.settle_err(e.to_string()))?;
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync))
            .await
            .map_err(|e| self.settle_err(e.to_string()))?
            .map_err(|e| self.settle_err(e.to_string()))
    }

    fn settle_err(&self, message: String) -> BrokerError {
        BrokerError::settle(self.broker.clone(), message)
    }
}

/// The record as it was, to append again.
fn again(m: &Message) -> OutMessage {
    OutMessage {
        payload: m.payload.clone(),
        headers: m.headers.clone(),
        key: m.key.clone(),
        correlation_id: m.correlation_id.clone(),
        ..OutMessage::default()
    }
}

/// Takes dead letters: ack moves the cursor past one.
pub struct TakeSource {
    broker: String,
    reader: Option<Reader>,
    cursor: Arc<Cursor>,
}

impl TakeSource {
    /// Opens a taker on `topic`.
    pub async fn open(
        broker: &str,
        cfg: &KafkaConfig,
        producer: FutureProducer<LogContext>,
        topic: &str,
    ) -> Result<Self, BrokerError> {
        let (b, c, t) = (broker.to_owned(), cfg.clone(), topic.to_owned());
        let reader = tokio::task::spawn_blocking(move || Reader::open(&b, &c, &t))
            .await
            .map_err(|e| BrokerError::receive(broker.to_owned(), e.to_string()).with_source(e))??;
        let cursor = Arc::new(Cursor {
            broker: broker.to_owned(),
            topic: topic.to_owned(),
            consumer: reader.consumer.clone(),
            producer,
            handed: Mutex::new(HashMap::new()),
        });
        Ok(Self {
            broker: broker.to_owned(),
            reader: Some(reader),
            cursor,
        })
    }
}

#[async_trait]
impl Source for TakeSource {
    async fn next(&mut self) -> Result<Delivery, BrokerError> {
        let Some(Record {
            msg,
            partition,
            offset,
        }) = read(&mut self.reader, &self.broker).await?
        else {
            return Err(BrokerError::drained(self.broker.clone()));
        };
        self.cursor
            .handed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(partition)
            .or_default()
            .insert(offset, msg.clone());
        let settle = TakeSettle {
            cursor: self.cursor.clone(),
            partition,
            offset,
        };
        Ok(Delivery::new(msg, Box::new(settle)))
    }

    fn backlog_probe(&self) -> Option<Arc<dyn BacklogProbe>> {
        None
    }
}

/// Takes one dead letter; a nack (or no settle at all) leaves it.
struct TakeSettle {
    cursor: Arc<Cursor>,
    partition: i32,
    offset: i64,
}

#[async_trait]
impl Settle for TakeSettle {
    async fn ack(&self) -> Result<(), BrokerError> {
        self.cursor.take(self.partition, self.offset).await
    }

    async fn nack(&self, _msg: &Message, _delay: Duration) -> Result<(), BrokerError> {
        Ok(())
    }
}
