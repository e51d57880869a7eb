//! Wiring: brokers → routes → pools, the admin listener, supervision and
//! shutdown.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::FutureExt;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::brokers::{self, reconnect_delay, Broker, BrokerError, CLOSE_TIMEOUT};
use crate::config::{Config, Endpoint, RouteConfig};
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

/// The parts of a running app that a reload may keep: each broker and
/// handler by name, with the config it was built from.
#[derive(Default, Clone)]
struct Parts {
    brokers: BTreeMap<String, (String, Arc<dyn Broker>)>,
    handlers: BTreeMap<String, (String, handler::Built)>,
}

/// What a route was built from: itself, its handler and its brokers. Two
/// equal prints make the same route, so a reload leaves it running.
fn route_print(cfg: &Config, r: &RouteConfig) -> String {
    let brokers: Vec<String> = endpoints(r)
        .map(|ep| broker_print(cfg, &ep.broker))
        .collect();
    format!(
        "{r:?}|{}|{brokers:?}|{:?}",
        handler_print(cfg, &r.handler),
        cfg.shutdown_timeout
    )
}

fn broker_print(cfg: &Config, name: &str) -> String {
    format!("{:?}", cfg.brokers.get(name))
}

fn handler_print(cfg: &Config, name: &str) -> String {
    format!("{:?}", cfg.handlers.get(name))
}

fn endpoints(r: &RouteConfig) -> impl Iterator<Item = &Endpoint> {
    [Some(&r.source), r.output.as_ref(), r.dead_letter.as_ref()]
        .into_iter()
        .flatten()
}

/// Builds handlers and broker connections for every route of `cfg`.
pub async fn build(cfg: &Config) -> Result<AppState, AppError> {
    Ok(assemble(cfg, &Parts::default(), &BTreeSet::new()).await?.0)
}

/// Builds `cfg`'s routes but those named in `skip` (a reload keeps them
/// running), reusing from `kept` every broker and handler whose config did
/// not change; returns the state and its parts.
async fn assemble(
    cfg: &Config,
    kept: &Parts,
    skip: &BTreeSet<String>,
) -> Result<(AppState, Parts), AppError> {
    let mut parts = Parts::default();
    let result = assemble_into(cfg, kept, skip, &mut parts).await;
    if result.is_err() {
        // Close what this attempt created; what was kept stays in use.
        for (name, (_, b)) in &parts.brokers {
            if !kept.brokers.contains_key(name) || !Arc::ptr_eq(b, &kept.brokers[name].1) {
                b.close().await;
            }
        }
    }
    result.map(|state| (state, parts))
}

async fn assemble_into(
    cfg: &Config,
    kept: &Parts,
    skip: &BTreeSet<String>,
    parts: &mut Parts,
) -> Result<AppState, AppError> {
    for r in &cfg.routes {
        for ep in endpoints(r) {
            if parts.brokers.contains_key(&ep.broker) {
                continue;
            }
            let print = broker_print(cfg, &ep.broker);
            let broker = match kept.brokers.get(&ep.broker) {
                Some((p, b)) if *p == print => b.clone(),
                _ => {
                    // Exported at 0 from start, so that `increase()` (and
                    // the alert rules) see the first error.
                    metrics::counter!(names::PUBLISH_ERRORS_TOTAL, "broker" => ep.broker.clone())
                        .increment(0);
                    let bcfg = &cfg.brokers[&ep.broker]; // validated to exist
                    brokers::connect(&ep.broker, bcfg, false).await?
                }
            };
            parts.brokers.insert(ep.broker.clone(), (print, broker));
        }
    }
    let brokers: BTreeMap<String, Arc<dyn Broker>> = parts
        .brokers
        .iter()
        .map(|(n, (_, b))| (n.clone(), b.clone()))
        .collect();
    for r in &cfg.routes {
        // One handler (and one instance pool) per name, shared by its routes.
        let print = handler_print(cfg, &r.handler);
        let built = match (
            parts.handlers.get(&r.handler),
            kept.handlers.get(&r.handler),
        ) {
            (Some((_, b)), _) => b.clone(),
            (None, Some((p, b))) if *p == print => b.clone(),
            _ => handler::build(&r.handler, cfg).map_err(|source| AppError::Handler {
                route: r.name.clone(),
                source,
            })?,
        };
        parts.handlers.insert(r.handler.clone(), (print, built));
    }
    // Only once nothing can fail: a route attaches to its handler's
    // instance pool, which then waits for it to scale to zero.
    let routes = cfg
        .routes
        .iter()
        .filter(|r| !skip.contains(&r.name))
        .map(|r| {
            let built = parts.handlers[&r.handler].1.clone();
            Arc::new(RouteHandle::new(
                Arc::new(new_route(r, built, &brokers)),
                r.clone(),
            ))
        })
        .collect();
    Ok(AppState {
        brokers,
        routes,
        handlers: parts.handlers.values().map(|(_, b)| b.clone()).collect(),
    })
}

fn new_route(
    r: &RouteConfig,
    built: handler::Built,
    brokers: &BTreeMap<String, Arc<dyn Broker>>,
) -> Route {
    let sink = |ep: &Option<Endpoint>| {
        ep.as_ref().map(|at| Sink {
            publisher: brokers[&at.broker].publisher(),
            at: at.clone(),
        })
    };
    Route::new(
        r,
        built.handler,
        built.timeout,
        sink(&r.output),
        sink(&r.dead_letter),
        Some(brokers[&r.source.broker].publisher()),
    )
    .with_reserved_headers(brokers[&r.source.broker].reserved_headers())
    .with_instances(built.instances)
}

/// A route's running tasks (supervisor and autoscaler), stopped together.
struct Running {
    print: String,
    token: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// What a reload did, by route name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Routes left running untouched.
    pub kept: Vec<String>,
    /// Routes drained and started again with their new config.
    pub restarted: Vec<String>,
    /// Routes drained and stopped.
    pub stopped: Vec<String>,
    /// Routes started.
    pub started: Vec<String>,
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
        let broker = state.brokers[&h.cfg.source.broker].clone();
        let tasks = vec![
            tokio::spawn(supervise(
                h.clone(),
                broker,
                token.clone(),
                self.cfg.shutdown_timeout,
            )),
            tokio::spawn(autoscale::run(h.clone(), token.clone())),
        ];
        self.running.insert(
            h.cfg.name.clone(),
            Running {
                print: route_print(&self.cfg, &h.cfg),
                token,
                tasks,
            },
        );
    }

    /// Moves to `new` without a restart: routes whose config (with their
    /// handler's and brokers') did not change keep running untouched;
    /// changed routes drain and start again; removed routes drain and
    /// stop; new routes start. Brokers and handlers are connected and
    /// built before anything stops, so a failure there leaves the running
    /// config as it was.
    ///
    /// The admin listener, `worker_threads` and the log settings stay as
    /// they were started (a warning says so when they changed).
    pub async fn reload(&mut self, new: &Config) -> Result<Reloaded, AppError> {
        if new.worker_threads != self.cfg.worker_threads {
            warn!("worker_threads changed; it takes a restart to resize the runtime.");
        }
        let mut new = new.clone();
        new.admin.listen = self.cfg.admin.listen.clone();
        let prints: BTreeMap<String, String> = new
            .routes
            .iter()
            .map(|r| (r.name.clone(), route_print(&new, r)))
            .collect();
        let unchanged: BTreeSet<String> = self
            .running
            .iter()
            .filter(|(name, run)| prints.get(*name) == Some(&run.print))
            .map(|(name, _)| name.clone())
            .collect();
        let (built, parts) = assemble(&new, &self.parts, &unchanged).await?;
        let old = self.state();
        let mut done = Reloaded::default();
        // Drain what goes away or changes, before its replacement starts.
        let leaving: Vec<String> = self
            .running
            .keys()
            .filter(|name| !unchanged.contains(*name))
            .cloned()
            .collect();
        for name in &leaving {
            let run = self.running.remove(name).expect("running");
            info!(route = %name, "Reload: draining the route.");
            run.token.cancel();
            for t in run.tasks {
                let _ = t.await;
            }
        }
        // The next state, in config order: kept routes keep their handle
        // (and their figures).
        let mut routes = Vec::new();
        for r in &new.routes {
            let name = &r.name;
            let handle = match unchanged.contains(name) {
                true => {
                    done.kept.push(name.clone());
                    old.routes.iter().find(|o| o.cfg.name == *name)
                }
                false => {
                    match leaving.contains(name) {
                        true => done.restarted.push(name.clone()),
                        false => done.started.push(name.clone()),
                    }
                    built.routes.iter().find(|b| b.cfg.name == *name)
                }
            };
            routes.push(handle.expect("built or kept").clone());
        }
        done.stopped = leaving
            .iter()
            .filter(|n| !prints.contains_key(*n))
            .cloned()
            .collect();
        let state = AppState {
            brokers: built.brokers.clone(),
            routes,
            handlers: built.handlers.clone(),
        };
        self.cfg = new;
        self.parts = parts;
        self.state.store(Arc::new(state));
        let current = self.state();
        for h in &current.routes {
            if !self.running.contains_key(&h.cfg.name) {
                self.launch(h, &current);
            }
        }
        // Close the brokers and handlers nothing uses any more.
        for (name, b) in &old.brokers {
            if !current.brokers.get(name).is_some_and(|n| Arc::ptr_eq(n, b)) {
                close_broker(b).await;
            }
        }
        for h in &old.handlers {
            if !current
                .handlers
                .iter()
                .any(|n| Arc::ptr_eq(&n.handler, &h.handler))
            {
                h.close().await;
            }
        }
        info!(kept = ?done.kept, restarted = ?done.restarted, stopped = ?done.stopped, started = ?done.started, "Config reloaded.");
        Ok(done)
    }

    /// Runs until `shutdown` completes, then drains and returns.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) {
        shutdown.await;
        self.stop().await;
    }

    /// Runs until `shutdown` completes, reloading the config from `path` on
    /// SIGHUP and, with `watch`, whenever the file's contents change.
    pub async fn serve(mut self, path: &Path, watch: bool, shutdown: impl Future<Output = ()>) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(error = %e, "Cannot listen for SIGHUP; the config reloads only with --watch.");
                None
            }
        };
        let mut seen = std::fs::read(path).ok();
        tokio::pin!(shutdown);
        loop {
            let hangup = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut shutdown => break,
                _ = hangup => {
                    info!(config = %path.display(), "SIGHUP: reloading the config.");
                    seen = std::fs::read(path).ok();
                    self.reload_from(path).await;
                }
                _ = tokio::time::sleep(WATCH_EVERY), if watch => {
                    let now = std::fs::read(path).ok();
                    if now.is_some() && now != seen {
                        info!(config = %path.display(), "The config file changed: reloading it.");
                        seen = now;
                        self.reload_from(path).await;
                    }
                }
            }
        }
        self.stop().await;
    }

    /// Loads `path` and reloads; a config that does not load or start is
    /// refused, with every error logged, and the running one stays.
    async fn reload_from(&mut self, path: &Path) {
        let new = match Config::load(path) {
            Ok(c) => c,
            Err(errors) => {
                for line in errors.to_string().lines() {
                    error!(config = %path.display(), "{line}");
                }
                error!(config = %path.display(), "Config reload refused; the running config stays.");
                return;
            }
        };
        if let Err(e) = self.reload(&new).await {
            error!(config = %path.display(), error = %e, "Config reload refused; the running config stays.");
        }
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

/// How often `--watch` looks at the config file.
const WATCH_EVERY: Duration = Duration::from_secs(1);

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
