//! The HTTP trigger, with real requests to a real `mqfn run`: results and
//! the status of each failure, bad input that never reaches the handler,
//! CloudEvents, bearer and HMAC auth, 200 concurrent requests against 8
//! workers, and async requests queued on JetStream with none lost.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use hmac::Mac as _;

const LIMIT: Duration = Duration::from_secs(60);

/// `mqfn run` with `[http]` on a free port; returns it and the base URL.
async fn start(routes: &str, http: &str) -> (Mqfn, String) {
    let port = free_port();
    let cfg = format!(
        r#"
[http]
listen = "127.0.0.1:{port}"
{http}

[brokers.js]
kind = "nats"
url = "{nats}"

{routes}
"#,
        nats = nats_url()
    );
    let m = Mqfn::start(&cfg);
    m.wait_ready(LIMIT).await;
    (m, format!("http://127.0.0.1:{port}"))
}

fn client() -> reqwest::Client {
    // A bound on a hung request, not a timing assertion.
    reqwest::Client::builder()
        .timeout(LIMIT)
        .build()
        .expect("client")
}

/// POSTs `body` to `url` and returns the status, the headers and the body.
async fn post(
    url: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = client().post(url).body(body.to_owned());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("an answer");
    let status = r.status().as_u16();
    let h = r.headers().clone();
    (status, h, r.text().await.expect("a body"))
}

fn error_of(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).expect("a JSON error");
    v["error"].as_str().expect("an error field").to_owned()
}

#[tokio::test]
async fn each_outcome_has_its_status_and_bad_input_never_reaches_the_handler() {
    let (m, base) = start(
        r#"
[[routes]]
name = "sync"
source = { http = "/sync" }
handler = "fail"
timeout = "1s"
max_message_bytes = 1024
"#,
        "",
    )
    .await;
    let url = format!("{base}/sync");

    let (s, h, body) = post(&url, "hello", &[("content-type", "text/plain")]).await;
    assert_eq!((s, body.as_str()), (200, "hello"));
    assert_eq!(h["content-type"], "text/plain", "the content type is kept");
    assert!(
        !h.contains_key("user-agent"),
        "request headers are not echoed"
    );

    let (s, _, body) = post(&url, "permanent:bad order", &[]).await;
    assert_eq!(s, 422);
    assert!(error_of(&body).contains("bad order"), "{body}");
    let (s, h, _) = post(&url, "retry:busy", &[]).await;
    assert_eq!(s, 503);
    assert!(h.contains_key("retry-after"));
    let (s, _, body) = post(&url, "panic", &[]).await;
    assert_eq!(s, 502, "{body}");
    let (s, _, body) = post(&url, "sleep:5000", &[]).await;
    assert_eq!(s, 504, "{body}");
    assert!(error_of(&body).contains("timed out"), "{body}");

    // Bad input: a clear status and a JSON error, and no invocation.
    let before = m.metrics().await;
    let r = client().get(&url).send().await.expect("an answer");
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    let (s, _, body) = post(&format!("{base}/nowhere"), "x", &[]).await;
    assert_eq!(s, 404);
    assert!(error_of(&body).contains("/nowhere"), "{body}");
    let (s, _, body) = post(&url, &"x".repeat(2000), &[]).await;
    assert_eq!(s, 413);
    assert!(error_of(&body).contains("1024"), "{body}");
    let bad_event = [("content-type", "application/cloudevents+json")];
    let (s, _, body) = post(&url, r#"{"specversion":"1.0","id":"1"}"#, &bad_event).await;
    assert_eq!(s, 400);
    assert!(error_of(&body).contains("source"), "{body}");
    let (s, _, _) = post(&url, "x", &[("ce-id", "1"), ("ce-specversion", "1.0")]).await;
    assert_eq!(s, 400, "a binary-mode event without ce-source and ce-type");
    let after = m.metrics().await;
    let ok = |t: &str| invocations(t, "fail", "ok").unwrap_or(0.0);
    assert_eq!(ok(&before), ok(&after), "bad input reached the handler");

    // CloudEvents: the data is the payload, the attributes are headers.
    let event = r#"{"specversion":"1.0","id":"e-1","source":"/shop","type":"order.created","datacontenttype":"application/json","data":{"n":1}}"#;
    let structured = [("content-type", "application/cloudevents+json")];
    let (s, h, body) = post(&url, event, &structured).await;
    assert_eq!((s, body.as_str()), (200, r#"{"n":1}"#));
    assert_eq!(h["content-type"], "application/json");
    let binary = [
        ("ce-specversion", "1.0"),
        ("ce-id", "e-2"),
        ("ce-source", "/shop"),
        ("ce-type", "order.created"),
        ("content-type", "text/plain"),
    ];
    let (s, _, body) = post(&url, "binary data", &binary).await;
    assert_eq!((s, body.as_str()), (200, "binary data"));

    let text = m.metrics().await;
    let count = |code: &str| {
        metric(
            &text,
            &format!("mqfn_http_requests_total{{route=\"sync\",code=\"{code}\"}}"),
        )
    };
    assert_eq!(count("200"), Some(3.0));
    assert_eq!(count("413"), Some(1.0));
    assert_eq!(
        metric(
            &text,
            "mqfn_messages_settled_total{route=\"sync\",outcome=\"answered_error\"}"
        ),
        Some(4.0),
        "permanent, retry, panic and timeout were answered, not dead-lettered"
    );
}

#[tokio::test]
async fn callers_prove_themselves_with_a_bearer_token_or_an_hmac_signature() {
    let token_var = rand_name("MQFN_TEST_TOKEN").replace('-', "_");
    let key_var = rand_name("MQFN_TEST_KEY").replace('-', "_");
    // Read by the child process, which inherits the environment.
    std::env::set_var(&token_var, "s3cret-token");
    std::env::set_var(&key_var, "hook-key");
    let (_m, base) = start(
        &format!(
            r#"
[[routes]]
name = "bearer"
source = {{ http = "/bearer", auth = {{ bearer_env = "{token_var}" }} }}
handler = "echo"

[[routes]]
name = "hook"
source = {{ http = "/hook", auth = {{ hmac_env = "{key_var}" }} }}
handler = "echo"
"#
        ),
        "",
    )
    .await;
    let url = format!("{base}/bearer");
    let (s, h, body) = post(&url, "x", &[]).await;
    assert_eq!(s, 401, "{body}");
    assert_eq!(h["www-authenticate"], "Bearer");
    let (s, _, _) = post(&url, "x", &[("authorization", "Bearer wrong")]).await;
    assert_eq!(s, 401);
    let (s, _, body) = post(&url, "x", &[("authorization", "Bearer s3cret-token")]).await;
    assert_eq!((s, body.as_str()), (200, "x"));

    let url = format!("{base}/hook");
    let body = r#"{"action":"opened"}"#;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"hook-key").expect("key");
    mac.update(body.as_bytes());
    let sig = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let (s, _, got) = post(&url, body, &[("x-hub-signature-256", &sig)]).await;
    assert_eq!((s, got.as_str()), (200, body));
    let (s, _, got) = post(&url, "tampered", &[("x-hub-signature-256", &sig)]).await;
    assert_eq!(s, 401);
    assert!(error_of(&got).contains("does not match"), "{got}");
    let (s, _, _) = post(&url, body, &[]).await;
    assert_eq!(s, 401, "no signature");
}

#[tokio::test]
async fn two_hundred_concurrent_requests_on_eight_workers_get_200_or_503_and_none_hangs() {
    let (m, base) = start(
        r#"
[[routes]]
name = "busy"
source = { http = "/busy" }
handler = "fail"
workers = { min = 0, max = 8 }
"#,
        "",
    )
    .await;
    let url = format!("{base}/busy");
    let requests = (0..200).map(|_| {
        let url = url.clone();
        async move { post(&url, "sleep:2000", &[]).await }
    });
    let answers = futures::future::join_all(requests).await;
    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    for (status, headers, body) in &answers {
        *by_status.entry(*status).or_default() += 1;
        match status {
            200 => assert_eq!(body, "sleep:2000"),
            503 => {
                assert!(headers.contains_key("retry-after"), "{body}");
                assert!(error_of(body).contains("workers.max (8)"), "{body}");
            }
            other => panic!("status {other}: {body}"),
        }
    }
    println!("answers by status: {by_status:?}");
    assert_eq!(
        by_status.values().sum::<usize>(),
        200,
        "every request answered"
    );
    assert!(
        by_status.get(&200).copied().unwrap_or(0) >= 8,
        "{by_status:?}"
    );
    assert!(
        by_status.contains_key(&503),
        "8 workers cannot take 200 at once: {by_status:?}"
    );
    let text = m.metrics().await;
    let answered = |code: &str| {
        metric(
            &text,
            &format!("mqfn_http_requests_total{{route=\"busy\",code=\"{code}\"}}"),
        )
        .unwrap_or(0.0) as usize
    };
    assert_eq!(answered("200"), by_status.get(&200).copied().unwrap_or(0));
    assert_eq!(answered("503"), by_status[&503]);
}

#[tokio::test]
async fn async_requests_are_queued_on_the_route_source_and_none_is_lost() {
    let (p, s, js) = js_stream("http-async").await;
    let (_m, base) = start(
        &format!(
            r#"
[[routes]]
name = "orders"
source = {{ broker = "js", subject = "{p}.in", stream = "{s}", durable = "{p}" }}
handler = "echo"
output = {{ broker = "js", subject = "{p}.out" }}
dead_letter = {{ broker = "js", subject = "{p}.dlq" }}
workers = {{ max = 8 }}
http = {{ path = "/orders", mode = "async" }}

[[routes]]
name = "quotes"
source = {{ broker = "js", subject = "{p}.quotes", stream = "{s}", durable = "{p}-q" }}
handler = "echo"
dead_letter = {{ broker = "js", subject = "{p}.dlq" }}
output = {{ broker = "js", subject = "{p}.quoted" }}
http = "/quotes"
"#
        ),
        "",
    )
    .await;
    let url = format!("{base}/orders");
    let requests = (0..200).map(|i| {
        let url = url.clone();
        async move {
            let body = format!("order-{i}");
            let key = format!("key-{i}");
            // A 503 (not queued) is the caller's to retry, as a client does.
            eventually(LIMIT, "a 202", || async {
                let (status, h, got) = post(&url, &body, &[("idempotency-key", &key)]).await;
                match status {
                    202 => Some((h, got)),
                    503 => None,
                    other => panic!("status {other}: {got}"),
                }
            })
            .await
        }
    });
    let accepted = futures::future::join_all(requests).await;
    for (h, body) in &accepted {
        assert_eq!(h["preference-applied"], "respond-async");
        let v: serde_json::Value = serde_json::from_str(body).expect("JSON");
        assert!(v["id"].as_str().is_some_and(|id| !id.is_empty()), "{body}");
    }
    let outs = js_read_at_least(&js, &s, &format!("{p}.out"), 200, LIMIT).await;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for m in &outs {
        *seen
            .entry(String::from_utf8_lossy(&m.payload).into_owned())
            .or_default() += 1;
    }
    for i in 0..200 {
        assert!(
            seen.contains_key(&format!("order-{i}")),
            "order-{i} was lost"
        );
    }
    // A retried request with the same Idempotency-Key is queued once: the
    // 202 comes after the broker's answer, so a second copy would be in
    // the stream by now.
    let (status, _, _) = post(&url, "order-0", &[("idempotency-key", "key-0")]).await;
    assert_eq!(status, 202);
    let queued = js_read(&js, &s, &format!("{p}.in")).await;
    let copies = queued
        .iter()
        .filter(|m| &m.payload[..] == b"order-0")
        .count();
    assert_eq!(copies, 1, "the retry was deduplicated");

    // Sync by default on a broker-sourced route, async when asked.
    let quotes = format!("{base}/quotes");
    let (status, _, body) = post(&quotes, "q-sync", &[]).await;
    assert_eq!((status, body.as_str()), (200, "q-sync"));
    let (status, _, _) = post(&quotes, "q-async", &[("prefer", "respond-async")]).await;
    assert_eq!(status, 202);
    let quoted = js_read_at_least(&js, &s, &format!("{p}.quoted"), 2, LIMIT).await;
    let payloads: Vec<_> = quoted.iter().map(|m| m.payload.to_vec()).collect();
    assert!(
        payloads.contains(&b"q-sync".to_vec()),
        "a sync result also goes to the output"
    );
    assert!(payloads.contains(&b"q-async".to_vec()));
}
