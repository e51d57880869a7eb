//! The `/status` document and its table rendering for `mqfn status`.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::pool::instances::InstanceCounts;
use crate::pool::scaler::Decision;
use crate::state::AppState;

/// The whole status document.
#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    /// Whether `/readyz` says ready.
    pub ready: bool,
    /// Per broker.
    pub brokers: Vec<BrokerStatus>,
    /// Per route.
    pub routes: Vec<RouteStatus>,
}

/// One broker.
#[derive(Debug, Serialize, Deserialize)]
pub struct BrokerStatus {
    /// Config name.
    pub name: String,
    /// nats, kafka or amqp.
    pub kind: String,
    /// Connected.
    pub up: bool,
}

/// One route.
#[derive(Debug, Serialize, Deserialize)]
pub struct RouteStatus {
    /// Route name.
    pub name: String,
    /// `broker/address`.
    pub source: String,
    /// Handler name.
    pub handler: String,
    /// Subscribed to its source.
    pub subscribed: bool,
    /// Subscribed and receiving: a Kafka consumer has had its first group
    /// assignment (other sources receive once subscribed).
    pub joined: bool,
    /// Times the route was restarted after a panic or a source that
    /// failed for good.
    #[serde(default)]
    pub restarts: u64,
    /// Why the route is down and restarting, while it is.
    #[serde(default)]
    pub failure: Option<LastError>,
    /// Workers now, wanted, busy, and the bounds.
    pub workers: Workers,
    /// Broker backlog plus local buffer.
    pub backlog: u64,
    /// Messages in flight.
    pub inflight: usize,
    /// Age of the oldest message in flight.
    pub oldest_inflight_age_seconds: f64,
    /// Totals since start.
    pub received: u64,
    /// Settled with a result.
    pub succeeded: u64,
    /// Dead-lettered.
    pub dead_lettered: u64,
    /// Failed with no dead letter to go to (at-most-once sources).
    #[serde(default)]
    pub dropped: u64,
    /// Failed, and the failure answered to the caller that waited for it
    /// (a synchronous HTTP request).
    #[serde(default)]
    pub answered_errors: u64,
    /// Handed back to the broker.
    pub redelivered: u64,
    /// The latest error and its time (RFC 3339).
    pub last_error: Option<LastError>,
    /// Recent scaling decisions, oldest first.
    pub decisions: Vec<Decision>,
    /// The handler's instances (process and http handlers), shared by the
    /// routes that use the same handler.
    #[serde(default)]
    pub instances: Option<InstanceCounts>,
}

/// Worker figures.
#[derive(Debug, Serialize, Deserialize)]
pub struct Workers {
    /// Current size.
    pub current: usize,
    /// Busy now.
    pub busy: usize,
    /// What the autoscaler wants.
    pub desired: usize,
    /// Lower bound.
    pub min: usize,
    /// Upper bound.
    pub max: usize,
}

/// An error with its time.
#[derive(Debug, Serialize, Deserialize)]
pub struct LastError {
    /// When (RFC 3339).
    pub at: String,
    /// What.
    pub message: String,
}

/// Takes the status of a running app.
pub fn snapshot(app: &AppState) -> Status {
    Status {
        ready: app.ready(),
        brokers: app
            .brokers
            .values()
            .map(|b| BrokerStatus {
                name: b.name().to_owned(),
                kind: b.kind().to_owned(),
                up: b.is_up(),
            })
            .collect(),
        routes: app
            .routes
            .iter()
            .map(|h| {
                let r = &h.route;
                let s = &r.stats;
                let counts = r.meters.counts();
                RouteStatus {
                    name: h.cfg.name.clone(),
                    source: h.cfg.source.describe(),
                    handler: h.cfg.handler.clone(),
                    subscribed: s.is_subscribed(),
                    joined: s.is_subscribed() && h.is_joined(),
                    restarts: h.restarts(),
                    failure: h.failure().map(|(at, message)| LastError {
                        at: rfc3339(at),
                        message,
                    }),
                    workers: Workers {
                        current: r.pool.size(),
                        busy: r.pool.busy(),
                        desired: s.desired.load(Ordering::Relaxed),
                        min: h.cfg.workers.min,
                        max: h.cfg.workers.max,
                    },
                    backlog: s.broker_backlog.load(Ordering::Relaxed) + r.local_backlog() as u64,
                    inflight: s.inflight(),
                    oldest_inflight_age_seconds: s.oldest_age_secs(),
                    received: counts.received,
                    succeeded: counts.succeeded,
                    dead_lettered: counts.dead_lettered,
                    dropped: counts.dropped,
                    answered_errors: counts.answered_errors,
                    redelivered: counts.redelivered,
                    last_error: s.last_error().map(|(at, message)| LastError {
                        at: rfc3339(at),
                        message,
                    }),
                    decisions: h.decisions(),
                    instances: r.instances.as_ref().map(|i| i.counts()),
                }
            })
            .collect(),
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Renders the status as a text table.
pub fn table(s: &Status) -> String {
    let mut out = format!("ready: {}\n\n", s.ready);
    out.push_str(&format!("{:<10} {:<6} {}\n", "BROKER", "KIND", "UP"));
    for b in &s.brokers {
        out.push_str(&format!("{:<10} {:<6} {}\n", b.name, b.kind, b.up));
    }
    out.push_str(&format!(
        "\n{:<16} {:<24} {:<14} {:>9} {:>8} {:>8} {:>9} {:>8} {:>6}  {}\n",
        "ROUTE",
        "SOURCE",
        "HANDLER",
        "WORKERS",
        "BACKLOG",
        "OLDEST",
        "RECEIVED",
        "OK",
        "DLQ",
        "LAST ERROR"
    ));
    for r in &s.routes {
        let workers = format!("{}/{}/{}", r.workers.busy, r.workers.current, r.workers.max);
        let err = r
            .last_error
            .as_ref()
            .map(|e| format!("{} {}", e.at, e.message))
            .unwrap_or_default();
        out.push_str(&format!(
            "{:<16} {:<24} {:<14} {:>9} {:>8} {:>7.1}s {:>9} {:>8} {:>6}  {}\n",
            r.name,
            r.source,
            r.handler,
            workers,
            r.backlog,
            r.oldest_inflight_age_seconds,
            r.received,
            r.succeeded,
            r.dead_lettered,
            err
        ));
    }
    out
}
