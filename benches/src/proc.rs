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
    Ok(stat_of(pid)?.cpu_secs())
}

/// What `/proc/<pid>/stat` says of a process's parent and CPU.
struct Stat {
    ppid: u32,
    /// utime + stime, ticks.
    own: f64,
    /// cutime + cstime: the children it has waited for, ticks.
    reaped: f64,
}

impl Stat {
    fn cpu_secs(&self) -> f64 {
        self.own / clock_ticks()
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

fn stat_of(pid: u32) -> Result<Stat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("cannot read /proc/{pid}/stat: {e}"))?;
    // The command name may hold spaces: fields are counted after its ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("bad /proc stat line")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, ppid 4, utime 14, stime 15, cutime
    // 16, cstime 17 (1-based).
    let field = |i: usize| -> Result<f64> {
        f.get(i - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| format!("bad /proc/{pid}/stat field {i}"))
    };
    Ok(Stat {
        ppid: field(4)? as u32,
        own: field(14)? + field(15)?,
        reaped: field(16)? + field(17)?,
    })
}

/// CPU seconds of `pid` and every process under it: live descendants
/// (process handlers) and those it has already waited for.
pub fn tree_cpu_secs(pid: u32) -> Result<f64> {
    let root = stat_of(pid)?;
    let mut all: Vec<(u32, Stat)> = Vec::new();
    for e in std::fs::read_dir("/proc").map_err(|e| format!("cannot list /proc: {e}"))? {
        let Some(p) = e
            .ok()
            .and_then(|e| e.file_name().to_str()?.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may exit between the listing and the read.
        if let Ok(st) = stat_of(p) {
            all.push((p, st));
        }
    }
    let mut ticks = root.own + root.reaped;
    let mut parents = vec![pid];
    while let Some(parent) = parents.pop() {
        for (p, st) in all.iter().filter(|(_, st)| st.ppid == parent) {
            ticks += st.own + st.reaped;
            parents.push(*p);
        }
    }
    Ok(ticks / clock_ticks())
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
    /// mqfn's admin listener (`None` for the baseline).
    admin: Option<String>,
}

impl Consumer {
    /// Spawns `mqfn-bench baseline` and waits for its `ready` line.
    pub async fn baseline(
        opts: &Options,
        broker: Broker,
        names: &Names,
    ) -> Result<Self, StartError> {
        let mut cmd = Command::new(&opts.bench_bin);
        cmd.args(["baseline", "--broker", broker.as_str(), "--id", &names.id])
            .args(["--window", &opts.window.to_string()])
            .args(opts.baseline_msg_id.then_some("--msg-id"))
            .args(
                (opts.kafka_latency == mqfn::brokers::kafka::Latency::Low)
                    .then_some("--kafka-low-latency"),
            )
            .env("NATS_URL", &opts.urls.nats)
            .env("KAFKA_BOOTSTRAP", &opts.urls.kafka)
            .env("AMQP_URL", &opts.urls.amqp);
        Self::until_ready(cmd, "the baseline").await
    }

    /// Spawns `cmd` and waits for it to print `ready` on stdout; its
    /// stderr is its log. `what` names it in errors.
    pub async fn until_ready(mut cmd: Command, what: &str) -> Result<Self, StartError> {
        let dir = tempdir()?;
        let log = dir.path().join("consumer.log");
        cmd.stdout(Stdio::piped())
            .stderr(log_file(&log)?)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| StartError::Failed(format!("cannot run {what}: {e}")))?;
        let pid = child.id().unwrap_or_default();
        let stdout = child.stdout.take().ok_or_else(|| failed("no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(READY_TIMEOUT, async {
            loop {
                match lines.next_line().await {
                    Ok(Some(l)) if l.trim() == "ready" => return true,
                    Ok(Some(_)) => continue,
                    _ => return false,
                }
            }
        })
        .await;
        let me = Self {
            child,
            pid,
            log,
            _dir: dir,
            profiler: None,
            admin: None,
        };
        // Keep reading stdout, so that the child never blocks on a full
        // pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        match ready {
            Ok(true) => Ok(me),
            Ok(false) => Err(failed(format!(
                "{what} exited before it was ready: {}",
                me.last_words()
            ))),
            Err(_) => Err(failed(format!("{what} was not ready within 60s"))),
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
            admin: Some(admin.clone()),
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

    /// mqfn's `/status`, parsed.
    pub async fn status(&self) -> Result<serde_json::Value> {
        let admin = self.admin.as_deref().ok_or("the baseline has no /status")?;
        let text = reqwest::get(format!("http://{admin}/status"))
            .await
            .map_err(|e| format!("GET /status: {e}"))?
            .text()
            .await
            .map_err(|e| format!("GET /status: {e}"))?;
        serde_json::from_str(&text).map_err(|e| format!("/status is not JSON: {e}"))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// CPU seconds used so far by the process and its children (process
    /// handlers).
    pub fn cpu_secs(&self) -> Result<f64> {
        tree_cpu_secs(self.pid)
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
        // The tree adds the children (none here, or the test runner's);
        // read second, it has had at least as much time.
        let own = cpu_secs(me).unwrap();
        assert!(tree_cpu_secs(me).unwrap() >= own);
        assert!(status_kib(me, "VmHWM").unwrap() >= status_kib(me, "VmRSS").unwrap() / 2);
    }

    #[test]
    fn colour_codes_are_stripped() {
        assert_eq!(strip_ansi("\u{1b}[31mERROR\u{1b}[0m x"), "ERROR x");
    }
}
