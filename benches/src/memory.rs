//! Memory: idle RSS of `mqfn run` with three routes, and RSS sampled over
//! time while a large backlog waits on the input.

use std::time::{Duration, Instant};

use crate::names::Names;
use crate::proc::StartError;
use crate::report::{Backlog, Idle};
use crate::throughput::{Bench, Side};

/// How long an idle mqfn settles before its RSS is read.
const SETTLE: Duration = Duration::from_secs(3);
/// How often RSS is sampled under the backlog.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// Idle RSS of `mqfn run` with three routes on empty inputs.
pub async fn idle(bench: &Bench<'_>) -> Result<Idle, String> {
    let runs = [Names::random(), Names::random(), Names::random()];
    let mut made = Vec::new();
    let mut result = Err("not started".to_owned());
    for n in &runs {
        match bench.harness.create(n).await {
            Ok(()) => made.push(n),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    if made.len() == runs.len() {
        result = async {
            let c = bench
                .start(Side::Mqfn, &runs)
                .await
                .map_err(|e| e.to_string())?;
            tokio::time::sleep(SETTLE).await;
            let idle = Idle {
                rss_kib: c.rss_kib()?,
                peak_kib: c.peak_rss_kib()?,
            };
            c.stop().await;
            Ok(idle)
        }
        .await;
    }
    for n in made {
        bench.harness.delete(n).await;
    }
    match &result {
        Ok(i) => eprintln!(
            "{} idle RSS with 3 routes: {:.1} MiB (peak {:.1} MiB)",
            bench.broker().as_str(),
            i.rss_kib as f64 / 1024.0,
            i.peak_kib as f64 / 1024.0
        ),
        Err(e) => eprintln!("{} idle RSS: {e}", bench.broker().as_str()),
    }
    result
}

/// Pre-fills `opts.backlog` messages, starts mqfn on them and samples its
/// RSS every 250 ms for `opts.backlog_secs`.
pub async fn backlog(bench: &Bench<'_>) -> Result<Backlog, String> {
    let opts = bench.opts;
    let broker = bench.broker().as_str();
    eprintln!("{broker} backlog: pre-filling {} messages", opts.backlog);
    let result = bench
        .with_names(|names| async move {
            let fail = StartError::Failed;
            let waiting = bench
                .harness
                .publish(&names, Bench::fill(opts.backlog, opts.size))
                .await
                .map_err(fail)?;
            let mut counter = bench.harness.counter(&names).await.map_err(fail)?;
            let mut c = bench
                .start(Side::Mqfn, std::slice::from_ref(&names))
                .await?;
            let start = Instant::now();
            let mut samples = Vec::new();
            while start.elapsed().as_secs_f64() < opts.backlog_secs {
                if let Some(why) = c.exited() {
                    return Err(fail(format!("mqfn {why}")));
                }
                samples.push((start.elapsed().as_secs_f64(), c.rss_kib().map_err(fail)?));
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
            let processed = counter.count().await.map_err(fail)?;
            c.stop().await;
            Ok(Backlog {
                waiting,
                processed,
                samples,
                window_bytes: (opts.window * opts.size) as u64,
            })
        })
        .await
        .map_err(|e| e.to_string());
    match &result {
        Ok(b) => eprintln!(
            "{broker} backlog of {}: RSS max {:.1} MiB over {} samples, growth in the 2nd half {:+.2} MiB, {} processed",
            b.waiting,
            b.max_kib() as f64 / 1024.0,
            b.samples.len(),
            b.late_growth_kib() as f64 / 1024.0,
            b.processed
        ),
        Err(e) => eprintln!("{broker} backlog: {e}"),
    }
    if let Ok(b) = &result {
        let series: Vec<String> = b
            .samples
            .iter()
            .step_by(20)
            .map(|(t, kib)| format!("{t:.0}s {:.1}", *kib as f64 / 1024.0))
            .collect();
        eprintln!("{broker} backlog RSS MiB every 5 s: {}", series.join(", "));
    }
    result
}
