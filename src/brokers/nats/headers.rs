//! Conversion between NATS headers and the message envelope, and core NATS
//! messages as envelopes.

use async_nats::{HeaderMap, HeaderName, HeaderValue};

use crate::message::{
    Headers, Message, CORRELATION_HEADER, KEY_HEADER, REPLY_HEADER, TRACEPARENT_HEADER,
};

/// Splits NATS headers into the envelope's fields.
pub(super) fn from_header_map(map: Option<&HeaderMap>, msg: &mut Message) {
    let Some(map) = map else { return };
    let mut headers = Headers::new();
    for (name, values) in map.iter() {
        for v in values {
            headers.append(name.to_string(), v.as_str());
        }
    }
    msg.key = headers
        .get(KEY_HEADER)
        .map(|k| bytes::Bytes::from(k.to_owned()));
    msg.traceparent = headers.get(TRACEPARENT_HEADER).map(str::to_owned);
    msg.correlation_id = headers.get(CORRELATION_HEADER).map(str::to_owned);
    // The explicit header wins over the native reply subject: a JetStream
    // publish uses the native one for its PubAck.
    if let Some(r) = headers.get(REPLY_HEADER) {
        msg.reply_to = Some(r.to_owned());
    }
    msg.headers = headers;
}

/// Builds NATS headers, refusing names and values the protocol cannot carry.
pub(super) fn to_header_map(headers: &Headers) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for (k, v) in headers.iter() {
        let (name, value) = header(k, v)?;
        map.append(name, value);
    }
    Ok(map)
}

/// One NATS header, or why NATS cannot carry it. async-nats's own parsers
/// decide (names of printable ASCII without `:`, values without line
/// breaks); its `&str` conversions would panic on the same input.
pub(super) fn header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let parsed: Option<HeaderName> = name.parse().ok().filter(|_| !name.is_empty());
    let Some(parsed) = parsed else {
        return Err(format!(
            "header name {name:?} is not valid for NATS (printable ASCII without ':' only)"
        ));
    };
    let Ok(value) = value.parse() else {
        return Err(format!(
            "header {name} has a line break, which NATS cannot carry"
        ));
    };
    Ok((parsed, value))
}

/// A core NATS message as an envelope of `route`.
pub(super) fn core_message(m: async_nats::Message, route: &str) -> Message {
    let mut msg = Message {
        payload: m.payload,
        subject: m.subject.to_string(),
        route: route.to_owned(),
        attempt: 1,
        reply_to: m.reply.map(|r| r.to_string()),
        ..Message::default()
    };
    from_header_map(m.headers.as_ref(), &mut msg);
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_nats_cannot_carry_are_refused_not_panicked_on() {
        for (name, value, why) in [
            ("naïve", "v", "not valid for NATS"),
            ("with space", "v", "not valid for NATS"),
            ("a:b", "v", "not valid for NATS"),
            ("", "v", "not valid for NATS"),
            ("ok", "line\r\nbreak", "line break"),
        ] {
            let h: Headers = [(name, value)].into_iter().collect();
            let e = to_header_map(&h).expect_err(name);
            assert!(e.contains(why), "{name:?}: {e}");
        }
        let h: Headers = [("a", "1"), ("a", "2"), ("Nats-Msg-Id", "x")]
            .into_iter()
            .collect();
        let map = to_header_map(&h).unwrap();
        assert_eq!(map.get_all("a").count(), 2);
        assert_eq!(map.get("Nats-Msg-Id").unwrap().as_str(), "x");
    }
}
