//! The firings of one route's schedule: in process ([`Ticks`]), or
//! published to `via` and consumed from there ([`Via`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tracing::warn;

use super::config::{CatchUp, ScheduleEndpoint};
use super::plan::{Clock, Plan};
use crate::brokers::{
    reconnect_delay, BacklogProbe, BrokerError, Delivery, OutMessage, Publisher, Settle, Source,
};
use crate::config::{Endpoint, RouteConfig};
use crate::message::{Headers, Message, Position};
use crate::telemetry::names;

/// The header with a firing's slot (RFC 3339, UTC).
pub const SCHEDULED_AT: &str = "mqfn-scheduled-at";

/// The slots of one route, as they come.
pub(super) struct Firing {
    route: String,
    expr: String,
    plan: Plan,
    clock: Clock,
    payload: Bytes,
    state: Option<PathBuf>,
    next: Option<DateTime<Utc>>,
    missed: Option<DateTime<Utc>>,
}

impl Firing {
    pub fn new(
        route: &RouteConfig,
        ep: &ScheduleEndpoint,
        plan: Plan,
        state_dir: Option<&Path>,
    ) -> Self {
        // At 0 from start, like every counter (docs/metrics.md).
        metrics::counter!(names::SCHEDULE_FIRINGS_TOTAL, "route" => route.name.clone())
            .increment(0);
        let clock = Clock::default();
        let now = clock.now();
        let state = state_dir.map(|d| d.join(format!("{}.last", route.name)));
        let missed = match (ep.catch_up, state.as_deref().and_then(last_fired)) {
            (CatchUp::Last, Some(last)) => plan.last_until(now).filter(|slot| *slot > last),
            _ => None,
        };
        Self {
            route: route.name.clone(),
            expr: ep.schedule.clone(),
            next: plan.next_after(now),
            plan,
            clock,
            payload: Bytes::from(ep.payload.clone()),
            state,
            missed,
        }
    }

    /// Waits for the next slot (the missed one first, if catching up).
    /// Slots that pass while a firing is being handled are skipped, not
    /// fired in a burst. Cancel-safe: nothing changes until it returns.
    async fn wait(&mut self) -> DateTime<Utc> {
        if let Some(slot) = self.missed.take() {
            return slot;
        }
        let Some(slot) = self.next else {
            return std::future::pending().await; // never fires again
        };
        tokio::time::sleep_until(self.clock.instant_at(slot)).await;
        self.next = self.plan.next_after(slot.max(self.clock.now()));
        metrics::counter!(names::SCHEDULE_FIRINGS_TOTAL, "route" => self.route.clone())
            .increment(1);
        slot
    }

    fn headers(&self, slot: DateTime<Utc>) -> Headers {
        let mut h = Headers::new();
        h.set(
            SCHEDULED_AT,
            slot.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        );
        h.set("mqfn-schedule", self.expr.clone());
        h
    }

    fn message(&self, slot: DateTime<Utc>) -> Message {
        Message {
            payload: self.payload.clone(),
            headers: self.headers(slot),
            subject: self.expr.clone(),
            route: self.route.clone(),
            position: Position::stable(
                &format!("schedule:{}", self.route),
                &slot.timestamp().to_string(),
            ),
            attempt: 1,
            ..Message::default()
        }
    }
}

/// The last slot fired, from the state file.
fn last_fired(path: &Path) -> Option<DateTime<Utc>> {
    let text = std::fs::read_to_string(path).ok()?;
    DateTime::parse_from_rfc3339(text.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Writes `slot` as the last fired, atomically (a temp file renamed).
fn remember(path: Option<&Path>, slot: DateTime<Utc>) {
    let Some(path) = path else { return };
    let tmp = path.with_extension("tmp");
    let text = slot.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path)) {
        warn!(file = %path.display(), error = %e, "Cannot record the schedule's last firing; catch_up may miss it.");
    }
}

/// In process: a delivery per slot.
pub(super) struct Ticks {
    firing: Firing,
    again_tx: mpsc::UnboundedSender<(Message, DateTime<Utc>)>,
    again: mpsc::UnboundedReceiver<(Message, DateTime<Utc>)>,
}

impl Ticks {
    pub fn new(firing: Firing) -> Self {
        let (again_tx, again) = mpsc::unbounded_channel();
        Self {
            firing,
            again_tx,
            again,
        }
    }

    fn delivery(&self, msg: Message, slot: DateTime<Utc>) -> Delivery {
        let token = Token {
            state: self.firing.state.clone(),
            slot,
            again: self.again_tx.clone(),
        };
        Delivery::new(msg, Box::new(token))
    }
}

#[async_trait]
impl Source for Ticks {
    async fn next(&mut self) -> Result<Delivery, BrokerError> {
        let (msg, slot) = tokio::select! {
            biased;
            Some(again) = self.again.recv() => again,
            slot = self.firing.wait() => (self.firing.message(slot), slot),
        };
        Ok(self.delivery(msg, slot))
    }

    fn backlog_probe(&self) -> Option<Arc<dyn BacklogProbe>> {
        None
    }
}

/// Settles an in-process firing: the ack records it as fired (so a
/// firing cut short by a crash is caught up), a nack fires it again after
/// the delay.
struct Token {
    state: Option<PathBuf>,
    slot: DateTime<Utc>,
    again: mpsc::UnboundedSender<(Message, DateTime<Utc>)>,
}

#[async_trait]
impl Settle for Token {
    async fn ack(&self) -> Result<(), BrokerError> {
        remember(self.state.as_deref(), self.slot);
        Ok(())
    }

    async fn nack(&self, msg: &Message, delay: Duration) -> Result<(), BrokerError> {
        let mut again = msg.clone();
        again.attempt += 1;
        again.deadline = None;
        let (tx, slot) = (self.again.clone(), self.slot);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send((again, slot)); // the route may have stopped
        });
        Ok(())
    }
}

/// Through a broker: a task publishes each slot's firing to `via` with a
/// deduplication id, and the route consumes from `via`.
pub(super) struct Via {
    inner: Box<dyn Source>,
    ticker: tokio::task::JoinHandle<()>,
}

impl Via {
    pub fn start(
        firing: Firing,
        inner: Box<dyn Source>,
        publisher: Arc<dyn Publisher>,
        at: Endpoint,
    ) -> Self {
        Self {
            inner,
            ticker: tokio::spawn(tick(firing, publisher, at)),
        }
    }
}

/// Publishes each slot's firing until confirmed, then records it.
async fn tick(mut firing: Firing, publisher: Arc<dyn Publisher>, at: Endpoint) {
    loop {
        let slot = firing.wait().await;
        let msg = OutMessage {
            payload: firing.payload.clone(),
            headers: firing.headers(slot),
            dedup_id: Some(format!("mqfn:{}:{}", firing.route, slot.timestamp())),
            ..OutMessage::default()
        };
        let mut failures = 0;
        while let Err(e) = publisher.publish(&at, msg.clone()).await {
            failures += 1;
            warn!(route = %firing.route, error = %e, "Cannot publish the schedule's firing yet; retrying.");
            tokio::time::sleep(reconnect_delay(failures)).await;
        }
        remember(firing.state.as_deref(), slot);
    }
}

impl Drop for Via {
    fn drop(&mut self) {
        self.ticker.abort();
    }
}

#[async_trait]
impl Source for Via {
    async fn next(&mut self) -> Result<Delivery, BrokerError> {
        self.inner.next().await
    }

    fn backlog_probe(&self) -> Option<Arc<dyn BacklogProbe>> {
        self.inner.backlog_probe()
    }

    fn joined(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        self.inner.joined()
    }

    async fn close(&mut self) {
        self.ticker.abort();
        self.inner.close().await;
    }
}
