//! Process-handler overhead: `handlers/examples/noop.py` as a `process`
//! handler against the built-in `echo`, both called through mqfn's own
//! invocation path (`Route::attempt`: worker slot, time limit, panic
//! catching), with no broker in the way, as `mqfn call` does.
//!
//! Process handlers come with the lifecycle work; until this build has
//! them, `mqfn validate` refuses the config and the noop row says skipped.

use std::sync::Arc;
use std::time::Instant;

use mqfn::brokers::NoSettle;
use mqfn::config::{Config, RouteConfig};
use mqfn::message::Message;
use mqfn::route::{Attempted, Route};
use tokio_util::sync::CancellationToken;

use crate::opts::Options;
use crate::report::{median, quantile, HandlerFigures, HandlerReport};
use crate::Result;

/// Fresh instances started to time a cold start.
const COLD_STARTS: usize = 3;
/// Calls made before timing warm calls.
const WARM_UP: usize = 100;

/// Measures `echo` and, where this build has process handlers, `noop.py`.
pub async fn measure(opts: &Options) -> HandlerReport {
    let echo = match Config::from_str("", std::path::Path::new("bench.toml")) {
        Ok(cfg) => figures(&cfg, "echo", opts, false).await,
        Err(e) => Err(e.to_string()),
    };
    let noop = noop(opts).await;
    for (name, r) in [("echo", &echo), ("noop.py", &noop)] {
        match r {
            Ok(f) => eprintln!(
                "handler {name}: {:.0} calls/s (1 caller), {:.0} calls/s ({} callers), p50 {:.1} µs, p99 {:.1} µs, cold start {}",
                f.sequential_per_sec,
                f.concurrent_per_sec,
                f.concurrency,
                f.p50_us,
                f.p99_us,
                f.cold_start_ms.map_or("-".to_owned(), |c| format!("{c:.1} ms")),
            ),
            Err(e) => eprintln!("handler {name}: {e}"),
        }
    }
    HandlerReport {
        echo: Some(echo),
        noop: Some(noop),
    }
}

/// The process-handler config for `noop.py` with `max_instances`.
pub fn noop_config(opts: &Options) -> String {
    let script = opts.repo.join("handlers/examples/noop.py");
    format!(
        "[handlers.noop]\nkind = \"process\"\ncommand = [\"python3\", {:?}]\nmax_instances = {}\n",
        script.display().to_string(),
        opts.handler_instances.max(1)
    )
}

async fn noop(opts: &Options) -> Result<HandlerFigures> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = dir.path().join("mqfn.toml");
    std::fs::write(&path, noop_config(opts)).map_err(|e| e.to_string())?;
    let out = tokio::process::Command::new(&opts.mqfn_bin)
        .arg("validate")
        .arg("--config")
        .arg(&path)
        .output()
        .await
        .map_err(|e| format!("cannot run {:?}: {e}", opts.mqfn_bin))?;
    let skipped = "skipped: process handlers not available in this build";
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr);
        let why = why.lines().next().unwrap_or_default().trim().to_owned();
        return Err(format!("{skipped} (mqfn validate: {why})"));
    }
    let cfg = Config::load(&path).map_err(|e| format!("{skipped} ({e})"))?;
    figures(&cfg, "noop", opts, true).await
}

/// A route of `workers` workers around the handler `name`, with no
/// retries, so that a failure shows.
fn route(cfg: &Config, name: &str, workers: usize) -> Result<Arc<Route>> {
    let built = mqfn::handler::build(name, cfg).map_err(|e| e.to_string())?;
    let mut rcfg = RouteConfig {
        name: "bench".to_owned(),
        handler: name.to_owned(),
        ..RouteConfig::default()
    };
    rcfg.workers.min = workers;
    rcfg.workers.max = workers;
    rcfg.retry.max_attempts = 1;
    Ok(Arc::new(Route::new(
        &rcfg,
        built.handler,
        built.timeout,
        None,
        None,
        None,
    )))
}

async fn call(route: &Route, msg: &Message) -> Result<()> {
    let mut msg = msg.clone();
    match route
        .attempt(&mut msg, &NoSettle, &CancellationToken::new())
        .await
    {
        Attempted::Done(_) => Ok(()),
        Attempted::Failed(f) => Err(format!("the handler failed: {}", f.error)),
        Attempted::Abandoned(_) => Err("the call was abandoned".to_owned()),
    }
}

async fn figures(cfg: &Config, name: &str, opts: &Options, cold: bool) -> Result<HandlerFigures> {
    let msg = Message::new(vec![b'x'; opts.size]);
    let mut cold_ms = Vec::new();
    for _ in 0..if cold { COLD_STARTS } else { 0 } {
        let r = route(cfg, name, 1)?;
        let t = Instant::now();
        call(&r, &msg).await?;
        cold_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    // Warm, one caller: each round trip timed.
    let r = route(cfg, name, 1)?;
    for _ in 0..WARM_UP {
        call(&r, &msg).await?;
    }
    let calls = opts.handler_calls.max(1);
    let mut us = Vec::with_capacity(calls);
    let start = Instant::now();
    for _ in 0..calls {
        let t = Instant::now();
        call(&r, &msg).await?;
        us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let sequential = calls as f64 / start.elapsed().as_secs_f64();
    drop(r);
    us.sort_by(f64::total_cmp);
    // Warm, N callers on N workers (and N instances for a process).
    let n = opts.handler_instances.max(1);
    let r = route(cfg, name, n)?;
    let warm = (0..n).map(|_| {
        let (r, msg) = (r.clone(), msg.clone());
        tokio::spawn(async move {
            for _ in 0..WARM_UP {
                call(&r, &msg).await?;
            }
            Ok::<_, String>(())
        })
    });
    for t in warm.collect::<Vec<_>>() {
        t.await.map_err(|e| e.to_string())??;
    }
    let start = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (r, msg) = (r.clone(), msg.clone());
            tokio::spawn(async move {
                for _ in 0..calls.div_ceil(n) {
                    call(&r, &msg).await?;
                }
                Ok::<_, String>(())
            })
        })
        .collect();
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let concurrent = (calls.div_ceil(n) * n) as f64 / start.elapsed().as_secs_f64();
    Ok(HandlerFigures {
        sequential_per_sec: sequential,
        concurrent_per_sec: concurrent,
        concurrency: n,
        p50_us: quantile(&us, 0.50),
        p99_us: quantile(&us, 0.99),
        cold_start_ms: median(cold_ms.into_iter()),
    })
}
