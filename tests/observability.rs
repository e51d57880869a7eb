//! Metrics, status and logs of a running mqfn, against the real NATS server.

mod common;

use std::time::Duration;

use async_nats::jetstream;
use common::{eventually, metric, nats_url, rand_name, Mqfn};

const LONG: Duration = Duration::from_secs(120);

/// The `# TYPE` of every metric in `/metrics`.
fn types(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, t)| (n.to_owned(), t.to_owned()))
        .collect()
}

#[tokio::test]
async fn metrics_match_what_was_sent() {
    let (p, s, js) = common::js_stream("obs").await;
    for i in 0..7 {
        let body = if i < 5 {
            format!("ok {i}")
        } else {
            "permanent:bad".to_owned()
        };
        js.publish(format!("{p}.in"), body.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    for _ in 0..3 {
        js.publish(format!("{p}.orphan-in"), "x".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let orphan = rand_name("nowhere");
    let cfg = format!(
        r#"
[brokers.js]
kind = "nats"
url = "{url}"

[[routes]]
name = "main"
source = {{ broker = "js", subject = "{p}.in", stream = "{s}", durable = "{p}-main" }}
handler = "fail"
output = {{ broker = "js", subject = "{p}.out" }}
dead_letter = {{ broker = "js", subject = "{p}.dlq" }}
workers = {{ min = 1, max = 4, scale_interval = "100ms" }}

[[routes]]
name = "orphan"
source = {{ broker = "js", subject = "{p}.orphan-in", stream = "{s}", durable = "{p}-orphan" }}
handler = "echo"
output = {{ broker = "js", subject = "{orphan}.out" }}
dead_letter = {{ broker = "js", subject = "{p}.dlq" }}
workers = {{ min = 1, max = 1, scale_interval = "100ms" }}
"#,
        url = nats_url()
    );
    let m = Mqfn::start(&cfg);
    let text = eventually(LONG, "all 7 messages settled", || async {
        let t = m.metrics().await;
        let ok = metric(
            &t,
            r#"mqfn_messages_settled_total{route="main",outcome="ok"}"#,
        )?;
        let dl = metric(
            &t,
            r#"mqfn_messages_settled_total{route="main",outcome="dead_lettered"}"#,
        )?;
        let errors = metric(&t, r#"mqfn_publish_errors_total{broker="js"}"#)?;
        (ok == 5.0 && dl == 2.0 && errors >= 3.0).then_some(t)
    })
    .await;
    // Counts match what was sent.
    assert_eq!(
        metric(&text, r#"mqfn_messages_received_total{route="main"}"#),
        Some(7.0)
    );
    assert_eq!(
        metric(&text, r#"mqfn_dead_letters_total{route="main"}"#),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &text,
            r#"mqfn_handler_invocations_total{handler="fail",result="ok"}"#
        ),
        Some(5.0)
    );
    assert_eq!(
        metric(
            &text,
            r#"mqfn_handler_invocations_total{handler="fail",result="fail"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &text,
            r#"mqfn_handler_duration_seconds_count{handler="fail"}"#
        ),
        Some(7.0)
    );
    let billed = metric(
        &text,
        r#"mqfn_handler_billed_seconds_total{handler="fail"}"#,
    )
    .unwrap();
    assert!(
        billed >= 0.007,
        "at least 1 ms billed per invocation: {billed}"
    );
    assert!(metric(&text, r#"mqfn_messages_redelivered_total{route="orphan"}"#).unwrap() >= 3.0);
    // Gauges are sampled by the scaler; wait for one sample after settling.
    let text = eventually(LONG, "gauges", || async {
        let t = m.metrics().await;
        metric(&t, r#"mqfn_workers_desired{route="main"}"#).map(|_| t)
    })
    .await;
    assert_eq!(metric(&text, r#"mqfn_broker_up{broker="js"}"#), Some(1.0));
    assert!(metric(&text, r#"mqfn_backlog_messages{route="main"}"#).is_some());
    assert!(metric(&text, r#"mqfn_oldest_inflight_age_seconds{route="main"}"#).is_some());
    assert!(metric(&text, r#"mqfn_workers{route="main",state="busy"}"#).is_some());
    assert!(metric(&text, r#"mqfn_workers{route="main",state="idle"}"#).is_some());
    // Types follow the catalogue in docs/metrics.md.
    let t = types(&text);
    for (name, kind) in [
        ("mqfn_messages_received_total", "counter"),
        ("mqfn_messages_settled_total", "counter"),
        ("mqfn_messages_redelivered_total", "counter"),
        ("mqfn_handler_invocations_total", "counter"),
        ("mqfn_handler_duration_seconds", "histogram"),
        ("mqfn_handler_billed_seconds_total", "counter"),
        ("mqfn_dead_letters_total", "counter"),
        ("mqfn_publish_errors_total", "counter"),
        ("mqfn_backlog_messages", "gauge"),
        ("mqfn_oldest_inflight_age_seconds", "gauge"),
        ("mqfn_workers", "gauge"),
        ("mqfn_workers_desired", "gauge"),
        ("mqfn_broker_up", "gauge"),
    ] {
        assert_eq!(t.get(name).map(String::as_str), Some(kind), "{name}");
    }
    // Every mqfn metric is documented.
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md")).unwrap();
    for name in t.keys().filter(|n| n.starts_with("mqfn_")) {
        assert!(
            doc.contains(&format!("`{name}`")),
            "{name} is not in docs/metrics.md"
        );
    }
    // /status agrees.
    let s = m.status().await;
    let main = &s["routes"][0];
    assert_eq!(main["name"], "main");
    assert_eq!(main["received"], 7);
    assert_eq!(main["dead_lettered"], 2);
    assert_eq!(main["workers"]["max"], 4);
    assert!(main["last_error"]["message"]
        .as_str()
        .unwrap()
        .contains("bad"));
}

#[tokio::test]
async fn secrets_stay_out_of_logs_and_status() {
    let secret = "s3cr3t-pa55";
    // The server accepts any credentials; the password must still never show.
    let url = nats_url().replacen("nats://", &format!("nats://mqfn:{secret}@"), 1);
    let p = rand_name("sec");
    let cfg = format!(
        r#"
[brokers.js]
kind = "nats"
url = "{url}"

[brokers.down]
kind = "nats"
url = "nats://user:{secret}@127.0.0.1:1"

[[routes]]
name = "r"
source = {{ broker = "js", subject = "{p}.in" }}
handler = "echo"

[[routes]]
name = "unreachable"
source = {{ broker = "down", subject = "{p}.in" }}
handler = "echo"
"#
    );
    // At debug, so that the reconnect attempts summed up at warn are in
    // the log too, where a secret could leak.
    let mut m = Mqfn::start_logging(&cfg, "warn,mqfn=debug");
    eventually(LONG, "the route on the reachable broker", || async {
        let s = m.status().await;
        s["routes"][0]["subscribed"].as_bool()?.then_some(())
    })
    .await;
    let status = m.get_ok("/status").await;
    // The unreachable broker's reconnect attempts are in the log, so that
    // the checks below see what they print.
    eventually(
        LONG,
        "reconnect attempts on the unreachable broker",
        || async {
            let log = m.log_text();
            let attempts = log
                .lines()
                .filter(|l| l.contains("NATS connection event") && l.contains("\"down\""))
                .count();
            (attempts >= 3).then_some(())
        },
    )
    .await;
    m.signal("TERM");
    m.wait_exit(LONG);
    let log = m.log_text();
    assert!(log.contains("Connected to NATS"), "the log is real:\n{log}");
    assert!(
        !log.contains(secret),
        "a secret leaked into the log:\n{log}"
    );
    assert!(
        log.contains("mqfn:***@"),
        "URLs are logged redacted:\n{log}"
    );
    assert!(
        !status.contains(secret),
        "a secret leaked into /status: {status}"
    );
}

#[tokio::test]
async fn json_logs_are_json() {
    let cfg = "[admin]\nlisten = \"127.0.0.1:0\"\n";
    let (_dir, path) = common::write_config(cfg);
    let out = std::process::Command::new(common::BIN)
        .args(["--log-format", "json", "publish", "--config"])
        .arg(&path)
        .args(["--broker", "nope", "--to", "x", "hi"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--broker \"nope\" is not in [brokers]"),
        "{err}"
    );
    // A run that logs: every log line parses as a JSON object.
    let p = rand_name("json");
    let cfg = format!(
        "[brokers.js]\nkind = \"nats\"\nurl = \"{}\"\n[[routes]]\nname = \"r\"\nsource = {{ broker = \"js\", subject = \"{p}.in\" }}\nhandler = \"echo\"\n",
        nats_url()
    );
    let (_dir, path) = common::write_config(&cfg);
    let admin = format!("127.0.0.1:{}", common::free_port());
    let child = std::process::Command::new(common::BIN)
        .args(["--log-format", "json", "run", "--config"])
        .arg(&path)
        .args(["--admin", &admin])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    eventually(LONG, "ready", || async {
        let r = reqwest::get(format!("http://{admin}/readyz")).await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    std::process::Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 3, "{text}");
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{l}");
    }
}

#[tokio::test]
async fn instance_metrics_for_process_handlers() {
    let p = rand_name("inst");
    let s = p.to_uppercase();
    let root = env!("CARGO_MANIFEST_DIR");
    let cfg = format!(
        r#"
[brokers.js]
kind = "nats"
url = "{url}"
[[brokers.js.streams]]
name = "{s}"
subjects = ["{p}.>"]

[handlers.noop]
kind = "process"
command = ["python3", "{root}/handlers/examples/noop.py"]
max_instances = 2

[[routes]]
name = "proc"
source = {{ broker = "js", subject = "{p}.in", stream = "{s}" }}
handler = "noop"
output = {{ broker = "js", subject = "{p}.out" }}
dead_letter = {{ broker = "js", subject = "{p}.dlq" }}
workers = {{ min = 1, max = 2, scale_interval = "100ms" }}
"#,
        url = nats_url()
    );
    let m = Mqfn::start(&cfg);
    m.wait_ready(LONG).await;
    let js = jetstream::new(async_nats::connect(nats_url()).await.unwrap());
    for i in 0..20 {
        js.publish(format!("{p}.in"), format!("n{i}").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let text = eventually(LONG, "20 settled and the gauges sampled", || async {
        let t = m.metrics().await;
        let ok = metric(
            &t,
            r#"mqfn_messages_settled_total{route="proc",outcome="ok"}"#,
        )?;
        metric(&t, r#"mqfn_instances{handler="noop",state="warm"}"#)?;
        (ok == 20.0).then_some(t)
    })
    .await;
    let cold = metric(&text, r#"mqfn_cold_starts_total{handler="noop"}"#).unwrap();
    let warm = metric(&text, r#"mqfn_warm_starts_total{handler="noop"}"#).unwrap();
    assert!(
        (1.0..=2.0).contains(&cold),
        "at most max_instances cold starts: {cold}"
    );
    assert_eq!(
        cold + warm,
        20.0,
        "every invocation is a cold or a warm start"
    );
    let t = types(&text);
    assert_eq!(t.get("mqfn_instances").map(String::as_str), Some("gauge"));
    assert_eq!(
        t.get("mqfn_cold_starts_total").map(String::as_str),
        Some("counter")
    );
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md")).unwrap();
    for name in t.keys().filter(|n| n.starts_with("mqfn_")) {
        assert!(
            doc.contains(&format!("`{name}`")),
            "{name} is not in docs/metrics.md"
        );
    }
}

/// Every family of the catalogue that applies to a route is exported before
/// its first message, at 0 where it counts: `increase()` in an alert rule
/// (deploy/prometheus/alerts.yml) misses the first event of a series that
/// appears with it, and a dashboard panel on a missing series shows "No
/// data".
#[tokio::test]
async fn every_family_is_exported_from_start() {
    let (p, s, _js) = common::js_stream("start").await;
    let noop = concat!(env!("CARGO_MANIFEST_DIR"), "/handlers/examples/noop.py");
    let cfg = format!(
        r#"
[brokers.js]
kind = "nats"
url = "{url}"

[handlers.noop]
kind = "process"
command = ["python3", "{noop}"]

[[routes]]
name = "idle"
source = {{ broker = "js", subject = "{p}.in", stream = "{s}", durable = "{p}-idle" }}
handler = "noop"
output = {{ broker = "js", subject = "{p}.out" }}
dead_letter = {{ broker = "js", subject = "{p}.dlq" }}
workers = {{ min = 0, max = 3, scale_interval = "100ms" }}
"#,
        url = nats_url()
    );
    let m = Mqfn::start(&cfg);
    m.wait_ready(LONG).await;
    let text = eventually(LONG, "the first gauge sample", || async {
        let t = m.metrics().await;
        metric(&t, r#"mqfn_workers_desired{route="idle"}"#).map(|_| t)
    })
    .await;
    let zero = [
        r#"mqfn_messages_received_total{route="idle"}"#,
        r#"mqfn_messages_settled_total{route="idle",outcome="ok"}"#,
        r#"mqfn_messages_settled_total{route="idle",outcome="dead_lettered"}"#,
        r#"mqfn_messages_redelivered_total{route="idle"}"#,
        r#"mqfn_retries_total{route="idle"}"#,
        r#"mqfn_dead_letters_total{route="idle"}"#,
        r#"mqfn_route_restarts_total{route="idle"}"#,
        r#"mqfn_publish_errors_total{broker="js"}"#,
        r#"mqfn_handler_invocations_total{handler="noop",result="ok"}"#,
        r#"mqfn_handler_invocations_total{handler="noop",result="timeout"}"#,
        r#"mqfn_handler_billed_seconds_total{handler="noop"}"#,
        r#"mqfn_cold_starts_total{handler="noop"}"#,
        r#"mqfn_warm_starts_total{handler="noop"}"#,
        r#"mqfn_instances{handler="noop",state="warm"}"#,
        r#"mqfn_instances{handler="noop",state="busy"}"#,
        r#"mqfn_workers{route="idle",state="busy"}"#,
        r#"mqfn_workers{route="idle",state="idle"}"#,
        r#"mqfn_oldest_inflight_age_seconds{route="idle"}"#,
        r#"mqfn_backlog_messages{route="idle"}"#,
    ];
    for series in zero {
        assert_eq!(metric(&text, series), Some(0.0), "{series} in:\n{text}");
    }
    assert_eq!(
        metric(&text, r#"mqfn_workers_max{route="idle"}"#),
        Some(3.0)
    );
    assert_eq!(metric(&text, r#"mqfn_broker_up{broker="js"}"#), Some(1.0));
    // Every family of the catalogue but those of one kind of source: the
    // Kafka lag, and the triggers' (tests/http.rs, tests/schedule.rs).
    let catalogue =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md")).unwrap();
    let t = types(&text);
    for line in catalogue.lines().filter(|l| l.starts_with("| `mqfn_")) {
        let name = line.split('`').nth(1).unwrap();
        if ["mqfn_kafka_", "mqfn_http_", "mqfn_schedule_"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            continue;
        }
        assert!(
            t.contains_key(name),
            "{name} is not exported from start:\n{text}"
        );
    }
}

/// With its Kafka cluster unreachable, mqfn logs the outage once, not once
/// per client per reconnect attempt (it was about 60 warnings a second), and
/// its log, written to a file, has no colour codes.
#[tokio::test]
async fn an_unreachable_kafka_is_logged_once_per_outage() {
    let (_dir, path) = common::write_config(
        r#"
[brokers.k]
kind = "kafka"
bootstrap = "127.0.0.1:1"

[[routes]]
name = "r"
source = { broker = "k", topic = "in" }
handler = "echo"
dead_letter = { broker = "k", topic = "in.dlq" }
"#,
    );
    let log = path.with_file_name("mqfn.log");
    let start = std::time::Instant::now();
    let mut child = std::process::Command::new(common::BIN)
        .args(["run", "--config"])
        .arg(&path)
        .args(["--admin", &format!("127.0.0.1:{}", common::free_port())])
        // Suppressed complaints are still logged at debug: the test counts
        // them to know that many came.
        .env("RUST_LOG", "warn,mqfn=debug")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn mqfn run");
    let text = eventually(LONG, "100 suppressed Kafka complaints", || async {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        let suppressed = t
            .lines()
            .filter(|l| l.contains("Kafka client error."))
            .count();
        (suppressed >= 100).then_some(t)
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let warned = |needle: &str| {
        text.lines()
            .filter(|l| l.contains("WARN") && l.contains(needle))
            .count()
    };
    // The outage's first complaint (a connect failure or a client error,
    // whichever came first), then a summary per minute at most.
    let summaries = warned("Kafka client errors go on") + warned("Kafka still unreachable");
    assert_eq!(warned("mqfn::brokers::kafka") - summaries, 1, "{text}");
    let minutes = start.elapsed().as_secs() / 60;
    assert!(summaries as u64 <= minutes + 1, "{text}");
    assert!(!text.contains('\u{1b}'), "colour codes in a file: {text}");
}
