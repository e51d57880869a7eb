//! The listener: from a request to its route, and from the outcome to the
//! response.
//!
//! | outcome | status |
//! |---|---|
//! | results | 200 with the one output (204 for none; a JSON array for several) |
//! | queued (async) | 202 with the message id |
//! | a permanent failure | 422, the reason in the body |
//! | a retryable failure, handed back | 503 with `Retry-After` |
//! | the handler crashed | 502 |
//! | past the route's `timeout` | 504 |
//! | the route at `workers.max` with its queue full | 503 with `Retry-After` |
//! | no route at the path, a wrong method, too large, a bad signature, a bad CloudEvent | 404, 405, 413, 401, 400 |
//!
//! Every error body is JSON: `{"error": "...", "route": "..."}`.

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use mqfn_handlers::HandlerError;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::config::Mode;
use super::source::{Entry, Reply, Token};
use super::{event, Table};
use crate::brokers::{Delivery, OutMessage, PublishErrorKind};
use crate::message::Headers;
use crate::telemetry::names;

/// What every request needs.
#[derive(Clone)]
struct Shared {
    table: Arc<Table>,
    max_body: usize,
}

/// Serves until `stop`.
pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    table: Arc<Table>,
    max_body: usize,
    stop: CancellationToken,
) {
    let app = axum::Router::new()
        .fallback(handle)
        .with_state(Shared { table, max_body });
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        warn!(error = %e, "The HTTP trigger's listener failed.");
    }
}

async fn handle(State(s): State<Shared>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let entry = s
        .table
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&path)
        .cloned();
    let Some(entry) = entry else {
        return counted(
            "",
            error(StatusCode::NOT_FOUND, "", format!("no route at {path}")),
        );
    };
    let response = request(&s, &entry, &path, req).await;
    counted(&entry.route, response)
}

/// Counts the response by route and status code.
fn counted(route: &str, r: Response) -> Response {
    metrics::counter!(
        names::HTTP_REQUESTS_TOTAL,
        "route" => route.to_owned(),
        "code" => r.status().as_str().to_owned()
    )
    .increment(1);
    r
}

async fn request(s: &Shared, entry: &Entry, path: &str, req: Request) -> Response {
    let route = entry.route.as_str();
    if req.method() != Method::POST {
        let mut r = error(
            StatusCode::METHOD_NOT_ALLOWED,
            route,
            format!("{} {path}: routes take POST", req.method()),
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    let limit = entry.max_bytes.map_or(s.max_body, |m| m.min(s.max_body));
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                route,
                format!("the body is larger than {limit} bytes (the route's max_message_bytes, or [http] max_body_bytes)"),
            )
        }
    };
    if let Some(auth) = &entry.auth {
        if let Err(why) = event::authorize(auth, &parts.headers, &body) {
            let mut r = error(StatusCode::UNAUTHORIZED, route, why);
            if auth.0.bearer_env.is_some() {
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            return r;
        }
    }
    let signature = entry.auth.as_ref().map(|(a, _)| a.header.as_str());
    let msg = match event::message(route, path, &parts.headers, body, signature) {
        Ok(m) => m,
        Err(why) => return error(StatusCode::BAD_REQUEST, route, why),
    };
    let wants_async = parts
        .headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|p| p.trim() == "respond-async"));
    match &entry.forward {
        Some(forward) if entry.mode == Mode::Async || wants_async => {
            enqueue(entry, forward, msg, &parts.headers).await
        }
        _ => invoke(entry, msg).await,
    }
}

/// Async: publishes the request to the route's broker source, and answers
/// 202 once the broker confirmed it.
async fn enqueue(
    entry: &Entry,
    (publisher, at): &(Arc<dyn crate::brokers::Publisher>, crate::config::Endpoint),
    msg: crate::message::Message,
    headers: &HeaderMap,
) -> Response {
    let id = msg.correlation_id.clone().unwrap_or_default();
    // A client that retries with the same Idempotency-Key queues one
    // message, where the broker deduplicates (JetStream).
    let dedup_id = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(|k| format!("mqfn:{}:http:{k}", entry.route));
    let out = OutMessage {
        payload: msg.payload,
        headers: msg.headers,
        key: msg.key,
        correlation_id: Some(id.clone()),
        dedup_id,
        ..OutMessage::default()
    };
    match publisher.publish(at, out).await {
        Ok(()) => {
            let mut r = json_response(
                StatusCode::ACCEPTED,
                &json!({ "id": id, "route": entry.route, "queued_on": at.describe() }),
            );
            r.headers_mut().insert(
                "preference-applied",
                HeaderValue::from_static("respond-async"),
            );
            r
        }
        Err(e) => {
            let status = match e.kind {
                PublishErrorKind::Transient => StatusCode::SERVICE_UNAVAILABLE,
                PublishErrorKind::Rejected => StatusCode::BAD_GATEWAY,
            };
            retry_after(
                error(status, &entry.route, format!("not queued: {e}")),
                Duration::from_secs(1),
            )
        }
    }
}

/// Sync: hands the request to the route and answers with the outcome.
async fn invoke(entry: &Entry, msg: crate::message::Message) -> Response {
    let route = entry.route.as_str();
    // An output carries its input's headers too: the response has those
    // that the handler set or changed, not the request's echoed.
    let asked = msg.headers.clone();
    let (tx, rx) = oneshot::channel();
    let d = Delivery::new(msg, Box::new(Token::new(tx)));
    if let Err(e) = entry.tx.try_send(d) {
        let why = match e {
            mpsc::error::TrySendError::Full(_) => format!(
                "route {route} is at workers.max ({}) and its queue is full; retry later",
                entry.workers_max
            ),
            mpsc::error::TrySendError::Closed(_) => format!("route {route} is not running"),
        };
        return retry_after(
            error(StatusCode::SERVICE_UNAVAILABLE, route, why),
            Duration::from_secs(1),
        );
    }
    match tokio::time::timeout(entry.wait, rx).await {
        Err(_) => error(
            StatusCode::GATEWAY_TIMEOUT,
            route,
            format!(
                "no outcome within {}",
                humantime::format_duration(entry.wait)
            ),
        ),
        // The message was dropped unsettled: a shutdown cut it short.
        Ok(Err(_)) => retry_after(
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                route,
                "the route stopped before it finished; retry".to_owned(),
            ),
            Duration::from_secs(1),
        ),
        Ok(Ok(reply)) => answer(route, reply, &asked),
    }
}

fn answer(route: &str, reply: Reply, asked: &Headers) -> Response {
    match reply {
        Reply::Done(outputs) => results(outputs, asked),
        Reply::Filtered => empty(StatusCode::NO_CONTENT),
        Reply::Later(delay) => retry_after(
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                route,
                "the result could not be delivered; retry".to_owned(),
            ),
            delay,
        ),
        Reply::Failed {
            error: e,
            timed_out,
        } => {
            let status = match (&e, timed_out) {
                (_, true) => StatusCode::GATEWAY_TIMEOUT,
                (HandlerError::Permanent { .. }, _) => StatusCode::UNPROCESSABLE_ENTITY,
                (HandlerError::Crashed { .. }, _) => StatusCode::BAD_GATEWAY,
                (HandlerError::Retryable { .. }, _) => StatusCode::SERVICE_UNAVAILABLE,
            };
            let hint = match &e {
                HandlerError::Retryable { retry_after, .. } => *retry_after,
                _ => None,
            };
            let r = error(status, route, e.to_string());
            match status {
                StatusCode::SERVICE_UNAVAILABLE => {
                    retry_after(r, hint.unwrap_or(Duration::from_secs(1)))
                }
                _ => r,
            }
        }
    }
}

/// The handler's results: one output as the response, with the headers
/// it set and its content type; none as 204; several as a JSON array.
fn results(mut outputs: Vec<OutMessage>, asked: &Headers) -> Response {
    match outputs.len() {
        0 => empty(StatusCode::NO_CONTENT),
        1 => {
            let out = outputs.pop().expect("one");
            let mut r = Response::new(Body::from(out.payload));
            for (k, v) in out.headers.iter().filter(|(k, v)| !echoed(asked, k, v)) {
                if let (Ok(name), Ok(value)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
                    if !is_hop(&name) {
                        r.headers_mut().append(name, value);
                    }
                }
            }
            r
        }
        _ => {
            let items: Vec<_> = outputs
                .iter()
                .map(|o| {
                    let headers: serde_json::Map<_, _> = o
                        .headers
                        .iter()
                        .filter(|(k, v)| !echoed(asked, k, v))
                        .map(|(k, v)| (k.to_owned(), v.into()))
                        .collect();
                    match std::str::from_utf8(&o.payload) {
                        Ok(text) => json!({ "headers": headers, "payload": text }),
                        Err(_) => json!({
                            "headers": headers,
                            "payload_base64": base64::engine::general_purpose::STANDARD.encode(&o.payload),
                        }),
                    }
                })
                .collect();
            json_response(StatusCode::OK, &serde_json::Value::Array(items))
        }
    }
}

/// Whether an output's header is only its request's, carried over.
fn echoed(asked: &Headers, k: &str, v: &str) -> bool {
    !k.eq_ignore_ascii_case("content-type") && asked.get(k) == Some(v)
}

/// Headers of a message that are the connection's, not the response's.
fn is_hop(name: &HeaderName) -> bool {
    [
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::CONNECTION,
        header::HOST,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
}

fn empty(status: StatusCode) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    r
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, route: &str, message: String) -> Response {
    json_response(status, &json!({ "error": message, "route": route }))
}

fn retry_after(mut r: Response, after: Duration) -> Response {
    let secs = after.as_secs_f64().ceil().max(1.0) as u64;
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    r
}
