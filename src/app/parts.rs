//! Building a config's brokers, handlers and routes, and keeping, on a
//! reload, the ones whose config did not change.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::brokers::{self, Broker};
use crate::config::{Config, Endpoint, RouteConfig};
use crate::handler;
use crate::route::{Route, Sink};
use crate::state::{AppState, RouteHandle};
use crate::telemetry::names;

use super::AppError;

/// The parts of a running app that a reload may keep: each broker and
/// handler by name, with the config it was built from.
#[derive(Default, Clone)]
pub(super) struct Parts {
    pub(super) brokers: BTreeMap<String, (String, Arc<dyn Broker>)>,
    pub(super) handlers: BTreeMap<String, (String, handler::Built)>,
}

/// What a route was built from: itself, its handler and its brokers. Two
/// equal prints make the same route, so a reload leaves it running.
pub(super) fn route_print(cfg: &Config, r: &RouteConfig) -> String {
    let brokers: Vec<String> = endpoints(r)
        .into_iter()
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

/// Every endpoint of a route, those inside others (a schedule's `via`)
/// included.
fn endpoints(r: &RouteConfig) -> Vec<&Endpoint> {
    let top = [
        Some(&r.source),
        r.output.as_ref(),
        r.dead_letter.as_ref(),
        r.http.as_ref(),
    ];
    let mut all: Vec<&Endpoint> = top.into_iter().flatten().collect();
    let nested: Vec<&Endpoint> = all.iter().flat_map(|e| e.spec().nested()).collect();
    all.extend(nested);
    all
}

/// Builds handlers and broker connections for every route of `cfg`.
pub async fn build(cfg: &Config) -> Result<AppState, AppError> {
    Ok(assemble(cfg, &Parts::default(), &BTreeSet::new()).await?.0)
}

/// Builds `cfg`'s routes but those named in `skip` (a reload keeps them
/// running), reusing from `kept` every broker and handler whose config did
/// not change; returns the state and its parts.
pub(super) async fn assemble(
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
