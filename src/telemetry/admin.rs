//! The admin HTTP listener: `/metrics`, `/healthz`, `/readyz`, `/status`.

use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::state::AppState;

#[derive(Clone)]
struct Shared {
    /// The current state: a config reload swaps it.
    app: Arc<ArcSwap<AppState>>,
    metrics: PrometheusHandle,
}

/// Serves until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Arc<ArcSwap<AppState>>,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) {
    let router = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .with_state(Shared { app, metrics });
    let result = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    if let Err(e) = result {
        warn!(error = %e, "Admin listener stopped.");
    }
}

async fn metrics_page(State(s): State<Shared>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render() + &super::billing::render(),
    )
}

async fn readyz(State(s): State<Shared>) -> impl IntoResponse {
    match s.app.load().readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(down) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", down.join("; ")),
        ),
    }
}

async fn status(State(s): State<Shared>) -> impl IntoResponse {
    Json(super::status::snapshot(&s.app.load()))
}
