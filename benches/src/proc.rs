//! The measured processes: the baseline child and `mqfn run`, both spawned
//! by this binary and both read from `/proc` the same way.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::names::Names;
use crate::opts::{Broker, Options};
use crate::Result;

/// How long a consumer may take to report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a consumer may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// CPU seconds (user + system) used so far by `pid`.
pub fn cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("cannot read /proc/{pid}/stat: {e}"))?;
    // The command name may hold spaces: fields are counted after its ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("bad /proc stat line")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime 14 and stime 15 (1-based).
    let ticks = |i: usize| -> Result<f64> {
        f.get(i - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| format!("bad /proc/{pid}/stat field {i}"))
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(14)? + ticks(15)?) / hz)
}

/// A `Vm*` line of `/proc/<pid>/status`, in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no {field} in /proc/{pid}/status"))
}

/// Why a consumer did not start.
#[derive(Debug, Clone)]
pub enum StartError {
    /// This build cannot run it (e.g. the broker kind is not merged yet).
    Skipped(String),
    /// It should have started and did not.
    Failed(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Skipped(why) => write!(f, "skipped: {why}"),
            Self::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

/// A running consumer: the baseline child or `mqfn run`.
pub struct Consumer {
    child: Child,
    pid: u32,
    log: PathBuf,
    _dir: tempfile::TempDir,
    profiler: Option<Child>,
}

impl Consumer {
    /// Spawns `mqfn-bench baseline` and waits for its `ready` line.
    pub async fn baseline(
        opts: &Options,
        broker: Broker,
        names: &Names,
    ) -> Result<Self, StartError> {
        let dir = tempdir()?;
        let log = dir.path().join("baseline.log");
        let mut cmd = Command::new(&opts.bench_bin);
        cmd.args(["baseline", "--broker", broker.as_str(), "--id", &names.id])
            .args(["--window", &opts.window.to_string()])
            .env("NATS_URL", &opts.urls.nats)
            .env("KAFKA_BOOTSTRAP", &opts.urls.kafka)
            .env("AMQP_URL", &opts.urls.amqp)
            .stdout(Stdio::piped())
            .stderr(log_file(&log)?)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| StartError::Failed(format!("cannot run {:?}: {e}", opts.bench_bin)))?;
        let pid = child.id().unwrap_or_default();
        let stdout = child.stdout.take().ok_or_else(|| failed("no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(READY_TIMEOUT, lines.next_line()).await;
        let me = Self {
            child,
            pid,
            log,
            _dir: dir,
            profiler: None,
        };
        match ready {
            Ok(Ok(Some(l))) if l.trim() == "ready" => Ok(me),
            Ok(_) => Err(failed(format!(
                "the baseline exited before it was ready: {}",
                me.last_words()
            ))),
            Err(_) => Err(failed("the baseline was not ready within 60s")),
        }
    }

    /// Checks `config` with `mqfn validate`, spawns `mqfn run` on it and
    /// waits for `/readyz`. A config this build refuses, or a run that
    /// exits before it is ready, is [`StartError::Skipped`] with mqfn's own
    /// reason.
    pub async fn mqfn(opts: &Options, config: &str) -> Result<Self, StartError> {
        let dir = tempdir()?;
        let path = dir.path().join("mqfn.toml");
        std::fs::write(&path, config).map_err(|e| failed(format!("cannot write config: {e}")))?;
        validate(&opts.mqfn_bin, &path).await?;
        let admin = format!("127.0.0.1:{}", free_port()?);
        let log = dir.path().join("mqfn.log");
        let mut cmd = Command::new(&opts.mqfn_bin);
        cmd.arg("run")
            .arg("--config")
            .arg(&path)
            .args(["--admin", &admin])
            .stdout(Stdio::null())
            .stderr(log_file(&log)?)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|e| failed(format!("cannot run {:?}: {e}", opts.mqfn_bin)))?;
        let pid = child.id().unwrap_or_default();
        let mut me = Self {
            child,
            pid,
            log,
            _dir: dir,
            profiler: None,
        };
        let url = format!("http://{admin}/readyz");
        let start = Instant::now();
        while start.elapsed() < READY_TIMEOUT {
            if let Ok(Some(_)) = me.child.try_wait() {
                return Err(StartError::Skipped(format!(
                    "mqfn run exited at start: {}",
                    me.last_words()
                )));
            }
            if let Ok(r) = reqwest::get(&url).await {
                if r.status().is_success() {
                    return Ok(me);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(failed(format!(
            "mqfn was not ready within 60s: {}",
            me.last_words()
        )))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// CPU seconds used so far.
    pub fn cpu_secs(&self) -> Result<f64> {
        cpu_secs(self.pid)
    }

    /// Peak resident memory so far, KiB.
    pub fn peak_rss_kib(&self) -> Result<u64> {
        status_kib(self.pid, "VmHWM")
    }

    /// Resident memory now, KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        status_kib(self.pid, "VmRSS")
    }

    /// `Some(why)` once the process has exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!("exited ({status}): {}", self.last_words())),
            Ok(None) => None,
            Err(e) => Some(e.to_string()),
        }
    }

    /// The last meaningful line of its log: mqfn's error, or the panic.
    pub fn last_words(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        lines
            .iter()
            .rev()
            .find(|l| l.contains("error") || l.contains("panicked"))
            .or(lines.last())
            .map(|l| strip_ansi(l))
            .unwrap_or_else(|| "(no output)".to_owned())
    }

    /// Samples the process with `perf record --call-graph dwarf` into `out`
    /// until it stops.
    pub fn profile(&mut self, out: &Path) -> Result<()> {
        let child = Command::new("perf")
            .args([
                "record",
                "-F",
                "299",
                "--call-graph",
                "dwarf,16384",
                "-p",
                &self.pid.to_string(),
                "-o",
            ])
            .arg(out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run perf: {e}"))?;
        self.profiler = Some(child);
        Ok(())
    }

    /// SIGTERM, then SIGKILL if it has not exited within 20s.
    pub async fn stop(mut self) {
        if let Some(mut perf) = self.profiler.take() {
            if let Some(id) = perf.id() {
                // SAFETY: kill(2) on our own child's pid.
                unsafe {
                    libc::kill(id as libc::pid_t, libc::SIGINT);
                }
            }
            if tokio::time::timeout(STOP_TIMEOUT, perf.wait())
                .await
                .is_err()
            {
                let _ = perf.kill().await;
            }
        }
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        if tokio::time::timeout(STOP_TIMEOUT, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Runs `mqfn validate`; its complaint becomes the skip reason.
async fn validate(bin: &Path, config: &Path) -> Result<(), StartError> {
    let out = Command::new(bin)
        .arg("validate")
        .arg("--config")
        .arg(config)
        .output()
        .await
        .map_err(|e| failed(format!("cannot run {bin:?}: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr);
    let why = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    Err(StartError::Skipped(format!(
        "mqfn validate refused the config: {why}"
    )))
}

fn failed(why: impl Into<String>) -> StartError {
    StartError::Failed(why.into())
}

fn tempdir() -> Result<tempfile::TempDir, StartError> {
    tempfile::tempdir().map_err(|e| failed(format!("cannot make a temp dir: {e}")))
}

fn log_file(path: &Path) -> Result<std::fs::File, StartError> {
    std::fs::File::create(path).map_err(|e| failed(format!("cannot create {path:?}: {e}")))
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> Result<u16, StartError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| failed(format!("no free port: {e}")))
}

/// Removes terminal colour codes from a log line.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_cpu_and_memory() {
        let me = std::process::id();
        assert!(cpu_secs(me).unwrap() >= 0.0);
        assert!(status_kib(me, "VmHWM").unwrap() >= status_kib(me, "VmRSS").unwrap() / 2);
    }

    #[test]
    fn colour_codes_are_stripped() {
        assert_eq!(strip_ansi("\u{1b}[31mERROR\u{1b}[0m x"), "ERROR x");
    }
}
