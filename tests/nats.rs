//! End-to-end tests against the real NATS server (`NATS_URL`, default
//! 127.0.0.1:4222). Every test uses its own random stream, subjects and
//! durable names.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use common::{cli, eventually, free_port, js_header as header, metric, nats_url, rand_name, Mqfn};
use futures::StreamExt;

const LONG: Duration = Duration::from_secs(120);

/// A random prefix with a stream capturing `prefix.>`.
struct Fixture {
    prefix: String,
    stream: String,
    js: jetstream::Context,
}

impl Fixture {
    async fn new() -> Self {
        Self::on(&nats_url()).await
    }

    async fn on(url: &str) -> Self {
        let prefix = rand_name("t");
        let client = async_nats::connect(url).await.expect("connect to NATS");
        let js = jetstream::new(client);
        let stream = prefix.to_uppercase();
        js.get_or_create_stream(stream::Config {
            name: stream.clone(),
            subjects: vec![format!("{prefix}.>")],
            ..Default::default()
        })
        .await
        .expect("create stream");
        Self { prefix, stream, js }
    }

    /// A config with one route `r`: `{p}.in` → handler → `{p}.out`,
    /// dead letters to `{p}.dlq`. `extra` is appended to the route.
    fn config(&self, handler: &str, extra: &str) -> String {
        format!(
            r#"
shutdown_timeout = "20s"

[brokers.js]
kind = "nats"
url = "{url}"

[[routes]]
name = "r"
source = {{ broker = "js", subject = "{p}.in", stream = "{s}", durable = "{p}" }}
handler = "{handler}"
output = {{ broker = "js", subject = "{p}.out" }}
dead_letter = {{ broker = "js", subject = "{p}.dlq" }}
workers = {{ min = 4, max = 16 }}
retry = {{ max_attempts = 3, initial_backoff = "10ms", max_backoff = "50ms" }}
{extra}
"#,
            url = nats_url(),
            p = self.prefix,
            s = self.stream,
        )
    }

    /// Publishes `n` messages to `{p}.in`, each with header `id` = its index.
    async fn publish(&self, n: usize, payload: impl Fn(usize) -> String) {
        let subject = format!("{}.in", self.prefix);
        let acks = futures::stream::iter(0..n)
            .map(|i| {
                let mut h = async_nats::HeaderMap::new();
                h.insert("id", i.to_string().as_str());
                let js = self.js.clone();
                let (subject, body) = (subject.clone(), payload(i));
                async move {
                    js.publish_with_headers(subject, h, body.into())
                        .await
                        .expect("publish")
                        .await
                        .expect("puback")
                }
            })
            .buffer_unordered(256);
        acks.collect::<Vec<_>>().await;
    }

    /// Reads messages on `{p}.{suffix}` until `want` distinct `id`s arrived
    /// (or `limit` passed), then drains what else is there. Returns the
    /// messages by id, with how often each came.
    async fn collect(&self, suffix: &str, want: usize, limit: Duration) -> Collected {
        collect(
            &self.js,
            &self.stream,
            &format!("{}.{suffix}", self.prefix),
            want,
            limit,
        )
        .await
    }

    async fn consumer_info(&self) -> consumer::Info {
        let s = self.js.get_stream(&self.stream).await.expect("stream");
        let mut c: consumer::PullConsumer = s.get_consumer(&self.prefix).await.expect("consumer");
        c.info().await.expect("info").clone()
    }
}

struct Collected {
    by_id: BTreeMap<String, (usize, async_nats::jetstream::Message)>,
    total: usize,
}

impl Collected {
    fn duplicates(&self) -> usize {
        self.total - self.by_id.len()
    }
}

async fn collect(
    js: &jetstream::Context,
    stream: &str,
    subject: &str,
    want: usize,
    limit: Duration,
) -> Collected {
    let s = js.get_stream(stream).await.expect("stream");
    let c = s
        .create_consumer(consumer::pull::Config {
            filter_subject: subject.to_owned(),
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .expect("reader consumer");
    let mut out = Collected {
        by_id: BTreeMap::new(),
        total: 0,
    };
    let start = std::time::Instant::now();
    while out.by_id.len() < want && start.elapsed() < limit {
        let mut batch = c
            .fetch()
            .max_messages(1000)
            .messages()
            .await
            .expect("fetch");
        let mut got = 0;
        while let Some(Ok(m)) = batch.next().await {
            got += 1;
            out.total += 1;
            let id = m
                .headers
                .as_ref()
                .and_then(|h| h.get("id"))
                .map(|v| v.to_string())
                .unwrap_or_default();
            out.by_id.entry(id).or_insert((0, m)).0 += 1;
        }
        if got == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    out
}

#[tokio::test]
async fn ten_thousand_in_ten_thousand_distinct_out() {
    let f = Fixture::new().await;
    f.publish(10_000, |i| format!("message {i}")).await;
    let m = Mqfn::start(&f.config("echo", ""));
    m.wait_ready(LONG).await;
    let got = f.collect("out", 10_000, LONG).await;
    println!(
        "10,000 in: {} distinct results, {} duplicates",
        got.by_id.len(),
        got.duplicates()
    );
    assert_eq!(got.by_id.len(), 10_000, "every input has a result");
    let mut ids = std::collections::HashSet::new();
    let prefix = format!("mqfn:r:{}:", f.stream);
    for (id, (_, msg)) in &got.by_id {
        assert_eq!(
            msg.payload,
            format!("message {id}"),
            "echo keeps the payload"
        );
        // By default every result carries a deduplication id derived from
        // the input's stream position: `mqfn:ROUTE:STREAM:SEQ:OUTPUT`.
        let dedup = header(msg, "Nats-Msg-Id");
        assert!(
            dedup.starts_with(&prefix) && dedup.ends_with(":0"),
            "{dedup}"
        );
        ids.insert(dedup);
    }
    assert_eq!(ids.len(), 10_000, "one deduplication id per input");
    let dlq = f.collect("dlq", 1, Duration::from_millis(300)).await;
    assert_eq!(dlq.total, 0, "nothing was dead-lettered");
    eventually(LONG, "all inputs acked", || async {
        let i = f.consumer_info().await;
        (i.num_ack_pending == 0 && i.num_pending == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn permanent_failure_is_dead_lettered_with_headers_and_acked() {
    let f = Fixture::new().await;
    f.publish(1, |_| "permanent:the order is malformed".to_owned())
        .await;
    let m = Mqfn::start(&f.config("fail", ""));
    let dlq = f.collect("dlq", 1, LONG).await;
    let (count, msg) = &dlq.by_id["0"];
    assert_eq!(*count, 1);
    assert_eq!(
        msg.payload, "permanent:the order is malformed",
        "original payload"
    );
    assert_eq!(header(msg, "id"), "0", "original headers kept");
    assert_eq!(header(msg, "mqfn-error"), "the order is malformed");
    assert_eq!(header(msg, "mqfn-error-class"), "permanent");
    assert_eq!(
        header(msg, "mqfn-attempts"),
        "1",
        "permanent errors are not retried"
    );
    assert_eq!(header(msg, "mqfn-route"), "r");
    assert_eq!(header(msg, "mqfn-handler"), "fail");
    assert_eq!(header(msg, "mqfn-source"), format!("js/{}.in/1", f.prefix));
    let failed_at = header(msg, "mqfn-failed-at");
    assert!(humantime::parse_rfc3339(&failed_at).is_ok(), "{failed_at}");
    eventually(LONG, "the input acked", || async {
        let i = f.consumer_info().await;
        (i.num_ack_pending == 0 && i.num_pending == 0).then_some(())
    })
    .await;
    assert_eq!(
        f.collect("out", 1, Duration::from_millis(300)).await.total,
        0
    );
    let metrics = m.metrics().await;
    assert_eq!(
        metric(&metrics, r#"mqfn_dead_letters_total{route="r"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            r#"mqfn_messages_settled_total{route="r",outcome="dead_lettered"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn dedup_false_leaves_the_nats_msg_id_off_that_endpoint_only() {
    let f = Fixture::new().await;
    f.publish(2, |i| ["ok", "permanent:bad"][i].to_owned())
        .await;
    let out = format!("subject = \"{}.out\" }}", f.prefix);
    let config = f.config("fail", "").replace(
        &out,
        &format!("subject = \"{}.out\", dedup = false }}", f.prefix),
    );
    assert!(config.contains("dedup = false"), "{config}");
    let _m = Mqfn::start(&config);
    let got = f.collect("out", 1, LONG).await;
    let (_, msg) = &got.by_id["0"];
    assert_eq!(msg.payload, "ok");
    assert!(
        msg.headers
            .as_ref()
            .map_or(true, |h| h.get("Nats-Msg-Id").is_none()),
        "no Nats-Msg-Id with dedup = false: {:?}",
        msg.headers
    );
    // The dead letter keeps its default.
    let dlq = f.collect("dlq", 1, LONG).await;
    let (_, msg) = &dlq.by_id["1"];
    assert!(
        header(msg, "Nats-Msg-Id").ends_with(":dlq"),
        "{:?}",
        msg.headers
    );
}

#[tokio::test]
async fn retryable_failure_succeeds_on_third_attempt() {
    let f = Fixture::new().await;
    f.publish(1, |_| "retry-until:3".to_owned()).await;
    let m = Mqfn::start(&f.config("fail", ""));
    let out = f.collect("out", 1, LONG).await;
    assert_eq!(out.by_id.len(), 1);
    assert_eq!(out.by_id["0"].1.payload, "retry-until:3");
    let metrics = eventually(LONG, "the message settled", || async {
        let t = m.metrics().await;
        metric(&t, r#"mqfn_messages_settled_total{route="r",outcome="ok"}"#).map(|_| t)
    })
    .await;
    assert_eq!(
        metric(&metrics, r#"mqfn_retries_total{route="r"}"#),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &metrics,
            r#"mqfn_handler_invocations_total{handler="fail",result="retry"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &metrics,
            r#"mqfn_handler_invocations_total{handler="fail",result="ok"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        f.collect("dlq", 1, Duration::from_millis(300)).await.total,
        0,
        "no dead letter"
    );
    assert_eq!(out.total, 1, "exactly one result");
}

#[tokio::test]
async fn unconfirmed_output_leaves_the_input_unacked_until_it_can_be_published() {
    let f = Fixture::new().await;
    // The output subject is outside every stream: JetStream refuses it.
    let orphan = rand_name("orphan");
    let cfg = f
        .config("echo", "")
        .replace(&format!("{}.out", f.prefix), &format!("{orphan}.out"));
    f.publish(20, |i| format!("m{i}")).await;
    let m = Mqfn::start(&cfg);
    eventually(LONG, "publish errors and redeliveries", || async {
        let t = m.metrics().await;
        let redelivered = metric(&t, r#"mqfn_messages_redelivered_total{route="r"}"#)?;
        let errors = metric(&t, r#"mqfn_publish_errors_total{broker="js"}"#)?;
        (redelivered >= 20.0 && errors >= 20.0).then_some(())
    })
    .await;
    let t = m.metrics().await;
    assert_eq!(
        metric(&t, r#"mqfn_messages_settled_total{route="r",outcome="ok"}"#),
        Some(0.0),
        "nothing acked (the series exists from the start)"
    );
    let info = eventually(LONG, "the broker to redeliver", || async {
        let i = f.consumer_info().await;
        (i.num_redelivered > 0).then_some(i)
    })
    .await;
    assert_eq!(info.ack_floor.stream_sequence, 0, "no input was acked");
    // Once the output can be stored, every input comes through.
    let out_stream = orphan.to_uppercase();
    f.js.get_or_create_stream(stream::Config {
        name: out_stream.clone(),
        subjects: vec![format!("{orphan}.>")],
        ..Default::default()
    })
    .await
    .expect("create output stream");
    let got = collect(&f.js, &out_stream, &format!("{orphan}.out"), 20, LONG).await;
    assert_eq!(got.by_id.len(), 20, "none lost");
    println!(
        "after the stream appeared: {} results, {} duplicates",
        got.by_id.len(),
        got.duplicates()
    );
}

#[tokio::test]
async fn sigterm_drains_in_flight_work_and_exits_zero() {
    let f = Fixture::new().await;
    const N: usize = 400;
    f.publish(N, |_| "sleep:50".to_owned()).await;
    let cfg = f.config("fail", "").replace(
        "workers = { min = 4, max = 16 }",
        "workers = { min = 8, max = 8 }",
    );
    let mut m = Mqfn::start(&cfg);
    eventually(LONG, "work under way", || async {
        let s = m.status().await;
        (s["routes"][0]["received"].as_u64()? >= 40).then_some(())
    })
    .await;
    m.signal("TERM");
    let status = m.wait_exit(LONG);
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        m.log_text()
    );
    let log = m.log_text();
    assert!(
        log.contains("Draining.") && log.contains("Drained."),
        "{log}"
    );
    assert!(
        !log.contains("Shutdown timeout reached"),
        "drained within the timeout"
    );
    let first_run = f
        .collect("out", N, Duration::from_secs(1))
        .await
        .by_id
        .len();
    println!("results after the first run: {first_run}");
    assert!(
        first_run > 0 && first_run < N,
        "stopped mid-run ({first_run} of {N})"
    );
    // Count after a restart: everything arrives, nothing lost.
    m.spawn();
    let got = f.collect("out", N, LONG).await;
    println!(
        "after restart: {} distinct, {} duplicates",
        got.by_id.len(),
        got.duplicates()
    );
    assert_eq!(got.by_id.len(), N);
}

#[tokio::test]
async fn call_and_invoke_work_end_to_end() {
    let f = Fixture::new().await;
    let cfg = f.config(
        "echo",
        &format!(
            r#"
[handlers.tag]
kind = "builtin"
builtin = "json-transform"
options = {{ set = {{ seen = true }} }}

[[routes]]
name = "rpc"
source = {{ broker = "js", subject = "{p}.rpc" }}
handler = "tag"
"#,
            p = f.prefix
        ),
    );
    let m = Mqfn::start(&cfg);
    m.wait_ready(LONG).await;
    let config = m.config.to_str().unwrap().to_owned();
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
        })
    };
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    let out = run(s(&[
        "invoke",
        "--config",
        &config,
        "r",
        "hello",
        "--timeout",
        "60s",
    ]))
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");

    let out = run(s(&[
        "invoke",
        "--config",
        &config,
        "rpc",
        r#"{"a":1}"#,
        "--timeout",
        "60s",
    ]))
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "{\"a\":1,\"seen\":true}\n"
    );

    let out = run(s(&["call", "--config", &config, "tag", r#"{"b":2}"#]))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "{\"b\":2,\"seen\":true}\n"
    );

    let out = run(s(&[
        "call",
        "--config",
        &config,
        "fail",
        "permanent:no way",
    ]))
    .await
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("permanent error after 1 attempt(s): no way"),
        "{err}"
    );

    let out = run(s(&["call", "--config", &config, "tag", "not json"]))
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid JSON"));
}

/// A private nats-server on a random port, for connection-loss tests.
struct PrivateNats {
    child: std::process::Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl PrivateNats {
    fn start(port: u16, dir: &std::path::Path) -> Self {
        let child = std::process::Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server on PATH (/usr/sbin)");
        Self {
            child,
            port,
            dir: dir.to_owned(),
        }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn restart(&mut self) {
        self.stop();
        *self = Self::start(self.port, &self.dir.clone());
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn connection_loss_reports_not_ready_and_recovers() {
    std::env::set_var(
        "PATH",
        format!(
            "{}:/usr/sbin:/usr/local/sbin",
            std::env::var("PATH").unwrap_or_default()
        ),
    );
    let port = free_port();
    let store = tempfile::tempdir().unwrap();
    let url = format!("nats://127.0.0.1:{port}");
    let p = rand_name("t");
    let cfg = format!(
        r#"
[brokers.js]
kind = "nats"
url = "{url}"
[[brokers.js.streams]]
name = "S"
subjects = ["{p}.>"]

[[routes]]
name = "r"
source = {{ broker = "js", subject = "{p}.in", stream = "S" }}
handler = "echo"
output = {{ broker = "js", subject = "{p}.out" }}
dead_letter = {{ broker = "js", subject = "{p}.dlq" }}
"#
    );
    // mqfn starts while the server is down: alive, not ready.
    let mut m = Mqfn::start(&cfg);
    eventually(LONG, "the admin listener", || async {
        m.get("/healthz").await.map(|_| ())
    })
    .await;
    let (code, body) = m.get("/readyz").await.unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("broker js is down"), "{body}");

    let mut server = PrivateNats::start(port, store.path());
    m.wait_ready(LONG).await;

    server.stop();
    eventually(LONG, "readyz to report the outage", || async {
        matches!(m.get("/readyz").await, Some((503, _))).then_some(())
    })
    .await;
    assert!(
        m.is_running() && m.get("/healthz").await.is_some(),
        "still alive"
    );

    server.restart();
    m.wait_ready(LONG).await;
    let f = Fixture {
        prefix: p.clone(),
        stream: "S".to_owned(),
        js: jetstream::new(async_nats::connect(&url).await.unwrap()),
    };
    f.publish(10, |i| format!("after {i}")).await;
    let got = f.collect("out", 10, LONG).await;
    assert_eq!(got.by_id.len(), 10, "messages flow after the reconnect");
    let log = m.log_text();
    assert!(
        log.contains("Disconnected from NATS"),
        "the outage is logged"
    );
    assert!(m.is_running(), "mqfn survived the outage");
}

#[tokio::test]
async fn streams_used_only_by_outputs_are_declared_too() {
    let p = rand_name("t");
    let s = p.to_uppercase();
    let cfg = format!(
        r#"
[brokers.js]
kind = "nats"
url = "{url}"
[[brokers.js.streams]]
name = "{s}"
subjects = ["{p}.out"]
max_age = "1h"
max_messages = 1000
max_bytes = 1048576

[[routes]]
name = "r"
source = {{ broker = "js", subject = "{p}.in" }}
handler = "echo"
output = {{ broker = "js", subject = "{p}.out" }}
"#,
        url = nats_url()
    );
    let m = Mqfn::start(&cfg);
    m.wait_ready(LONG).await;
    let js = jetstream::new(async_nats::connect(nats_url()).await.unwrap());
    let mut stream = eventually(LONG, "the output stream", || async {
        js.get_stream(&s).await.ok()
    })
    .await;
    // Declared with its bounds.
    let config = stream.info().await.unwrap().config.clone();
    assert_eq!(config.max_age, Duration::from_secs(3600));
    assert_eq!(config.max_messages, 1000);
    assert_eq!(config.max_bytes, 1_048_576);
    // A core request now has somewhere durable for its result.
    let client = async_nats::connect(nats_url()).await.unwrap();
    client
        .publish(format!("{p}.in"), "hi".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let got = collect(&js, &s, &format!("{p}.out"), 1, LONG).await;
    assert_eq!(got.total, 1);
}

/// The config of the reload tests: `main` (`p.in` → `p.out`) with
/// `workers.max = max`, and the routes in `extra` (each `name` reads
/// `p.name.in` and writes `p.name.out`).
fn reload_config(p: &str, s: &str, max: u32, extra: &[&str]) -> String {
    let mut text = format!(
        r#"
[brokers.js]
kind = "nats"
url = "{url}"

[[routes]]
name = "main"
source = {{ broker = "js", subject = "{p}.in", stream = "{s}", durable = "{p}-main" }}
handler = "echo"
output = {{ broker = "js", subject = "{p}.out" }}
dead_letter = {{ broker = "js", subject = "{p}.dlq" }}
workers = {{ min = 1, max = {max} }}
"#,
        url = nats_url()
    );
    for name in extra {
        text.push_str(&format!(
            r#"
[[routes]]
name = "{name}"
source = {{ broker = "js", subject = "{p}.{name}.in", stream = "{s}", durable = "{p}-{name}" }}
handler = "echo"
output = {{ broker = "js", subject = "{p}.{name}.out" }}
dead_letter = {{ broker = "js", subject = "{p}.dlq" }}
"#
        ));
    }
    text
}

fn route_names(status: &serde_json::Value) -> Vec<String> {
    status["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .map(|r| r["name"].as_str().expect("name").to_owned())
        .collect()
}

/// SIGHUP reloads the config on a real JetStream while messages flow: the
/// changed route drains and restarts and none of its 2,000 messages is lost
/// or doubled, a new route starts, a removed one stops consuming, and an
/// invalid config is refused while the running one goes on.
#[tokio::test]
async fn sighup_reloads_the_config_and_loses_no_message() {
    let (p, s, js) = common::js_stream("reload").await;
    let m = Mqfn::start(&reload_config(&p, &s, 2, &["gone"]));
    m.wait_ready(LONG).await;
    let publisher = {
        let (js, p) = (js.clone(), p.clone());
        tokio::spawn(async move {
            for i in 0..2000 {
                let mut h = async_nats::HeaderMap::new();
                h.insert("id", i.to_string().as_str());
                js.publish_with_headers(format!("{p}.in"), h, format!("m{i}").into())
                    .await
                    .expect("publish")
                    .await
                    .expect("stored");
            }
        })
    };
    // Reload while the route is busy.
    eventually(LONG, "the first results", || async {
        let st = m.status().await;
        (st["routes"][0]["received"].as_u64().unwrap_or(0) >= 100).then_some(())
    })
    .await;
    m.rewrite_config(&reload_config(&p, &s, 4, &["second"]));
    m.signal("HUP");
    eventually(LONG, "the reload", || async {
        m.log_text().contains("Config reloaded.").then_some(())
    })
    .await;
    let st = m.status().await;
    assert_eq!(route_names(&st), ["main", "second"]);
    assert_eq!(st["routes"][0]["workers"]["max"], 4, "the new config");
    publisher.await.expect("published");
    let got = collect(&js, &s, &format!("{p}.out"), 2000, LONG).await;
    assert_eq!(got.by_id.len(), 2000, "no message lost across the reload");
    assert_eq!(got.duplicates(), 0, "none doubled");
    // The new route works; the removed one no longer consumes.
    js.publish(format!("{p}.gone.in"), "late".into())
        .await
        .unwrap()
        .await
        .unwrap();
    js.publish(format!("{p}.second.in"), "hi".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let second = collect(&js, &s, &format!("{p}.second.out"), 1, LONG).await;
    assert_eq!(second.total, 1);
    let stream = js.get_stream(&s).await.unwrap();
    let mut gone: consumer::PullConsumer = stream.get_consumer(&format!("{p}-gone")).await.unwrap();
    let info = gone.info().await.unwrap();
    assert_eq!(info.num_pending, 1, "the stopped route left it for later");
    assert_eq!(info.num_ack_pending, 0);

    // An invalid config is refused and the running one goes on.
    m.rewrite_config("this is [not toml");
    m.signal("HUP");
    eventually(LONG, "the refusal", || async {
        m.log_text().contains("Config reload refused").then_some(())
    })
    .await;
    let mut h = async_nats::HeaderMap::new();
    h.insert("id", "after");
    js.publish_with_headers(format!("{p}.in"), h, "after".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let got = collect(&js, &s, &format!("{p}.out"), 2001, LONG).await;
    assert!(got.by_id.contains_key("after"), "the old config still runs");
    assert_eq!(route_names(&m.status().await), ["main", "second"]);
}

/// With `--watch`, saving the file is enough: a route added to it starts.
#[tokio::test]
async fn watch_reloads_when_the_file_changes() {
    let (p, s, js) = common::js_stream("watch").await;
    let m = Mqfn::start_with(&reload_config(&p, &s, 2, &[]), &["--watch"]);
    m.wait_ready(LONG).await;
    m.rewrite_config(&reload_config(&p, &s, 2, &["added"]));
    eventually(LONG, "the added route", || async {
        (route_names(&m.status().await) == ["main", "added"]).then_some(())
    })
    .await;
    js.publish(format!("{p}.added.in"), "hi".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let got = collect(&js, &s, &format!("{p}.added.out"), 1, LONG).await;
    assert_eq!(got.total, 1);
    assert!(m.log_text().contains("The config file changed"));
}
