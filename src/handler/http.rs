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

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use mqfn_handlers::{Handler, HandlerError, Headers, Message, Output};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;
use tracing::debug;

use crate::config::HttpConfig;
use crate::pool::instances::{InstancePool, Instances, Spawn};

/// The largest response body taken as a result.
const MAX_BODY_BYTES: usize = 64 << 20;

/// Message headers that are about one hop and are not forwarded.
const HOP_HEADERS: &[&str] = &[
    "connection",
    "content-length",
    "host",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

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

    fn headers(&self, msg: &Message) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in msg.headers.iter() {
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) else {
                continue; // not representable in HTTP; the body is what matters
            };
            if !HOP_HEADERS.contains(&name.as_str()) && !name.as_str().starts_with("ce-") {
                h.append(name, value);
            }
        }
        if !h.contains_key(CONTENT_TYPE) {
            h.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
        }
        let route = if msg.route.is_empty() {
            "call"
        } else {
            &msg.route
        };
        let ce = [
            ("ce-specversion", "1.0".to_owned()),
            ("ce-id", event_id(msg)),
            ("ce-source", format!("/mqfn/routes/{route}")),
            ("ce-type", self.ce_type.clone()),
            ("ce-subject", msg.subject.clone()),
            (
                "ce-time",
                humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            ),
            ("mqfn-attempt", msg.attempt.to_string()),
        ];
        for (k, v) in ce {
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(HeaderName::from_static(k), v);
            }
        }
        if let Some(tp) = msg
            .traceparent
            .as_deref()
            .and_then(|t| HeaderValue::from_str(t).ok())
        {
            h.insert(HeaderName::from_static("traceparent"), tp);
        }
        for (k, v) in &self.extra {
            h.insert(k, v.clone());
        }
        h
    }
}

/// The CloudEvents id: the broker position where there is one, so that a
/// retry or redelivery of the same message carries the same id.
fn event_id(msg: &Message) -> String {
    match msg.position.identity() {
        Some(id) => id.to_owned(),
        None => msg
            .correlation_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
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
            .headers(self.headers(msg))
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
        let retry_after = resp.headers().get(RETRY_AFTER).and_then(parse_retry_after);
        let ctype = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = read_body(resp, self.max_body, &self.url).await?;
        lease.finish();
        debug!(url = %self.url, status = status.as_u16(), bytes = body.len(), "HTTP handler replied.");
        classify(status, retry_after, body, ctype, &self.url)
    }
}

/// The reply body, refused as soon as it is larger than `max`: up front by
/// its Content-Length, and while it is read chunk by chunk, since a chunked
/// reply has none.
async fn read_body(
    mut resp: reqwest::Response,
    max: usize,
    url: &reqwest::Url,
) -> Result<bytes::Bytes, HandlerError> {
    let too_large = || {
        HandlerError::permanent(format!(
            "POST {url}: the reply body is larger than {max} bytes"
        ))
    };
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let mut chunks = Vec::new();
    let mut len = 0;
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                len += chunk.len();
                if len > max {
                    return Err(too_large());
                }
                chunks.push(chunk);
            }
            Ok(None) => break,
            Err(e) if e.is_timeout() => {
                return Err(HandlerError::retryable(format!(
                    "POST {url}: reading the reply timed out"
                )))
            }
            Err(e) => {
                return Err(HandlerError::retryable(format!(
                    "POST {url}: reading the reply: {e}"
                )))
            }
        }
    }
    // Most replies come in one chunk: that one is the body, without a copy.
    Ok(if chunks.len() == 1 {
        chunks.swap_remove(0)
    } else {
        chunks.concat().into()
    })
}

/// Sorts a reply into a result, a retryable error or a permanent one.
fn classify(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: bytes::Bytes,
    ctype: Option<String>,
    url: &reqwest::Url,
) -> Result<Vec<Output>, HandlerError> {
    if status.is_success() {
        if body.is_empty() {
            return Ok(vec![]);
        }
        let mut headers = Headers::new();
        if let Some(ct) = ctype {
            headers.set("content-type", ct);
        }
        return Ok(vec![Output {
            payload: body,
            headers,
            key: None,
        }]);
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    let message = format!("POST {url} -> HTTP {}: {}", status.as_u16(), text.trim());
    let retryable = status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS;
    if retryable {
        Err(HandlerError::Retryable {
            message,
            retry_after,
        })
    } else {
        Err(HandlerError::permanent(message))
    }
}

/// `Retry-After`: delay-seconds or an HTTP-date.
fn parse_retry_after(v: &HeaderValue) -> Option<Duration> {
    let s = v.to_str().ok()?.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(s).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn url() -> reqwest::Url {
        reqwest::Url::parse("http://h/").unwrap()
    }

    #[test]
    fn statuses_are_sorted() {
        let ok = classify(StatusCode::OK, None, "r".into(), None, &url()).unwrap();
        assert_eq!(ok[0].payload, "r");
        assert!(
            classify(StatusCode::NO_CONTENT, None, "".into(), None, &url())
                .unwrap()
                .is_empty()
        );
        for s in [408, 429, 500, 502, 503] {
            let e = classify(
                StatusCode::from_u16(s).unwrap(),
                None,
                "".into(),
                None,
                &url(),
            );
            assert!(e.unwrap_err().is_retryable(), "{s}");
        }
        for s in [301, 400, 401, 404, 422] {
            let e = classify(
                StatusCode::from_u16(s).unwrap(),
                None,
                "".into(),
                None,
                &url(),
            );
            assert!(!e.unwrap_err().is_retryable(), "{s}");
        }
    }

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        let secs = HeaderValue::from_static("7");
        assert_eq!(parse_retry_after(&secs), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        let d = parse_retry_after(&HeaderValue::from_str(&later).unwrap()).unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        assert_eq!(parse_retry_after(&HeaderValue::from_static("soon")), None);
    }

    #[test]
    fn cloudevents_headers_are_set() {
        let cfg: HttpConfig = toml::from_str("url = \"http://h/\"").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _g = rt.enter();
        let h = HttpHandler::new("hook", &cfg).unwrap();
        let mut msg = Message::new("x");
        msg.route = "r".into();
        msg.subject = "s.in".into();
        msg.position = mqfn_handlers::Position::stable("S", "9");
        msg.headers.append("content-type", "text/plain");
        msg.headers.append("Connection", "close");
        let got = h.headers(&msg);
        assert_eq!(got["ce-specversion"], "1.0");
        assert_eq!(got["ce-id"], "S:9");
        assert_eq!(got["ce-source"], "/mqfn/routes/r");
        assert_eq!(got["ce-type"], "io.mqfn.message");
        assert_eq!(got["ce-subject"], "s.in");
        assert_eq!(got["content-type"], "text/plain");
        assert!(!got.contains_key("connection"));
    }

    /// A server on 127.0.0.1 that answers one POST with a chunked 200 reply
    /// of `chunks` chunks of 1 KiB (no Content-Length). Returns its URL.
    async fn chunked_server(chunks: usize) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // The request: headers, then the Content-Length body.
            let body_at = loop {
                let n = conn.read(&mut buf).await.unwrap();
                assert!(n > 0, "the client closed before sending its request");
                request.extend_from_slice(&buf[..n]);
                if let Some(i) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
            };
            let head = String::from_utf8_lossy(&request[..body_at]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            while request.len() < body_at + length {
                let n = conn.read(&mut buf).await.unwrap();
                assert!(n > 0, "the client closed mid-request");
                request.extend_from_slice(&buf[..n]);
            }
            let head =
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n";
            // The client may hang up once it has seen enough: write errors end the reply.
            if conn.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let chunk = format!("400\r\n{}\r\n", "c".repeat(1024));
            for _ in 0..chunks {
                if conn.write_all(chunk.as_bytes()).await.is_err() {
                    return;
                }
            }
            let _ = conn.write_all(b"0\r\n\r\n").await;
            let _ = conn.flush().await;
        });
        url
    }

    /// A handler on `url` that takes reply bodies of at most 4 KiB.
    fn small_handler(url: &str) -> HttpHandler {
        let cfg: HttpConfig = toml::from_str(&format!("url = \"{url}\"")).unwrap();
        let mut h = HttpHandler::new("hook", &cfg).unwrap();
        h.max_body = 4096;
        h
    }

    #[tokio::test]
    async fn a_chunked_reply_past_the_limit_is_refused() {
        let h = small_handler(&chunked_server(10).await);
        let err = h.call(&Message::new("x")).await.unwrap_err();
        assert!(!err.is_retryable(), "{err}");
        assert!(
            err.to_string()
                .contains("the reply body is larger than 4096 bytes"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_chunked_reply_within_the_limit_is_the_result() {
        let h = small_handler(&chunked_server(4).await);
        let out = h.call(&Message::new("x")).await.unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].payload.len(), 4096);
        assert!(out[0].payload.iter().all(|b| *b == b'c'));
    }
}
