//! Config reload: on SIGHUP, and with `mqfn run --watch` when the file
//! changes.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info, warn};

use super::parts::{assemble, route_print};
use super::{close_broker, App, AppError};
use crate::config::Config;
use crate::state::AppState;

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

/// How often `--watch` looks at the config file.
const WATCH_EVERY: Duration = Duration::from_secs(1);

impl App {
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
}
