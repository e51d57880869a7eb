//! `kind = "http"`: each message is POSTed to a URL in CloudEvents binary
//! mode (`ce-*` headers, the payload as the body).
//!
//! - A 2xx reply is the result: its body is one output (an empty body, none).
//! - 408, 429, 5xx, timeouts and connection failures are retryable, with
//!   `Retry-After` passed on as the backoff hint.
//! - Any other status is permanent (redirects are not followed: a POST must
//!   not silently turn into a GET).
//!
//! Connections are kept alive. Each request in flight holds one instance
//! slot, so `max_instances` bounds the concurrency.

mod cloudevents;
mod reply;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use mqfn_handlers::{Handler, HandlerError, Message, Output};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use tracing::debug;

use crate::config::HttpConfig;
use crate::pool::instances::{InstancePool, Instances, Spawn};

/// The largest response body taken as a result.
const MAX_BODY_BYTES: usize = 64 << 20;

/// HTTP instances are slots: a slot is a permit to have one request in
/// flight, with the keep-alive connection it uses.
pub struct Slots;

/// One slot.
pub struct Slot;

impl Spawn for Slots {
    type Instance = Slot;

    async fn spawn(&self, _id: u64) -> Result<Slot, HandlerError> {
        Ok(Slot)
    }

    fn healthy(&self, _slot: &mut Slot) -> bool {
        true
    }
}

/// An HTTP handler.
pub struct HttpHandler {
    client: reqwest::Client,
    url: reqwest::Url,
    extra: HeaderMap,
    ce_type: String,
    timeout: Duration,
    /// The largest reply body taken as a result ([`MAX_BODY_BYTES`]; tests
    /// lower it).
    max_body: usize,
    pool: Arc<InstancePool<Slots>>,
}

impl HttpHandler {
    /// Builds the client and the slot pool.
    pub fn new(name: &str, cfg: &HttpConfig) -> Result<Self, String> {
        let url = reqwest::Url::parse(&cfg.url).map_err(|e| format!("url: {e}"))?;
        let mut extra = HeaderMap::new();
        for (k, v) in &cfg.headers {
            let name =
                HeaderName::from_bytes(k.as_bytes()).map_err(|e| format!("headers.{k}: {e}"))?;
            let value = HeaderValue::from_str(v).map_err(|e| format!("headers.{k}: {e}"))?;
            extra.insert(name, value);
        }
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(cfg.max_instances)
            .pool_idle_timeout(cfg.idle_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .tcp_nodelay(true)
            .user_agent(concat!("mqfn/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            client,
            url,
            extra,
            ce_type: cfg.ce_type.clone(),
            timeout: cfg.timeout,
            max_body: MAX_BODY_BYTES,
            pool: InstancePool::new(name, Slots, cfg.max_instances, cfg.idle_timeout),
        })
    }

    /// The slot pool, for scaling and shutdown.
    pub fn instances(&self) -> Arc<dyn Instances> {
        self.pool.clone()
    }
}

#[async_trait]
impl Handler for HttpHandler {
    async fn call(&self, msg: &Message) -> Result<Vec<Output>, HandlerError> {
        let deadline = msg
            .deadline
            .unwrap_or_else(|| Instant::now() + self.timeout);
        let lease = self.pool.get().await?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(HandlerError::retryable(
                "the deadline passed before the request was sent",
            ));
        }
        let sent = self
            .client
            .post(self.url.clone())
            .headers(cloudevents::request_headers(
                msg,
                &self.ce_type,
                &self.extra,
            ))
            .body(msg.payload.clone())
            .timeout(remaining)
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) if e.is_builder() => {
                return Err(HandlerError::permanent(format!("POST {}: {e}", self.url)))
            }
            Err(e) if e.is_timeout() => {
                return Err(HandlerError::retryable(format!(
                    "POST {} timed out",
                    self.url
                )))
            }
            Err(e) => return Err(HandlerError::retryable(format!("POST {}: {e}", self.url))),
        };
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(reply::parse_retry_after);
        let ctype = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = reply::read_body(resp, self.max_body, &self.url).await?;
        lease.finish();
        debug!(url = %self.url, status = status.as_u16(), bytes = body.len(), "HTTP handler replied.");
        reply::classify(status, retry_after, body, ctype, &self.url)
    }
}
