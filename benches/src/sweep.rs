//! The sweep: throughput of baseline and mqfn over the config space a user
//! may pick, one cell per point, each cell's pairs alternated as in the
//! one-point report.
//!
//! - every broker: `workers.max` ∈ {1, 8, 64, 256, 1024}, window = 2 ×
//!   `workers.max` on both sides, 256 B payloads;
//! - Kafka: each of those over topics of 1, 4 and 16 partitions;
//! - every broker: payloads of 64 B, 1 KiB and 64 KiB at `workers.max`
//!   128 (Kafka: 4 partitions).
//!
//! A cell has at most `-n` messages, fewer where a run would otherwise take
//! minutes or move gigabytes: [`cell_messages`].

use std::fmt::Write;
use std::sync::Arc;

use crate::brokers;
use crate::opts::{Broker, Options};
use crate::report::{num, BrokerReport};
use crate::throughput::Bench;

/// `workers.max` values of the sweep.
pub const WORKERS: [usize; 5] = [1, 8, 64, 256, 1024];
/// Kafka partition counts of the sweep.
pub const PARTITIONS: [i32; 3] = [1, 4, 16];
/// Payload sizes of the sweep, bytes.
pub const SIZES: [usize; 3] = [64, 1024, 64 * 1024];
/// `workers.max` of the payload-size cells (the documented window of 256).
pub const SIZE_WORKERS: usize = 128;
/// Messages per window slot at most: a window of 2 moves 10,000 messages.
const PER_SLOT: u64 = 5_000;
/// Payload bytes per run at most.
const RUN_BYTES: u64 = 256 << 20;
/// Payload size of the `workers.max` cells.
const SIZE: usize = 256;

/// One point of the config space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Point {
    /// The broker.
    pub broker: Broker,
    /// Kafka's topic partitions (`None` elsewhere).
    pub partitions: Option<i32>,
    /// mqfn's `workers.max`; both sides get a window of twice that.
    pub workers_max: usize,
    /// Payload bytes.
    pub size: usize,
}

/// The points of the sweep on `broker`, in report order.
pub fn points(broker: Broker) -> Vec<Point> {
    let parts: Vec<Option<i32>> = match broker {
        Broker::Kafka => PARTITIONS.iter().copied().map(Some).collect(),
        _ => vec![None],
    };
    let mut v = Vec::new();
    for &partitions in &parts {
        for &workers_max in &WORKERS {
            v.push(Point {
                broker,
                partitions,
                workers_max,
                size: SIZE,
            });
        }
    }
    let partitions = (broker == Broker::Kafka).then_some(brokers::kafka::PARTITIONS);
    for &size in &SIZES {
        v.push(Point {
            broker,
            partitions,
            workers_max: SIZE_WORKERS,
            size,
        });
    }
    v
}

/// Messages of a cell: at most `cap`, 5,000 per window slot, and 256 MiB
/// of payload.
pub fn cell_messages(cap: u64, p: &Point) -> u64 {
    let window = 2 * p.workers_max as u64;
    cap.min(PER_SLOT * window)
        .min(RUN_BYTES / p.size.max(1) as u64)
        .max(1)
}

/// One measured cell.
#[derive(Debug, Clone)]
pub struct Cell {
    /// Where.
    pub point: Point,
    /// Messages per run.
    pub messages: u64,
    /// Both sides' runs.
    pub report: BrokerReport,
}

/// Every cell, in order.
#[derive(Debug, Clone, Default)]
pub struct Sweep {
    /// The cells.
    pub cells: Vec<Cell>,
}

/// The options of one cell: `opts` with the point's window, size,
/// partitions and message count.
pub fn cell_options(opts: &Options, p: &Point) -> Options {
    let mut o = opts.clone();
    o.brokers = vec![p.broker];
    o.window = 2 * p.workers_max;
    o.size = p.size;
    o.messages = cell_messages(opts.messages, p);
    if let Some(n) = p.partitions {
        o.partitions = n;
    }
    o
}

/// Runs every cell of every broker of `opts`.
pub async fn run(opts: &Options) -> Sweep {
    let mut sweep = Sweep::default();
    for &broker in &opts.brokers {
        for p in points(broker) {
            let o = cell_options(opts, &p);
            eprintln!(
                "== sweep {} partitions {} workers.max {} size {} N {}",
                broker.as_str(),
                p.partitions.map_or("-".to_owned(), |n| n.to_string()),
                p.workers_max,
                p.size,
                o.messages
            );
            let report = match brokers::connect(broker, &o).await {
                Ok(h) => Bench::new(&o, Arc::clone(&h)).pairs().await,
                Err(e) => BrokerReport::unreachable(broker, e),
            };
            sweep.cells.push(Cell {
                point: p,
                messages: o.messages,
                report,
            });
        }
    }
    sweep
}

/// mqfn/bare below this is a cell to fix or explain (issue 15).
pub const GOAL: f64 = 0.9;

impl Sweep {
    /// The cells as one Markdown table.
    pub fn render(&self) -> String {
        let mut s = String::new();
        s.push_str("| broker | partitions | workers.max | payload B | N | bare msgs/s | mqfn msgs/s | mqfn/bare | CPU mqfn/bare | note |\n");
        s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
        for c in &self.cells {
            let r = &c.report;
            let ratio = r.ratio();
            let cpu = r.mqfn.cpu().zip(r.baseline.cpu()).map(|(m, b)| m / b);
            let note = [&r.baseline.status, &r.mqfn.status]
                .into_iter()
                .flatten()
                .cloned()
                .chain(ratio.filter(|x| *x < GOAL).map(|_| "below 0.9".to_owned()))
                .collect::<Vec<_>>()
                .join("; ");
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                c.point.broker.as_str(),
                c.point.partitions.map_or("-".to_owned(), |n| n.to_string()),
                c.point.workers_max,
                c.point.size,
                c.messages,
                num(r.baseline.rate(), 0),
                num(r.mqfn.rate(), 0),
                match ratio {
                    Some(x) if x < GOAL => format!("**{x:.3}**"),
                    other => num(other, 3),
                },
                num(cpu, 2),
                note.replace('|', "/"),
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_covers_the_issue_s_space() {
        let nats = points(Broker::Nats);
        assert_eq!(nats.len(), WORKERS.len() + SIZES.len());
        let kafka = points(Broker::Kafka);
        assert_eq!(kafka.len(), WORKERS.len() * PARTITIONS.len() + SIZES.len());
        for &p in &PARTITIONS {
            for &w in &WORKERS {
                assert!(kafka
                    .iter()
                    .any(|x| x.partitions == Some(p) && x.workers_max == w));
            }
        }
        for &size in &SIZES {
            assert!(nats.iter().any(|x| x.size == size));
        }
    }

    #[test]
    fn small_windows_and_big_payloads_move_fewer_messages() {
        let p = |workers_max, size| Point {
            broker: Broker::Amqp,
            partitions: None,
            workers_max,
            size,
        };
        assert_eq!(cell_messages(100_000, &p(1, 256)), 10_000);
        assert_eq!(cell_messages(100_000, &p(256, 256)), 100_000);
        assert_eq!(cell_messages(100_000, &p(128, 64 * 1024)), 4_096);
        assert_eq!(cell_messages(100_000, &p(8, 256)), 80_000);
        assert_eq!(cell_messages(10, &p(1, 256)), 10);
    }
}
