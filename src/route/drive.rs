//! The tasks that drive a route's in-flight messages.
//!
//! A task per message costs a task allocation, a copy of the large
//! per-message future and a scheduler round trip per wake-up; worse, each
//! task queues its publish or ack and yields, so the broker connection
//! writes one command per wake-up. Instead a route runs a few long-lived
//! driver tasks (one per runtime worker thread), each polling many
//! messages' futures at once: the publishes and acks of the messages it
//! polled leave together, and CPU-bound handlers still spread over every
//! core.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::future::{BoxFuture, FutureExt};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio_util::task::TaskTracker;
use tracing::error;

/// One message's work (or a lane's), to be driven to completion.
pub type Job = BoxFuture<'static, ()>;

/// The driver tasks of one route.
pub struct Drivers {
    txs: Vec<UnboundedSender<Job>>,
    next: AtomicUsize,
}

impl Drivers {
    /// Starts `n` (at least 1) driver tasks on `tracker`. They end once
    /// the `Drivers` is dropped and every job they hold has finished.
    pub fn start(n: usize, tracker: &TaskTracker) -> Self {
        let txs = (0..n.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::unbounded_channel();
                tracker.spawn(drive(rx));
                tx
            })
            .collect();
        Self {
            txs,
            next: AtomicUsize::new(0),
        }
    }

    /// The number of drivers for this runtime: one per worker thread.
    pub fn for_runtime() -> usize {
        tokio::runtime::Handle::try_current()
            .map(|h| h.metrics().num_workers())
            .unwrap_or(1)
    }

    /// Hands `job` to the next driver, round robin.
    pub fn run(&self, job: Job) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.txs.len();
        if let Err(e) = self.txs[i].send(job) {
            // A driver only stops after its sender is dropped, so this
            // cannot happen; run the job on a task of its own regardless.
            tokio::spawn(e.0);
        }
    }
}

/// Polls every job handed to this driver until the sender is gone and all
/// of them have finished.
///
/// A job that panics ends alone, as a task of its own would, and the other
/// jobs go on. Its message is never settled: JetStream and RabbitMQ deliver
/// it again; on Kafka its offset is not committed past, so the partition's
/// next owner (after a restart or rebalance) reads it again.
async fn drive(mut rx: UnboundedReceiver<Job>) {
    let mut running = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            biased;
            job = rx.recv(), if open => match job {
                Some(job) => running.push(AssertUnwindSafe(job).catch_unwind()),
                None => open = false,
            },
            Some(done) = running.next(), if !running.is_empty() => {
                if done.is_err() {
                    error!("A message's processing panicked outside the handler; it is left unsettled for redelivery.");
                }
            }
            else => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_job_runs_and_the_drivers_end_after_the_last() {
        let tracker = TaskTracker::new();
        let done = Arc::new(AtomicUsize::new(0));
        let drivers = Drivers::start(Drivers::for_runtime(), &tracker);
        assert_eq!(drivers.txs.len(), 2);
        for i in 0..100u64 {
            let done = done.clone();
            drivers.run(Box::pin(async move {
                tokio::time::sleep(std::time::Duration::from_millis(i % 7)).await;
                done.fetch_add(1, Ordering::Relaxed);
            }));
        }
        drop(drivers);
        tracker.close();
        tracker.wait().await;
        assert_eq!(done.load(Ordering::Relaxed), 100);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_job_ends_alone() {
        let tracker = TaskTracker::new();
        let done = Arc::new(AtomicUsize::new(0));
        let drivers = Drivers::start(1, &tracker);
        for i in 0..10u64 {
            let done = done.clone();
            drivers.run(Box::pin(async move {
                tokio::time::sleep(std::time::Duration::from_millis(i)).await;
                assert!(i != 3, "job 3 panics");
                done.fetch_add(1, Ordering::Relaxed);
            }));
        }
        drop(drivers);
        tracker.close();
        tracker.wait().await;
        assert_eq!(done.load(Ordering::Relaxed), 9, "the other nine finished");
    }
}
