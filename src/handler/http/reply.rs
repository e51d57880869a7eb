//! The reply to a request: its body, read within a size bound, and its
//! sorting into a result, a retryable error or a permanent one.

use std::time::{Duration, SystemTime};

use mqfn_handlers::{HandlerError, Headers, Output};
use reqwest::header::HeaderValue;
use reqwest::StatusCode;

/// The reply body, refused as soon as it is larger than `max`: up front by
/// its Content-Length, and while it is read chunk by chunk, since a chunked
/// reply has none.
pub(super) async fn read_body(
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
pub(super) fn classify(
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
pub(super) fn parse_retry_after(v: &HeaderValue) -> Option<Duration> {
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
    use crate::config::HttpConfig;
    use crate::handler::http::HttpHandler;
    use mqfn_handlers::{Handler, Message};
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
