//! Wiring: brokers → routes → pools, the admin listener, supervision and
//! shutdown.
//!
//! - [`parts`]: building a config's brokers, handlers and routes, keeping
//!   what a reload did not change;
//! - [`reload`]: SIGHUP and `--watch`;
//! - [`supervise`]: keeping each route running.

mod parts;
mod reload;
mod supervise;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::brokers::{Broker, BrokerError, CLOSE_TIMEOUT};
use crate::config::Config;
use crate::handler::BuildError;
use crate::pool::autoscale;
use crate::state::{AppState, RouteHandle};
use crate::telemetry::admin;
pub use parts::build;
use parts::{assemble, route_print, Parts};
pub use reload::Reloaded;
use supervise::{supervise, Subscription};

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

/// A route's running tasks (supervisor and autoscaler), stopped together.
struct Running {
    print: String,
    token: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// A started app: its routes run, its admin listener serves, until
/// [`App::run_until`] is told to stop.
pub struct App {
    state: Arc<ArcSwap<AppState>>,
    /// Where the admin listener is bound (port 0 in config picks one).
    pub admin_addr: SocketAddr,
    /// The metrics recorder's handle.
    pub metrics: PrometheusHandle,
    cfg: Config,
    parts: Parts,
    running: BTreeMap<String, Running>,
    token: CancellationToken,
    admin_task: JoinHandle<()>,
}

impl App {
    /// Connects, builds, binds the admin listener and starts every route.
    pub async fn start(cfg: &Config) -> Result<Self, AppError> {
        let metrics = crate::telemetry::install_metrics();
        let (state, parts) = assemble(cfg, &Parts::default(), &BTreeSet::new()).await?;
        let state = Arc::new(ArcSwap::from_pointee(state));
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
        let mut app = Self {
            state,
            admin_addr,
            metrics,
            cfg: cfg.clone(),
            parts,
            running: BTreeMap::new(),
            token,
            admin_task,
        };
        let current = app.state();
        for h in &current.routes {
            app.launch(h, &current);
        }
        info!(routes = current.routes.len(), "Running.");
        Ok(app)
    }

    /// The current state (routes, brokers, handlers).
    pub fn state(&self) -> Arc<AppState> {
        self.state.load_full()
    }

    /// Starts a route's supervisor and autoscaler.
    fn launch(&mut self, h: &Arc<RouteHandle>, state: &AppState) {
        let token = self.token.child_token();
        let subscription = |broker: &str, primary| Subscription {
            broker: state.brokers[broker].clone(),
            peers: state.brokers.clone(),
            primary,
        };
        let mut subs = vec![subscription(&h.cfg.source.broker, true)];
        // A second trigger: the route's `http` key, where its source is a
        // broker.
        if let Some(at) = h
            .cfg
            .http
            .as_ref()
            .filter(|at| at.broker != h.cfg.source.broker)
        {
            subs.push(subscription(&at.broker, false));
        }
        let mut tasks: Vec<_> = subs
            .into_iter()
            .map(|sub| {
                tokio::spawn(supervise(
                    h.clone(),
                    sub,
                    token.clone(),
                    self.cfg.shutdown_timeout,
                ))
            })
            .collect();
        tasks.push(tokio::spawn(autoscale::run(h.clone(), token.clone())));
        self.running.insert(
            h.cfg.name.clone(),
            Running {
                print: route_print(&self.cfg, &h.cfg),
                token,
                tasks,
            },
        );
    }

    /// Runs until `shutdown` completes, then drains and returns.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) {
        shutdown.await;
        self.stop().await;
    }

    async fn stop(self) {
        info!("Shutting down: no more fetching; finishing in-flight work.");
        self.token.cancel();
        for run in self.running.into_values() {
            for t in run.tasks {
                let _ = t.await;
            }
        }
        let state = self.state.load_full();
        for h in &state.handlers {
            h.close().await;
        }
        for b in state.brokers.values() {
            close_broker(b).await;
        }
        let _ = self.admin_task.await;
        info!("Stopped.");
    }
}

/// Closes a broker; one that is down cannot flush, so the exit does not
/// hang on it.
async fn close_broker(b: &Arc<dyn Broker>) {
    if tokio::time::timeout(CLOSE_TIMEOUT, b.close())
        .await
        .is_err()
    {
        warn!(broker = %b.name(), "Broker did not close in time; going on anyway.");
    }
}

/// Runs every route of `cfg` until `shutdown` completes, then drains and
/// returns.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<(), AppError> {
    App::start(&cfg).await?.run_until(shutdown).await;
    Ok(())
}

/// As [`run`], reloading the config from `path` on SIGHUP and, with
/// `watch`, when the file changes ([`App::reload`]).
pub async fn run_reloading(
    cfg: Config,
    path: &Path,
    watch: bool,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AppError> {
    App::start(&cfg).await?.serve(path, watch, shutdown).await;
    Ok(())
}
