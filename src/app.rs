//! Wiring: brokers → routes → pools, the admin listener, supervision and
//! shutdown.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::brokers::{self, reconnect_delay, Broker, BrokerError, CLOSE_TIMEOUT};
use crate::config::{Config, Endpoint};
use crate::handler::{self, BuildError};
use crate::pool::autoscale;
use crate::route::{Ended, Route, Sink, WINDOW_FACTOR};
use crate::state::{AppState, RouteHandle};
use crate::telemetry::admin;
use crate::telemetry::names;

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
                                                     // Exported at 0 from start, so that `increase()` (and the
                                                     // alert rules) see the first error.
                metrics::counter!(names::PUBLISH_ERRORS_TOTAL, "broker" => ep.broker.clone())
                    .increment(0);
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
        let sink = |ep: &Option<Endpoint>| {
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
        .with_reserved_headers(brokers[&r.source.broker].reserved_headers())
        .with_instances(built.instances);
        routes.push(Arc::new(RouteHandle::new(Arc::new(route), r.clone())));
    }
    Ok(AppState {
        brokers,
        routes,
        handlers: handlers.into_values().collect(),
    })
}

/// A started app: its routes run, its admin listener serves, until
/// [`App::run_until`] is told to stop.
pub struct App {
    /// What the admin listener reads.
    pub state: Arc<AppState>,
    /// Where the admin listener is bound (port 0 in config picks one).
    pub admin_addr: SocketAddr,
    /// The metrics recorder's handle.
    pub metrics: PrometheusHandle,
    token: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    admin_task: JoinHandle<()>,
}

impl App {
    /// Connects, builds, binds the admin listener and starts every route.
    pub async fn start(cfg: &Config) -> Result<Self, AppError> {
        let metrics = crate::telemetry::install_metrics();
        let state = Arc::new(build(cfg).await?);
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
        let admin_addr = listener.local_addr().unwrap_or(listen);
        info!(addr = %admin_addr, "Admin listener up.");
        let token = CancellationToken::new();
        tokio::spawn(crate::telemetry::upkeep(metrics.clone(), token.clone()));
        let admin_task = tokio::spawn(admin::serve(
            listener,
            state.clone(),
            metrics.clone(),
            token.clone(),
        ));
        let mut tasks = Vec::new();
        for h in &state.routes {
            let broker = state.brokers[&h.cfg.source.broker].clone();
            tasks.push(tokio::spawn(supervise(
                h.clone(),
                broker,
                token.clone(),
                cfg.shutdown_timeout,
            )));
            tasks.push(tokio::spawn(autoscale::run(h.clone(), token.clone())));
        }
        info!(routes = state.routes.len(), "Running.");
        Ok(Self {
            state,
            admin_addr,
            metrics,
            token,
            tasks,
            admin_task,
        })
    }

    /// Runs until `shutdown` completes, then drains and returns.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) {
        shutdown.await;
        info!("Shutting down: no more fetching; finishing in-flight work.");
        self.token.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        for h in &self.state.handlers {
            h.close().await;
        }
        for b in self.state.brokers.values() {
            // A broker that is down cannot flush; do not hang the exit on it.
            if tokio::time::timeout(CLOSE_TIMEOUT, b.close())
                .await
                .is_err()
            {
                warn!(broker = %b.name(), "Broker did not close in time; exiting anyway.");
            }
        }
        let _ = self.admin_task.await;
        info!("Stopped.");
    }
}

/// Runs every route of `cfg` until `shutdown` completes, then drains and
/// returns.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<(), AppError> {
    App::start(&cfg).await?.run_until(shutdown).await;
    Ok(())
}

/// Keeps one route running: subscribes, consumes, and when the route's
/// task panics or its source fails for good, reports it and starts it
/// again with backoff, until shutdown.
async fn supervise(
    h: Arc<RouteHandle>,
    broker: Arc<dyn Broker>,
    shutdown: CancellationToken,
    drain: Duration,
) {
    let mut restarts = 0;
    loop {
        let task = AssertUnwindSafe(route_task(
            h.clone(),
            broker.clone(),
            shutdown.clone(),
            drain,
        ))
        .catch_unwind();
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
    broker: Arc<dyn Broker>,
    shutdown: CancellationToken,
    drain: Duration,
) -> Ended {
    let window = h.cfg.workers.max * WINDOW_FACTOR;
    let mut failures = 0;
    let source = loop {
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return Ended::Shutdown,
            s = broker.source(&h.cfg, window) => s,
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
    h.subscribed(source.backlog_probe(), source.joined());
    info!(route = %h.cfg.name, source = %h.cfg.source.describe(), handler = %h.cfg.handler, "Subscribed.");
    h.route.clone().run(source, window, shutdown, drain).await
}
