//! The process instances: how they are started, stopped and checked
//! ([`ProcessSpawner`], the pool's [`Spawn`]), how their stderr is logged,
//! and one request/response exchange with a running [`Process`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqfn_handlers::{HandlerError, Message};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tracing::{info, warn};

use super::frame::{put_frame, read_frame, snippet, ExchangeError, RequestHeader, ResponseHeader};
use super::{MAX_HEADER_BYTES, MAX_LOG_LINE, MAX_OUTPUT_BYTES, STOP_GRACE};
use crate::config::ProcessConfig;
use crate::pool::instances::Spawn;

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
    pub(super) async fn exchange(
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

#[cfg(test)]
mod tests {
    use super::*;

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
