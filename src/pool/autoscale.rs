//! The autoscaling loop of one route: samples the backlog every
//! `scale_interval` (or sooner, when a message waits on an empty pool),
//! asks the [`Scaler`] for a size, resizes the pool, parks or wakes the
//! handler's instances, and updates the gauges.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::info;

use super::scaler::Scaler;
use crate::state::RouteHandle;
use crate::telemetry::names;

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
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(w.scale_interval) => {}
            _ = route.wake.notified() => {}
        }
        if let Some(p) = h.probe() {
            match p.backlog().await {
                Ok(n) => route.stats.broker_backlog.store(n, Ordering::Relaxed),
                Err(e) => route.stats.error(e.to_string()),
            }
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
        metrics::gauge!(names::BACKLOG_MESSAGES, "route" => label.clone()).set(backlog as f64);
        metrics::gauge!(names::WORKERS_DESIRED, "route" => label.clone()).set(d.desired as f64);
        metrics::gauge!(names::WORKERS, "route" => label.clone(), "state" => "busy")
            .set(busy as f64);
        metrics::gauge!(names::WORKERS, "route" => label.clone(), "state" => "idle")
            .set(route.pool.size().saturating_sub(busy) as f64);
        metrics::gauge!(names::OLDEST_INFLIGHT_AGE_SECONDS, "route" => label.clone())
            .set(route.stats.oldest_age_secs());
    }
}
