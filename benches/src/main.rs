//! `mqfn-bench`: mqfn against a hand-written consumer on the same broker.
//!
//! ```text
//! cargo run --release -p mqfn-bench -- --broker nats|kafka|amqp|all [-n 200000] [-s 256] [--pairs 3]
//! ```
//!
//! Builds `mqfn` in the same profile first (`cargo build --release --bin
//! mqfn`) unless `--mqfn PATH` is given. Progress goes to stderr, the
//! report (Markdown tables) to stdout.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use mqfn::brokers::kafka::Latency;
use mqfn_bench::opts::Urls;
use mqfn_bench::{Broker, Options};

/// Benchmarks mqfn against a hand-written consumer on the same broker.
#[derive(Debug, Parser)]
#[command(name = "mqfn-bench", args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The baseline loop, as a child process of the bench (internal).
    #[command(hide = true)]
    Baseline {
        /// nats, kafka or amqp.
        #[arg(long)]
        broker: String,
        /// The run's id (names of its input and output).
        #[arg(long)]
        id: String,
        /// Messages in flight at most.
        #[arg(long)]
        window: usize,
        /// NATS: set `Nats-Msg-Id` on outputs as mqfn does.
        #[arg(long)]
        msg_id: bool,
        /// Kafka: the client properties of mqfn's `latency = "low"`.
        #[arg(long)]
        kafka_low_latency: bool,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// nats, kafka, amqp or all.
    #[arg(long, default_value = "nats")]
    broker: String,
    /// Messages per throughput run.
    #[arg(short = 'n', long, default_value_t = 200_000)]
    messages: u64,
    /// Payload bytes.
    #[arg(short = 's', long, default_value_t = 256)]
    size: usize,
    /// Baseline/mqfn pairs, alternated.
    #[arg(long, default_value_t = 3)]
    pairs: usize,
    /// Messages in flight: the baseline's window; mqfn gets workers.max =
    /// window / 2 (its window is workers.max × 2).
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Length of the paced latency run in seconds (0: none).
    #[arg(long, default_value_t = 5.0)]
    latency_secs: f64,
    /// Pace the latency run at this rate (msgs/s) instead of half the
    /// baseline's median rate.
    #[arg(long)]
    latency_rate: Option<f64>,
    /// Messages waiting for the memory-under-backlog run (0: none).
    #[arg(long, default_value_t = 1_000_000)]
    backlog: u64,
    /// Seconds of RSS sampling under the backlog.
    #[arg(long, default_value_t = 20.0)]
    backlog_secs: f64,
    /// Skip the idle RSS measurement.
    #[arg(long)]
    no_idle: bool,
    /// Skip the process-handler measurement.
    #[arg(long)]
    no_handlers: bool,
    /// Calls per handler measurement.
    #[arg(long, default_value_t = 20_000)]
    handler_calls: usize,
    /// Process handler instances (and callers) for the concurrent figure.
    #[arg(long, default_value_t = 2)]
    handler_instances: usize,
    /// The smoke run: N = 2,000, one pair, tiny latency and backlog runs.
    #[arg(long)]
    smoke: bool,
    /// The mqfn binary (default: build it in this profile and use it).
    #[arg(long)]
    mqfn: Option<PathBuf>,
    /// Record a `perf record -g` profile of each throughput run's consumer
    /// (baseline and mqfn) into this directory.
    #[arg(long)]
    perf: Option<PathBuf>,
    /// Run mqfn's NATS routes with `dedup = false` (no `Nats-Msg-Id`):
    /// plain at-least-once, the baseline's guarantee.
    #[arg(long)]
    no_dedup: bool,
    /// The NATS baseline sets `Nats-Msg-Id` on its outputs as mqfn does:
    /// both sides give the same guarantee.
    #[arg(long, conflicts_with = "no_dedup")]
    baseline_msg_id: bool,
    /// Partitions of the Kafka input and output topics.
    #[arg(long, default_value_t = mqfn_bench::brokers::kafka::PARTITIONS)]
    partitions: i32,
    /// Throughput over the config space instead of the one-point report:
    /// workers.max in {1, 8, 64, 256, 1024} (window = 2 × workers.max),
    /// Kafka also over partitions {1, 4, 16}, and payloads of 64 B, 1 KiB
    /// and 64 KiB at workers.max 128. `-n` caps each cell's messages.
    #[arg(long)]
    sweep: bool,
    /// Waking from zero instead of the one-point report: this many
    /// samples per broker of publish-to-result time on a route with
    /// `workers.min = 0`, each from zero workers, the first right after
    /// `/readyz`.
    #[arg(long, value_name = "SAMPLES")]
    wake: Option<usize>,
    /// mqfn's Kafka broker gets `latency = "low"`, and the baseline the
    /// same client properties.
    #[arg(long)]
    kafka_low_latency: bool,
    /// Many routes in one process instead of the one-point report: this
    /// many JetStream routes with `workers.min = 0`; time to `/readyz`,
    /// then idle CPU and RSS over `--quiet-secs`.
    #[arg(long, value_name = "ROUTES")]
    many_routes: Option<usize>,
    /// Handlers in other languages instead of the one-point report: a
    /// FastStream 0.7 no-op app against noop.py under mqfn (1 and 4
    /// instances) and noop.js (4 instances), `-n` messages per run.
    #[arg(long)]
    vs_faststream: bool,
    /// The quiet period of `--many-routes`, seconds.
    #[arg(long, default_value_t = 60.0)]
    quiet_secs: f64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Some(Command::Baseline {
            broker,
            id,
            window,
            msg_id,
            kafka_low_latency,
        }) => rt.block_on(baseline(
            &broker,
            &id,
            window,
            msg_id,
            latency(kafka_low_latency),
        )),
        None => rt.block_on(bench(cli.run)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn latency(low: bool) -> Latency {
    if low {
        Latency::Low
    } else {
        Latency::Default
    }
}

async fn baseline(
    broker: &str,
    id: &str,
    window: usize,
    msg_id: bool,
    latency: Latency,
) -> Result<(), String> {
    let b = match Broker::parse_list(broker)?.as_slice() {
        [one] => *one,
        _ => return Err("the baseline runs on one broker".to_owned()),
    };
    mqfn_bench::brokers::baseline(b, &Urls::from_env(), id, window, msg_id, latency).await
}

async fn bench(a: RunArgs) -> Result<(), String> {
    let me = std::env::current_exe().map_err(|e| format!("cannot find myself: {e}"))?;
    let mqfn_bin = match a.mqfn {
        Some(p) => p,
        None => build_mqfn(&me)?,
    };
    let mut opts = Options::new(mqfn_bin, me);
    opts.brokers = Broker::parse_list(&a.broker)?;
    opts.messages = a.messages;
    opts.size = a.size;
    opts.pairs = a.pairs.max(1);
    opts.window = a.window.max(2);
    opts.latency_secs = a.latency_secs;
    opts.latency_rate = a.latency_rate.filter(|r| *r > 0.0);
    opts.backlog = a.backlog;
    opts.backlog_secs = a.backlog_secs;
    opts.idle = !a.no_idle;
    opts.handlers = !a.no_handlers;
    opts.handler_calls = a.handler_calls;
    opts.handler_instances = a.handler_instances.max(1);
    opts.perf = a.perf;
    opts.dedup = !a.no_dedup;
    opts.baseline_msg_id = a.baseline_msg_id;
    opts.partitions = a.partitions.max(1);
    opts.kafka_latency = latency(a.kafka_low_latency);
    if a.smoke {
        opts = opts.smoke();
    }
    if a.vs_faststream {
        let mut rows = Vec::new();
        for &broker in &opts.brokers {
            eprintln!("== {} against FastStream", broker.as_str());
            match mqfn_bench::brokers::connect(broker, &opts).await {
                Ok(h) => {
                    let bench = mqfn_bench::throughput::Bench::new(&opts, h);
                    rows.extend(mqfn_bench::vs::measure(&bench).await);
                }
                Err(e) => eprintln!("{}: cannot connect: {e}", broker.as_str()),
            }
        }
        println!(
            "mqfn-bench --vs-faststream: N = {}, S = {} B, {} round(s), window {} (FastStream's prefetch, mqfn workers.max {}), {} CPU(s)\n",
            opts.messages,
            opts.size,
            opts.pairs,
            opts.window,
            opts.workers_max(),
            std::thread::available_parallelism().map_or(0, |n| n.get()),
        );
        print!("{}", mqfn_bench::vs::render(&rows));
        return Ok(());
    }
    if let Some(routes) = a.many_routes {
        let m = mqfn_bench::many::measure(&opts, routes.max(1), a.quiet_secs).await?;
        println!(
            "mqfn-bench --many-routes {routes}: mqfn {}\n",
            opts.mqfn_bin.display()
        );
        println!("| routes | ready s | idle CPU % of a core | RSS max MiB | peak RSS MiB | one message s | quiet s |");
        println!("|---:|---:|---:|---:|---:|---:|---:|");
        println!(
            "| {} | {:.2} | {:.2} | {:.1} | {:.1} | {:.3} | {:.0} |",
            m.routes,
            m.ready_secs,
            m.idle_cpu_pct,
            m.rss_max_mib,
            m.peak_mib,
            m.one_message_secs,
            m.quiet_secs
        );
        return Ok(());
    }
    if let Some(samples) = a.wake {
        println!(
            "mqfn-bench --wake {samples}: mqfn {}\n",
            opts.mqfn_bin.display()
        );
        println!("| broker | samples | first ms | p50 ms | p99 ms | max ms | note |");
        println!("|---|---:|---:|---:|---:|---:|---|");
        for &broker in &opts.brokers {
            let row = match wake(&opts, broker, samples.max(1)).await {
                Ok(w) => format!(
                    "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | |",
                    broker.as_str(),
                    w.ms.len(),
                    w.ms[0],
                    w.quantile(0.5),
                    w.quantile(0.99),
                    w.quantile(1.0)
                ),
                Err(e) => format!("| {} | - | - | - | - | - | {e} |", broker.as_str()),
            };
            println!("{row}");
        }
        return Ok(());
    }
    if a.sweep {
        let sweep = mqfn_bench::sweep::run(&opts).await;
        println!(
            "mqfn-bench --sweep: N ≤ {} per cell, {} pair(s), {} CPU(s), mqfn {}\n",
            opts.messages,
            opts.pairs,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            opts.mqfn_bin.display()
        );
        print!("{}", sweep.render());
        return Ok(());
    }
    let report = mqfn_bench::run(&opts).await;
    println!(
        "mqfn-bench: N = {}, S = {} B, {} pair(s), window {} (mqfn workers.max {}{}), {} CPU(s), mqfn {}\n",
        opts.messages,
        opts.size,
        opts.pairs,
        opts.window,
        opts.workers_max(),
        if opts.dedup { "" } else { ", NATS dedup = false" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        opts.mqfn_bin.display()
    );
    print!("{}", report.render());
    Ok(())
}

async fn wake(
    opts: &Options,
    broker: Broker,
    samples: usize,
) -> Result<mqfn_bench::wake::Wake, String> {
    let h = mqfn_bench::brokers::connect(broker, opts).await?;
    let bench = mqfn_bench::throughput::Bench::new(opts, h);
    mqfn_bench::wake::measure(&bench, samples)
        .await
        .map_err(|e| e.to_string())
}

/// Builds `mqfn` in the profile this bench was built in, and returns its
/// path: the bench and mqfn share the target directory.
fn build_mqfn(me: &std::path::Path) -> Result<PathBuf, String> {
    let dir = me.parent().ok_or("the bench binary has no directory")?;
    let release = dir.file_name().is_some_and(|n| n == "release");
    if !release {
        eprintln!("warning: this is not a release build; figures are for testing only");
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cmd = std::process::Command::new(cargo);
    cmd.current_dir(&repo).args(["build", "--bin", "mqfn"]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err("cargo build --bin mqfn failed".to_owned());
    }
    Ok(dir.join("mqfn"))
}
