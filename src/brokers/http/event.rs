//! A request as an envelope: the caller's check (bearer token or HMAC
//! signature), CloudEvents in structured and binary mode, and which
//! headers the handler sees.

use axum::http::HeaderMap;
use base64::Engine as _;
use bytes::Bytes;
use hmac::Mac as _;
use subtle::ConstantTimeEq as _;

use super::config::Auth;
use crate::message::{Headers, Message, Position, KEY_HEADER, TRACEPARENT_HEADER};

/// The media type of a structured-mode CloudEvent.
const STRUCTURED: &str = "application/cloudevents+json";

/// The attributes every CloudEvent has.
const REQUIRED: [&str; 4] = ["specversion", "id", "source", "type"];

/// Checks the caller; the error is what the 401 says.
pub(super) fn authorize(
    (auth, secret): &(Auth, Vec<u8>),
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), String> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if auth.bearer_env.is_some() {
        let token = text("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or("missing bearer token: send Authorization: Bearer TOKEN")?;
        return match bool::from(token.as_bytes().ct_eq(secret)) {
            true => Ok(()),
            false => Err("the bearer token is not the route's".to_owned()),
        };
    }
    let given =
        text(&auth.header).ok_or_else(|| format!("missing signature header {}", auth.header))?;
    let hex_sig = given.strip_prefix("sha256=").unwrap_or(given);
    let sig = hex::decode(hex_sig.trim())
        .map_err(|_| format!("the {} header is not a hex HMAC-SHA256", auth.header))?;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(body);
    mac.verify_slice(&sig)
        .map_err(|_| format!("the {} signature does not match the body", auth.header))
}

/// Request headers the handler never sees: the connection's, and the
/// caller's credentials.
fn private(name: &str, auth_header: Option<&str>) -> bool {
    const HIDDEN: [&str; 13] = [
        "authorization",
        "proxy-authorization",
        "cookie",
        "host",
        "content-length",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "prefer",
    ];
    HIDDEN.contains(&name) || auth_header.is_some_and(|h| h.eq_ignore_ascii_case(name))
}

/// The message a request makes: its payload and headers, a CloudEvent's
/// data and attributes (as `ce-*` headers), the key from `mqfn-key` or a
/// CloudEvent's `partitionkey`. The error is what the 400 says.
pub(super) fn message(
    route: &str,
    path: &str,
    headers: &HeaderMap,
    body: Bytes,
    auth_header: Option<&str>,
) -> Result<Message, String> {
    let mut h = Headers::new();
    for (name, value) in headers {
        if private(name.as_str(), auth_header) {
            continue;
        }
        if let Ok(v) = value.to_str() {
            h.append(name.as_str(), v);
        }
    }
    let structured = h
        .get("content-type")
        .is_some_and(|c| c.trim_start().starts_with(STRUCTURED));
    let payload = match structured {
        true => structured_event(&mut h, &body)?,
        false => {
            binary_event(&h)?;
            body
        }
    };
    let id = h
        .get("ce-id")
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let key = h
        .get(KEY_HEADER)
        .or_else(|| h.get("ce-partitionkey"))
        .map(|k| Bytes::copy_from_slice(k.as_bytes()));
    Ok(Message {
        payload,
        traceparent: h.get(TRACEPARENT_HEADER).map(str::to_owned),
        correlation_id: Some(id.clone()),
        headers: h,
        key,
        subject: path.to_owned(),
        route: route.to_owned(),
        position: Position::transient(id),
        attempt: 1,
        ..Message::default()
    })
}

/// A binary-mode event (any `ce-*` header) must carry the required
/// attributes.
fn binary_event(h: &Headers) -> Result<(), String> {
    if !h.iter().any(|(k, _)| k.starts_with("ce-")) {
        return Ok(());
    }
    match REQUIRED.iter().find(|a| h.get(&format!("ce-{a}")).is_none()) {
        Some(a) => Err(format!(
            "a CloudEvent in binary mode needs the ce-{a} header (and ce-specversion, ce-id, ce-source, ce-type)"
        )),
        None => Ok(()),
    }
}

/// A structured-mode event: its attributes become `ce-*` headers, its
/// `datacontenttype` the content type, and its data the payload.
fn structured_event(h: &mut Headers, body: &[u8]) -> Result<Bytes, String> {
    let serde_json::Value::Object(event) = serde_json::from_slice(body)
        .map_err(|e| format!("the body is not a CloudEvent in JSON: {e}"))?
    else {
        return Err("a structured CloudEvent is a JSON object".to_owned());
    };
    if let Some(a) = REQUIRED.iter().find(|a| !event.contains_key(**a)) {
        return Err(format!("the CloudEvent has no {a:?} attribute"));
    }
    h.remove("content-type");
    let mut payload = Bytes::new();
    for (name, value) in event {
        match (name.as_str(), value) {
            ("data_base64", serde_json::Value::String(b64)) => {
                let data = base64::engine::general_purpose::STANDARD
                    .decode(b64.as_bytes())
                    .map_err(|e| format!("data_base64 is not base64: {e}"))?;
                payload = data.into();
            }
            ("data", serde_json::Value::String(s)) => payload = s.into_bytes().into(),
            ("data", v) => payload = serde_json::to_vec(&v).expect("a JSON value").into(),
            ("datacontenttype", serde_json::Value::String(t)) => h.set("content-type", t),
            (name, serde_json::Value::String(s)) => h.set(format!("ce-{name}"), s),
            (name, v) => h.set(format!("ce-{name}"), v.to_string()),
        }
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (k.parse().unwrap(), HeaderValue::from_str(v).unwrap()))
            .collect()
    }

    #[test]
    fn a_structured_event_becomes_payload_and_headers() {
        let body = br#"{"specversion":"1.0","id":"e1","source":"/s","type":"t","datacontenttype":"application/json","data":{"a":1},"partitionkey":"k"}"#;
        let h = headers(&[("content-type", "application/cloudevents+json")]);
        let m = message("r", "/p", &h, Bytes::from_static(body), None).unwrap();
        assert_eq!(&m.payload[..], br#"{"a":1}"#);
        assert_eq!(m.headers.get("ce-id"), Some("e1"));
        assert_eq!(m.headers.get("content-type"), Some("application/json"));
        assert_eq!(m.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(m.correlation_id.as_deref(), Some("e1"));
        let missing = br#"{"specversion":"1.0","id":"e1","source":"/s"}"#;
        let e = message("r", "/p", &h, Bytes::from_static(missing), None).unwrap_err();
        assert!(e.contains("\"type\""), "{e}");
        let b64 =
            br#"{"specversion":"1.0","id":"e","source":"/s","type":"t","data_base64":"AAEC"}"#;
        let m = message("r", "/p", &h, Bytes::from_static(b64), None).unwrap();
        assert_eq!(&m.payload[..], &[0, 1, 2]);
    }

    #[test]
    fn binary_events_need_their_attributes_and_secrets_stay_out() {
        let h = headers(&[
            ("ce-specversion", "1.0"),
            ("ce-id", "x"),
            ("ce-source", "/s"),
            ("authorization", "Bearer secret"),
            ("x-hub-signature-256", "sha256=00"),
        ]);
        let e = message("r", "/p", &h, Bytes::new(), None).unwrap_err();
        assert!(e.contains("ce-type"), "{e}");
        let mut h = h;
        h.insert("ce-type", HeaderValue::from_static("t"));
        let m = message("r", "/p", &h, Bytes::new(), Some("X-Hub-Signature-256")).unwrap();
        assert_eq!(m.headers.get("ce-type"), Some("t"));
        assert_eq!(m.headers.get("authorization"), None);
        assert_eq!(m.headers.get("x-hub-signature-256"), None);
    }

    #[test]
    fn signatures_and_tokens_are_checked() {
        let hmac = Auth {
            bearer_env: None,
            hmac_env: Some("V".into()),
            header: "X-Sig".into(),
        };
        let key = b"k".to_vec();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(b"body");
        let good = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        let auth = (hmac, key);
        assert!(authorize(&auth, &headers(&[("x-sig", &good)]), b"body").is_ok());
        assert!(authorize(&auth, &headers(&[("x-sig", &good)]), b"other").is_err());
        assert!(authorize(&auth, &headers(&[]), b"body").is_err());
        let bearer = Auth {
            bearer_env: Some("V".into()),
            hmac_env: None,
            header: String::new(),
        };
        let auth = (bearer, b"t0k".to_vec());
        let ok = headers(&[("authorization", "Bearer t0k")]);
        assert!(authorize(&auth, &ok, b"").is_ok());
        let bad = headers(&[("authorization", "Bearer nope")]);
        assert!(authorize(&auth, &bad, b"").is_err());
    }
}
