//! Handler instances: warm copies of a handler (spawned processes, HTTP
//! connection slots), kept in a deadpool-managed pool per handler.
//!
//! - Taking an instance from the pool is a *warm start*; creating one is a
//!   *cold start*. Both are counted.
//! - A [`Lease`] that is dropped before [`Lease::finish`] (a crash, a broken
//!   protocol, a timeout that dropped the call future) discards its
//!   instance, so a process in an unknown state is never reused.
//! - Before reuse an instance must pass its kind's health check.
//! - A reaper stops instances idle for longer than `idle_timeout`, and every
//!   idle instance while all the routes using the handler are scaled to
//!   zero.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deadpool::managed::{self, Metrics, Object, PoolError, RecycleError, RecycleResult};
use mqfn_handlers::HandlerError;
use tracing::{debug, info, warn};

use crate::telemetry::names;

/// A kind of instance: how to start one, check it, and stop it.
pub trait Spawn: Send + Sync + 'static {
    /// One instance.
    type Instance: Send + 'static;
    /// Starts an instance (a cold start). `id` is unique within the handler.
    fn spawn(&self, id: u64) -> impl Future<Output = Result<Self::Instance, HandlerError>> + Send;
    /// Whether an idle instance can take another request.
    fn healthy(&self, instance: &mut Self::Instance) -> bool;
    /// Stops an instance politely; dropping it must stop it too.
    fn stop(&self, instance: Self::Instance) -> impl Future<Output = ()> + Send {
        async move { drop(instance) }
    }
}

/// Live figures of one handler's instances.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InstanceCounts {
    /// Instances alive (warm + busy).
    pub live: usize,
    /// Instances running a request.
    pub busy: usize,
    /// Instances created since start.
    pub cold_starts: u64,
    /// Requests served by an instance that already existed.
    pub warm_starts: u64,
}

/// What the rest of mqfn sees of an instance pool, whatever its kind.
#[async_trait]
pub trait Instances: Send + Sync {
    /// The figures now.
    fn counts(&self) -> InstanceCounts;
    /// Registers one more route that uses the handler.
    fn attach(&self);
    /// A route that used the handler stopped (a config reload removed or
    /// changed it); `parked` is whether it was at zero.
    fn detach(&self, parked: bool);
    /// A route scaled to zero (`true`) or woke up (`false`). While every
    /// attached route is at zero, idle instances are stopped at once.
    fn park(&self, parked: bool);
    /// Stops idle instances that are due, now. Returns how many.
    async fn reap(&self) -> usize;
    /// Stops every instance and refuses new requests.
    async fn close(&self);
}

/// Shared counters, updated by the pool, its leases and its instances.
#[derive(Debug)]
struct Stats {
    handler: String,
    next_id: AtomicU64,
    live: AtomicUsize,
    busy: AtomicUsize,
    cold: AtomicU64,
    warm: AtomicU64,
    routes: AtomicUsize,
    parked: AtomicUsize,
}

impl Stats {
    fn gauges(&self) {
        let live = self.live.load(Ordering::Relaxed);
        let busy = self.busy.load(Ordering::Relaxed).min(live);
        let h = self.handler.clone();
        metrics::gauge!(names::INSTANCES, "handler" => h.clone(), "state" => "warm")
            .set((live - busy) as f64);
        metrics::gauge!(names::INSTANCES, "handler" => h, "state" => "busy").set(busy as f64);
    }

    fn all_parked(&self) -> bool {
        let routes = self.routes.load(Ordering::SeqCst);
        routes > 0 && self.parked.load(Ordering::SeqCst) >= routes
    }
}

/// An instance as the pool holds it.
pub struct Tracked<T> {
    /// Always `Some`, except while being stopped.
    instance: Option<T>,
    id: u64,
    idle_since: Instant,
    stats: Arc<Stats>,
}

impl<T> Drop for Tracked<T> {
    fn drop(&mut self) {
        self.stats.live.fetch_sub(1, Ordering::Relaxed);
        self.stats.gauges();
    }
}

/// The deadpool manager around a [`Spawn`].
pub struct Manager<S> {
    spawner: Arc<S>,
    stats: Arc<Stats>,
}

impl<S: Spawn> managed::Manager for Manager<S> {
    type Type = Tracked<S::Instance>;
    type Error = HandlerError;

    async fn create(&self) -> Result<Self::Type, HandlerError> {
        let id = self.stats.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let instance = self.spawner.spawn(id).await?;
        self.stats.live.fetch_add(1, Ordering::Relaxed);
        self.stats.cold.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(names::COLD_STARTS_TOTAL, "handler" => self.stats.handler.clone())
            .increment(1);
        debug!(handler = %self.stats.handler, instance = id, "Instance started (cold start).");
        Ok(Tracked {
            instance: Some(instance),
            id,
            idle_since: Instant::now(),
            stats: self.stats.clone(),
        })
    }

    async fn recycle(&self, obj: &mut Self::Type, _: &Metrics) -> RecycleResult<HandlerError> {
        if obj
            .instance
            .as_mut()
            .is_some_and(|i| self.spawner.healthy(i))
        {
            Ok(())
        } else {
            info!(handler = %self.stats.handler, instance = obj.id, "Instance failed its health check; replacing it.");
            Err(RecycleError::message(
                "the instance failed its health check",
            ))
        }
    }
}

/// A pool of instances of one handler, with its reaper.
pub struct InstancePool<S: Spawn> {
    pool: managed::Pool<Manager<S>>,
    spawner: Arc<S>,
    stats: Arc<Stats>,
    idle_timeout: Duration,
}

impl<S: Spawn> InstancePool<S> {
    /// A pool of at most `max` instances of `handler`, reaped after
    /// `idle_timeout`. Starts the reaper on the current tokio runtime.
    pub fn new(handler: &str, spawner: S, max: usize, idle_timeout: Duration) -> Arc<Self> {
        let stats = Arc::new(Stats {
            handler: handler.to_owned(),
            next_id: AtomicU64::new(0),
            live: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            cold: AtomicU64::new(0),
            warm: AtomicU64::new(0),
            routes: AtomicUsize::new(0),
            parked: AtomicUsize::new(0),
        });
        stats.gauges();
        metrics::counter!(names::COLD_STARTS_TOTAL, "handler" => handler.to_owned()).absolute(0);
        metrics::counter!(names::WARM_STARTS_TOTAL, "handler" => handler.to_owned()).absolute(0);
        let spawner = Arc::new(spawner);
        let manager = Manager {
            spawner: spawner.clone(),
            stats: stats.clone(),
        };
        let pool = managed::Pool::builder(manager)
            .max_size(max.max(1))
            // Most recently used first: surplus instances go idle and are reaped.
            .queue_mode(managed::QueueMode::Lifo)
            .build()
            .expect("no timeouts are set, so no runtime is needed");
        let this = Arc::new(Self {
            pool,
            spawner,
            stats,
            idle_timeout,
        });
        tokio::spawn(reaper(Arc::downgrade(&this), reap_period(idle_timeout)));
        this
    }

    /// Takes an idle instance, or starts one when none is idle and the pool
    /// has room; otherwise waits for one to come back.
    pub async fn get(&self) -> Result<Lease<S>, HandlerError> {
        let obj = self.pool.get().await.map_err(|e| match e {
            PoolError::Backend(e) => e,
            PoolError::Closed => HandlerError::retryable("the handler is shutting down"),
            other => HandlerError::crashed(format!("no handler instance: {other}")),
        })?;
        if Object::metrics(&obj).recycle_count > 0 {
            self.stats.warm.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(names::WARM_STARTS_TOTAL, "handler" => self.stats.handler.clone())
                .increment(1);
        }
        self.stats.busy.fetch_add(1, Ordering::Relaxed);
        self.stats.gauges();
        Ok(Lease {
            obj: Some(obj),
            finished: false,
            stats: self.stats.clone(),
        })
    }

    async fn stop_all(&self, removed: Vec<Tracked<S::Instance>>) -> usize {
        let n = removed.len();
        let stops = removed.into_iter().map(|mut t| {
            // Move the instance out; the tracker's drop updates the counts.
            let id = t.id;
            let instance = t.instance.take();
            drop(t);
            let spawner = self.spawner.clone();
            let handler = self.stats.handler.clone();
            async move {
                if let Some(i) = instance {
                    spawner.stop(i).await;
                }
                debug!(handler = %handler, instance = id, "Instance stopped.");
            }
        });
        futures::future::join_all(stops).await;
        n
    }
}

#[async_trait]
impl<S: Spawn> Instances for InstancePool<S> {
    fn counts(&self) -> InstanceCounts {
        let live = self.stats.live.load(Ordering::Relaxed);
        InstanceCounts {
            live,
            busy: self.stats.busy.load(Ordering::Relaxed).min(live),
            cold_starts: self.stats.cold.load(Ordering::Relaxed),
            warm_starts: self.stats.warm.load(Ordering::Relaxed),
        }
    }

    fn attach(&self) {
        self.stats.routes.fetch_add(1, Ordering::SeqCst);
    }

    fn detach(&self, parked: bool) {
        if parked {
            self.park(false);
        }
        let _ = self
            .stats
            .routes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |r| r.checked_sub(1));
    }

    fn park(&self, parked: bool) {
        if parked {
            self.stats.parked.fetch_add(1, Ordering::SeqCst);
        } else {
            let _ = self
                .stats
                .parked
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |p| p.checked_sub(1));
        }
    }

    async fn reap(&self) -> usize {
        let all = self.stats.all_parked();
        let max_idle = self.idle_timeout;
        let removed = self
            .pool
            .retain(|t, _| !all && t.idle_since.elapsed() < max_idle)
            .removed;
        if removed.is_empty() {
            return 0;
        }
        let why = if all {
            "every route using it is scaled to zero"
        } else {
            "idle for longer than idle_timeout"
        };
        info!(handler = %self.stats.handler, instances = removed.len(), reason = why, "Reaping idle instances.");
        self.stop_all(removed).await
    }

    async fn close(&self) {
        let removed = self.pool.retain(|_, _| false).removed;
        self.pool.close();
        self.stop_all(removed).await;
    }
}

/// How often the reaper looks: often enough that an instance outlives its
/// `idle_timeout` by a small fraction only.
fn reap_period(idle_timeout: Duration) -> Duration {
    (idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

async fn reaper<S: Spawn>(pool: std::sync::Weak<InstancePool<S>>, period: Duration) {
    loop {
        tokio::time::sleep(period).await;
        let Some(pool) = pool.upgrade() else { return };
        if pool.pool.is_closed() {
            return;
        }
        pool.reap().await;
    }
}

/// One instance, taken from the pool for one request.
///
/// Call [`Lease::finish`] when the request ended cleanly; dropping the
/// lease without it discards the instance.
pub struct Lease<S: Spawn> {
    obj: Option<Object<Manager<S>>>,
    finished: bool,
    stats: Arc<Stats>,
}

impl<S: Spawn> Lease<S> {
    /// The instance.
    pub fn instance(&mut self) -> &mut S::Instance {
        self.obj
            .as_mut()
            .and_then(|o| o.instance.as_mut())
            .expect("present until the lease is dropped")
    }

    /// The instance's id, for logs.
    pub fn id(&self) -> u64 {
        self.obj.as_ref().map_or(0, |o| o.id)
    }

    /// The request ended cleanly: the instance goes back to the pool.
    pub fn finish(mut self) {
        self.finished = true;
    }
}

impl<S: Spawn> Drop for Lease<S> {
    fn drop(&mut self) {
        self.stats.busy.fetch_sub(1, Ordering::Relaxed);
        if let Some(mut obj) = self.obj.take() {
            if self.finished {
                obj.idle_since = Instant::now();
                drop(obj); // back to the pool
            } else {
                let tracked = Object::take(obj);
                warn!(handler = %self.stats.handler, instance = tracked.id, "Request did not finish cleanly (crash, protocol error or time limit); instance discarded.");
                drop(tracked); // stops it (e.g. kill_on_drop)
            }
        }
        self.stats.gauges();
    }
}
