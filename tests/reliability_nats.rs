//! Fault injection on NATS JetStream: SIGKILL mid-run, a server restart
//! mid-run, handler faults, and poison messages across restarts.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use common::{
    eventually, free_port, hostile, js_header as header, metric, nats_url, rand_name, Mqfn,
};
use futures::StreamExt;

const LONG: Duration = Duration::from_secs(180);

struct Bed {
    p: String,
    s: String,
    js: jetstream::Context,
    url: String,
}

impl Bed {
    async fn new(url: &str) -> Self {
        let p = rand_name("rel");
        let s = p.to_uppercase();
        let js = jetstream::new(async_nats::connect(url).await.expect("connect"));
        js.get_or_create_stream(stream::Config {
            name: s.clone(),
            subjects: vec![format!("{p}.>")],
            ..Default::default()
        })
        .await
        .expect("stream");
        Self {
            p,
            s,
            js,
            url: url.to_owned(),
        }
    }

    fn config(&self, handler: &str, route_extra: &str, top: &str) -> String {
        format!(
            r#"
{top}
[brokers.js]
kind = "nats"
url = "{url}"
[[brokers.js.streams]]
name = "{s}"
subjects = ["{p}.>"]

[[routes]]
name = "r"
source = {{ broker = "js", subject = "{p}.in", stream = "{s}", durable = "{p}" }}
handler = "{handler}"
output = {{ broker = "js", subject = "{p}.out" }}
dead_letter = {{ broker = "js", subject = "{p}.dlq" }}
{route_extra}
"#,
            url = self.url,
            p = self.p,
            s = self.s,
        )
    }

    async fn publish(&self, n: usize, body: impl Fn(usize) -> String) {
        let subject = format!("{}.in", self.p);
        futures::stream::iter(0..n)
            .map(|i| {
                let mut h = async_nats::HeaderMap::new();
                h.insert("id", i.to_string().as_str());
                let (js, subject, body) = (self.js.clone(), subject.clone(), body(i));
                async move {
                    loop {
                        if let Ok(ack) = js
                            .publish_with_headers(subject.clone(), h.clone(), body.clone().into())
                            .await
                        {
                            if ack.await.is_ok() {
                                break;
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            })
            .buffer_unordered(256)
            .collect::<Vec<_>>()
            .await;
    }

    /// Every message on `{p}.{suffix}` now: id → copies.
    async fn ids(&self, suffix: &str) -> BTreeMap<String, usize> {
        let subject = format!("{}.{suffix}", self.p);
        let mut out = BTreeMap::new();
        for m in common::js_read(&self.js, &self.s, &subject).await {
            let id = m
                .headers
                .as_ref()
                .and_then(|h| h.get("id"))
                .map(|v| v.to_string())
                .unwrap_or_default();
            *out.entry(id).or_insert(0) += 1;
        }
        out
    }
}

#[tokio::test]
async fn sigkill_three_times_loses_nothing() {
    const N: usize = 10_000;
    let bed = Bed::new(&nats_url()).await;
    bed.publish(N, |i| {
        if i % 1000 == 7 {
            "permanent:poison".to_owned()
        } else {
            "sleep:1".to_owned()
        }
    })
    .await;
    let mut m = Mqfn::start(&bed.config("fail", "workers = { min = 16, max = 16 }", ""));
    let kills = common::kill_three_times(&mut m, LONG).await;
    let outs = eventually(
        LONG,
        "every input to have a result or a dead letter",
        || async {
            let outs = bed.ids("out").await;
            let dlq = bed.ids("dlq").await;
            (outs.len() + dlq.len() >= N).then_some((outs, dlq))
        },
    )
    .await;
    let (outs, dlq) = outs;
    common::assert_crash_accounting(N, &outs, &dlq, &kills);
}

#[tokio::test]
async fn server_restart_mid_run_loses_nothing() {
    std::env::set_var(
        "PATH",
        format!("{}:/usr/sbin", std::env::var("PATH").unwrap_or_default()),
    );
    let port = free_port();
    let store = tempfile::tempdir().unwrap();
    let url = format!("nats://127.0.0.1:{port}");
    let start = |dir: &std::path::Path| {
        std::process::Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server")
    };
    let mut server = start(store.path());
    eventually(LONG, "the private server", || async {
        async_nats::connect(&url).await.ok().map(|_| ())
    })
    .await;
    let bed = Bed::new(&url).await;
    const N: usize = 3000;
    bed.publish(N, |_| "sleep:2".to_owned()).await;
    let m = Mqfn::start(&bed.config("fail", "workers = { min = 8, max = 8 }", ""));
    m.wait_ready(LONG).await;
    eventually(LONG, "progress", || async {
        let v = m.status().await;
        (v["routes"][0]["succeeded"].as_u64()? >= 500).then_some(())
    })
    .await;
    let _ = server.kill();
    let _ = server.wait();
    eventually(LONG, "/readyz to reflect the outage", || async {
        matches!(m.get("/readyz").await, Some((503, _))).then_some(())
    })
    .await;
    server = start(store.path());
    m.wait_ready(LONG).await;
    let bed2 = Bed {
        js: jetstream::new(async_nats::connect(&url).await.unwrap()),
        ..bed
    };
    let outs = eventually(LONG, "every input to have a result", || async {
        let outs = bed2.ids("out").await;
        (outs.len() >= N).then_some(outs)
    })
    .await;
    let dups: usize = outs.values().map(|c| c - 1).sum();
    println!(
        "server restart: {N} in, {} distinct results, {dups} duplicates",
        outs.len()
    );
    assert_eq!(outs.len(), N);
    let _ = server.kill();
    let _ = server.wait();
}

#[tokio::test]
async fn handler_faults_are_contained_and_the_route_keeps_flowing() {
    let bed = Bed::new(&nats_url()).await;
    let pad = "x".repeat(700_000);
    let top = format!(
        "[handlers.inflate]\nkind = \"builtin\"\nbuiltin = \"json-transform\"\noptions = {{ set = {{ pad = \"{pad}\" }} }}\n"
    );
    let extra = format!(
        r#"timeout = "300ms"
retry = {{ max_attempts = 2, initial_backoff = "10ms", max_backoff = "20ms" }}

[[routes]]
name = "big"
source = {{ broker = "js", subject = "{p}.big", stream = "{s}", durable = "{p}-big" }}
handler = "inflate"
output = {{ broker = "js", subject = "{p}.out" }}
dead_letter = {{ broker = "js", subject = "{p}.dlq" }}
"#,
        p = bed.p,
        s = bed.s
    );
    let cfg = bed.config("fail", &extra, &top);
    bed.publish(103, |i| match i {
        0 => "panic".to_owned(),
        1 => "sleep:5000".to_owned(),
        _ => format!("fine {i}"),
    })
    .await;
    // A result too large for the server: the input is 400 kB, the output 1.1 MB.
    let mut h = async_nats::HeaderMap::new();
    h.insert("id", "big");
    let body = format!("{{\"data\":\"{}\"}}", "y".repeat(400_000));
    bed.js
        .publish_with_headers(format!("{}.big", bed.p), h, body.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let m = Mqfn::start(&cfg);
    // The dead letters read by subject, however many messages the stream
    // holds before them: id → (class, reason).
    let dlq_subject = format!("{}.dlq", bed.p);
    let reasons = eventually(LONG, "three dead letters", || async {
        let dead = common::js_read(&bed.js, &bed.s, &dlq_subject).await;
        let reasons: BTreeMap<_, _> = dead
            .iter()
            .map(|m| {
                (
                    header(m, "id"),
                    (header(m, "mqfn-error-class"), header(m, "mqfn-error")),
                )
            })
            .collect();
        (reasons.len() >= 3).then_some(reasons)
    })
    .await;
    assert!(
        reasons.contains_key("0") && reasons.contains_key("1") && reasons.contains_key("big"),
        "{reasons:?}"
    );
    let outs = eventually(LONG, "the other 101 results", || async {
        let o = bed.ids("out").await;
        (o.len() >= 101).then_some(o)
    })
    .await;
    assert_eq!(outs.len(), 101, "every healthy message went through");
    // The reasons are clear.
    println!("{reasons:#?}");
    assert_eq!(reasons["0"].0, "crashed");
    assert!(reasons["0"].1.contains("panicked"), "{:?}", reasons["0"]);
    assert!(
        reasons["1"].1.contains("timed out after 300ms"),
        "{:?}",
        reasons["1"]
    );
    assert_eq!(reasons["big"].0, "permanent");
    assert!(
        reasons["big"].1.contains("refused by the broker"),
        "{:?}",
        reasons["big"]
    );
    let t = m.metrics().await;
    assert!(
        metric(
            &t,
            r#"mqfn_handler_invocations_total{handler="fail",result="crash"}"#
        ) >= Some(2.0)
    );
    assert!(
        metric(
            &t,
            r#"mqfn_handler_invocations_total{handler="fail",result="timeout"}"#
        ) >= Some(2.0)
    );
}

#[tokio::test]
async fn a_poison_message_reaches_the_dead_letter_across_restarts() {
    let bed = Bed::new(&nats_url()).await;
    // Long backoffs, so that mqfn can be killed between attempts; a short
    // ack_wait, so that the server redelivers soon after each kill.
    let cfg = bed
        .config(
            "fail",
            r#"retry = { max_attempts = 3, initial_backoff = "30s", max_backoff = "30s" }"#,
            "",
        )
        .replace("durable = ", "ack_wait = \"2s\", durable = ");
    bed.publish(1, |_| "retry:always failing".to_owned()).await;
    let mut m = Mqfn::start(&cfg);
    for round in 1..=2 {
        eventually(LONG, "an attempt", || async {
            let t = m.metrics().await;
            metric(
                &t,
                r#"mqfn_handler_invocations_total{handler="fail",result="retry"}"#,
            )
            .map(|_| ())
        })
        .await;
        m.kill();
        println!("killed after attempt {round}");
        m.spawn();
    }
    let dlq = eventually(LONG, "the dead letter", || async {
        let d = bed.ids("dlq").await;
        (!d.is_empty()).then_some(d)
    })
    .await;
    assert_eq!(dlq.len(), 1);
    let stream = bed.js.get_stream(&bed.s).await.unwrap();
    let raw = stream
        .get_last_raw_message_by_subject(&format!("{}.dlq", bed.p))
        .await
        .unwrap();
    assert_eq!(
        raw.headers.get("mqfn-attempts").unwrap().to_string(),
        "3",
        "attempts counted across restarts"
    );
}

#[tokio::test]
async fn hostile_input_is_dead_lettered_with_the_reason() {
    let bed = Bed::new(&nats_url()).await;
    let cfg = bed.config("tag", hostile::ROUTE, hostile::HANDLER);
    let subject = format!("{}.in", bed.p);
    let cases = hostile::cases();
    for (id, body) in &cases {
        let mut h = async_nats::HeaderMap::new();
        h.insert("id", *id);
        bed.js
            .publish_with_headers(subject.clone(), h, body.clone().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let _m = Mqfn::start(&cfg);
    eventually(LONG, "four dead letters and one result", || async {
        let (d, o) = (bed.ids("dlq").await, bed.ids("out").await);
        (d.len() == 4 && o.len() == 1).then_some(())
    })
    .await;
    let mut reasons = BTreeMap::new();
    for m in common::js_read(&bed.js, &bed.s, &format!("{}.dlq", bed.p)).await {
        let id = header(&m, "id");
        assert_eq!(
            m.payload,
            hostile::original(&cases, &id),
            "{id}: the original payload, byte for byte"
        );
        assert_eq!(header(&m, "mqfn-error-class"), "permanent", "{id}");
        reasons.insert(id, header(&m, "mqfn-error"));
    }
    hostile::assert_reasons(&reasons);
}

/// Supervision on a real broker: deleting the route's durable ends its
/// pull for good (the server says "consumer deleted"). The route is
/// counted as restarted, `/status` says why, and it binds the durable anew,
/// so messages flow again.
#[tokio::test]
async fn a_deleted_durable_restarts_the_route_which_binds_it_anew() {
    let bed = Bed::new(&nats_url()).await;
    let m = Mqfn::start(&bed.config("echo", "", ""));
    m.wait_ready(LONG).await;
    bed.publish(10, |i| format!("before-{i}")).await;
    common::js_read_at_least(&bed.js, &bed.s, &format!("{}.out", bed.p), 10, LONG).await;

    let stream = bed.js.get_stream(&bed.s).await.expect("stream");
    stream
        .delete_consumer(&bed.p)
        .await
        .expect("delete the durable");
    let restarts = eventually(LONG, "a route restart", || async {
        metric(
            &m.metrics().await,
            r#"mqfn_route_restarts_total{route="r"}"#,
        )
        .filter(|n| *n >= 1.0)
    })
    .await;
    assert_eq!(restarts, 1.0, "one deletion, one restart");
    let status = m.status().await;
    let route = &status["routes"][0];
    assert_eq!(route["restarts"], 1, "{route}");
    let reason = route["last_error"]["message"].as_str().unwrap_or_default();
    assert!(reason.contains("was deleted"), "{route}");

    // Bound anew: the durable exists again and new messages flow.
    eventually(LONG, "the durable bound anew", || async {
        stream.consumer_info(&bed.p).await.ok()
    })
    .await;
    m.wait_ready(LONG).await;
    bed.publish(10, |i| format!("after-{i}")).await;
    let outs = common::js_read_at_least(&bed.js, &bed.s, &format!("{}.out", bed.p), 20, LONG).await;
    let after = outs
        .iter()
        .filter(|o| o.payload.starts_with(b"after-"))
        .count();
    assert!(after >= 10, "{after} of the 10 new messages came through");
}
