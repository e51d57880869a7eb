//! `kind = "process"`: long-lived worker processes that speak the frame
//! protocol on stdin/stdout (see `docs/handlers.md`).
//!
//! Each instance runs one request at a time. An instance that exits, breaks
//! the protocol or runs past the deadline is killed and discarded, and its
//! message is retried ([`HandlerError::Crashed`], or retryable on timeout);
//! reads are bounded by the deadline, so mqfn never hangs on a process.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use mqfn_handlers::{Handler, HandlerError, Headers, Message, Output};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tracing::{info, warn};

use crate::config::ProcessConfig;
use crate::pool::instances::{InstancePool, Instances, Spawn};

/// The largest response header frame.
const MAX_HEADER_BYTES: usize = 1 << 20;
/// The largest output payload frame.
pub const MAX_OUTPUT_BYTES: usize = 64 << 20;
/// The longest stderr line logged as one event; longer lines are split.
const MAX_LOG_LINE: usize = 8 << 10;
/// How long a stopped process may take to exit after its stdin closes.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Why one request/response exchange failed. Every kind discards the
/// instance.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// Writing the request or reading the response failed.
    #[error("pipe error: {0}")]
    Io(#[from] std::io::Error),
    /// The process ended before it answered.
    #[error("the process exited ({0}) before answering")]
    Exited(String),
    /// The process answered with something that is not a valid response.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// The request header, as sent.
#[derive(Debug, Serialize)]
struct RequestHeader<'a> {
    id: &'a str,
    route: &'a str,
    subject: &'a str,
    key: Option<String>,
    headers: BTreeMap<&'a str, &'a str>,
    attempt: u32,
    deadline_ms: u64,
}

/// The response header, as received.
#[derive(Debug, Deserialize)]
struct ResponseHeader {
    id: String,
    status: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    outputs: Vec<OutputHeader>,
}

#[derive(Debug, Deserialize)]
struct OutputHeader {
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    key: Option<String>,
}

/// Starts processes for one handler.
pub struct ProcessSpawner {
    handler: String,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    cwd: Option<PathBuf>,
}

/// One running process.
pub struct Process {
    id: u64,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    requests: u64,
}

impl ProcessSpawner {
    /// Takes the allowlisted variables from mqfn's own environment now.
    pub fn new(handler: &str, cfg: &ProcessConfig) -> Self {
        let env = cfg
            .env
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| (k.clone(), v)))
            .collect();
        Self {
            handler: handler.to_owned(),
            argv: cfg.command.iter().chain(&cfg.args).cloned().collect(),
            env,
            cwd: cfg.cwd.clone(),
        }
    }
}

impl Spawn for ProcessSpawner {
    type Instance = Process;

    async fn spawn(&self, id: u64) -> Result<Process, HandlerError> {
        let (program, args) = self
            .argv
            .split_first()
            .ok_or_else(|| HandlerError::permanent("the handler has no command"))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        let mut child = cmd.spawn().map_err(|e| {
            warn!(handler = %self.handler, program = %program, error = %e, "Cannot start the handler process.");
            HandlerError::crashed(format!("cannot start {program:?}: {e}"))
        })?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(HandlerError::crashed("the process has no stdio pipes"));
        };
        tokio::spawn(log_stderr(self.handler.clone(), id, stderr));
        info!(handler = %self.handler, instance = id, pid = child.id().unwrap_or(0), "Process started.");
        Ok(Process {
            id,
            child,
            stdin,
            stdout: BufReader::new(stdout),
            requests: 0,
        })
    }

    fn healthy(&self, p: &mut Process) -> bool {
        matches!(p.child.try_wait(), Ok(None))
    }

    async fn stop(&self, mut p: Process) {
        // Closing stdin asks the SDK loop to exit 0; kill if it lingers.
        drop(p.stdin);
        match tokio::time::timeout(STOP_GRACE, p.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                let _ = p.child.kill().await;
            }
        }
    }
}

/// Logs the process's stderr line by line, tagged with handler and
/// instance. Reads until the process closes it.
async fn log_stderr(handler: String, instance: u64, stderr: tokio::process::ChildStderr) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        match read_line_bounded(&mut reader, &mut line, MAX_LOG_LINE).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\n', '\r']);
                info!(target: "mqfn::handler::stderr", handler = %handler, instance, "{text}");
                line.clear();
            }
        }
    }
}

/// Reads up to a newline or `max` bytes, whichever comes first.
async fn read_line_bounded<R: AsyncBufRead + Unpin>(
    r: &mut R,
    line: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<usize> {
    let mut read = 0;
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(read);
        }
        let room = max - line.len();
        let (take, done) = match buf.iter().take(room).position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len().min(room), buf.len() >= room),
        };
        line.extend_from_slice(&buf[..take]);
        r.consume(take);
        read += take;
        if done {
            return Ok(read);
        }
    }
}

impl Process {
    /// Sends one request and reads its response.
    async fn exchange(
        &mut self,
        msg: &Message,
        deadline: Instant,
    ) -> Result<(ResponseHeader, Vec<Bytes>), ExchangeError> {
        self.requests += 1;
        let id = format!("{}-{}", self.id, self.requests);
        let mut headers = BTreeMap::new();
        for (k, v) in msg.headers.iter() {
            headers.entry(k).or_insert(v);
        }
        let header = RequestHeader {
            id: &id,
            route: &msg.route,
            subject: &msg.subject,
            key: msg.key_str(),
            headers,
            attempt: msg.attempt,
            deadline_ms: deadline
                .saturating_duration_since(Instant::now())
                .as_millis()
                .try_into()
                .unwrap_or(u64::MAX),
        };
        let head =
            serde_json::to_vec(&header).map_err(|e| ExchangeError::Protocol(e.to_string()))?;
        let mut out = Vec::with_capacity(8 + head.len() + msg.payload.len());
        put_frame(&mut out, &head)?;
        put_frame(&mut out, &msg.payload)?;
        self.stdin.write_all(&out).await?;
        self.stdin.flush().await?;

        let head = match read_frame(&mut self.stdout, MAX_HEADER_BYTES, "response header").await {
            Err(ExchangeError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(ExchangeError::Exited(self.exit_status().await));
            }
            other => other?,
        };
        let resp: ResponseHeader = serde_json::from_slice(&head).map_err(|e| {
            ExchangeError::Protocol(format!(
                "the response header is not valid JSON ({e}): {}",
                snippet(&head)
            ))
        })?;
        if resp.id != id {
            return Err(ExchangeError::Protocol(format!(
                "response id {:?} does not match request id {id:?}",
                resp.id
            )));
        }
        let mut payloads = Vec::with_capacity(resp.outputs.len());
        for _ in &resp.outputs {
            payloads.push(read_frame(&mut self.stdout, MAX_OUTPUT_BYTES, "output payload").await?);
        }
        Ok((resp, payloads))
    }

    async fn exit_status(&mut self) -> String {
        match tokio::time::timeout(Duration::from_millis(200), self.child.wait()).await {
            Ok(Ok(status)) => status.to_string(),
            _ => "closed its stdout".to_owned(),
        }
    }
}

fn put_frame(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), ExchangeError> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| ExchangeError::Protocol("a frame is larger than 4 GiB".to_owned()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// Reads one frame of at most `max` bytes.
async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
    what: &str,
) -> Result<Bytes, ExchangeError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(ExchangeError::Protocol(format!(
            "{what} frame of {len} bytes is larger than the limit of {max}"
        )));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ExchangeError::Protocol(format!("the stream ended inside the {what} frame"))
        } else {
            e.into()
        }
    })?;
    Ok(buf.into())
}

/// The entry point of the `frame` fuzz target: decodes a response (header
/// frame, JSON header, one payload frame per output) from raw bytes, as
/// `exchange` reads it from a process. Any input must give a response or
/// an error, never a panic or an unbounded allocation.
#[doc(hidden)]
pub fn fuzz_decode(data: &[u8]) {
    futures::executor::block_on(async {
        let mut r = data;
        let Ok(head) = read_frame(&mut r, MAX_HEADER_BYTES, "response header").await else {
            return;
        };
        let Ok(resp) = serde_json::from_slice::<ResponseHeader>(&head) else {
            return;
        };
        for _ in &resp.outputs {
            if read_frame(&mut r, MAX_OUTPUT_BYTES, "output payload")
                .await
                .is_err()
            {
                return;
            }
        }
    });
}

fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(80)]);
    format!("{text:?}")
}

/// A process handler: a pool of processes.
pub struct ProcessHandler {
    name: String,
    pool: Arc<InstancePool<ProcessSpawner>>,
    timeout: Duration,
}

impl ProcessHandler {
    /// Builds the handler and its (empty) instance pool.
    pub fn new(name: &str, cfg: &ProcessConfig) -> Self {
        let spawner = ProcessSpawner::new(name, cfg);
        Self {
            name: name.to_owned(),
            pool: InstancePool::new(name, spawner, cfg.max_instances, cfg.idle_timeout),
            timeout: cfg.timeout,
        }
    }

    /// The instance pool, for scaling and shutdown.
    pub fn instances(&self) -> Arc<dyn Instances> {
        self.pool.clone()
    }
}

#[async_trait]
impl Handler for ProcessHandler {
    async fn call(&self, msg: &Message) -> Result<Vec<Output>, HandlerError> {
        let mut lease = self.pool.get().await?;
        let id = lease.id();
        // Under a route, the route's time limit drops this future at the
        // deadline, and dropping the unfinished lease kills the process.
        // Called directly, the handler's own timeout does the same.
        let (deadline, own_limit) = match msg.deadline {
            Some(d) => (d, None),
            None => {
                let d = Instant::now() + self.timeout;
                (d, Some(tokio::time::Instant::from_std(d)))
            }
        };
        let exchange = lease.instance().exchange(msg, deadline);
        let result = match own_limit {
            Some(limit) => tokio::time::timeout_at(limit, exchange).await,
            None => Ok(exchange.await),
        };
        let (resp, payloads) = match result {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                warn!(handler = %self.name, instance = id, error = %e, "Instance failed; it is replaced and the message retried.");
                return Err(HandlerError::crashed(format!("instance {id}: {e}")));
            }
            Err(_) => {
                warn!(handler = %self.name, instance = id, "Instance ran past the deadline; killing it.");
                return Err(HandlerError::retryable(format!(
                    "instance {id} did not answer before the deadline and was killed"
                )));
            }
        };
        if !matches!(resp.status.as_str(), "ok" | "retry" | "fail") {
            warn!(handler = %self.name, instance = id, status = %resp.status, "Unknown response status; the instance is replaced.");
            return Err(HandlerError::crashed(format!(
                "instance {id}: protocol error: unknown status {:?}",
                resp.status
            )));
        }
        lease.finish();
        match resp.status.as_str() {
            "ok" => Ok(resp
                .outputs
                .into_iter()
                .zip(payloads)
                .map(|(h, payload)| Output {
                    payload,
                    headers: h.headers.into_iter().collect::<Headers>(),
                    key: h.key.map(Bytes::from),
                })
                .collect()),
            "retry" => {
                Err(HandlerError::retryable(resp.error.unwrap_or_else(|| {
                    "the handler asked for a retry".to_owned()
                })))
            }
            _ => Err(HandlerError::permanent(
                resp.error
                    .unwrap_or_else(|| "the handler failed".to_owned()),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flaky(timeout: Duration, idle: Duration) -> ProcessHandler {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/handlers/examples/flaky.py");
        let cfg = ProcessConfig {
            command: vec!["python3".into(), script.into()],
            args: vec![],
            env: crate::config::DEFAULT_PROCESS_ENV
                .iter()
                .map(|s| s.to_string())
                .collect(),
            cwd: None,
            timeout,
            max_instances: 2,
            idle_timeout: idle,
        };
        ProcessHandler::new("flaky", &cfg)
    }

    fn msg(payload: &str) -> Message {
        let mut m = Message::new(payload.to_owned());
        m.headers.append("h", "v");
        m
    }

    #[tokio::test]
    async fn instances_are_reused_and_broken_ones_replaced() {
        let h = flaky(Duration::from_secs(10), Duration::from_secs(60));
        for i in 0..5 {
            let out = h.call(&msg(&format!("hello {i}"))).await.unwrap();
            assert_eq!(out[0].payload, format!("hello {i}"));
        }
        let c = h.instances().counts();
        assert_eq!((c.cold_starts, c.warm_starts, c.live), (1, 4, 1), "{c:?}");

        let exit = h.call(&msg("exit")).await.unwrap_err();
        assert!(matches!(exit, HandlerError::Crashed { .. }), "{exit:?}");
        assert!(exit.to_string().contains("exited"), "{exit}");
        let garbage = h.call(&msg("garbage")).await.unwrap_err();
        assert!(
            matches!(garbage, HandlerError::Crashed { .. }),
            "{garbage:?}"
        );
        assert_eq!(
            h.instances().counts().live,
            0,
            "broken instances are discarded"
        );

        assert_eq!(h.call(&msg("again")).await.unwrap()[0].payload, "again");
        let perm = h.call(&msg("permanent")).await.unwrap_err();
        assert!(!perm.is_retryable());
        let retry = h.call(&msg("retry")).await.unwrap_err();
        assert!(matches!(retry, HandlerError::Retryable { .. }));
        let c = h.instances().counts();
        assert_eq!((c.cold_starts, c.live), (3, 1), "{c:?}");
        h.instances().close().await;
        assert_eq!(h.instances().counts().live, 0);
    }

    #[tokio::test]
    async fn a_process_past_its_deadline_is_killed_and_replaced() {
        let h = flaky(Duration::from_secs(2), Duration::from_secs(60));
        let err = h.call(&msg("sleep:30")).await.unwrap_err();
        assert!(
            err.is_retryable() && err.to_string().contains("killed"),
            "{err}"
        );
        assert_eq!(h.instances().counts().live, 0);
        assert_eq!(h.call(&msg("ok")).await.unwrap()[0].payload, "ok");
        assert_eq!(h.instances().counts().cold_starts, 2);
    }

    #[tokio::test]
    async fn dropping_the_call_discards_the_instance() {
        let h = flaky(Duration::from_secs(30), Duration::from_secs(60));
        let m = msg("sleep:30");
        let call = h.call(&m);
        assert!(tokio::time::timeout(Duration::from_millis(500), call)
            .await
            .is_err());
        let c = h.instances().counts();
        assert_eq!((c.live, c.busy), (0, 0), "{c:?}");
    }

    #[tokio::test]
    async fn idle_instances_are_reaped_and_parking_stops_them_all() {
        let h = flaky(Duration::from_secs(10), Duration::from_millis(200));
        h.call(&msg("a")).await.unwrap();
        assert_eq!(h.instances().counts().live, 1);
        let gone = tokio::time::timeout(Duration::from_secs(10), async {
            while h.instances().counts().live > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(gone.is_ok(), "the reaper stops idle instances");

        let h = flaky(Duration::from_secs(10), Duration::from_secs(600));
        let i = h.instances();
        i.attach();
        h.call(&msg("a")).await.unwrap();
        assert_eq!(i.reap().await, 0, "not idle for long enough");
        i.park(true);
        assert_eq!(i.reap().await, 1, "scaled to zero: stopped");
        i.park(false);
        h.call(&msg("b")).await.unwrap();
        assert_eq!(i.counts().cold_starts, 2, "activation is a cold start");
    }

    #[tokio::test]
    async fn a_missing_program_is_a_crash_not_a_hang() {
        let cfg = ProcessConfig {
            command: vec!["/no/such/program".into()],
            args: vec![],
            env: vec![],
            cwd: None,
            timeout: Duration::from_secs(5),
            max_instances: 1,
            idle_timeout: Duration::from_secs(5),
        };
        let h = ProcessHandler::new("missing", &cfg);
        let err = h.call(&Message::new("x")).await.unwrap_err();
        assert!(matches!(err, HandlerError::Crashed { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn only_allowlisted_variables_reach_the_process() {
        std::env::set_var("MQFN_TEST_SECRET", "s3cret");
        std::env::set_var("MQFN_TEST_SHOWN", "shown");
        let cfg = ProcessConfig {
            command: vec![
                "python3".into(),
                "-c".into(),
                "import os,sys; print(sorted(k for k in os.environ if k.startswith('MQFN_TEST')), file=sys.stderr); sys.exit(3)".into(),
            ],
            args: vec![],
            env: vec!["PATH".into(), "MQFN_TEST_SHOWN".into()],
            cwd: None,
            timeout: Duration::from_secs(5),
            max_instances: 1,
            idle_timeout: Duration::from_secs(5),
        };
        let spawner = ProcessSpawner::new("env", &cfg);
        let names: Vec<_> = spawner.env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["PATH", "MQFN_TEST_SHOWN"]);
    }

    #[tokio::test]
    async fn long_stderr_lines_are_split() {
        let data = vec![b'x'; 20_000];
        let mut r = BufReader::new(&data[..]);
        let mut line = Vec::new();
        assert_eq!(
            read_line_bounded(&mut r, &mut line, 8192).await.unwrap(),
            8192
        );
        line.clear();
        let data = b"a\nb";
        let mut r = BufReader::new(&data[..]);
        assert_eq!(read_line_bounded(&mut r, &mut line, 8192).await.unwrap(), 2);
        assert_eq!(line, b"a\n");
    }
}
