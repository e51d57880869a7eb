//! The in-process broker (`kind = "memory"`): named hubs of queues with
//! at-least-once semantics (ack, nack with a delay, a delivery count) and
//! faults a test can script (refused or failing publishes, failing
//! settles).
//!
//! It serves a first run with no broker at all, tests of routes and
//! handlers, and mqfn's own pipeline tests under paused time. It lives in
//! one process and keeps nothing on disk.

pub mod config;
mod queue;
mod sink;
mod source;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;

pub use config::{MemoryConfig, MemoryEndpoint, KIND};
pub use queue::Queue;

use super::{Broker, BrokerError, Kind as _, Publisher, Source};
use crate::config::{Endpoint, RouteConfig};
use crate::message::Message;

/// A named set of queues, shared by every memory broker that names it.
#[derive(Debug, Default)]
pub struct Hub {
    queues: Mutex<HashMap<String, Arc<Queue>>>,
}

impl Hub {
    /// The hub called `name`, created on first use. Hubs live as long as
    /// the process.
    pub fn named(name: &str) -> Arc<Hub> {
        static HUBS: OnceLock<Mutex<HashMap<String, Arc<Hub>>>> = OnceLock::new();
        let hubs = HUBS.get_or_init(Default::default);
        let mut hubs = hubs.lock().unwrap_or_else(PoisonError::into_inner);
        hubs.entry(name.to_owned()).or_default().clone()
    }

    /// The queue called `name`, created on first use.
    pub fn queue(&self, name: &str) -> Arc<Queue> {
        let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        queues
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(Queue::new(name)))
            .clone()
    }
}

/// A connection to a hub.
pub struct MemoryBroker {
    name: String,
    hub: Arc<Hub>,
}

impl MemoryBroker {
    /// A broker called `name` on `hub`.
    pub fn new(name: &str, hub: Arc<Hub>) -> Self {
        Self {
            name: name.to_owned(),
            hub,
        }
    }

    fn queue_of(&self, at: &Endpoint) -> Result<Arc<Queue>, BrokerError> {
        match at.get::<MemoryEndpoint>() {
            Some(e) => Ok(self.hub.queue(&e.queue)),
            None => Err(self.not_mine(at)),
        }
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        KIND.name()
    }

    fn is_up(&self) -> bool {
        true
    }

    async fn source(
        &self,
        route: &RouteConfig,
        _window: usize,
    ) -> Result<Box<dyn Source>, BrokerError> {
        let queue = self.queue_of(&route.source)?;
        if queue.subscribe_fault() {
            return Err(BrokerError::setup(
                &self.name,
                format!(
                    "queue {} refused the subscription (a scripted fault)",
                    queue.name()
                ),
            ));
        }
        Ok(Box::new(source::MemorySource::new(queue, &route.name)))
    }

    fn publisher(&self) -> Arc<dyn Publisher> {
        Arc::new(sink::MemoryPublisher::new(&self.name, self.hub.clone()))
    }

    async fn tap(&self, at: &Endpoint) -> Result<BoxStream<'static, Message>, BrokerError> {
        let rx = self.queue_of(at)?.tap();
        Ok(watch(rx))
    }

    async fn inbox(&self) -> Result<(String, BoxStream<'static, Message>), BrokerError> {
        let name = format!("_INBOX.{}", uuid::Uuid::new_v4().simple());
        let rx = self.hub.queue(&name).tap();
        Ok((name, watch(rx)))
    }

    async fn browse(&self, at: &Endpoint, limit: usize) -> Result<Vec<Message>, BrokerError> {
        Ok(self.queue_of(at)?.peek(limit))
    }

    async fn take(&self, at: &Endpoint) -> Result<Box<dyn Source>, BrokerError> {
        let queue = self.queue_of(at)?;
        Ok(Box::new(source::TakeSource::new(&self.name, queue)))
    }

    fn is_local(&self) -> bool {
        true
    }

    async fn close(&self) {}
}

/// A watcher's channel as a stream.
fn watch(rx: tokio::sync::mpsc::UnboundedReceiver<Message>) -> BoxStream<'static, Message> {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) }).boxed()
}
