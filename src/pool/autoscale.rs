//! The autoscaling loop of one route: samples the backlog every
//! `scale_interval` (or sooner, when a message waits on an empty pool),
//! asks the [`Scaler`] for a size, resizes the pool, parks or wakes the
//! handler's instances, and updates the gauges.
//!
//! A route at rest (zero workers, nothing in flight, no backlog at the
//! last sample) asks its broker for the backlog only every
//! [`QUIET_PROBE_EVERY`] ticks: a message that arrives wakes the loop at
//! once ([`crate::route::Route::attempt`]), so at rest the probe only feeds
//! the gauge. With a thousand idle routes that is a hundred broker requests
//! a second instead of a thousand.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::info;

use super::scaler::Scaler;
use crate::state::RouteHandle;
use crate::telemetry::names;

/// At rest, the broker's backlog is sampled on one tick in this many.
pub const QUIET_PROBE_EVERY: u32 = 10;

/// Runs until `shutdown`.
pub async fn run(h: Arc<RouteHandle>, shutdown: CancellationToken) {
    let w = &h.cfg.workers;
    let route = &h.route;
    let mut scaler = Scaler::new(w.clone(), tokio::time::Instant::now());
    route.pool.resize(scaler.current());
    let mut parked = scaler.current() == 0;
    if let (true, Some(i)) = (parked, &route.instances) {
        i.park(true);
    }
    let label = h.cfg.name.clone();
    // Registered once: a lookup per tick and gauge, times a thousand
    // routes, is most of what an idle process does.
    let gauge = |name: &'static str| metrics::gauge!(name, "route" => label.clone());
    let backlog_gauge = gauge(names::BACKLOG_MESSAGES);
    let desired_gauge = gauge(names::WORKERS_DESIRED);
    let oldest_gauge = gauge(names::OLDEST_INFLIGHT_AGE_SECONDS);
    gauge(names::WORKERS_MAX).set(w.max as f64);
    let busy_gauge = metrics::gauge!(names::WORKERS, "route" => label.clone(), "state" => "busy");
    let idle_gauge = metrics::gauge!(names::WORKERS, "route" => label.clone(), "state" => "idle");
    let mut unprobed = 0;
    loop {
        let woken = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(w.scale_interval) => false,
            _ = route.wake.notified() => true,
        };
        let at_rest = route.pool.size() == 0
            && route.local_backlog() == 0
            && route.stats.broker_backlog.load(Ordering::Relaxed) == 0;
        if woken || !at_rest || unprobed + 1 >= QUIET_PROBE_EVERY {
            unprobed = 0;
            if let Some(p) = h.probe() {
                match p.backlog().await {
                    Ok(n) => route.stats.broker_backlog.store(n, Ordering::Relaxed),
                    Err(e) => route.stats.error(e.to_string()),
                }
            }
        } else {
            unprobed += 1;
        }
        let local = route.local_backlog() as u64;
        let backlog = route.stats.broker_backlog.load(Ordering::Relaxed) + local;
        let mut d = scaler.tick(backlog, tokio::time::Instant::now());
        d.busy = route.pool.busy();
        if d.next != d.current {
            route.pool.resize(d.next);
            info!(route = %label, backlog = d.backlog, current = d.current, desired = d.desired, next = d.next, busy = d.busy, "Scaled.");
            h.decided(d);
        }
        if let Some(i) = &route.instances {
            // Scaled to zero: the route's instances go too. Back from zero:
            // the next instance is a cold start.
            if (d.next == 0) != parked {
                parked = d.next == 0;
                i.park(parked);
                if parked {
                    i.reap().await;
                }
            }
        }
        route.stats.desired.store(d.desired, Ordering::Relaxed);
        let busy = route.pool.busy();
        backlog_gauge.set(backlog as f64);
        desired_gauge.set(d.desired as f64);
        busy_gauge.set(busy as f64);
        idle_gauge.set(route.pool.size().saturating_sub(busy) as f64);
        oldest_gauge.set(route.stats.oldest_age_secs());
    }
    // The route stops (shutdown, or a reload that removed or changed it):
    // the handler's instances no longer wait for it to scale to zero.
    if let Some(i) = &route.instances {
        i.detach(parked);
    }
}
