//! Publishing to a hub's queues: confirmed at once, unless a test
//! scripted a fault.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Hub, MemoryEndpoint};
use crate::brokers::{OutMessage, PublishError, PublishErrorKind, Publisher};
use crate::config::Endpoint;

/// Publishes to the queues of one hub.
pub struct MemoryPublisher {
    broker: String,
    hub: Arc<Hub>,
}

impl MemoryPublisher {
    pub(super) fn new(broker: &str, hub: Arc<Hub>) -> Self {
        Self {
            broker: broker.to_owned(),
            hub,
        }
    }

    fn push(&self, queue: &str, msg: OutMessage) -> Result<(), PublishError> {
        self.hub
            .queue(queue)
            .push(msg)
            .map_err(|kind| PublishError {
                kind,
                to: format!("{}/{queue}", self.broker),
                message: match kind {
                    PublishErrorKind::Rejected => "refused (a scripted fault)",
                    PublishErrorKind::Transient => "not confirmed (a scripted fault)",
                }
                .to_owned(),
            })
    }
}

#[async_trait]
impl Publisher for MemoryPublisher {
    async fn publish(&self, to: &Endpoint, msg: OutMessage) -> Result<(), PublishError> {
        let Some(at) = to.get::<MemoryEndpoint>() else {
            return Err(PublishError {
                kind: PublishErrorKind::Rejected,
                to: to.describe(),
                message: "not a memory endpoint".to_owned(),
            });
        };
        self.push(&at.queue, msg)
    }

    async fn reply(&self, reply_to: &str, msg: OutMessage) -> Result<(), PublishError> {
        self.push(reply_to, msg)
    }
}
