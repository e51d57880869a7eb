//! Wiring: brokers → routes → pools, the admin listener, and shutdown.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::brokers::{self, reconnect_delay, BacklogProbe, Broker, BrokerError};
use crate::config::{Config, RouteConfig};
use crate::handler::{self, BuildError};
use crate::pool::scaler::{Decision, Scaler};
use crate::route::{Route, Sink, WINDOW_FACTOR};
use crate::telemetry::{admin, names};

/// How long closing a source or a broker connection may take at shutdown.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why `run` could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A broker connection could not be set up.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// A handler could not be built.
    #[error("route {route}: {source}")]
    Handler {
        /// The route.
        route: String,
        /// Why.
        source: BuildError,
    },
    /// The admin listener could not bind.
    #[error("admin listener on {addr}: {source}; pass --admin ADDR or set [admin] listen")]
    Admin {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A running route and what the admin listener shows of it.
pub struct RouteHandle {
    /// The route.
    pub route: Arc<Route>,
    /// Its config.
    pub cfg: RouteConfig,
    /// The latest scaling decisions, newest last.
    pub decisions: std::sync::Mutex<std::collections::VecDeque<Decision>>,
    /// The broker-side backlog probe, once subscribed.
    pub probe: std::sync::Mutex<Option<Arc<dyn BacklogProbe>>>,
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
        self.brokers.values().all(|b| b.is_up())
            && self
                .routes
                .iter()
                .all(|r| r.route.stats.subscribed.load(AtomicOrdering::Relaxed))
    }
}

/// Builds handlers and broker connections for every route of `cfg`.
pub async fn build(cfg: &Config) -> Result<AppState, AppError> {
    let mut brokers: BTreeMap<String, Arc<dyn Broker>> = BTreeMap::new();
    for r in &cfg.routes {
        for ep in [Some(&r.source), r.output.as_ref(), r.dead_letter.as_ref()]
            .into_iter()
            .flatten()
        {
            if !brokers.contains_key(&ep.broker) {
                let bcfg = &cfg.brokers[&ep.broker]; // validated to exist
                brokers.insert(
                    ep.broker.clone(),
                    brokers::connect(&ep.broker, bcfg, false).await?,
                );
            }
        }
    }
    let mut routes = Vec::new();
    let mut handlers: BTreeMap<String, handler::Built> = BTreeMap::new();
    for r in &cfg.routes {
        // One handler (and one instance pool) per name, shared by its routes.
        let built = match handlers.get(&r.handler) {
            Some(b) => b.clone(),
            None => {
                let b = handler::build(&r.handler, cfg).map_err(|source| AppError::Handler {
                    route: r.name.clone(),
                    source,
                })?;
                handlers.insert(r.handler.clone(), b.clone());
                b
            }
        };
        let sink = |ep: &Option<crate::config::Endpoint>| {
            ep.as_ref().map(|at| Sink {
                publisher: brokers[&at.broker].publisher(),
                at: at.clone(),
            })
        };
        let route = Route::new(
            r,
            built.handler,
            built.timeout,
            sink(&r.output),
            sink(&r.dead_letter),
            Some(brokers[&r.source.broker].publisher()),
        )
        .with_instances(built.instances);
        routes.push(Arc::new(RouteHandle {
            route: Arc::new(route),
            cfg: r.clone(),
            decisions: Default::default(),
            probe: Default::default(),
        }));
    }
    Ok(AppState {
        brokers,
        routes,
        handlers: handlers.into_values().collect(),
    })
}

/// Runs every route of `cfg` until `shutdown` completes, then drains and
/// returns.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<(), AppError> {
    let metrics = crate::telemetry::install_metrics();
    let state = Arc::new(build(&cfg).await?);
    let listen: SocketAddr = cfg.admin.listen.parse().map_err(|e| AppError::Admin {
        addr: cfg.admin.listen.clone(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
    })?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| AppError::Admin {
            addr: listen.to_string(),
            source,
        })?;
    info!(addr = %listener.local_addr().unwrap_or(listen), "Admin listener up.");
    let token = CancellationToken::new();
    tokio::spawn(crate::telemetry::upkeep(metrics.clone(), token.clone()));
    let admin_task = tokio::spawn(admin::serve(
        listener,
        state.clone(),
        metrics,
        token.clone(),
    ));
    let mut tasks = Vec::new();
    for h in &state.routes {
        let broker = state.brokers[&h.cfg.source.broker].clone();
        tasks.push(tokio::spawn(route_task(
            h.clone(),
            broker,
            token.clone(),
            cfg.shutdown_timeout,
        )));
        tasks.push(tokio::spawn(scale_task(h.clone(), token.clone())));
    }
    info!(routes = state.routes.len(), "Running.");
    shutdown.await;
    info!("Shutting down: no more fetching; finishing in-flight work.");
    token.cancel();
    for t in tasks {
        let _ = t.await;
    }
    for h in &state.handlers {
        h.close().await;
    }
    for b in state.brokers.values() {
        // A broker that is down cannot flush; do not hang the exit on it.
        if tokio::time::timeout(CLOSE_TIMEOUT, b.close())
            .await
            .is_err()
        {
            warn!(broker = %b.name(), "Broker did not close in time; exiting anyway.");
        }
    }
    let _ = admin_task.await;
    info!("Stopped.");
    Ok(())
}

async fn route_task(
    h: Arc<RouteHandle>,
    broker: Arc<dyn Broker>,
    shutdown: CancellationToken,
    drain: Duration,
) {
    let window = h.cfg.workers.max * WINDOW_FACTOR;
    let mut failures = 0;
    let source = loop {
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return,
            s = broker.source(&h.cfg, window) => s,
        };
        match attempt {
            Ok(s) => break s,
            Err(e) => {
                failures += 1;
                warn!(route = %h.cfg.name, error = %e, "Cannot subscribe yet; retrying.");
                h.route.stats.error(e.to_string());
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(reconnect_delay(failures)) => {}
                }
            }
        }
    };
    *h.probe.lock().unwrap_or_else(PoisonError::into_inner) = source.backlog_probe();
    h.route
        .stats
        .subscribed
        .store(true, AtomicOrdering::Relaxed);
    info!(route = %h.cfg.name, source = %h.cfg.source.describe(), handler = %h.cfg.handler, "Subscribed.");
    h.route.clone().run(source, window, shutdown, drain).await;
}

/// How many scaling decisions `/status` keeps.
const DECISIONS_KEPT: usize = 64;

/// Samples the backlog every `scale_interval` (or sooner, when a message
/// waits on an empty pool), resizes the pool, and updates the gauges.
async fn scale_task(h: Arc<RouteHandle>, shutdown: CancellationToken) {
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
        let probe = h
            .probe
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(p) = probe {
            match p.backlog().await {
                Ok(n) => route.stats.broker_backlog.store(n, AtomicOrdering::Relaxed),
                Err(e) => route.stats.error(e.to_string()),
            }
        }
        let local = route.local_backlog() as u64;
        let backlog = route.stats.broker_backlog.load(AtomicOrdering::Relaxed) + local;
        let mut d = scaler.tick(backlog, tokio::time::Instant::now());
        d.busy = route.pool.busy();
        if d.next != d.current {
            route.pool.resize(d.next);
            info!(route = %label, backlog = d.backlog, current = d.current, desired = d.desired, next = d.next, busy = d.busy, "Scaled.");
            let mut kept = h.decisions.lock().unwrap_or_else(PoisonError::into_inner);
            if kept.len() == DECISIONS_KEPT {
                kept.pop_front();
            }
            kept.push_back(d);
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
        route
            .stats
            .desired
            .store(d.desired, AtomicOrdering::Relaxed);
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
