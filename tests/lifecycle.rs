//! The serverless lifecycle against a real NATS JetStream (issue 5):
//! backlog autoscaling, scale to zero and activation, process handlers in
//! Python and Node, crashes and timeouts, HTTP handlers, and scale-in that
//! never cancels a running invocation.
//!
//! Needs `nats-server -js` on `NATS_URL` (default 127.0.0.1:4222), python3
//! and node. Every test uses its own random stream, subjects and route
//! names. Time bounds here only catch hangs; nothing asserts on wall time.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use common::{eventually, metric, nats_url, rand_name, Mqfn};
use futures::StreamExt;
use serde_json::Value;

const LONG: Duration = Duration::from_secs(120);
const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/handlers/examples");
const SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/handlers/sdk");

/// A random memory stream capturing `PREFIX.>`, removed on drop.
struct Stream {
    client: async_nats::Client,
    js: jetstream::Context,
    name: String,
    prefix: String,
}

impl Stream {
    async fn new() -> Self {
        let client = async_nats::connect(nats_url()).await.expect("NATS is up");
        let js = jetstream::new(client.clone());
        let name = rand_name("LC").to_uppercase();
        let prefix = rand_name("lc");
        js.create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("{prefix}.>")],
            storage: stream::StorageType::Memory,
            ..Default::default()
        })
        .await
        .expect("create stream");
        Self {
            client,
            js,
            name,
            prefix,
        }
    }

    fn subject(&self, s: &str) -> String {
        format!("{}.{s}", self.prefix)
    }

    /// Publishes every payload to `PREFIX.SUBJECT`, each confirmed.
    async fn publish<I: IntoIterator<Item = String>>(&self, subject: &str, payloads: I) {
        let subject = self.subject(subject);
        let payloads: Vec<String> = payloads.into_iter().collect();
        for chunk in payloads.chunks(500) {
            let mut acks = Vec::with_capacity(chunk.len());
            for p in chunk {
                let mut h = async_nats::HeaderMap::new();
                h.insert("x-test", "yes");
                let ack = self
                    .js
                    .publish_with_headers(subject.clone(), h, Bytes::from(p.clone()))
                    .await
                    .expect("publish");
                acks.push(ack);
            }
            for a in acks {
                a.await.expect("PubAck");
            }
        }
    }

    /// Collects every message published to `PREFIX.SUBJECT` from now on.
    async fn collect(&self, subject: &str) -> Arc<Mutex<Vec<async_nats::Message>>> {
        let mut sub = self
            .client
            .subscribe(self.subject(subject))
            .await
            .expect("subscribe");
        self.client.flush().await.expect("flush");
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                sink.lock().unwrap().push(m);
            }
        });
        got
    }

    /// A config with broker `js`, the given handler tables and routes.
    /// `{in}`, `{out}`, `{dlq}` and `{stream}` in `routes` are filled in.
    fn config(&self, handlers: &str, routes: &str) -> String {
        let routes = routes
            .replace("{stream}", &self.name)
            .replace("{p}", &self.prefix);
        format!(
            "[brokers.js]\nkind = \"nats\"\nurl = \"{}\"\n\n{handlers}\n{routes}",
            nats_url()
        )
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let (js, name) = (self.js.clone(), self.name.clone());
        // Best effort: the stream is in memory and random anyway.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = js.delete_stream(name).await;
            });
        }
    }
}

/// A route table on the stream: `PREFIX.NAME.in` to `.out`, failures to `.dlq`.
fn route(name: &str, handler: &str, extra: &str) -> String {
    format!(
        r#"
[[routes]]
name = "{name}"
source = {{ broker = "js", subject = "{{p}}.{name}.in", stream = "{{stream}}" }}
handler = "{handler}"
output = {{ broker = "js", subject = "{{p}}.{name}.out" }}
dead_letter = {{ broker = "js", subject = "{{p}}.{name}.dlq" }}
{extra}
"#
    )
}

fn route_status<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["routes"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["name"] == name))
        .unwrap_or_else(|| panic!("route {name} in /status: {status}"))
}

async fn route_field(m: &Mqfn, name: &str, pointer: &str) -> u64 {
    route_status(&m.status().await, name)
        .pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

async fn wait_for(m: &Mqfn, name: &str, pointer: &str, want: u64) {
    eventually(LONG, &format!("{name}{pointer} == {want}"), || async {
        (route_field(m, name, pointer).await >= want).then_some(())
    })
    .await;
    assert_eq!(route_field(m, name, pointer).await, want, "{name}{pointer}");
}

fn decisions(status: &Value, name: &str) -> Vec<Value> {
    route_status(status, name)["decisions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn header(m: &async_nats::Message, name: &str) -> String {
    m.headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_scales_workers_to_max_within_two_intervals_then_back_to_min() {
    let s = Stream::new().await;
    let max = 16;
    // The backlog is there before mqfn starts: 5,000 messages of 20 ms.
    s.publish("up.in", (0..5_000).map(|_| "sleep:20".to_owned()))
        .await;
    let workers = format!(
        "workers = {{ min = 1, max = {max}, target_backlog = 100, scale_interval = \"500ms\", cooldown = \"200ms\" }}"
    );
    let m = Mqfn::start(&s.config("", &route("up", "fail", &workers)));
    m.wait_ready(LONG).await;

    let first_max = eventually(LONG, "a decision that reaches max", || async {
        decisions(&m.status().await, "up")
            .into_iter()
            .find(|d| d["next"] == max)
    })
    .await;
    eprintln!("scale-up decision: {first_max}");
    assert_eq!(first_max["current"], 1, "straight from min: {first_max}");
    let ticks = first_max["backlog_ticks"].as_u64().unwrap();
    assert!(
        (1..=2).contains(&ticks),
        "max reached within 2 scale intervals of the backlog: {first_max}"
    );

    wait_for(&m, "up", "/succeeded", 5_000).await;
    eventually(LONG, "workers back to min", || async {
        (route_field(&m, "up", "/workers/current").await == 1).then_some(())
    })
    .await;
    let ds = decisions(&m.status().await, "up");
    let downs: Vec<_> = ds
        .iter()
        .filter(|d| d["next"].as_u64() < d["current"].as_u64())
        .collect();
    assert!(
        downs
            .iter()
            .all(|d| d["current"].as_u64().unwrap() - d["next"].as_u64().unwrap() == 1),
        "down one step at a time: {ds:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_route_scales_to_zero_workers_and_instances_then_wakes() {
    let s = Stream::new().await;
    let handlers = format!(
        "[handlers.noop]\nkind = \"process\"\ncommand = [\"python3\", \"{EXAMPLES}/noop.py\"]\nidle_timeout = \"10m\"\n"
    );
    let workers = "workers = { min = 0, max = 2, scale_interval = \"100ms\", cooldown = \"100ms\", idle_timeout = \"1s\" }";
    let m = Mqfn::start(&s.config(&handlers, &route("zero", "noop", workers)));
    m.wait_ready(LONG).await;
    let out = s.collect("zero.out").await;

    s.publish("zero.in", ["first".to_owned()]).await;
    wait_for(&m, "zero", "/succeeded", 1).await;
    eventually(LONG, "0 workers and 0 instances", || async {
        let st = m.status().await;
        let r = route_status(&st, "zero");
        (r["workers"]["current"] == 0 && r["instances"]["live"] == 0).then_some(())
    })
    .await;
    let metrics = m.metrics().await;
    for state in ["warm", "busy"] {
        let series = format!("mqfn_instances{{handler=\"noop\",state=\"{state}\"}}");
        assert_eq!(metric(&metrics, &series), Some(0.0), "{series}");
    }
    let cold = route_field(&m, "zero", "/instances/cold_starts").await;
    assert_eq!(
        metric(&metrics, "mqfn_cold_starts_total{handler=\"noop\"}"),
        Some(cold as f64)
    );

    // Activation: the subscription stayed open; a new message wakes a worker.
    s.publish("zero.in", ["second".to_owned()]).await;
    wait_for(&m, "zero", "/succeeded", 2).await;
    assert_eq!(
        route_field(&m, "zero", "/instances/cold_starts").await,
        cold + 1
    );
    let ds = decisions(&m.status().await, "zero");
    assert!(
        ds.iter().any(|d| d["current"] == 0 && d["next"] == 1),
        "a decision woke the route from zero: {ds:?}"
    );
    eventually(LONG, "both results", || async {
        (out.lock().unwrap().len() == 2).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_and_node_handlers_process_a_thousand_messages_each_mostly_warm() {
    let s = Stream::new().await;
    let handlers = format!(
        r#"
[handlers.py]
kind = "process"
command = ["python3", "{EXAMPLES}/noop.py"]
max_instances = 4

[handlers.js]
kind = "process"
command = ["node", "{EXAMPLES}/csv-rows.js"]
max_instances = 4
"#
    );
    let workers = "workers = { min = 1, max = 4 }";
    let routes = route("py", "py", workers) + &route("node", "js", workers);
    let m = Mqfn::start(&s.config(&handlers, &routes));
    m.wait_ready(LONG).await;
    let py_out = s.collect("py.out").await;
    let node_out = s.collect("node.out").await;

    let n = 1_000;
    let start = Instant::now();
    tokio::join!(
        s.publish("py.in", (0..n).map(|i| format!("py {i}"))),
        s.publish("node.in", (0..n).map(|i| format!("n,sq\n{i},{}\n", i * i))),
    );
    wait_for(&m, "py", "/succeeded", n).await;
    wait_for(&m, "node", "/succeeded", n).await;
    // A figure for the log, not an assertion.
    eprintln!(
        "{} messages through python and node handlers in {:?}",
        2 * n,
        start.elapsed()
    );
    eventually(LONG, "every output", || async {
        (py_out.lock().unwrap().len() == n as usize && node_out.lock().unwrap().len() == n as usize)
            .then_some(())
    })
    .await;
    let row: Value = serde_json::from_slice(&node_out.lock().unwrap()[0].payload).unwrap();
    assert!(row["n"].is_string() && row["sq"].is_string(), "{row}");

    let metrics = m.metrics().await;
    for h in ["py", "js"] {
        let cold = metric(
            &metrics,
            &format!("mqfn_cold_starts_total{{handler=\"{h}\"}}"),
        )
        .unwrap();
        let warm = metric(
            &metrics,
            &format!("mqfn_warm_starts_total{{handler=\"{h}\"}}"),
        )
        .unwrap();
        eprintln!("handler {h}: {cold} cold starts, {warm} warm starts");
        assert!(cold >= 1.0 && warm > cold, "{h}: cold {cold}, warm {warm}");
        assert_eq!(cold + warm, n as f64, "{h}: one start per invocation");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn crashing_and_hanging_processes_are_retried_then_dead_lettered_while_others_flow() {
    let s = Stream::new().await;
    let handlers = format!(
        "[handlers.flaky]\nkind = \"process\"\ncommand = [\"python3\", \"{EXAMPLES}/flaky.py\"]\ntimeout = \"3s\"\nmax_instances = 4\n"
    );
    let extra = r#"workers = { min = 2, max = 4 }
retry = { max_attempts = 3, initial_backoff = "10ms", max_backoff = "100ms" }"#;
    let m = Mqfn::start(&s.config(&handlers, &route("fl", "flaky", extra)));
    m.wait_ready(LONG).await;
    let dlq = s.collect("fl.dlq").await;
    let out = s.collect("fl.out").await;

    let bad = ["exit", "sleep:60", "garbage"].map(String::from);
    s.publish(
        "fl.in",
        bad.iter()
            .cloned()
            .chain((0..100).map(|i| format!("ok {i}"))),
    )
    .await;
    wait_for(&m, "fl", "/dead_lettered", 3).await;
    wait_for(&m, "fl", "/succeeded", 100).await;

    let dead = dlq.lock().unwrap().clone();
    let by_payload: HashMap<String, &async_nats::Message> = dead
        .iter()
        .map(|d| (String::from_utf8_lossy(&d.payload).into_owned(), d))
        .collect();
    for (payload, class) in [
        ("exit", "crashed"),
        ("garbage", "crashed"),
        ("sleep:60", "retryable"),
    ] {
        let d = by_payload
            .get(payload)
            .unwrap_or_else(|| panic!("{payload} dead-lettered"));
        assert_eq!(header(d, "mqfn-attempts"), "3", "{payload} retried first");
        assert_eq!(
            header(d, "mqfn-error-class"),
            class,
            "{payload}: {}",
            header(d, "mqfn-error")
        );
        assert_eq!(header(d, "mqfn-handler"), "flaky");
    }
    assert!(
        header(by_payload["sleep:60"], "mqfn-error").contains("timed out"),
        "{}",
        header(by_payload["sleep:60"], "mqfn-error")
    );
    eventually(LONG, "100 results", || async {
        (out.lock().unwrap().len() == 100).then_some(())
    })
    .await;
    let log = m.log_text();
    let stderr_line = log
        .lines()
        .find(|l| l.contains("flaky: exiting with status 1"))
        .expect("the handler's stderr is in mqfn's log");
    assert!(
        stderr_line.contains("flaky") && stderr_line.contains("instance"),
        "tagged with handler and instance: {stderr_line}"
    );
    let metrics = m.metrics().await;
    let timeouts = metric(
        &metrics,
        "mqfn_handler_invocations_total{handler=\"flaky\",result=\"timeout\"}",
    );
    assert_eq!(timeouts, Some(3.0), "the sleeper timed out three times");
    let crashes = metric(
        &metrics,
        "mqfn_handler_invocations_total{handler=\"flaky\",result=\"crash\"}",
    );
    assert_eq!(
        crashes,
        Some(6.0),
        "exit and garbage crashed three times each"
    );
}

/// What the test HTTP server saw of each payload.
#[derive(Default)]
struct Seen {
    calls: HashMap<String, Vec<(Instant, axum::http::HeaderMap)>>,
}

async fn http_server() -> (String, Arc<Mutex<Seen>>) {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;

    let seen = Arc::new(Mutex::new(Seen::default()));
    let state = seen.clone();
    let app = axum::Router::new().route(
        "/fn",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: Bytes| {
            let state = state.clone();
            async move {
                let payload = String::from_utf8_lossy(&body).into_owned();
                let n = {
                    let mut s = state.lock().unwrap();
                    let calls = s.calls.entry(payload.clone()).or_default();
                    calls.push((Instant::now(), headers));
                    calls.len()
                };
                let text = [(header::CONTENT_TYPE, "text/plain")];
                match (payload.as_str(), n) {
                    ("flaky", 1) => (StatusCode::SERVICE_UNAVAILABLE, "down").into_response(),
                    ("bad", _) => (StatusCode::BAD_REQUEST, "no").into_response(),
                    ("busy", 1) => (
                        StatusCode::TOO_MANY_REQUESTS,
                        [(header::RETRY_AFTER, "2")],
                        "later",
                    )
                        .into_response(),
                    ("empty", _) => StatusCode::OK.into_response(),
                    _ => (StatusCode::OK, text, format!("echo {payload}")).into_response(),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/fn"), seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn http_handlers_retry_5xx_and_429_honouring_retry_after_and_dead_letter_4xx() {
    let s = Stream::new().await;
    let (url, seen) = http_server().await;
    let handlers = format!(
        "[handlers.web]\nkind = \"http\"\nurl = \"{url}\"\nce_type = \"test.event\"\nmax_instances = 4\n"
    );
    let extra = r#"workers = { min = 1, max = 4 }
retry = { max_attempts = 4, initial_backoff = "10ms", max_backoff = "5s" }"#;
    let m = Mqfn::start(&s.config(&handlers, &route("web", "web", extra)));
    m.wait_ready(LONG).await;
    let out = s.collect("web.out").await;
    let dlq = s.collect("web.dlq").await;

    let payloads = ["ok", "flaky", "bad", "busy", "empty"].map(String::from);
    s.publish("web.in", payloads).await;
    wait_for(&m, "web", "/dead_lettered", 1).await;
    wait_for(&m, "web", "/succeeded", 4).await;
    eventually(LONG, "three results", || async {
        (out.lock().unwrap().len() >= 3).then_some(())
    })
    .await;

    let mut results: Vec<String> = out
        .lock()
        .unwrap()
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    results.sort();
    assert_eq!(
        results,
        ["echo busy", "echo flaky", "echo ok"],
        "empty 2xx: no output"
    );
    let dead = dlq.lock().unwrap()[0].clone();
    assert_eq!(dead.payload, "bad");
    assert_eq!(header(&dead, "mqfn-attempts"), "1", "a 400 is not retried");
    assert_eq!(header(&dead, "mqfn-error-class"), "permanent");

    let seen = seen.lock().unwrap();
    let count = |p: &str| seen.calls.get(p).map_or(0, Vec::len);
    assert_eq!(
        [
            count("ok"),
            count("flaky"),
            count("bad"),
            count("busy"),
            count("empty")
        ],
        [1, 2, 1, 2, 1]
    );
    let busy = &seen.calls["busy"];
    let gap = busy[1].0.duration_since(busy[0].0);
    assert!(
        gap >= Duration::from_millis(1_900),
        "Retry-After: 2 honoured, got {gap:?}"
    );

    let h = &seen.calls["ok"][0].1;
    assert_eq!(h["ce-specversion"], "1.0");
    assert_eq!(h["ce-type"], "test.event");
    assert_eq!(h["ce-source"], "/mqfn/routes/web");
    assert_eq!(h["ce-subject"], s.subject("web.in").as_str());
    assert!(h["ce-id"]
        .to_str()
        .unwrap()
        .starts_with(&format!("{}:", s.name)));
    assert_eq!(h["x-test"], "yes", "message headers are passed on");
    let ids: Vec<_> = seen.calls["flaky"]
        .iter()
        .map(|(_, h)| h["ce-id"].clone())
        .collect();
    assert_eq!(ids[0], ids[1], "a retry carries the same event id");
}

#[tokio::test(flavor = "multi_thread")]
async fn scale_in_never_cancels_a_running_invocation() {
    let s = Stream::new().await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("slow.py");
    let record = dir.path().join("record.txt");
    std::fs::write(
        &script,
        format!(
            r#"import sys, time
sys.path.insert(0, "{SDK}")
from mqfn_handler import handler
RECORD = sys.argv[1]
def note(line):
    with open(RECORD, "a") as f:
        f.write(line + "\n")
@handler
def run(payload, ctx):
    note("start " + payload.decode())
    time.sleep(1.5)
    note("end " + payload.decode())
    return payload
"#
        ),
    )
    .unwrap();
    let handlers = format!(
        "[handlers.slow]\nkind = \"process\"\ncommand = [\"python3\", \"{}\"]\nargs = [\"{}\"]\nmax_instances = 4\n",
        script.display(),
        record.display()
    );
    let workers = "workers = { min = 1, max = 4, target_backlog = 1, scale_interval = \"100ms\", cooldown = \"100ms\" }";
    let m = Mqfn::start(&s.config(&handlers, &route("slow", "slow", workers)));
    m.wait_ready(LONG).await;

    let n = 8;
    s.publish("slow.in", (0..n).map(|i| format!("m{i}"))).await;
    wait_for(&m, "slow", "/succeeded", n).await;

    let ds = decisions(&m.status().await, "slow");
    let shrink_while_busy = ds.iter().find(|d| {
        let (cur, next, busy) = (
            d["current"].as_u64(),
            d["next"].as_u64(),
            d["busy"].as_u64(),
        );
        next < cur && busy > next
    });
    assert!(
        shrink_while_busy.is_some(),
        "the pool shrank below its busy workers at least once: {ds:?}"
    );
    let text = std::fs::read_to_string(&record).unwrap();
    for i in 0..n {
        for what in ["start", "end"] {
            let line = format!("{what} m{i}");
            assert_eq!(
                text.lines().filter(|l| *l == line).count(),
                1,
                "{line} in\n{text}"
            );
        }
    }
    let metrics = m.metrics().await;
    let ok = metric(
        &metrics,
        "mqfn_handler_invocations_total{handler=\"slow\",result=\"ok\"}",
    );
    assert_eq!(ok, Some(n as f64), "every invocation ran to the end");
    assert_eq!(
        metric(&metrics, "mqfn_retries_total{route=\"slow\"}").unwrap_or(0.0),
        0.0,
        "nothing was interrupted and retried"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_stops_every_process_instance() {
    let s = Stream::new().await;
    // A private copy of the handler, so that its processes can be found.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("noop_copy.py");
    let text = std::fs::read_to_string(format!("{EXAMPLES}/noop.py")).unwrap();
    std::fs::write(
        &script,
        text.replace("\"..\", \"sdk\"", &format!("{SDK:?}")),
    )
    .unwrap();
    let handlers = format!(
        "[handlers.copy]\nkind = \"process\"\ncommand = [\"python3\", \"{}\"]\nmax_instances = 3\n",
        script.display()
    );
    let mut m = Mqfn::start(&s.config(
        &handlers,
        &route("stop", "copy", "workers = { min = 3, max = 3 }"),
    ));
    m.wait_ready(LONG).await;
    s.publish("stop.in", (0..30).map(|i| format!("m{i}"))).await;
    wait_for(&m, "stop", "/succeeded", 30).await;
    let running = || {
        let out = std::process::Command::new("pgrep")
            .args(["-f", &script.display().to_string()])
            .output()
            .expect("pgrep");
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    assert!(running() >= 1, "instances are running");
    m.signal("TERM");
    let status = m.wait_exit(LONG);
    assert!(status.success(), "mqfn run exits 0 on SIGTERM: {status:?}");
    assert_eq!(running(), 0, "no handler process outlives mqfn");
}

#[test]
fn every_shipped_config_validates() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = common::cli(&["validate", "--config", path.to_str().unwrap()]);
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 3, "config/ has the example configs");
}
