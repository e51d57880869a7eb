//! The schedule trigger (`source = { schedule = "*/5 * * * *" }`): a
//! firing per slot, as a message with the slot in `mqfn-scheduled-at`.
//!
//! In process, each replica fires on its own. With `via`, each replica
//! publishes each firing to a broker place with the deduplication id
//! `mqfn:ROUTE:SLOT`, and the route consumes from it: on a JetStream
//! stream, the stream keeps one per slot however many replicas fire, and
//! the durable consumer hands it to one of them.
//!
//! - [`config`]: the keys;
//! - [`plan`]: the slots and the clock;
//! - `source`: the firings, in process or through `via`.

pub mod config;
pub mod plan;
mod source;

use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;

pub use config::{ScheduleConfig, ScheduleEndpoint, KIND};

use super::{Broker, BrokerError, Kind as _, Peers, Publisher, Refusing, Source};
use crate::config::{Endpoint, RouteConfig};
use crate::message::Message;

/// The schedules of one app.
pub struct ScheduleBroker {
    name: String,
    cfg: ScheduleConfig,
}

impl ScheduleBroker {
    fn new(name: &str, cfg: ScheduleConfig) -> Self {
        Self {
            name: name.to_owned(),
            cfg,
        }
    }
}

#[async_trait]
impl Broker for ScheduleBroker {
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
        window: usize,
    ) -> Result<Box<dyn Source>, BrokerError> {
        self.subscribe(route, window, &Peers::new()).await
    }

    async fn subscribe(
        &self,
        route: &RouteConfig,
        window: usize,
        peers: &Peers,
    ) -> Result<Box<dyn Source>, BrokerError> {
        let Some(ep) = route.source.get::<ScheduleEndpoint>() else {
            return Err(self.not_mine(&route.source));
        };
        let plan = ep
            .plan()
            .map_err(|e| BrokerError::setup(&self.name, e.message))?;
        let firing = source::Firing::new(route, ep, plan, self.cfg.state_dir.as_deref());
        let Some(via) = &ep.via else {
            return Ok(Box::new(source::Ticks::new(firing)));
        };
        let broker = peers.get(&via.broker).ok_or_else(|| {
            BrokerError::setup(
                &self.name,
                format!("route {}: the broker of via is not connected", route.name),
            )
        })?;
        let mut through = route.clone();
        through.source = via.clone();
        let inner = broker.source(&through, window).await?;
        Ok(Box::new(source::Via::start(
            firing,
            inner,
            broker.publisher(),
            via.clone(),
        )))
    }

    fn publisher(&self) -> Arc<dyn Publisher> {
        Arc::new(Refusing(
            "a schedule fires by itself: to run its handler now, use `mqfn call HANDLER PAYLOAD`"
                .to_owned(),
        ))
    }

    async fn tap(&self, _at: &Endpoint) -> Result<BoxStream<'static, Message>, BrokerError> {
        Err(self.unsupported("watching"))
    }

    async fn inbox(&self) -> Result<(String, BoxStream<'static, Message>), BrokerError> {
        Err(BrokerError::unsupported(
            &self.name,
            "a schedule fires by itself and takes no requests: run its handler now with `mqfn call HANDLER PAYLOAD`",
        ))
    }

    async fn close(&self) {}
}
