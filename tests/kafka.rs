//! End-to-end tests against a real Kafka-compatible broker
//! (`KAFKA_BOOTSTRAP`, default 127.0.0.1:9092; `scripts/kafka-broker.sh`
//! starts tansu there). Every test uses its own random topics and group.
//!
//! Results are counted by consuming them (the test broker's reported high
//! watermark can trail the log end). Time limits only bound a hung test.

mod common;
mod kafka_support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, metric, nats_url, Mqfn};
use futures::StreamExt;
use kafka_support::{dump, plain, received, started, Fixture, Out, Rec, LONG, READY};

#[tokio::test(flavor = "multi_thread")]
async fn twenty_thousand_messages_each_get_exactly_one_result() {
    const N: usize = 20_000;
    let f = Fixture::new(4);
    let m = started(&f.config("echo", "", "workers = { min = 8, max = 64 }")).await;
    let _log = dump("", &m);
    let start = Instant::now();
    let per_partition = f
        .produce((0..N).map(|i| Rec::new(i, format!("m{i}")).key(format!("k{}", i % 100))))
        .await;
    let produced = start.elapsed();
    assert_eq!(
        per_partition.len(),
        4,
        "spread over 4 partitions: {per_partition:?}"
    );
    let mut out = f.reader("out", 4);
    out.until_distinct(N, LONG).await;
    let through = start.elapsed();
    out.drain(Duration::from_secs(3)).await;
    let dups = out.duplicates();
    println!(
        "20k: produced in {produced:.2?}, all {N} results in {through:.2?} ({:.0} msg/s end to end); \
         {} result record(s), {dups} duplicate(s); per partition {per_partition:?}",
        N as f64 / through.as_secs_f64(),
        out.records.len()
    );
    for r in &out.records {
        let n = r.n();
        assert_eq!(r.payload, format!("m{n}"), "payload kept");
        assert_eq!(
            r.key.as_deref(),
            Some(format!("k{}", n % 100).as_str()),
            "key kept"
        );
    }
    assert_eq!(dups, 0, "every input has exactly one result");
    let want: Vec<i64> = (0..4).map(|p| per_partition[&p]).collect();
    eventually(LONG, "every offset committed", || async {
        (f.committed().await == want).then_some(())
    })
    .await;
    let settled = metric(
        &m.metrics().await,
        "mqfn_messages_settled_total{route=\"r\",outcome=\"ok\"}",
    );
    assert_eq!(settled, Some(N as f64));
}

/// `/readyz` answers 200 only once the route's consumer has had its group
/// assignment: before, a message published on "ready" waited for the join
/// (half of `session.timeout.ms` on the test broker, or
/// `group.initial.rebalance.delay.ms` on Kafka).
#[tokio::test(flavor = "multi_thread")]
async fn ready_waits_for_the_group_assignment() {
    let f = Fixture::new(2);
    let m = started(&f.config("echo", "", "workers = { min = 0, max = 4 }")).await;
    let _log = dump("", &m);
    // The assignment is logged before the route counts as joined.
    assert!(
        m.log_text().contains("Partitions assigned"),
        "ready before the assignment:\n{}",
        m.log_text()
    );
    let status = m.status().await;
    assert_eq!(status["routes"][0]["joined"], true, "{status}");
    f.produce([Rec::new(0, "hi")]).await;
    let mut out = f.reader("out", 2);
    out.until_distinct(1, LONG).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_three_times_loses_nothing() {
    const N: usize = 10_000;
    let f = Fixture::new(4);
    let mut m = started(&f.config("fail", "", "workers = { min = 16, max = 16 }")).await;
    let _log = dump("", &m);
    f.produce((0..N).map(|i| {
        let body = if i % 1000 == 7 {
            "permanent:poison"
        } else {
            "sleep:1"
        };
        Rec::new(i, body).key(format!("k{}", i % 64))
    }))
    .await;
    let kills = common::kill_three_times(&mut m, LONG).await;
    let (mut out, mut dlq) = (f.reader("out", 4), f.reader("dlq", 1));
    let start = Instant::now();
    while out.distinct() + dlq.distinct() < N {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "gave up: {} results + {} dead letters of {N}",
            out.distinct(),
            dlq.distinct()
        );
        out.next(Duration::from_millis(200)).await;
        dlq.next(Duration::from_millis(200)).await;
    }
    out.drain(Duration::from_secs(2)).await;
    let dups = out.duplicates() + dlq.duplicates();
    println!(
        "crash accounting: {N} in; {} results + {} dead letters; {dups} duplicates; in flight at the kills: {kills:?}",
        out.distinct(),
        dlq.distinct()
    );
    for n in 0..N {
        assert!(
            out.counts.contains_key(&n) || dlq.counts.contains_key(&n),
            "input {n} was lost"
        );
    }
    assert_eq!(
        dlq.distinct(),
        10,
        "the ten poison messages are dead-lettered"
    );
    // Kafka replays from the last commit (every 500 ms here), so the bound
    // is what was in flight plus one commit interval of settled work.
    let bound: u64 = kills.iter().map(|k| k + 32).sum::<u64>() + 3 * 2000;
    assert!(
        dups as u64 <= bound,
        "duplicates {dups} exceed the bound {bound}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn commits_never_pass_a_slow_message_and_a_crash_redoes_it_and_after() {
    const N: usize = 40;
    const K: usize = 10; // the slow one's offset (one partition: n = offset)
    let f = Fixture::new(1);
    let extra = r#"workers = { min = 8, max = 8 }
timeout = "5m""#;
    let mut m = started(&f.config("fail", "", extra)).await;
    let _log = dump("", &m);
    f.produce((0..N).map(|i| {
        let payload = if i == K {
            "sleep:600000".to_owned()
        } else {
            format!("x{i}")
        };
        Rec::new(i, payload)
    }))
    .await;
    let mut out = f.reader("out", 1);
    out.until_distinct(N - 1, LONG).await;
    assert!(
        !out.counts.contains_key(&K),
        "the slow one is still running"
    );
    // Everything after K is settled, yet the commit stays at K.
    let committed = eventually(LONG, "the commit to reach the slow offset", || async {
        let c = f.committed().await[0];
        assert!(
            c <= K as i64,
            "committed {c} passed the in-flight offset {K}"
        );
        (c == K as i64).then_some(c)
    })
    .await;
    println!("contiguous: offsets 0..{N} but {K} settled; committed offset {committed}");
    m.kill(); // SIGKILL before K settles
              // Restart with a handler that echoes at once, so K completes now.
    let text = std::fs::read_to_string(&m.config).expect("config");
    std::fs::write(
        &m.config,
        text.replace("handler = \"fail\"", "handler = \"echo\""),
    )
    .expect("rewrite config");
    m.spawn();
    m.wait_ready(READY).await;
    out.until(LONG, "K and every later offset processed again", |r| {
        let c = &r.counts;
        c.get(&K) == Some(&1) && (K + 1..N).all(|i| c.get(&i).copied().unwrap_or(0) >= 2)
    })
    .await;
    out.drain(Duration::from_secs(2)).await;
    let counts = &out.counts;
    for i in 0..N {
        let c = counts.get(&i).copied().unwrap_or(0);
        match i.cmp(&K) {
            std::cmp::Ordering::Less => assert_eq!(c, 1, "offset {i} was committed: not redone"),
            std::cmp::Ordering::Equal => assert_eq!(c, 1, "the slow one is done once"),
            std::cmp::Ordering::Greater => assert_eq!(c, 2, "offset {i} after K is redone"),
        }
    }
    println!(
        "contiguous: after SIGKILL and restart, offset {K} and the {} after it were processed again; none skipped",
        N - K - 1
    );
    eventually(LONG, "every offset committed", || async {
        (f.committed().await[0] == N as i64).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn key_ordering_keeps_each_key_in_order_and_runs_keys_in_parallel() {
    const KEYS: usize = 50;
    const PER_KEY: usize = 8;
    const SLEEP_MS: i64 = 25;
    let f = Fixture::new(4);
    let extra = r#"workers = { min = 8, max = 8 }
ordering = "key""#;
    let m = started(&f.config("fail", "", extra)).await;
    let _log = dump("", &m);
    let recs = (0..PER_KEY).flat_map(|seq| {
        (0..KEYS).map(move |k| {
            Rec::new(seq * KEYS + k, format!("sleep:{SLEEP_MS}"))
                .key(format!("key{k}"))
                .header("seq", seq.to_string())
        })
    });
    f.produce(recs).await;
    let mut out = f.reader("out", 4);
    out.until_distinct(KEYS * PER_KEY, LONG).await;
    let mut by_key: HashMap<String, Vec<usize>> = HashMap::new();
    for r in &out.records {
        let seq = r.headers["seq"].parse().expect("seq");
        by_key
            .entry(r.key.clone().expect("key"))
            .or_default()
            .push(seq);
    }
    assert_eq!(by_key.len(), KEYS);
    for (k, seqs) in &by_key {
        assert_eq!(
            *seqs,
            (0..PER_KEY).collect::<Vec<_>>(),
            "key {k} out of order"
        );
    }
    // Evidence of parallelism: each invocation ran during [end - sleep,
    // end], where end is its result's produce timestamp.
    let mut edges: Vec<(i64, i32)> = out
        .records
        .iter()
        .flat_map(|r| [(r.timestamp_ms - SLEEP_MS, 1), (r.timestamp_ms, -1)])
        .collect();
    edges.sort();
    let (mut now, mut most) = (0, 0);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    let mut pairs = 0;
    for (i, a) in out.records.iter().enumerate() {
        for b in &out.records[i + 1..] {
            if a.key != b.key && (a.timestamp_ms - b.timestamp_ms).abs() < SLEEP_MS {
                pairs += 1;
            }
        }
    }
    let partitions: std::collections::BTreeSet<i32> =
        out.records.iter().map(|r| r.partition).collect();
    println!(
        "key ordering: {} results, {KEYS} keys each in order; up to {most} invocations of \
         different keys overlapped, {pairs} overlapping pairs of different keys; output partitions {partitions:?}",
        out.records.len()
    );
    assert!(most > 1, "different keys ran at the same time");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_processes_split_the_partitions_and_one_stopping_hands_them_over() {
    let f = Fixture::new(4);
    let config = f.config(
        "fail",
        r#""partition.assignment.strategy" = "cooperative-sticky""#,
        "workers = { min = 8, max = 8 }",
    );
    let a = started(&config).await;
    let _log_a = dump("A", &a);
    eventually(LONG, "A to own the partitions", || async {
        a.log_text().contains("Partitions assigned").then_some(())
    })
    .await;
    // Keep producing (each message takes 10ms to handle) while B joins,
    // works and leaves, so that partitions move with messages in flight.
    let total = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (f, total, stop) = (f.clone(), total.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                f.produce((n..n + 40).map(|i| Rec::new(i, "sleep:10").key(format!("k{i}"))))
                    .await;
                n += 40;
                total.store(n, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    eventually(LONG, "A to handle messages", || async {
        (received(&a).await > 0.0).then_some(())
    })
    .await;
    let mut b = started(&config).await;
    let _log_b = dump("B", &b);
    eventually(LONG, "A to hand partitions to B", || async {
        let (la, lb) = (a.log_text(), b.log_text());
        (la.contains("Partitions revoked") && lb.contains("Partitions assigned")).then_some(())
    })
    .await;
    let a_at_split = received(&a).await;
    eventually(LONG, "both processes to handle messages", || async {
        (received(&b).await > 0.0 && received(&a).await > a_at_split).then_some(())
    })
    .await;
    let (ra, rb) = (received(&a).await, received(&b).await);
    b.signal("TERM");
    assert!(b.wait_exit(LONG).success(), "B stops cleanly");
    eventually(LONG, "A to take B's partitions back", || async {
        (a.log_text().matches("Partitions assigned").count() >= 2).then_some(())
    })
    .await;
    let before = received(&a).await;
    eventually(LONG, "A to handle more messages alone", || async {
        (received(&a).await > before + 200.0).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    feeder.await.expect("feeder");
    let n = total.load(Ordering::Relaxed);
    let mut out = f.reader("out", 4);
    out.until_distinct(n, LONG).await;
    out.drain(Duration::from_secs(3)).await;
    let events = |m: &Mqfn, who: &str| -> Vec<String> {
        m.log_text()
            .lines()
            .filter(|l| l.contains("Partitions assigned") || l.contains("Partitions revoked"))
            .map(|l| format!("{who} {}", plain(l.split("consumer: ").last().unwrap_or(l))))
            .collect()
    };
    let events = [events(&a, "A"), events(&b, "B")].concat();
    println!(
        "rebalance: {n} messages, all with a result, {} duplicate(s); while both ran A had \
         received {ra} and B {rb}; events: {events:#?}",
        out.duplicates()
    );
    assert_eq!(out.distinct(), n, "no message lost");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_message_is_dead_lettered_and_the_partition_keeps_flowing() {
    const N: usize = 30;
    const POISON: usize = 5;
    let f = Fixture::new(1);
    let extra = r#"workers = { min = 2, max = 4 }
ordering = "partition""#;
    let m = started(&f.config("fail", "", extra)).await;
    let _log = dump("", &m);
    f.produce((0..N).map(|i| {
        let payload = if i == POISON {
            "retry:poison pill".to_owned()
        } else {
            format!("ok{i}")
        };
        Rec::new(i, payload).key("same").header("origin", "test")
    }))
    .await;
    let mut dlq = f.reader("dlq", 1);
    dlq.until_distinct(1, LONG).await;
    let d = &dlq.records[0];
    println!("poison: dead letter headers {:?}", d.headers);
    assert_eq!(d.payload, "retry:poison pill");
    assert_eq!(d.n(), POISON);
    assert_eq!(d.key.as_deref(), Some("same"));
    assert_eq!(d.headers["origin"], "test", "original headers kept");
    assert_eq!(d.headers["mqfn-attempts"], "3");
    assert_eq!(d.headers["mqfn-error-class"], "retryable");
    assert!(d.headers["mqfn-error"].contains("poison pill"));
    assert_eq!(d.headers["mqfn-route"], "r");
    assert_eq!(d.headers["mqfn-handler"], "fail");
    assert_eq!(
        d.headers["mqfn-source"],
        format!("k/{}/0/{POISON}", f.topic("in"))
    );
    assert!(d.headers.contains_key("mqfn-failed-at"));
    let mut out = f.reader("out", 1);
    out.until_distinct(N - 1, LONG).await;
    let order: Vec<usize> = out.records.iter().map(Out::n).collect();
    let want: Vec<usize> = (0..N).filter(|i| *i != POISON).collect();
    assert_eq!(order, want, "the partition kept flowing, in order");
    eventually(LONG, "the commit to pass the poison message", || async {
        (f.committed().await[0] == N as i64).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_source_with_a_jetstream_output() {
    use async_nats::jetstream::{self, consumer, stream};
    const N: usize = 500;
    let f = Fixture::new(2);
    let subject = format!("{}.out", f.p);
    let stream_name = f.p.to_uppercase();
    // The stream is declared in the config and also made here, so that the
    // test reads it whatever creates it first.
    let js = jetstream::new(async_nats::connect(nats_url()).await.expect("NATS"));
    let s = js
        .get_or_create_stream(stream::Config {
            name: stream_name.clone(),
            subjects: vec![format!("{}.>", f.p)],
            storage: stream::StorageType::Memory,
            ..Default::default()
        })
        .await
        .expect("stream");
    let config = f
        .config("echo", "", "workers = { min = 2, max = 16 }")
        .replace(
            &format!(
                "output = {{ broker = \"k\", topic = \"{}.out\", create = {{ partitions = 2 }} }}",
                f.p
            ),
            &format!("output = {{ broker = \"js\", subject = \"{subject}\" }}"),
        )
        + &format!(
            r#"
[brokers.js]
kind = "nats"
url = "{url}"

[[brokers.js.streams]]
name = "{stream_name}"
subjects = ["{p}.>"]
storage = "memory"
"#,
            url = nats_url(),
            p = f.p,
        );
    assert!(config.contains("broker = \"js\""), "output rewired to NATS");
    let m = started(&config).await;
    let _log = dump("", &m);
    f.produce((0..N).map(|i| Rec::new(i, format!("m{i}")).key(format!("k{}", i % 7))))
        .await;
    let c = s
        .create_consumer(consumer::pull::Config {
            filter_subject: subject.clone(),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut msgs = c.messages().await.expect("messages");
    let mut seen = HashMap::new();
    let start = Instant::now();
    while seen.len() < N {
        assert!(
            start.elapsed() < LONG,
            "only {} of {N} results on NATS",
            seen.len()
        );
        let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(5), msgs.next()).await else {
            continue;
        };
        let m = m.expect("message");
        let h = m.headers.as_ref().expect("headers");
        let n: usize = h.get("n").expect("n").as_str().parse().expect("number");
        assert_eq!(m.payload, format!("m{n}").as_bytes());
        assert_eq!(
            h.get("mqfn-key").map(|v| v.as_str()),
            Some(format!("k{}", n % 7).as_str())
        );
        m.ack().await.expect("ack");
        *seen.entry(n).or_insert(0) += 1;
    }
    println!(
        "cross-broker: {N} Kafka inputs, {} results on JetStream",
        seen.len()
    );
    let _ = js.delete_stream(&stream_name).await;
}

async fn run_cli(args: Vec<String>) -> (bool, String, String) {
    let out = tokio::task::spawn_blocking(move || {
        common::cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .expect("join");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn dlq_list_leaves_dead_letters_and_redrive_moves_only_the_matching_ones() {
    let f = Fixture::new(1);
    let extra = r#"retry = { max_attempts = 2, initial_backoff = "5ms", max_backoff = "10ms" }"#;
    let config = f.config("fail", "", "").replace(
        r#"retry = { max_attempts = 3, initial_backoff = "10ms", max_backoff = "50ms" }"#,
        extra,
    );
    let m = started(&config).await;
    let _log = dump("", &m);
    f.produce(
        [
            "permanent:bad order",
            "permanent:bad customer",
            "retry:flaky",
        ]
        .into_iter()
        .enumerate()
        .map(|(i, p)| Rec::new(i, p)),
    )
    .await;
    let cfg = m.config.to_str().expect("path").to_owned();
    let dlq = |args: &[&str]| {
        let mut v: Vec<String> = vec!["dlq".into()];
        v.extend(args.iter().map(|s| s.to_string()));
        v.extend(["--config".to_owned(), cfg.clone()]);
        run_cli(v)
    };
    let listing = eventually(LONG, "three dead letters listed", || async {
        let (ok, out, _) = dlq(&["list", "r"]).await;
        (ok && out.lines().count() == 4).then_some(out)
    })
    .await;
    println!("dlq list:\n{listing}");
    assert!(listing.contains("bad order") && listing.contains("flaky"));
    assert!(listing.contains("permanent") && listing.contains("retryable"));
    let (_, again, _) = dlq(&["list", "r"]).await;
    assert_eq!(
        again.lines().count(),
        4,
        "listing consumed nothing:\n{again}"
    );

    let (ok, _, err) = dlq(&["redrive", "r", "--filter", "mqfn-error-class=retryable"]).await;
    assert!(ok, "{err}");
    assert!(
        err.contains("redrove 1 dead letter(s)") && err.contains("2 left"),
        "{err}"
    );
    // The redriven one fails again and comes back with fresh counters.
    let mut dead = f.reader("dlq", 1);
    dead.until(LONG, "the redriven message dead-lettered again", |r| {
        r.records
            .iter()
            .any(|o| o.headers.get("mqfn-redrives").map(String::as_str) == Some("1"))
    })
    .await;
    let back = dead
        .records
        .iter()
        .find(|o| o.headers.contains_key("mqfn-redrives"))
        .expect("redriven");
    assert_eq!(back.headers["mqfn-attempts"], "2", "attempts start afresh");
    assert_eq!(back.payload, "retry:flaky");
    let listing = eventually(
        LONG,
        "two left in place plus the one that failed again",
        || async {
            let (ok, out, _) = dlq(&["list", "r"]).await;
            (ok && out.lines().count() == 4).then_some(out)
        },
    )
    .await;
    println!("dlq list after redrive:\n{listing}");
    assert!(listing.contains("bad order") && listing.contains("bad customer"));

    let (ok, _, err) = dlq(&["redrive", "r", "--limit", "2"]).await;
    assert!(ok, "{err}");
    assert!(err.contains("redrove 2 dead letter(s)"), "{err}");
}
