//! Dead-letter tools on AMQP: browse a queue without consuming it (gets
//! without ack, handed back when the channel closes), and take messages for
//! good (ack after the copy is confirmed elsewhere).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lapin::options::{BasicGetOptions, BasicNackOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::Channel;

use super::connection::Link;
use super::headers::{message, short};
use super::topology;
use crate::brokers::{BacklogProbe, BrokerError, Delivery, Settle, Source};
use crate::message::Message;

async fn get(
    link: &Link,
    ch: &Channel,
    queue: &str,
) -> Result<Option<lapin::message::BasicGetMessage>, BrokerError> {
    let name = short("queue name", queue).map_err(|m| link.receive_err(m))?;
    ch.basic_get(name, BasicGetOptions { no_ack: false })
        .await
        .map_err(|e| {
            link.receive_err(format!(
                "cannot read queue {queue:?}: {}",
                topology::reason(&e)
            ))
        })
}

async fn release(ch: &Channel) {
    // Closing the channel hands every unacked message back to its queue.
    let _ = ch.close(200, "done".into()).await;
}

/// Up to `limit` messages of `queue`, oldest first, left in the queue.
pub(super) async fn browse(
    link: &Link,
    wait: Duration,
    queue: &str,
    limit: usize,
) -> Result<Vec<Message>, BrokerError> {
    let ch = link.channel(Some(wait)).await?;
    let mut out = Vec::new();
    let result = loop {
        if out.len() >= limit {
            break Ok(());
        }
        match get(link, &ch, queue).await {
            Ok(Some(m)) => out.push(message(&m.delivery, queue, "").0),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    release(&ch).await;
    result.map(|()| out)
}

/// Takes the messages of a queue that were there when it opened: ack removes
/// one for good, anything unsettled goes back when the taker closes.
pub(super) struct TakeSource {
    link: Arc<Link>,
    ch: Channel,
    queue: String,
    left: u64,
}

impl TakeSource {
    pub(super) async fn open(
        link: Arc<Link>,
        wait: Duration,
        queue: &str,
    ) -> Result<Self, BrokerError> {
        let ch = link.channel(Some(wait)).await?;
        let name = short("queue name", queue).map_err(|m| link.receive_err(m))?;
        let opts = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let q = ch
            .queue_declare(name, opts, FieldTable::default())
            .await
            .map_err(|e| link.receive_err(format!("queue {queue:?}: {}", topology::reason(&e))))?;
        Ok(Self {
            left: u64::from(q.message_count()),
            link,
            ch,
            queue: queue.to_owned(),
        })
    }
}

#[async_trait]
impl Source for TakeSource {
    async fn next(&mut self) -> Result<Delivery, BrokerError> {
        let drained = || BrokerError::drained(self.link.broker.clone());
        if self.left == 0 {
            return Err(drained());
        }
        self.left -= 1;
        match get(&self.link, &self.ch, &self.queue).await? {
            None => Err(drained()),
            Some(m) => {
                let (msg, _) = message(&m.delivery, &self.queue, "");
                Ok(Delivery::new(
                    msg,
                    Box::new(Taken(self.link.broker.clone(), m.delivery.acker)),
                ))
            }
        }
    }

    fn backlog_probe(&self) -> Option<Arc<dyn BacklogProbe>> {
        None
    }

    async fn close(&mut self) {
        release(&self.ch).await;
    }
}

struct Taken(String, lapin::Acker);

#[async_trait]
impl Settle for Taken {
    async fn ack(&self) -> Result<(), BrokerError> {
        self.1
            .ack(Default::default())
            .await
            .map(|_| ())
            .map_err(|e| BrokerError::settle(self.0.clone(), e.to_string()).with_source(e))
    }

    async fn nack(&self, _msg: &Message, _delay: Duration) -> Result<(), BrokerError> {
        let opts = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        let _ = self.1.nack(opts).await;
        Ok(())
    }
}
