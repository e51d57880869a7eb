//! A running route: source → ordering lanes → worker pool → handler →
//! sink → settle.

mod drive;
mod invoke;
pub mod lanes;
pub mod meters;
mod settle;
pub mod stats;

use std::sync::Arc;
use std::time::Duration;

use mqfn_handlers::Handler;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use invoke::{backoff, Attempted, Failure};

use crate::brokers::{reconnect_delay, BrokerError, BrokerErrorKind, Delivery, Publisher, Source};
use crate::config::{Endpoint, Filter, Ordering, RetryConfig, RouteConfig};
use crate::pool::instances::Instances;
use crate::pool::WorkerPool;
use drive::Drivers;
use lanes::Lanes;
use stats::RouteStats;

/// How many messages may be in flight per worker slot: enough to keep the
/// workers fed while results are being confirmed, small enough that memory
/// stays bounded whatever the backlog.
pub const WINDOW_FACTOR: usize = 2;

/// Why [`Route::run`] returned.
#[derive(Debug)]
pub enum Ended {
    /// Shutdown was asked for.
    Shutdown,
    /// The source failed for good; the route must subscribe anew.
    Failed(BrokerError),
}

/// A destination with the publisher that reaches it.
#[derive(Clone)]
pub struct Sink {
    /// The broker's publisher.
    pub publisher: Arc<dyn Publisher>,
    /// Where on the broker.
    pub at: Endpoint,
}

/// Everything one route needs at run time.
pub struct Route {
    /// The route's name.
    pub name: String,
    /// The handler's name.
    pub handler_name: String,
    handler: Arc<dyn Handler>,
    timeout: Duration,
    retry: RetryConfig,
    ordering: Ordering,
    filter: Option<Filter>,
    max_message_bytes: Option<usize>,
    output: Option<Sink>,
    dead_letter: Option<Sink>,
    replier: Option<Arc<dyn Publisher>>,
    source: String,
    reserved: &'static [&'static str],
    /// The worker pool.
    pub pool: Arc<WorkerPool>,
    /// Live figures.
    pub stats: Arc<RouteStats>,
    lanes: Lanes<(Delivery, OwnedSemaphorePermit)>,
    /// Wakes the autoscaler when a message waits on an empty pool.
    pub wake: tokio::sync::Notify,
    /// The handler's instance pool, when its kind keeps instances.
    pub instances: Option<Arc<dyn Instances>>,
    /// The route's events, counted once for metrics and `/status`.
    pub meters: meters::Meters,
}

type Queued = (Delivery, OwnedSemaphorePermit);

impl Route {
    /// Builds a route. `replier` publishes replies on the source's broker.
    pub fn new(
        cfg: &RouteConfig,
        handler: Arc<dyn Handler>,
        handler_timeout: Option<Duration>,
        output: Option<Sink>,
        dead_letter: Option<Sink>,
        replier: Option<Arc<dyn Publisher>>,
    ) -> Self {
        Self {
            name: cfg.name.clone(),
            handler_name: cfg.handler.clone(),
            handler,
            timeout: cfg
                .timeout
                .or(handler_timeout)
                .unwrap_or(Duration::from_secs(30)),
            retry: cfg.retry.clone(),
            ordering: cfg.ordering,
            filter: cfg.filter.clone(),
            max_message_bytes: cfg.max_message_bytes,
            output,
            dead_letter,
            replier,
            source: cfg.source.describe(),
            reserved: &[],
            pool: WorkerPool::new(cfg.workers.min),
            stats: Arc::new(RouteStats::default()),
            lanes: Lanes::default(),
            wake: tokio::sync::Notify::new(),
            instances: None,
            meters: meters::Meters::new(&cfg.name, &cfg.handler),
        }
    }

    /// Sets the header prefixes the source's broker reserves, which the
    /// route does not copy onto outputs and dead letters.
    pub fn with_reserved_headers(mut self, reserved: &'static [&'static str]) -> Self {
        self.reserved = reserved;
        self
    }

    /// Attaches the handler's instance pool, so that scaling the route to
    /// zero also stops its idle instances.
    pub fn with_instances(mut self, instances: Option<Arc<dyn Instances>>) -> Self {
        if let Some(i) = &instances {
            i.attach();
        }
        self.instances = instances;
        self
    }

    /// Messages waiting in mqfn and not yet running: the local part of the
    /// backlog.
    pub fn local_backlog(&self) -> usize {
        self.stats.inflight().saturating_sub(self.pool.busy()) + self.lanes.queued()
    }

    /// Consumes `source` until `shutdown` or until the source fails for
    /// good, then drains: stops fetching, lets running invocations finish
    /// and settle within `drain`, and hands the rest back to the broker.
    pub async fn run(
        self: Arc<Self>,
        mut source: Box<dyn Source>,
        window: usize,
        shutdown: CancellationToken,
        drain: Duration,
    ) -> Ended {
        let mut ended = Ended::Shutdown;
        let inflight = Arc::new(Semaphore::new(window));
        let tracker = TaskTracker::new();
        // A driver per runtime worker, and one per 256 in-flight messages:
        // one driver holding a window of 2,048 cost NATS 1.56x the bare
        // client's CPU (docs/benchmarks.md, "NATS at workers.max = 1024").
        let drivers = Drivers::start(Drivers::for_runtime().max(window.div_ceil(256)), &tracker);
        let mut failures = 0u32;
        loop {
            let permit = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                p = inflight.clone().acquire_owned() => p.expect("never closed"),
            };
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                d = source.next() => d,
            };
            match next {
                Ok(d) => {
                    failures = 0;
                    self.meters.received();
                    self.dispatch(d, permit, &drivers, &shutdown);
                }
                Err(e) if e.kind == BrokerErrorKind::Terminal => {
                    // Not ready from now on, while the rest drains.
                    self.stats.set_subscribed(false);
                    self.stats.error(e.to_string());
                    ended = Ended::Failed(e);
                    break;
                }
                Err(e) => {
                    warn!(route = %self.name, error = %e, "Receive failed; retrying.");
                    self.stats.error(e.to_string());
                    failures += 1;
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(reconnect_delay(failures)) => {}
                    }
                }
            }
        }
        info!(route = %self.name, inflight = self.stats.inflight(), "Draining.");
        drop(drivers);
        tracker.close();
        if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
            warn!(
                route = %self.name,
                unfinished = self.stats.inflight(),
                "Shutdown timeout reached; unfinished messages will be redelivered by the broker."
            );
        }
        if tokio::time::timeout(crate::brokers::CLOSE_TIMEOUT, source.close())
            .await
            .is_err()
        {
            warn!(route = %self.name, "The source did not close in time.");
        }
        info!(route = %self.name, "Drained.");
        ended
    }

    fn dispatch(
        self: &Arc<Self>,
        d: Delivery,
        permit: OwnedSemaphorePermit,
        drivers: &Drivers,
        shutdown: &CancellationToken,
    ) {
        let guard = self.stats.begin(d.received);
        let shutdown = shutdown.clone();
        let Some(lane) = lanes::lane_of(self.ordering, &d.msg) else {
            let route = self.clone();
            drivers.run(Box::pin(async move {
                route.process(d, &shutdown).await;
                drop((permit, guard));
            }));
            return;
        };
        drop(guard);
        let Some((first, permit)) = self.lanes.enter(lane.clone(), (d, permit)) else {
            return; // queued behind its lane; the lane's task will run it
        };
        let route = self.clone();
        drivers.run(Box::pin(async move {
            let mut item: Option<Queued> = Some((first, permit));
            while let Some((d, permit)) = item {
                let guard = route.stats.begin(d.received);
                route.process(d, &shutdown).await;
                drop((permit, guard));
                item = route.lanes.next(&lane);
            }
        }));
    }
}
