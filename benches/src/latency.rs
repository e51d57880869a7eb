//! End-to-end latency: a publisher paced at half the baseline's median
//! rate stamps each payload with its send time; a tap on the output takes
//! the difference on arrival. Same process, same clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;

use crate::proc::StartError;
use crate::report::{quantile, BrokerReport, Latency};
use crate::throughput::{Bench, Side};

/// Extra time, past the paced run itself, for the last results to arrive.
const GRACE: Duration = Duration::from_secs(30);
/// How long the consumer may take to handle the warm-up message.
const WARM_UP: Duration = Duration::from_secs(60);

/// Runs the latency measurement for both sides of `br`, at half the
/// baseline's median rate (or `opts.latency_rate`).
pub async fn measure(bench: &Bench<'_>, br: &mut BrokerReport) {
    let opts = bench.opts;
    let Some(rate) = opts.latency_rate.or(br.baseline.rate().map(|r| r / 2.0)) else {
        br.baseline.latency = Some(Err("no baseline rate to pace at".to_owned()));
        return;
    };
    let count = ((rate * opts.latency_secs) as u64).clamp(10, opts.latency_max.max(10));
    for (side, report) in [
        (Side::Baseline, &mut br.baseline),
        (Side::Mqfn, &mut br.mqfn),
    ] {
        if report
            .status
            .as_deref()
            .is_some_and(|s| s.starts_with("skipped"))
        {
            continue;
        }
        let r = one(bench, side, rate, count)
            .await
            .map_err(|e| e.to_string());
        match &r {
            Ok(l) => eprintln!(
                "{} latency {:8}: p50 {:.2} ms, p99 {:.2} ms ({} of {} at {:.0}/s)",
                bench.broker().as_str(),
                side.as_str(),
                l.p50_ms,
                l.p99_ms,
                l.received,
                l.sent,
                l.rate
            ),
            Err(e) => eprintln!("{} latency {}: {e}", bench.broker().as_str(), side.as_str()),
        }
        report.latency = Some(r);
    }
}

/// One paced run of `side`: `count` messages at `rate` per second.
pub async fn one(
    bench: &Bench<'_>,
    side: Side,
    rate: f64,
    count: u64,
) -> Result<Latency, StartError> {
    let size = bench.opts.size;
    bench
        .with_names(|names| async move {
            let c = bench.start(side, std::slice::from_ref(&names)).await?;
            let mut tap = bench
                .harness
                .tap(&names)
                .await
                .map_err(StartError::Failed)?;
            warm_up(bench, &names, &mut tap).await?;
            let limit = Duration::from_secs_f64(count as f64 / rate) + GRACE;
            let receiver = tokio::spawn(collect(tap, count, limit));
            let sent = bench
                .harness
                .publish(&names, paced(rate, count, size))
                .await;
            let mut ms = receiver.await.unwrap_or_default();
            c.stop().await;
            let sent = sent.map_err(StartError::Failed)?;
            if ms.is_empty() {
                return Err(StartError::Failed("no result arrived".to_owned()));
            }
            ms.sort_by(f64::total_cmp);
            Ok(Latency {
                rate,
                received: ms.len() as u64,
                sent,
                p50_ms: quantile(&ms, 0.50),
                p99_ms: quantile(&ms, 0.99),
            })
        })
        .await
}

/// Sends one unstamped message and waits for its result, so that the
/// consumer is subscribed (a Kafka group joined, a JetStream consumer
/// created) before the clock starts.
async fn warm_up(
    bench: &Bench<'_>,
    names: &crate::names::Names,
    tap: &mut BoxStream<'static, Bytes>,
) -> Result<(), StartError> {
    let probe = Bytes::from(vec![0u8; bench.opts.size.max(8)]);
    bench
        .harness
        .publish(names, futures::stream::iter([probe]).boxed())
        .await
        .map_err(StartError::Failed)?;
    match tokio::time::timeout(WARM_UP, tap.next()).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(StartError::Failed("the output tap closed".to_owned())),
        Err(_) => Err(StartError::Failed(format!(
            "no result within {WARM_UP:?} of the warm-up message"
        ))),
    }
}

/// Nanoseconds since the epoch.
fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// `count` payloads of `size` bytes (at least 8), released at `rate` per
/// second, each starting with its release time.
pub fn paced(rate: f64, count: u64, size: usize) -> BoxStream<'static, Bytes> {
    let start = tokio::time::Instant::now();
    futures::stream::unfold(0u64, move |i| async move {
        if i >= count {
            return None;
        }
        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
        let mut p = vec![b'x'; size.max(8)];
        p[..8].copy_from_slice(&now_ns().to_le_bytes());
        Some((Bytes::from(p), i + 1))
    })
    .boxed()
}

/// Latencies in milliseconds of up to `count` stamped results.
async fn collect(mut tap: BoxStream<'static, Bytes>, count: u64, limit: Duration) -> Vec<f64> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut ms = Vec::with_capacity(count as usize);
    while (ms.len() as u64) < count {
        match tokio::time::timeout_at(deadline, tap.next()).await {
            Ok(Some(p)) if p.len() >= 8 => {
                let mut ts = [0u8; 8];
                ts.copy_from_slice(&p[..8]);
                let sent = u64::from_le_bytes(ts);
                if sent != 0 {
                    ms.push(now_ns().saturating_sub(sent) as f64 / 1e6);
                }
            }
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    ms
}
