//! The figures, their medians, and the printed table.

use std::fmt::Write;

use crate::opts::Broker;

/// One throughput run of one side.
#[derive(Debug, Clone, Default)]
pub struct RunFigures {
    /// Results counted on the output at the end (must be N).
    pub results: u64,
    /// Results per second, from the first result seen to the last.
    pub rate: f64,
    /// CPU seconds of the consumer process per 100,000 messages, over the
    /// same interval.
    pub cpu_per_100k: f64,
    /// Peak RSS (`VmHWM`) of the consumer process, KiB.
    pub peak_rss_kib: u64,
}

/// End-to-end latency of a paced run.
#[derive(Debug, Clone, Default)]
pub struct Latency {
    /// Messages per second offered.
    pub rate: f64,
    /// Results received (of those sent).
    pub received: u64,
    /// Messages sent.
    pub sent: u64,
    /// Median, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
}

/// Everything measured for one side (baseline or mqfn) on one broker.
#[derive(Debug, Clone, Default)]
pub struct SideReport {
    /// The throughput runs, in order.
    pub runs: Vec<RunFigures>,
    /// The latency run, or why it failed.
    pub latency: Option<Result<Latency, String>>,
    /// Why this side was skipped or failed, when it was.
    pub status: Option<String>,
}

impl SideReport {
    /// Median results per second.
    pub fn rate(&self) -> Option<f64> {
        median(self.runs.iter().map(|r| r.rate))
    }

    /// Median CPU seconds per 100k messages.
    pub fn cpu(&self) -> Option<f64> {
        median(self.runs.iter().map(|r| r.cpu_per_100k))
    }

    /// Median peak RSS, KiB.
    pub fn rss(&self) -> Option<f64> {
        median(self.runs.iter().map(|r| r.peak_rss_kib as f64))
    }
}

/// Idle RSS of `mqfn run` with three routes.
#[derive(Debug, Clone, Default)]
pub struct Idle {
    /// RSS after settling, KiB.
    pub rss_kib: u64,
    /// Peak RSS, KiB.
    pub peak_kib: u64,
}

/// RSS of mqfn sampled while a large backlog waits.
#[derive(Debug, Clone, Default)]
pub struct Backlog {
    /// Messages waiting when mqfn started.
    pub waiting: u64,
    /// Results produced while sampling (the rest still waited).
    pub processed: u64,
    /// `(seconds since ready, RSS KiB)`.
    pub samples: Vec<(f64, u64)>,
    /// The in-flight window, bytes of payload.
    pub window_bytes: u64,
}

impl Backlog {
    /// The largest RSS sample, KiB.
    pub fn max_kib(&self) -> u64 {
        self.samples.iter().map(|s| s.1).max().unwrap_or(0)
    }

    /// Growth from the first to the last sample of the second half, KiB:
    /// near zero when memory is flat.
    pub fn late_growth_kib(&self) -> i64 {
        let half = &self.samples[self.samples.len() / 2..];
        match (half.first(), half.last()) {
            (Some(a), Some(b)) => b.1 as i64 - a.1 as i64,
            _ => 0,
        }
    }
}

/// Everything measured on one broker.
#[derive(Debug, Clone)]
pub struct BrokerReport {
    /// Which broker.
    pub broker: Broker,
    /// The hand-written loop.
    pub baseline: SideReport,
    /// `mqfn run`.
    pub mqfn: SideReport,
    /// Idle RSS with three routes.
    pub idle: Option<Result<Idle, String>>,
    /// Memory under a backlog.
    pub backlog: Option<Result<Backlog, String>>,
}

impl BrokerReport {
    /// A broker the bench could not reach.
    pub fn unreachable(broker: Broker, why: String) -> Self {
        let side = SideReport {
            status: Some(format!("failed: cannot connect: {why}")),
            ..SideReport::default()
        };
        Self {
            broker,
            baseline: side.clone(),
            mqfn: side,
            idle: None,
            backlog: None,
        }
    }

    /// mqfn's median rate over the baseline's.
    pub fn ratio(&self) -> Option<f64> {
        Some(self.mqfn.rate()? / self.baseline.rate()?)
    }
}

/// One handler's figures through mqfn's invocation path.
#[derive(Debug, Clone, Default)]
pub struct HandlerFigures {
    /// Sequential warm invocations per second (one caller).
    pub sequential_per_sec: f64,
    /// Warm invocations per second with `concurrency` callers.
    pub concurrent_per_sec: f64,
    /// Callers (and process instances) for the concurrent figure.
    pub concurrency: usize,
    /// Warm round trip, median, microseconds.
    pub p50_us: f64,
    /// Warm round trip, 99th percentile, microseconds.
    pub p99_us: f64,
    /// Cold start: the first call on a fresh instance, median, ms.
    pub cold_start_ms: Option<f64>,
}

/// Process handler against the built-in `echo`.
#[derive(Debug, Clone, Default)]
pub struct HandlerReport {
    /// The built-in `echo`.
    pub echo: Option<Result<HandlerFigures, String>>,
    /// `handlers/examples/noop.py` as a process handler, or why not.
    pub noop: Option<Result<HandlerFigures, String>>,
}

/// The whole report.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Per broker, in order.
    pub brokers: Vec<BrokerReport>,
    /// Process-handler overhead.
    pub handlers: Option<HandlerReport>,
}

/// The median, or `None` for no values.
pub fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

/// The `q` quantile (0..=1) of sorted values, nearest rank.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `v` with `digits` decimals, or `-` when there is none.
pub fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |x| format!("{x:.digits$}"))
}

fn mib(kib: f64) -> f64 {
    kib / 1024.0
}

impl Report {
    /// The report as Markdown tables.
    pub fn render(&self) -> String {
        let mut s = String::new();
        s.push_str("| broker | side | msgs/s (median) | runs msgs/s | CPU s / 100k | peak RSS MiB | p50 ms | p99 ms | note |\n");
        s.push_str("|---|---|---:|---|---:|---:|---:|---:|---|\n");
        for b in &self.brokers {
            for (name, side) in [("baseline", &b.baseline), ("mqfn", &b.mqfn)] {
                let runs: Vec<String> =
                    side.runs.iter().map(|r| format!("{:.0}", r.rate)).collect();
                let (p50, p99, lat_note) = match &side.latency {
                    Some(Ok(l)) => (
                        Some(l.p50_ms),
                        Some(l.p99_ms),
                        format!("latency at {:.0}/s", l.rate),
                    ),
                    Some(Err(e)) => (None, None, format!("latency: {e}")),
                    None => (None, None, String::new()),
                };
                let note = side.status.clone().unwrap_or(lat_note);
                let _ = writeln!(
                    s,
                    "| {} | {name} | {} | {} | {} | {} | {} | {} | {} |",
                    b.broker.as_str(),
                    num(side.rate(), 0),
                    runs.join(", "),
                    num(side.cpu(), 3),
                    num(side.rss().map(mib), 1),
                    num(p50, 2),
                    num(p99, 2),
                    note.replace('|', "/"),
                );
            }
            let _ = writeln!(
                s,
                "| {} | **mqfn/baseline** | **{}** | | {} | | | | ratio of medians |",
                b.broker.as_str(),
                num(b.ratio(), 3),
                num(b.mqfn.cpu().zip(b.baseline.cpu()).map(|(m, x)| m / x), 2),
            );
        }
        self.render_memory(&mut s);
        self.render_handlers(&mut s);
        s
    }

    fn render_memory(&self, s: &mut String) {
        if self
            .brokers
            .iter()
            .all(|b| b.idle.is_none() && b.backlog.is_none())
        {
            return;
        }
        s.push_str("\n| broker | idle RSS MiB (3 routes) | backlog waiting | RSS under backlog MiB (min / max / last) | growth, 2nd half MiB | bound 2×idle+window MiB | note |\n");
        s.push_str("|---|---:|---:|---|---:|---:|---|\n");
        for b in &self.brokers {
            let (idle, idle_note) = match &b.idle {
                Some(Ok(i)) => (Some(i.rss_kib as f64), String::new()),
                Some(Err(e)) => (None, format!("idle: {e}")),
                None => (None, String::new()),
            };
            let (waiting, range, growth, note) = match &b.backlog {
                Some(Ok(bl)) => {
                    let min = bl.samples.iter().map(|x| x.1).min().unwrap_or(0);
                    let last = bl.samples.last().map_or(0, |x| x.1);
                    (
                        bl.waiting.to_string(),
                        format!(
                            "{:.1} / {:.1} / {:.1}",
                            mib(min as f64),
                            mib(bl.max_kib() as f64),
                            mib(last as f64)
                        ),
                        format!("{:+.2}", bl.late_growth_kib() as f64 / 1024.0),
                        format!("{} processed while sampling", bl.processed),
                    )
                }
                Some(Err(e)) => ("-".into(), "-".into(), "-".into(), format!("backlog: {e}")),
                None => ("-".into(), "-".into(), "-".into(), String::new()),
            };
            let window = b
                .backlog
                .as_ref()
                .and_then(|r| r.as_ref().ok())
                .map_or(0, |x| x.window_bytes);
            let bound = idle.map(|i| mib(2.0 * i) + window as f64 / 1048576.0);
            let note = [idle_note, note]
                .iter()
                .filter(|x| !x.is_empty())
                .cloned()
                .collect::<Vec<_>>()
                .join("; ");
            let _ = writeln!(
                s,
                "| {} | {} | {waiting} | {range} | {growth} | {} | {} |",
                b.broker.as_str(),
                num(idle.map(mib), 1),
                num(bound, 1),
                note.replace('|', "/"),
            );
        }
    }

    fn render_handlers(&self, s: &mut String) {
        let Some(h) = &self.handlers else { return };
        s.push_str("\n| handler | warm calls/s (1 caller) | warm calls/s (N callers) | p50 µs | p99 µs | cold start ms | note |\n");
        s.push_str("|---|---:|---:|---:|---:|---:|---|\n");
        for (name, r) in [("echo (builtin)", &h.echo), ("noop.py (process)", &h.noop)] {
            match r {
                Some(Ok(f)) => {
                    let _ = writeln!(
                        s,
                        "| {name} | {:.0} | {:.0} (N = {}) | {:.1} | {:.1} | {} | |",
                        f.sequential_per_sec,
                        f.concurrent_per_sec,
                        f.concurrency,
                        f.p50_us,
                        f.p99_us,
                        num(f.cold_start_ms, 1),
                    );
                }
                Some(Err(e)) => {
                    let _ = writeln!(
                        s,
                        "| {name} | - | - | - | - | - | {} |",
                        e.replace('|', "/")
                    );
                }
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_quantiles() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), Some(2.0));
        assert_eq!(median([4.0, 1.0].into_iter()), Some(2.5));
        assert_eq!(median(std::iter::empty()), None);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v[..1], 0.99), 1.0);
    }
}
