//! Many routes in one process: `mqfn run` with N JetStream routes on one
//! stream, each its own durable consumer and `workers.min = 0`. Measures
//! the time to `/readyz` 200, then idle CPU and RSS over a quiet period,
//! then sends one message through the last route to show that it works.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use futures::StreamExt;

use crate::names::Names;
use crate::opts::Options;
use crate::proc::Consumer;
use crate::Result;

/// How long mqfn idles before the quiet period starts.
const SETTLE: Duration = Duration::from_secs(5);
/// How often RSS is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// The figures.
#[derive(Debug, Clone, Default)]
pub struct Many {
    /// Routes.
    pub routes: usize,
    /// From spawning `mqfn run` (after `mqfn validate`) to `/readyz` 200.
    pub ready_secs: f64,
    /// CPU of mqfn over the quiet period, in % of one core.
    pub idle_cpu_pct: f64,
    /// Largest RSS sampled over the quiet period, MiB.
    pub rss_max_mib: f64,
    /// Peak RSS (`VmHWM`) at the end, MiB.
    pub peak_mib: f64,
    /// Seconds from publishing to the last route's input to its result.
    pub one_message_secs: f64,
    /// The quiet period, seconds.
    pub quiet_secs: f64,
}

/// The config: `routes` echo routes `r0..` from `{id}.in.{i}` to
/// `{id}.out.{i}` (dead letters to `{id}.dlq.{i}`) on the stream `stream`.
pub fn config(url: &str, n: &Names, stream: &str, routes: usize) -> String {
    let mut s =
        format!("shutdown_timeout = \"10s\"\n\n[brokers.js]\nkind = \"nats\"\nurl = \"{url}\"\n");
    for i in 0..routes {
        s.push_str(&format!(
            r#"
[[routes]]
name = "r{i}"
source = {{ broker = "js", subject = "{id}.in.{i}", stream = "{stream}", durable = "{id}_{i}" }}
handler = "echo"
output = {{ broker = "js", subject = "{id}.out.{i}" }}
dead_letter = {{ broker = "js", subject = "{id}.dlq.{i}" }}
workers = {{ min = 0, max = 4 }}
"#,
            id = n.id
        ));
    }
    s
}

/// Runs the measurement with `routes` routes and a quiet period of
/// `quiet` seconds.
pub async fn measure(opts: &Options, routes: usize, quiet: f64) -> Result<Many> {
    let url = &opts.urls.nats;
    let client = async_nats::connect(url.as_str())
        .await
        .map_err(|e| format!("NATS at {url}: {e}"))?;
    let js = jetstream::new(client.clone());
    let n = Names::random();
    let stream = n.stream("MANY");
    js.create_stream(stream::Config {
        name: stream.clone(),
        subjects: vec![format!("{}.>", n.id)],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| format!("cannot create stream {stream}: {e}"))?;
    let result = run(opts, &client, &js, &n, &stream, routes, quiet).await;
    let _ = js.delete_stream(&stream).await;
    result
}

async fn run(
    opts: &Options,
    client: &async_nats::Client,
    js: &jetstream::Context,
    n: &Names,
    stream: &str,
    routes: usize,
    quiet: f64,
) -> Result<Many> {
    let text = config(&opts.urls.nats, n, stream, routes);
    let start = Instant::now();
    let c = Consumer::mqfn(opts, &text)
        .await
        .map_err(|e| e.to_string())?;
    let ready_secs = start.elapsed().as_secs_f64();
    eprintln!("{routes} routes: ready in {ready_secs:.2} s");
    let result = async {
        tokio::time::sleep(SETTLE).await;
        let quiet = Duration::from_secs_f64(quiet);
        let (t0, cpu0) = (Instant::now(), c.cpu_secs()?);
        let mut rss_max = 0;
        while t0.elapsed() < quiet {
            tokio::time::sleep(SAMPLE_EVERY).await;
            rss_max = rss_max.max(c.rss_kib()?);
        }
        let secs = t0.elapsed().as_secs_f64();
        let idle_cpu_pct = (c.cpu_secs()? - cpu0) / secs * 100.0;
        let peak_mib = c.peak_rss_kib()? as f64 / 1024.0;
        let last = routes.saturating_sub(1);
        let mut out = client
            .subscribe(format!("{}.out.{last}", n.id))
            .await
            .map_err(|e| e.to_string())?;
        client.flush().await.map_err(|e| e.to_string())?;
        let sent = Instant::now();
        js.publish(format!("{}.in.{last}", n.id), "one".into())
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(Duration::from_secs(60), out.next())
            .await
            .map_err(|_| format!("route r{last} gave no result within 60 s"))?
            .ok_or("the output subscription ended")?;
        Ok(Many {
            routes,
            ready_secs,
            idle_cpu_pct,
            rss_max_mib: rss_max as f64 / 1024.0,
            peak_mib,
            one_message_secs: sent.elapsed().as_secs_f64(),
            quiet_secs: secs,
        })
    }
    .await;
    c.stop().await;
    result
}
