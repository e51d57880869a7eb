//! Handlers in other languages against the tool their users would pick
//! instead: the same no-op function on the same broker and the same
//! pre-filled input, run
//!
//! - as a FastStream 0.7 subscriber with a publisher, at-least-once, in
//!   one process (`benches/faststream/noop_app.py`);
//! - as a Python process handler under mqfn (`handlers/examples/noop.py`)
//!   with 1 and with 4 instances;
//! - as a Node process handler under mqfn (`handlers/examples/noop.js`)
//!   with 4 instances.
//!
//! mqfn's window (`--window`, 2 × `workers.max`) is FastStream's prefetch.
//! Each run is measured as the throughput runs are (results counted on the
//! output, from the first to the last), with the CPU of the whole process
//! tree: mqfn and its handler processes.

use std::fmt::Write;

use tokio::process::Command;

use crate::brokers::mqfn_config_with;
use crate::names::Names;
use crate::opts::{Broker, Options};
use crate::proc::{Consumer, StartError};
use crate::report::{num, RunFigures};
use crate::throughput::Bench;

/// The FastStream version the bench was written against.
pub const FASTSTREAM: &str = "faststream[nats,rabbit,confluent]==0.7.8";

/// Who consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contender {
    /// `noop_app.py` on FastStream.
    FastStream,
    /// `noop.py` under mqfn, with this many instances.
    Python(usize),
    /// `noop.js` under mqfn, with this many instances.
    Node(usize),
}

impl Contender {
    /// Every contender, in report order.
    pub const ALL: [Contender; 4] = [
        Contender::FastStream,
        Contender::Python(1),
        Contender::Python(4),
        Contender::Node(4),
    ];

    /// As printed.
    pub fn label(self) -> String {
        match self {
            Self::FastStream => "FastStream 0.7 (Python, one process)".to_owned(),
            Self::Python(n) => format!("mqfn + noop.py, {n} instance(s)"),
            Self::Node(n) => format!("mqfn + noop.js, {n} instance(s)"),
        }
    }
}

/// One measured contender on one broker.
#[derive(Debug, Clone)]
pub struct Row {
    /// The broker.
    pub broker: Broker,
    /// Who.
    pub contender: Contender,
    /// Its runs, or why not.
    pub runs: Result<Vec<RunFigures>, String>,
}

impl Row {
    /// Median rate.
    pub fn rate(&self) -> Option<f64> {
        let runs = self.runs.as_ref().ok()?;
        crate::report::median(runs.iter().map(|r| r.rate))
    }

    /// Median CPU seconds per 100k messages.
    pub fn cpu(&self) -> Option<f64> {
        let runs = self.runs.as_ref().ok()?;
        crate::report::median(runs.iter().map(|r| r.cpu_per_100k))
    }
}

/// The mqfn config for `contender` on `names`.
fn mqfn_config(bench: &Bench<'_>, names: &Names, script: &str, program: &str, n: usize) -> String {
    let path = bench.opts.repo.join("handlers/examples").join(script);
    let mut text = mqfn_config_with(
        bench.harness.as_ref(),
        std::slice::from_ref(names),
        &format!("{{ min = 0, max = {} }}", bench.opts.workers_max()),
        "noop",
        bench.opts.dedup,
    );
    let _ = write!(
        text,
        "\n[handlers.noop]\nkind = \"process\"\ncommand = [\"{program}\", {:?}]\nmax_instances = {n}\n",
        path.display().to_string()
    );
    text
}

/// `noop_app.py` on the run `n`.
fn faststream(opts: &Options, broker: Broker, n: &Names) -> Command {
    let app = opts.repo.join("benches/faststream/noop_app.py");
    let mut cmd = Command::new("python3");
    cmd.arg(app)
        .args(["--broker", broker.as_str()])
        .args(["--input", &n.input(), "--output", &n.output()])
        .args(["--prefetch", &opts.window.to_string()]);
    match broker {
        Broker::Nats => cmd
            .args(["--url", &opts.urls.nats])
            .args(["--stream", &n.stream("IN"), "--durable", &n.id])
            .args(["--output-stream", &n.stream("OUT")]),
        Broker::Amqp => cmd.args(["--url", &opts.urls.amqp]),
        Broker::Kafka => cmd
            .args(["--url", &opts.urls.kafka])
            .args(["--group", &n.id]),
    };
    cmd
}

/// Whether FastStream can be imported, or why not.
async fn faststream_available() -> Result<(), String> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import faststream, faststream.nats, faststream.rabbit, faststream.confluent",
        ])
        .output()
        .await
        .map_err(|e| format!("cannot run python3: {e}"))?;
    match out.status.success() {
        true => Ok(()),
        false => Err(format!(
            "skipped: FastStream is not installed (pip install '{FASTSTREAM}')"
        )),
    }
}

/// One run of `contender` on fresh names.
pub async fn once(bench: &Bench<'_>, contender: Contender) -> Result<RunFigures, StartError> {
    let label = match contender {
        Contender::FastStream => "faststream".to_owned(),
        Contender::Python(n) => format!("python{n}"),
        Contender::Node(n) => format!("node{n}"),
    };
    bench
        .run_with(&label, |names| async move {
            match contender {
                Contender::FastStream => {
                    let cmd = faststream(bench.opts, bench.broker(), &names);
                    Consumer::until_ready(cmd, "FastStream").await
                }
                Contender::Python(n) => {
                    let cfg = mqfn_config(bench, &names, "noop.py", "python3", n);
                    Consumer::mqfn(bench.opts, &cfg).await
                }
                Contender::Node(n) => {
                    let cfg = mqfn_config(bench, &names, "noop.js", "node", n);
                    Consumer::mqfn(bench.opts, &cfg).await
                }
            }
        })
        .await
}

/// Every contender on `bench`'s broker, `opts.pairs` rounds, contenders
/// alternated within each round.
pub async fn measure(bench: &Bench<'_>) -> Vec<Row> {
    let fs = faststream_available().await;
    let mut rows: Vec<Row> = Contender::ALL
        .iter()
        .map(|&contender| Row {
            broker: bench.broker(),
            contender,
            runs: match (contender, &fs) {
                (Contender::FastStream, Err(e)) => Err(e.clone()),
                _ => Ok(Vec::new()),
            },
        })
        .collect();
    for round in 1..=bench.opts.pairs {
        for row in rows.iter_mut() {
            let Ok(runs) = &mut row.runs else { continue };
            match once(bench, row.contender).await {
                Ok(f) => {
                    eprintln!(
                        "{} round {round} {}: {:.0} msgs/s, {:.3} CPU s/100k",
                        bench.broker().as_str(),
                        row.contender.label(),
                        f.rate,
                        f.cpu_per_100k
                    );
                    runs.push(f);
                }
                Err(e) => {
                    eprintln!("{} {}: {e}", bench.broker().as_str(), row.contender.label());
                    row.runs = Err(e.to_string());
                }
            }
        }
    }
    rows
}

/// The rows as a Markdown table, with each mqfn row against FastStream on
/// the same broker.
pub fn render(rows: &[Row]) -> String {
    let mut s = String::new();
    s.push_str(
        "| broker | consumer | msgs/s (median) | CPU s / 100k | × FastStream msgs/s | note |\n",
    );
    s.push_str("|---|---|---:|---:|---:|---|\n");
    for r in rows {
        let fs = rows
            .iter()
            .find(|x| x.broker == r.broker && x.contender == Contender::FastStream)
            .and_then(Row::rate);
        let vs = match r.contender {
            Contender::FastStream => None,
            _ => r.rate().zip(fs).map(|(m, f)| m / f),
        };
        let note = match &r.runs {
            Err(e) => e.replace('|', "/"),
            Ok(runs) => runs
                .iter()
                .map(|f| format!("{:.0}", f.rate))
                .collect::<Vec<_>>()
                .join(", "),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            r.broker.as_str(),
            r.contender.label(),
            num(r.rate(), 0),
            num(r.cpu(), 3),
            num(vs, 2),
            note
        );
    }
    s
}
