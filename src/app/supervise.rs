//! Keeping one route running: subscribe, consume, and start again after a
//! panic or a source that failed for good.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::brokers::{reconnect_delay, Broker, Peers};
use crate::route::{Ended, WINDOW_FACTOR};
use crate::state::RouteHandle;

/// What a supervisor subscribes the route to.
#[derive(Clone)]
pub(super) struct Subscription {
    /// The broker (or trigger) asked for the source.
    pub broker: Arc<dyn Broker>,
    /// The app's brokers, for a trigger that goes through one.
    pub peers: Peers,
    /// The route's own source, whose backlog and readiness the route
    /// reports; false for a second trigger (a route's `http` key).
    pub primary: bool,
}

/// Keeps one route running: subscribes, consumes, and when the route's
/// task panics or its source fails for good, reports it and starts it
/// again with backoff, until shutdown.
pub(super) async fn supervise(
    h: Arc<RouteHandle>,
    sub: Subscription,
    shutdown: CancellationToken,
    drain: Duration,
) {
    let mut restarts = 0;
    loop {
        let task =
            AssertUnwindSafe(route_task(h.clone(), &sub, shutdown.clone(), drain)).catch_unwind();
        let reason = match task.await {
            Ok(Ended::Shutdown) => return,
            Ok(Ended::Failed(e)) => e.to_string(),
            Err(panic) => format!("the route's task panicked: {}", panic_text(&*panic)),
        };
        restarts += 1;
        h.failed(reason);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(reconnect_delay(restarts)) => {}
        }
    }
}

/// The message of a panic payload.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(s), _) => (*s).to_owned(),
        (None, Some(s)) => s.clone(),
        (None, None) => "a panic without a message".to_owned(),
    }
}

/// Subscribes the route (retrying with backoff until it can), then runs
/// it.
async fn route_task(
    h: Arc<RouteHandle>,
    sub: &Subscription,
    shutdown: CancellationToken,
    drain: Duration,
) -> Ended {
    let window = h.cfg.workers.max * WINDOW_FACTOR;
    let mut failures = 0;
    let source = loop {
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return Ended::Shutdown,
            s = sub.broker.subscribe(&h.cfg, window, &sub.peers) => s,
        };
        match attempt {
            Ok(s) => break s,
            Err(e) => {
                failures += 1;
                warn!(route = %h.cfg.name, error = %e, "Cannot subscribe yet; retrying.");
                h.route.stats.error(e.to_string());
                tokio::select! {
                    _ = shutdown.cancelled() => return Ended::Shutdown,
                    _ = tokio::time::sleep(reconnect_delay(failures)) => {}
                }
            }
        }
    };
    if sub.primary {
        h.subscribed(source.backlog_probe(), source.joined());
        info!(route = %h.cfg.name, source = %h.cfg.source.describe(), handler = %h.cfg.handler, "Subscribed.");
    } else {
        info!(route = %h.cfg.name, trigger = %sub.broker.name(), handler = %h.cfg.handler, "Exposed.");
    }
    h.route.clone().run(source, window, shutdown, drain).await
}
