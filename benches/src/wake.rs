//! Waking from zero: on a route with `workers.min = 0`, the time from
//! publishing one message (with the broker's own client, as a user would)
//! to its result on the output, for the first message after `/readyz` and
//! then after each scale-down to zero.
//!
//! The route gets `idle_timeout = "1s"`, so that it is back at zero
//! workers (`/status`) within a few seconds of each result; every sample
//! waits for that before it publishes.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;

use crate::brokers::mqfn_config_with;
use crate::proc::{Consumer, StartError};
use crate::report::quantile;
use crate::throughput::Bench;

/// How long one sample may wait for its result, or for the scale-down.
const LIMIT: Duration = Duration::from_secs(60);

/// The samples of one broker.
#[derive(Debug, Clone, Default)]
pub struct Wake {
    /// Milliseconds from publish to result, in order; the first is the
    /// first message after start.
    pub ms: Vec<f64>,
}

impl Wake {
    /// The `q` quantile, ms.
    pub fn quantile(&self, q: f64) -> f64 {
        let mut v = self.ms.clone();
        v.sort_by(f64::total_cmp);
        quantile(&v, q)
    }
}

/// `samples` wake-ups of a fresh mqfn on `bench`'s broker.
pub async fn measure(bench: &Bench<'_>, samples: usize) -> Result<Wake, StartError> {
    bench
        .with_names(|names| async move {
            let workers = format!(
                "{{ min = 0, max = {}, idle_timeout = \"1s\", cooldown = \"1s\" }}",
                bench.opts.workers_max()
            );
            let config = mqfn_config_with(
                bench.harness.as_ref(),
                std::slice::from_ref(&names),
                &workers,
                "echo",
                bench.opts.dedup,
            );
            let c = Consumer::mqfn(bench.opts, &config).await?;
            let mut tap = bench
                .harness
                .tap(&names)
                .await
                .map_err(StartError::Failed)?;
            bench
                .harness
                .prepare(&names)
                .await
                .map_err(StartError::Failed)?;
            let mut wake = Wake::default();
            let result = async {
                for i in 0..samples {
                    at_zero(&c).await?;
                    let payload = Bytes::from(format!("wake-{i}"));
                    let start = Instant::now();
                    bench
                        .harness
                        .publish(&names, futures::stream::iter([payload.clone()]).boxed())
                        .await?;
                    loop {
                        match tokio::time::timeout(LIMIT, tap.next()).await {
                            Ok(Some(p)) if p == payload => break,
                            Ok(Some(_)) => continue,
                            Ok(None) => return Err("the output tap closed".to_owned()),
                            Err(_) => {
                                return Err(format!("sample {i}: no result within {LIMIT:?}"))
                            }
                        }
                    }
                    let ms = start.elapsed().as_secs_f64() * 1e3;
                    eprintln!("{} wake {i}: {ms:.1} ms", bench.broker().as_str());
                    wake.ms.push(ms);
                }
                Ok(())
            }
            .await;
            c.stop().await;
            result.map_err(StartError::Failed)?;
            Ok(wake)
        })
        .await
}

/// Waits until the route has no workers.
async fn at_zero(c: &Consumer) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let s = c.status().await?;
        if s["routes"][0]["workers"]["current"].as_u64() == Some(0) {
            return Ok(());
        }
        if start.elapsed() > LIMIT {
            return Err(format!("not back at zero workers within {LIMIT:?}: {s}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
