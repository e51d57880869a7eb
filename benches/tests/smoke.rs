//! The bench's smoke run on NATS (N = 2,000, one pair, tiny latency and
//! backlog runs): keeps the bench compiling and working. It asserts that
//! every message was counted on both sides; never a timing.
//!
//! Needs NATS with JetStream (`NATS_URL`, default 127.0.0.1:4222) and the
//! `mqfn` binary beside this package's binary, which `cargo test
//! --workspace` builds (or `MQFN_BIN`).

use std::path::PathBuf;

use mqfn_bench::{Broker, Options};

fn mqfn_bin(bench: &std::path::Path) -> PathBuf {
    if let Ok(p) = std::env::var("MQFN_BIN") {
        return PathBuf::from(p);
    }
    let p = bench.with_file_name("mqfn");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --bin mqfn` (cargo test --workspace builds it) or set MQFN_BIN",
        p.display()
    );
    p
}

#[tokio::test(flavor = "multi_thread")]
async fn smoke_run_counts_every_message_on_both_sides() {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_mqfn-bench"));
    let mut opts = Options::new(mqfn_bin(&bench), bench).smoke();
    opts.brokers = vec![Broker::Nats];
    let report = mqfn_bench::run(&opts).await;
    println!("{}", report.render());

    let nats = &report.brokers[0];
    for (side, r) in [("baseline", &nats.baseline), ("mqfn", &nats.mqfn)] {
        assert_eq!(r.status, None, "{side}");
        assert_eq!(r.runs.len(), 1, "{side}: one pair");
        assert_eq!(
            r.runs[0].results, opts.messages,
            "{side}: every result counted"
        );
        assert!(r.runs[0].peak_rss_kib > 0, "{side}: memory read");
        let lat = r
            .latency
            .clone()
            .expect("a latency run")
            .expect("latency measured");
        assert_eq!(
            lat.received, lat.sent,
            "{side}: every paced message came back"
        );
    }
    let idle = nats.idle.clone().expect("idle measured").expect("idle RSS");
    assert!(idle.rss_kib > 0);
    let backlog = nats
        .backlog
        .clone()
        .expect("backlog run")
        .expect("backlog RSS");
    assert_eq!(backlog.waiting, opts.backlog);
    assert!(!backlog.samples.is_empty());

    let handlers = report.handlers.expect("handlers measured");
    let echo = handlers.echo.expect("echo").expect("echo measured");
    assert!(echo.p50_us > 0.0);
    match handlers.noop.expect("noop") {
        Ok(f) => assert!(
            f.cold_start_ms.is_some(),
            "a process handler has a cold start"
        ),
        Err(e) => assert!(e.starts_with("skipped"), "{e}"),
    }
}

/// `--wake`: every sample gets its result, the first right after start.
#[tokio::test(flavor = "multi_thread")]
async fn wake_samples_each_get_their_result() {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_mqfn-bench"));
    let opts = Options::new(mqfn_bin(&bench), bench).smoke();
    let h = mqfn_bench::brokers::connect(Broker::Nats, &opts)
        .await
        .expect("NATS");
    let b = mqfn_bench::throughput::Bench::new(&opts, h);
    let wake = mqfn_bench::wake::measure(&b, 3).await.expect("woken");
    assert_eq!(wake.ms.len(), 3, "one figure per sample");
    assert!(wake.ms.iter().all(|ms| *ms > 0.0));
}

/// `--many-routes`: the process with many routes gets ready, is measured,
/// and its last route works.
#[tokio::test(flavor = "multi_thread")]
async fn many_routes_get_ready_and_the_last_one_works() {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_mqfn-bench"));
    let opts = Options::new(mqfn_bin(&bench), bench).smoke();
    let m = mqfn_bench::many::measure(&opts, 20, 1.0)
        .await
        .expect("measured");
    assert_eq!(m.routes, 20);
    assert!(m.rss_max_mib > 0.0, "memory read");
    assert!(m.one_message_secs > 0.0, "the last route answered");
}
