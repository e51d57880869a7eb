//! The mqfn benchmark: mqfn against a hand-written consumer on the same
//! broker, with the ratio printed in one run.
//!
//! For each broker, [`run`] pre-fills an input with N messages, then
//! alternates a **baseline** (a minimal consume → publish → confirm → ack
//! loop with the same client crate, run as a child process of this binary)
//! and **mqfn** (the real `mqfn run` binary with the built-in `echo`
//! handler), and measures both from the outside in the same way: results
//! counted on the output, CPU from `/proc/<pid>/stat`, peak RSS from
//! `/proc/<pid>/status`. A paced run at half the baseline's rate gives the
//! end-to-end latency. See `docs/benchmarks.md`.

pub mod brokers;
pub mod handlers;
pub mod latency;
pub mod many;
pub mod memory;
pub mod names;
pub mod opts;
pub mod proc;
pub mod report;
pub mod sweep;
pub mod throughput;
pub mod vs;
pub mod wake;

use std::sync::Arc;

pub use opts::{Broker, Options};
pub use report::Report;

/// Errors are sentences with their context; the bench reports them and
/// goes on with the next measurement.
pub type Result<T, E = String> = std::result::Result<T, E>;

/// Runs every measurement that `opts` asks for and returns the figures.
/// Progress goes to stderr; the caller prints the report.
pub async fn run(opts: &Options) -> Report {
    let mut report = Report::default();
    for &broker in &opts.brokers {
        eprintln!("== {}", broker.as_str());
        let harness = match brokers::connect(broker, opts).await {
            Ok(h) => h,
            Err(e) => {
                eprintln!("{}: cannot connect: {e}", broker.as_str());
                report
                    .brokers
                    .push(report::BrokerReport::unreachable(broker, e));
                continue;
            }
        };
        let bench = throughput::Bench::new(opts, Arc::clone(&harness));
        let mut br = bench.pairs().await;
        if opts.latency_secs > 0.0 {
            latency::measure(&bench, &mut br).await;
        }
        // Both need mqfn on this broker: skip them with its reason.
        let skipped = br.mqfn.status.clone().filter(|s| s.starts_with("skipped"));
        if opts.idle {
            br.idle = Some(match &skipped {
                Some(why) => Err(why.clone()),
                None => memory::idle(&bench).await,
            });
        }
        if opts.backlog > 0 {
            br.backlog = Some(match &skipped {
                Some(why) => Err(why.clone()),
                None => memory::backlog(&bench).await,
            });
        }
        report.brokers.push(br);
    }
    if opts.handlers {
        eprintln!("== handlers");
        report.handlers = Some(handlers::measure(opts).await);
    }
    report
}
