//! What a running app knows about itself: its brokers, its routes and how
//! each is doing. The app writes it; the admin listener, `/status` and the
//! autoscaler read it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use tracing::error;

use crate::brokers::{BacklogProbe, Broker};
use crate::config::RouteConfig;
use crate::handler;
use crate::pool::scaler::Decision;
use crate::route::Route;
use crate::telemetry::names;

/// How many scaling decisions `/status` keeps.
pub const DECISIONS_KEPT: usize = 64;

/// A running route and what the admin listener shows of it.
pub struct RouteHandle {
    /// The route.
    pub route: Arc<Route>,
    /// Its config.
    pub cfg: RouteConfig,
    decisions: Mutex<VecDeque<Decision>>,
    probe: Mutex<Option<Arc<dyn BacklogProbe>>>,
    joined: Mutex<Option<tokio::sync::watch::Receiver<bool>>>,
    restarts: AtomicU64,
    failure: Mutex<Option<(SystemTime, String)>>,
}

/// A lock that a panic elsewhere does not poison for good: every critical
/// section here leaves its data whole.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RouteHandle {
    /// A route not yet subscribed.
    pub fn new(route: Arc<Route>, cfg: RouteConfig) -> Self {
        // At 0 from start: `increase()` misses a series' first sample.
        metrics::counter!(names::ROUTE_RESTARTS_TOTAL, "route" => cfg.name.clone()).increment(0);
        Self {
            route,
            cfg,
            decisions: Mutex::default(),
            probe: Mutex::default(),
            joined: Mutex::default(),
            restarts: AtomicU64::new(0),
            failure: Mutex::default(),
        }
    }

    /// The source is subscribed; `probe` reports its broker-side backlog,
    /// and `joined` (see [`crate::brokers::Source::joined`]) turns true
    /// once it receives.
    pub fn subscribed(
        &self,
        probe: Option<Arc<dyn BacklogProbe>>,
        joined: Option<tokio::sync::watch::Receiver<bool>>,
    ) {
        *lock(&self.probe) = probe;
        *lock(&self.joined) = joined;
        *lock(&self.failure) = None;
        self.route.stats.set_subscribed(true);
    }

    /// The route stopped for `reason` (a panic, a source that failed for
    /// good) and is about to be restarted: logged, counted, and shown in
    /// `/status` and `/readyz` until it is subscribed again.
    pub fn failed(&self, reason: String) {
        self.route.stats.set_subscribed(false);
        let n = self.restarts.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::counter!(names::ROUTE_RESTARTS_TOTAL, "route" => self.cfg.name.clone())
            .increment(1);
        error!(route = %self.cfg.name, restarts = n, reason = %reason, "Route stopped; restarting it.");
        self.route.stats.error(reason.clone());
        *lock(&self.failure) = Some((SystemTime::now(), reason));
    }

    /// Restarts so far.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// Why the route is down, while it is.
    pub fn failure(&self) -> Option<(SystemTime, String)> {
        lock(&self.failure).clone()
    }

    /// Subscribed and receiving: a consumer group member has had its first
    /// assignment.
    pub fn is_joined(&self) -> bool {
        lock(&self.joined).as_ref().map_or(true, |j| *j.borrow())
    }

    /// Why the route does not receive yet, if it does not.
    pub fn not_ready(&self) -> Option<String> {
        let name = &self.cfg.name;
        if !self.route.stats.is_subscribed() {
            return Some(match self.failure() {
                Some((_, why)) => format!("route {name} failed ({why}) and is restarting"),
                None => format!("route {name} is not subscribed"),
            });
        }
        (!self.is_joined())
            .then(|| format!("route {name} is joining its consumer group (no assignment yet)"))
    }

    /// The backlog probe, once subscribed.
    pub fn probe(&self) -> Option<Arc<dyn BacklogProbe>> {
        lock(&self.probe).clone()
    }

    /// Keeps a scaling decision for `/status`.
    pub fn decided(&self, d: Decision) {
        let mut kept = lock(&self.decisions);
        if kept.len() == DECISIONS_KEPT {
            kept.pop_front();
        }
        kept.push_back(d);
    }

    /// The kept decisions, oldest first.
    pub fn decisions(&self) -> Vec<Decision> {
        lock(&self.decisions).iter().copied().collect()
    }
}

/// What the admin listener reads.
pub struct AppState {
    /// Connected brokers by name.
    pub brokers: BTreeMap<String, Arc<dyn Broker>>,
    /// The routes, in config order.
    pub routes: Vec<Arc<RouteHandle>>,
    /// Every handler in use, once each.
    pub handlers: Vec<handler::Built>,
}

impl AppState {
    /// Ready when every broker is up and every route is subscribed.
    pub fn ready(&self) -> bool {
        self.readiness().is_ok()
    }

    /// `Ok` when ready; otherwise what is not, one reason per broker or
    /// route, for `/readyz`.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let down: Vec<String> = self
            .brokers
            .values()
            .filter(|b| !b.is_up())
            .map(|b| format!("broker {} is down", b.name()))
            .chain(self.routes.iter().filter_map(|r| r.not_ready()))
            .collect();
        if down.is_empty() {
            Ok(())
        } else {
            Err(down)
        }
    }
}
