//! The CloudEvents side of a request: the headers each message is POSTed
//! with (binary mode, `ce-*` attributes) and the event id.

use std::time::SystemTime;

use mqfn_handlers::Message;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};

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

/// The request headers for `msg`: its own headers less the hop-by-hop and
/// `ce-*` ones, the CloudEvents binary-mode attributes, `traceparent`, and
/// last the handler's configured `extra` headers, which win.
pub(super) fn request_headers(msg: &Message, ce_type: &str, extra: &HeaderMap) -> HeaderMap {
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
        ("ce-type", ce_type.to_owned()),
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
    for (k, v) in extra {
        h.insert(k, v.clone());
    }
    h
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HttpConfig;

    #[test]
    fn cloudevents_headers_are_set() {
        let cfg: HttpConfig = toml::from_str("url = \"http://h/\"").unwrap();
        let mut msg = Message::new("x");
        msg.route = "r".into();
        msg.subject = "s.in".into();
        msg.position = mqfn_handlers::Position::stable("S", "9");
        msg.headers.append("content-type", "text/plain");
        msg.headers.append("Connection", "close");
        let got = request_headers(&msg, &cfg.ce_type, &HeaderMap::new());
        assert_eq!(got["ce-specversion"], "1.0");
        assert_eq!(got["ce-id"], "S:9");
        assert_eq!(got["ce-source"], "/mqfn/routes/r");
        assert_eq!(got["ce-type"], "io.mqfn.message");
        assert_eq!(got["ce-subject"], "s.in");
        assert_eq!(got["content-type"], "text/plain");
        assert!(!got.contains_key("connection"));
    }
}
