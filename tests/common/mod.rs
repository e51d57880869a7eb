//! Helpers shared by the integration tests: random names, a running
//! `mqfn` process, and the CLI.
//!
//! Hosts come from env vars with localhost defaults: `NATS_URL`,
//! `KAFKA_BOOTSTRAP`, `AMQP_URL`.
#![allow(dead_code)]

use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The mqfn binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_mqfn");

/// A name unique to this run: `prefix_` + 10 random hex digits.
pub fn rand_name(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &id[..10])
}

/// The NATS server for tests.
pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// The Kafka bootstrap for tests.
pub fn kafka_bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// The AMQP URL for tests.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Writes `text` to a fresh temp config file and returns its path (kept
/// alive with the returned guard).
pub fn write_config(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("mqfn.toml");
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .expect("write config");
    (dir, path)
}

/// Runs the CLI with `args` and returns its output.
pub fn cli(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run mqfn")
}

/// A running `mqfn run`.
pub struct Mqfn {
    child: Option<Child>,
    /// Extra arguments of `mqfn run`.
    args: Vec<String>,
    /// `RUST_LOG` for it (default: `$MQFN_TEST_LOG`, else `info`).
    log_filter: Option<String>,
    /// `127.0.0.1:PORT` of the admin listener.
    pub admin: String,
    /// Where its log goes.
    pub log: PathBuf,
    _dir: tempfile::TempDir,
    /// The config file.
    pub config: PathBuf,
}

impl Mqfn {
    /// Starts `mqfn run` with this config text.
    pub fn start(config: &str) -> Self {
        Self::start_with(config, &[])
    }

    /// Starts `mqfn run ARGS` with this config text.
    pub fn start_with(config: &str, args: &[&str]) -> Self {
        let mut m = Self::prepare(config, args);
        m.spawn();
        m
    }

    /// Starts `mqfn run` with this config text and `RUST_LOG=filter`.
    pub fn start_logging(config: &str, filter: &str) -> Self {
        let mut m = Self::prepare(config, &[]);
        m.log_filter = Some(filter.to_owned());
        m.spawn();
        m
    }

    /// Writes the config and picks the admin port; starts nothing.
    fn prepare(config: &str, args: &[&str]) -> Self {
        let (dir, path) = write_config(config);
        let admin = format!("127.0.0.1:{}", free_port());
        let log = dir.path().join("mqfn.log");
        Self {
            child: None,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            log_filter: None,
            admin,
            log,
            _dir: dir,
            config: path,
        }
    }

    /// Starts the process again with the same config and admin address.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(&self.config)
            .args(["--admin", &self.admin])
            .args(&self.args)
            .env(
                "RUST_LOG",
                self.log_filter.clone().unwrap_or_else(|| {
                    std::env::var("MQFN_TEST_LOG").unwrap_or_else(|_| "info".into())
                }),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn mqfn run");
        self.child = Some(child);
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// GETs an admin path; `None` when the listener does not answer.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let resp = reqwest::get(format!("http://{}{path}", self.admin))
            .await
            .ok()?;
        let code = resp.status().as_u16();
        Some((code, resp.text().await.ok()?))
    }

    /// Waits until `/readyz` answers 200, or panics with the log after `limit`.
    pub async fn wait_ready(&self, limit: Duration) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some((200, _)) = self.get("/readyz").await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("mqfn not ready within {limit:?}; log:\n{}", self.log_text());
    }

    /// GETs an admin path, waiting (bounded) for the listener to answer.
    pub async fn get_ok(&self, path: &str) -> String {
        let start = Instant::now();
        loop {
            if let Some((200, body)) = self.get(path).await {
                return body;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{path} did not answer; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `/status` as JSON.
    pub async fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.get_ok("/status").await).expect("status is JSON")
    }

    /// `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.get_ok("/metrics").await
    }

    /// Sends a signal (`libc` names: 15 = TERM, 9 = KILL).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit and returns its status.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let start = Instant::now();
        loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                self.child = None;
                return s;
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                panic!(
                    "mqfn did not exit within {limit:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Replaces the config file's contents at once (a new file renamed
    /// over the old), as editors save: a reader never sees half of it.
    pub fn rewrite_config(&self, text: &str) {
        let tmp = self.config.with_extension("toml.new");
        std::fs::write(&tmp, text).expect("write the new config");
        std::fs::rename(&tmp, &self.config).expect("replace the config");
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Mqfn {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` every 100 ms until it returns `Some`, or panics with
/// `what` after `limit`. A bound for a hung test, not a timing assertion.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "gave up after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads one Prometheus sample: `name{labels}` exactly as rendered, e.g.
/// `mqfn_dead_letters_total{route="r"}`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.trim().parse().ok())
    })
}

/// `mqfn_handler_invocations_total` of `handler` ending in `result`.
pub fn invocations(metrics: &str, handler: &str, result: &str) -> Option<f64> {
    metric(
        metrics,
        &format!("mqfn_handler_invocations_total{{handler=\"{handler}\",result=\"{result}\"}}"),
    )
}

/// Kills `m` with SIGKILL three times, each after that process finished
/// between 1,500 and 2,520 messages (a random point, so runs differ), and
/// restarts it. Returns the messages in flight at each kill.
pub async fn kill_three_times(m: &mut Mqfn, limit: Duration) -> Vec<u64> {
    let mut kills = Vec::new();
    for _ in 0..3 {
        let target = 1500 + u64::from(uuid::Uuid::new_v4().as_bytes()[0]) * 4;
        let inflight = eventually(limit, "progress before the kill", || async {
            let (_, s) = m.get("/status").await?;
            let v: serde_json::Value = serde_json::from_str(&s).ok()?;
            let r = &v["routes"][0];
            let done = r["succeeded"].as_u64()? + r["dead_lettered"].as_u64()?;
            (done >= target).then(|| r["inflight"].as_u64().unwrap_or(0))
        })
        .await;
        m.kill();
        kills.push(inflight);
        m.spawn();
    }
    kills
}

/// A fresh random prefix `p`, and a JetStream stream `P` (upper case)
/// capturing `p.>` on the test server.
pub async fn js_stream(prefix: &str) -> (String, String, async_nats::jetstream::Context) {
    let p = rand_name(prefix);
    let s = p.to_uppercase();
    let js = async_nats::jetstream::new(
        async_nats::connect(nats_url())
            .await
            .expect("connect to NATS"),
    );
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: s.clone(),
        subjects: vec![format!("{p}.>")],
        ..Default::default()
    })
    .await
    .expect("create stream");
    (p, s, js)
}

/// The crash test's accounting, printed and checked: every input id
/// `0..n` has a result or a dead letter, the ten poison messages are
/// dead-lettered, and the duplicates stay within what was in flight at the
/// kills plus what was fetched but not started (32 each). `outs` and `dlq`
/// count the copies seen of each id.
pub fn assert_crash_accounting(
    n: usize,
    outs: &std::collections::BTreeMap<String, usize>,
    dlq: &std::collections::BTreeMap<String, usize>,
    kills: &[u64],
) {
    let dup_out: usize = outs.values().map(|c| c - 1).sum();
    let dup_dlq: usize = dlq.values().map(|c| c - 1).sum();
    let dups = dup_out + dup_dlq;
    println!(
        "crash accounting: {n} in; {} results + {} dead letters; duplicates {dup_out} + {dup_dlq}; in flight at the kills: {kills:?}",
        outs.len(),
        dlq.len(),
    );
    for i in 0..n {
        let id = i.to_string();
        assert!(
            outs.contains_key(&id) || dlq.contains_key(&id),
            "input {id} was lost"
        );
    }
    assert_eq!(dlq.len(), 10, "the ten poison messages are dead-lettered");
    let bound: u64 = kills.iter().map(|k| k + 32).sum();
    assert!(
        dups as u64 <= bound,
        "duplicates {dups} exceed what was in flight ({bound})"
    );
}

/// The messages on `subject` in `stream` once there are at least `n`
/// (waiting up to `limit`), read as [`js_read`] does.
pub async fn js_read_at_least(
    js: &async_nats::jetstream::Context,
    stream: &str,
    subject: &str,
    n: usize,
    limit: Duration,
) -> Vec<async_nats::jetstream::Message> {
    eventually(limit, &format!("{n} messages on {subject}"), || async {
        let got = js_read(js, stream, subject).await;
        (got.len() >= n).then_some(got)
    })
    .await
}

/// Header `name` of a message read from a stream; panics when missing.
pub fn js_header(m: &async_nats::jetstream::Message, name: &str) -> String {
    m.headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.to_string())
        .unwrap_or_else(|| panic!("header {name} missing"))
}

/// Every message on `subject` in `stream` now, oldest first, read with an
/// ephemeral consumer that acknowledges nothing.
pub async fn js_read(
    js: &async_nats::jetstream::Context,
    stream: &str,
    subject: &str,
) -> Vec<async_nats::jetstream::Message> {
    use async_nats::jetstream::consumer;
    use futures::StreamExt;
    let c = js
        .get_stream(stream)
        .await
        .expect("stream")
        .create_consumer(consumer::pull::Config {
            filter_subject: subject.to_owned(),
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .expect("reader");
    let mut out = Vec::new();
    loop {
        let mut batch = c
            .fetch()
            .max_messages(2000)
            .messages()
            .await
            .expect("fetch");
        let before = out.len();
        while let Some(Ok(m)) = batch.next().await {
            out.push(m);
        }
        if out.len() == before {
            return out;
        }
    }
}

/// Hostile input, the same on every broker: a JSON handler behind a
/// `max_message_bytes` bound, four inputs it must dead-letter as permanent
/// and one it must take.
pub mod hostile {
    use std::collections::BTreeMap;

    /// The handler `tag`: adds `"ok": true` to a JSON object.
    pub const HANDLER: &str = "[handlers.tag]\nkind = \"builtin\"\nbuiltin = \"json-transform\"\noptions = { set = { ok = true } }\n";
    /// The route setting that makes the `oversized` case too large.
    pub const ROUTE: &str = "max_message_bytes = 1000";
    /// The result of the `good` case.
    pub const GOOD_RESULT: &str = r#"{"a":1,"ok":true}"#;

    /// Each case's name and payload; `good` is the only valid one.
    pub fn cases() -> Vec<(&'static str, Vec<u8>)> {
        vec![
            (
                "oversized",
                format!("{{\"pad\":\"{}\"}}", "z".repeat(2000)).into_bytes(),
            ),
            ("not-utf8", vec![0xff, 0xfe, 0x00, 0x7b]),
            ("malformed", b"{\"unterminated\": ".to_vec()),
            ("not-object", b"[1,2,3]".to_vec()),
            ("good", b"{\"a\":1}".to_vec()),
        ]
    }

    /// The payload of case `name`.
    pub fn original<'a>(cases: &'a [(&str, Vec<u8>)], name: &str) -> &'a [u8] {
        &cases
            .iter()
            .find(|(c, _)| *c == name)
            .unwrap_or_else(|| panic!("no case {name:?}"))
            .1
    }

    /// Checks the dead letters' reasons (`mqfn-error` by case): one for
    /// each bad case, naming what was wrong.
    pub fn assert_reasons(reasons: &BTreeMap<String, String>) {
        println!("{reasons:#?}");
        assert_eq!(reasons.len(), 4, "{reasons:?}");
        assert!(reasons["oversized"].contains("larger than max_message_bytes (1000)"));
        assert!(reasons["not-utf8"].contains("not valid JSON"));
        assert!(reasons["malformed"].contains("not valid JSON"));
        assert!(reasons["not-object"].contains("not an object"));
    }
}

/// Runs `mqfn validate` on `text`; returns (success, stderr, file path).
pub fn validate(text: &str) -> (bool, String, String) {
    let (_dir, path) = write_config(text);
    let out = cli(&["validate", "--config", path.to_str().unwrap()]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        path.display().to_string(),
    )
}

/// Asserts that `text` is refused with a line `FILE: KEY: ...` containing
/// every one of `needles`.
pub fn refused(text: &str, key: &str, needles: &[&str]) {
    let (ok, err, file) = validate(text);
    assert!(!ok, "accepted a bad config:\n{text}");
    let prefix = format!("{file}: {key}: ");
    assert!(
        err.lines()
            .any(|l| l.starts_with(&format!("error: {prefix}"))
                && needles.iter().all(|n| l.contains(n))),
        "no line `{prefix}...` containing {needles:?} in:\n{err}"
    );
}
