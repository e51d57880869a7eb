//! Throughput: pre-fill N messages, start one consumer (baseline or mqfn),
//! and watch the output until all N results are there. Pairs alternate
//! baseline and mqfn.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;

use crate::brokers::{mqfn_config, Counter, Harness};
use crate::names::Names;
use crate::opts::{Broker, Options};
use crate::proc::{Consumer, StartError};
use crate::report::{BrokerReport, RunFigures, SideReport};
use crate::Result;

/// How often the output is counted.
const POLL: Duration = Duration::from_millis(10);

/// Which consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The hand-written loop (`mqfn-bench baseline`).
    Baseline,
    /// `mqfn run` with the `echo` handler.
    Mqfn,
}

impl Side {
    /// As printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Baseline => "baseline",
            Self::Mqfn => "mqfn",
        }
    }
}

/// The measurements of one broker.
pub struct Bench<'a> {
    /// What to measure.
    pub opts: &'a Options,
    /// The broker's harness.
    pub harness: Arc<dyn Harness>,
}

impl<'a> Bench<'a> {
    /// A bench on `harness`.
    pub fn new(opts: &'a Options, harness: Arc<dyn Harness>) -> Self {
        Self { opts, harness }
    }

    /// The broker.
    pub fn broker(&self) -> Broker {
        self.harness.kind()
    }

    /// Starts `side` on the runs `names` (mqfn gets one route per run; the
    /// baseline consumes the first).
    pub async fn start(&self, side: Side, names: &[Names]) -> Result<Consumer, StartError> {
        match side {
            Side::Baseline => Consumer::baseline(self.opts, self.broker(), &names[0]).await,
            Side::Mqfn => {
                let config = mqfn_config(
                    self.harness.as_ref(),
                    names,
                    self.opts.workers_max(),
                    self.opts.dedup,
                );
                Consumer::mqfn(self.opts, &config).await
            }
        }
    }

    /// `count` copies of one payload of `size` bytes.
    pub fn fill(count: u64, size: usize) -> BoxStream<'static, Bytes> {
        let payload = Bytes::from(vec![b'x'; size]);
        futures::stream::iter((0..count).map(move |_| payload.clone())).boxed()
    }

    /// Creates fresh names, runs `f` on them, and deletes them whatever
    /// happened.
    pub async fn with_names<T, F, Fut>(&self, f: F) -> Result<T, StartError>
    where
        F: FnOnce(Names) -> Fut,
        Fut: std::future::Future<Output = Result<T, StartError>>,
    {
        let names = Names::random();
        self.harness
            .create(&names)
            .await
            .map_err(StartError::Failed)?;
        let out = f(names.clone()).await;
        self.harness.delete(&names).await;
        out
    }

    /// Alternates baseline and mqfn runs, `opts.pairs` times. Once mqfn is
    /// skipped (this build cannot run it), only baselines run.
    pub async fn pairs(&self) -> BrokerReport {
        let mut baseline = SideReport::default();
        let mut mqfn = SideReport::default();
        for pair in 1..=self.opts.pairs {
            for (side, report) in [(Side::Baseline, &mut baseline), (Side::Mqfn, &mut mqfn)] {
                if report
                    .status
                    .as_deref()
                    .is_some_and(|s| s.starts_with("skipped"))
                {
                    continue;
                }
                match self.run_once(side).await {
                    Ok(f) => {
                        eprintln!(
                            "{} pair {pair} {:8}: {:>9.0} msgs/s, {:.3} CPU s/100k, peak RSS {:.1} MiB",
                            self.broker().as_str(),
                            side.as_str(),
                            f.rate,
                            f.cpu_per_100k,
                            f.peak_rss_kib as f64 / 1024.0
                        );
                        report.runs.push(f);
                    }
                    Err(e) => {
                        eprintln!(
                            "{} pair {pair} {}: {e}",
                            self.broker().as_str(),
                            side.as_str()
                        );
                        report.status = Some(e.to_string());
                    }
                }
            }
        }
        BrokerReport {
            broker: self.broker(),
            baseline,
            mqfn,
            idle: None,
            backlog: None,
        }
    }

    /// One measured run of `side` on fresh names.
    pub async fn run_once(&self, side: Side) -> Result<RunFigures, StartError> {
        self.run_with(side.as_str(), |names| async move {
            self.start(side, std::slice::from_ref(&names)).await
        })
        .await
    }

    /// One measured run on fresh names: pre-fill N messages, start a
    /// consumer with `start`, watch the output until all N results are
    /// there. `label` names its `--perf` profile.
    pub async fn run_with<F, Fut>(&self, label: &str, start: F) -> Result<RunFigures, StartError>
    where
        F: FnOnce(Names) -> Fut,
        Fut: std::future::Future<Output = Result<Consumer, StartError>>,
    {
        let total = self.opts.messages;
        self.with_names(|names| async move {
            let sent = self
                .harness
                .publish(&names, Self::fill(total, self.opts.size))
                .await
                .map_err(|e| StartError::Failed(format!("pre-fill: {e}")))?;
            let mut counter = self
                .harness
                .counter(&names)
                .await
                .map_err(StartError::Failed)?;
            let id = names.id.clone();
            let mut c = start(names).await?;
            if let Some(dir) = &self.opts.perf {
                let out = dir.join(format!("{}-{label}-{id}.data", self.broker().as_str()));
                let made = std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()));
                if let Err(e) = made.and_then(|()| c.profile(&out)) {
                    eprintln!("perf: {e}");
                }
            }
            let figures = watch(&mut c, counter.as_mut(), sent, self.opts.stall_secs).await;
            c.stop().await;
            figures.map_err(StartError::Failed)
        })
        .await
    }
}

/// Counts the output until `total` results are there; measures rate, CPU
/// and memory of `c` from the first result seen to the last.
pub async fn watch(
    c: &mut Consumer,
    counter: &mut dyn Counter,
    total: u64,
    stall_secs: f64,
) -> Result<RunFigures> {
    let mut first: Option<(Instant, u64, f64)> = None;
    let (mut last, mut last_change) = (0, Instant::now());
    loop {
        let count = counter.count().await?;
        let now = Instant::now();
        if count != last {
            (last, last_change) = (count, now);
        }
        if count > 0 && first.is_none() {
            first = Some((now, count, c.cpu_secs()?));
        }
        if let (true, Some((t0, c0, cpu0))) = (count >= total, first) {
            let cpu = c.cpu_secs()? - cpu0;
            let done = total.saturating_sub(c0) as f64;
            let secs = now.duration_since(t0).as_secs_f64();
            let per = |x: f64| if done > 0.0 && x > 0.0 { x } else { f64::NAN };
            return Ok(RunFigures {
                results: count,
                rate: done / per(secs),
                cpu_per_100k: cpu / per(done) * 100_000.0,
                peak_rss_kib: c.peak_rss_kib()?,
            });
        }
        if let Some(why) = c.exited() {
            return Err(format!("the consumer {why}"));
        }
        if now.duration_since(last_change).as_secs_f64() > stall_secs {
            return Err(format!(
                "stalled at {count} of {total} results: {}",
                c.last_words()
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}
