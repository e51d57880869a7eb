//! Fault injection on Kafka: a broker restart mid-run (on a private tansu
//! whose log is kept in S3), handler faults, hostile input, and headers
//! that the output broker cannot carry. (SIGKILLs of mqfn, rebalances and
//! poison messages are in tests/kafka.rs.)

mod amqp_support;
mod common;
mod kafka_support;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{eventually, hostile, kafka_bootstrap, metric};
use kafka_support::tansu::PrivateKafka;
use kafka_support::{dump, started, Fixture, Out, Rec, LONG};

/// The source's broker is killed (SIGKILL) mid-run and restarted on the
/// same port and storage. Outputs go to the shared test broker, which stays
/// up: tansu's S3 engine can lose a produce that is in flight when it is
/// killed (docs/reliability.md), which would be the test broker's loss, not
/// mqfn's.
#[tokio::test(flavor = "multi_thread")]
async fn source_broker_restart_mid_run_loses_nothing() {
    const N: usize = 3000;
    let mut kafka = PrivateKafka::start().await;
    let f = Fixture::on(&kafka.bootstrap, 2).sinks_on(&kafka_bootstrap());
    // `fail` with `sleep:10` echoes after 10 ms: slow enough that the kill
    // lands mid-run.
    let config = f.config("fail", "", "workers = { min = 8, max = 8 }");
    let m = started(&config).await;
    let _log = dump("", &m);
    f.produce((0..N).map(|i| Rec::new(i, "sleep:10").key(format!("k{}", i % 64))))
        .await;
    let done = |v: serde_json::Value| {
        let r = &v["routes"][0];
        Some(r["succeeded"].as_u64()? + r["dead_lettered"].as_u64()?)
    };
    eventually(LONG, "progress before the kill", || async {
        (done(m.status().await)? >= 500).then_some(())
    })
    .await;
    kafka.kill();
    let at_kill = done(m.status().await).unwrap_or_default();
    assert!(
        at_kill < N as u64,
        "the broker was killed mid-run ({at_kill} of {N} done)"
    );
    eventually(
        LONG,
        "/readyz to report 503 while the broker is down",
        || async { matches!(m.get("/readyz").await, Some((503, _))).then_some(()) },
    )
    .await;
    let up = metric(&m.metrics().await, "mqfn_broker_up{broker=\"k\"}");
    assert_eq!(up, Some(0.0), "mqfn_broker_up shows the outage");
    // Stay down past the group's session timeout (6 s), so that the
    // consumer must rejoin rather than carry on where it was.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let while_down = done(m.status().await).unwrap_or_default();
    kafka.spawn().await;
    m.wait_ready(LONG).await;
    let mut out = f.reader("out", 2);
    out.until_distinct(N, LONG).await;
    out.drain(Duration::from_secs(3)).await;
    let t = m.metrics().await;
    let assigned = m.log_text().matches("Partitions assigned").count();
    println!(
        "source broker restart: {N} in, {} distinct results, {} duplicates; killed at {at_kill} \
         done, {while_down} done when restarted; partitions assigned {assigned} time(s)",
        out.distinct(),
        out.duplicates(),
    );
    for n in 0..N {
        assert!(out.counts.contains_key(&n), "input {n} was lost");
    }
    assert_eq!(
        metric(&t, "mqfn_dead_letters_total{route=\"r\"}"),
        Some(0.0),
        "nothing was dead-lettered"
    );
    eventually(
        LONG,
        "every input offset committed after the restart",
        || async {
            let c = f.committed().await;
            (c.iter().sum::<i64>() == N as i64).then_some(())
        },
    )
    .await;
}

/// A dead letter's reason: (`mqfn-error-class`, `mqfn-error`).
fn reason(o: &Out) -> (String, String) {
    (
        o.headers["mqfn-error-class"].clone(),
        o.headers["mqfn-error"].clone(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn handler_faults_are_contained_and_the_route_keeps_flowing() {
    const BIG: usize = 1000;
    let f = Fixture::new(2);
    // The second route makes a 1.1 MB result from a 400 kB input: more than
    // the producer's message.max.bytes (1,000,000 by default).
    let pad = "x".repeat(700_000);
    let extra = format!(
        r#"timeout = "300ms"

[handlers.inflate]
kind = "builtin"
builtin = "json-transform"
options = {{ set = {{ pad = "{pad}" }} }}

[[routes]]
name = "big"
source = {{ broker = "k", topic = "{p}.big", group = "{g}-big", create = {{ partitions = 1 }} }}
handler = "inflate"
output = {{ broker = "k", topic = "{p}.out" }}
dead_letter = {{ broker = "k", topic = "{p}.dlq" }}
"#,
        p = f.p,
        g = f.group,
    );
    let m = started(&f.config("fail", "", &extra)).await;
    let _log = dump("", &m);
    f.produce((0..103).map(|i| match i {
        0 => Rec::new(i, "panic"),
        1 => Rec::new(i, "sleep:5000"),
        _ => Rec::new(i, format!("fine {i}")),
    }))
    .await;
    let body = format!("{{\"data\":\"{}\"}}", "y".repeat(400_000));
    f.produce_to("big", [Rec::new(BIG, body)]).await;
    let mut dlq = f.reader("dlq", 1);
    dlq.until_distinct(3, LONG).await;
    let mut out = f.reader("out", 2);
    out.until_distinct(101, LONG).await;
    out.drain(Duration::from_secs(2)).await;
    dlq.drain(Duration::from_secs(1)).await;
    let reasons: BTreeMap<usize, (String, String)> =
        dlq.records.iter().map(|o| (o.n(), reason(o))).collect();
    println!("{reasons:#?}");
    assert_eq!(
        reasons.keys().copied().collect::<Vec<_>>(),
        [0, 1, BIG],
        "the panic, the hang and the oversized result are dead-lettered"
    );
    assert_eq!(out.distinct(), 101, "every healthy message went through");
    assert!((2..103).all(|n| out.counts.contains_key(&n)));
    for n in [0, 1] {
        let attempts = &dlq.get(n).expect("dead letter").headers["mqfn-attempts"];
        assert_eq!(attempts, "3", "{n}: retried up to max_attempts");
    }
    assert_eq!(reasons[&0].0, "crashed");
    assert!(reasons[&0].1.contains("panicked"), "{:?}", reasons[&0]);
    assert!(
        reasons[&1].1.contains("timed out after 300ms"),
        "{:?}",
        reasons[&1]
    );
    assert_eq!(reasons[&BIG].0, "permanent");
    assert!(
        reasons[&BIG].1.contains("refused by the broker") && reasons[&BIG].1.contains("too large"),
        "{:?}",
        reasons[&BIG]
    );
    let big = dlq.get(BIG).expect("the oversized one");
    assert_eq!(big.raw.len(), 400_011, "the original input, not the result");
    let t = m.metrics().await;
    assert!(common::invocations(&t, "fail", "crash") >= Some(2.0));
    assert!(common::invocations(&t, "fail", "timeout") >= Some(2.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_input_is_dead_lettered_with_the_reason() {
    let f = Fixture::new(1);
    let extra = format!("{}\n\n{}", hostile::ROUTE, hostile::HANDLER);
    let m = started(&f.config("tag", "", &extra)).await;
    let _log = dump("", &m);
    let cases = hostile::cases();
    f.produce(
        cases
            .iter()
            .enumerate()
            .map(|(n, (case, body))| Rec::new(n, body.clone()).header("case", *case)),
    )
    .await;
    let mut dlq = f.reader("dlq", 1);
    dlq.until_distinct(4, LONG).await;
    let mut out = f.reader("out", 1);
    out.until_distinct(1, LONG).await;
    out.drain(Duration::from_secs(1)).await;
    dlq.drain(Duration::from_secs(1)).await;
    assert_eq!(out.records.len(), 1);
    assert_eq!(out.records[0].headers["case"], "good");
    assert_eq!(out.records[0].payload, hostile::GOOD_RESULT);
    let mut reasons = BTreeMap::new();
    for d in &dlq.records {
        let case = d.headers["case"].as_str();
        assert_eq!(
            d.raw,
            hostile::original(&cases, case),
            "{case}: the original payload, byte for byte"
        );
        let (class, error) = reason(d);
        assert_eq!(class, "permanent", "{case}");
        reasons.insert(case.to_owned(), error);
    }
    hostile::assert_reasons(&reasons);
}

/// A process handler that writes garbage on its protocol stdout and one
/// that exits mid-request are crashes: retried, then dead-lettered, while
/// the same handler's other messages flow.
#[tokio::test(flavor = "multi_thread")]
async fn a_process_handler_writing_garbage_is_dead_lettered_and_others_flow() {
    let f = Fixture::new(1);
    let extra = format!(
        r#"
[handlers.flaky]
kind = "process"
command = ["python3", "{}/handlers/examples/flaky.py"]
timeout = "5s"
max_instances = 2
"#,
        env!("CARGO_MANIFEST_DIR")
    );
    let m = started(&f.config("flaky", "", &extra)).await;
    let _log = dump("", &m);
    let bodies: Vec<Vec<u8>> = (0..22)
        .map(|n| match n {
            0 => b"garbage".to_vec(),
            1 => b"exit".to_vec(),
            n => format!("fine {n}").into_bytes(),
        })
        .collect();
    f.produce(
        bodies
            .iter()
            .enumerate()
            .map(|(n, b)| Rec::new(n, b.clone())),
    )
    .await;
    let mut dlq = f.reader("dlq", 1);
    dlq.until_distinct(2, LONG).await;
    let mut out = f.reader("out", 1);
    out.until_distinct(20, LONG).await;
    out.drain(Duration::from_secs(1)).await;
    let mut reasons = BTreeMap::new();
    for d in &dlq.records {
        let (class, error) = reason(d);
        reasons.insert(String::from_utf8_lossy(&d.raw).into_owned(), (class, error));
    }
    println!("{reasons:#?}");
    for bad in ["garbage", "exit"] {
        assert_eq!(reasons[bad].0, "crashed", "{bad}: {:?}", reasons[bad]);
    }
    for d in &dlq.records {
        assert_eq!(
            d.headers["mqfn-attempts"], "3",
            "retried up to max_attempts"
        );
    }
    assert_eq!(out.distinct(), 20, "every other message went through");
}

/// Kafka headers carry any bytes; NATS headers cannot hold a line break or
/// a space in a name, and AMQP header names stop at 255 bytes. A result the
/// output broker refuses sends its input to the dead letter with the reason
/// (and a dead letter refused for its headers is sent again with them
/// sanitized); every other message flows on.
#[tokio::test(flavor = "multi_thread")]
async fn headers_the_output_broker_cannot_carry_are_dead_lettered_with_the_reason() {
    let f = Fixture::new(1);
    let (s, stream, js) = common::js_stream("hdr").await;
    let queue = common::rand_name("hdr_out");
    let config = format!(
        r#"
[brokers.k]
kind = "kafka"
bootstrap = "{bootstrap}"
commit_interval = "500ms"

[brokers.k.properties]
"session.timeout.ms" = "6000"

[brokers.js]
kind = "nats"
url = "{nats}"

{rabbit}{queue_decl}
[[routes]]
name = "to-nats"
source = {{ broker = "k", topic = "{p}.in", group = "{g}", create = {{ partitions = 1 }} }}
handler = "echo"
output = {{ broker = "js", subject = "{s}.out" }}
dead_letter = {{ broker = "js", subject = "{s}.dlq" }}

[[routes]]
name = "to-amqp"
source = {{ broker = "k", topic = "{p}.amqp", group = "{g}-amqp", create = {{ partitions = 1 }} }}
handler = "echo"
output = {{ broker = "rabbit", queue = "{queue}" }}
dead_letter = {{ broker = "k", topic = "{p}.dlq", create = {{ partitions = 1 }} }}
"#,
        bootstrap = f.bootstrap,
        nats = common::nats_url(),
        rabbit = amqp_support::broker(&common::amqp_url()),
        queue_decl = amqp_support::queue_decl(&queue, "classic"),
        p = f.p,
        g = f.group,
    );
    let m = started(&config).await;
    let _log = dump("", &m);
    let long_name = "h".repeat(300);
    f.produce((0..54).map(|n| {
        let r = Rec::new(n, format!("m{n}"));
        match n {
            0 => r.header("note", "line one\r\nline two"),
            1 => r.header("bad name", "x"),
            2 => r.header("bin", vec![0xff, b'A']),
            // async-nats panicked on a non-ASCII name once: the result was
            // never settled and came back forever.
            3 => r.header("naïve", "x"),
            _ => r,
        }
    }))
    .await;
    f.produce_to(
        "amqp",
        (100..111).map(|n| {
            let r = Rec::new(n, format!("m{n}"));
            if n == 100 {
                r.header(&long_name, "v")
            } else {
                r
            }
        }),
    )
    .await;
    let n_of = |m: &async_nats::jetstream::Message| -> usize {
        let h = m.headers.as_ref().expect("headers");
        h.get("n").expect("n").as_str().parse().expect("a number")
    };
    let outs = common::js_read_at_least(&js, &stream, &format!("{s}.out"), 51, LONG).await;
    let dead = common::js_read_at_least(&js, &stream, &format!("{s}.dlq"), 3, LONG).await;
    let rabbit = amqp_support::Rabbit::connect(&common::amqp_url()).await;
    let got = rabbit.take(&queue, 10).await;
    let mut kafka_dlq = f.reader("dlq", 1);
    kafka_dlq.until_distinct(1, LONG).await;

    let mut ns: Vec<usize> = outs.iter().map(n_of).collect();
    ns.sort_unstable();
    assert_eq!(
        ns,
        std::iter::once(2).chain(4..54).collect::<Vec<_>>(),
        "every other message went through, once"
    );
    let bin = outs.iter().find(|m| n_of(m) == 2).expect("n=2");
    let bin = bin
        .headers
        .as_ref()
        .and_then(|h| h.get("bin"))
        .expect("bin");
    assert_eq!(
        bin.as_str(),
        "\u{fffd}A",
        "a non-UTF-8 value arrives converted, not refused"
    );

    let header = |m: &async_nats::jetstream::Message, k: &str| -> String {
        let h = m.headers.as_ref().expect("headers");
        h.get(k).map(|v| v.as_str().to_owned()).unwrap_or_default()
    };
    let mut reasons = BTreeMap::new();
    for d in &dead {
        let n = n_of(d);
        assert_eq!(
            d.payload,
            format!("m{n}").as_bytes(),
            "the original payload"
        );
        assert_eq!(header(d, "mqfn-error-class"), "permanent");
        assert_eq!(header(d, "mqfn-headers-sanitized"), "true");
        reasons.insert(n, header(d, "mqfn-error"));
    }
    let line = dead.iter().find(|d| n_of(d) == 0).expect("n=0");
    assert_eq!(header(line, "note"), "line one  line two");
    let name = dead.iter().find(|d| n_of(d) == 1).expect("n=1");
    assert_eq!(header(name, "bad_name"), "x");
    let ascii = dead.iter().find(|d| n_of(d) == 3).expect("n=3");
    assert_eq!(header(ascii, "na_ve"), "x");

    let mut to_amqp: Vec<String> = got.iter().map(|g| g.headers["n"].clone()).collect();
    to_amqp.sort();
    assert_eq!(
        to_amqp,
        (101..111).map(|n| n.to_string()).collect::<Vec<_>>()
    );
    let refused = kafka_dlq.get(100).expect("n=100");
    assert_eq!(refused.headers["mqfn-error-class"], "permanent");
    assert_eq!(
        refused.headers[&long_name], "v",
        "Kafka keeps the header as it was"
    );
    reasons.insert(100, refused.headers["mqfn-error"].clone());
    println!("{reasons:#?}");
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    assert!(reasons[&0].contains("line break"), "{}", reasons[&0]);
    for n in [1, 3] {
        assert!(
            reasons[&n].contains("not valid for NATS"),
            "{}",
            reasons[&n]
        );
    }
    assert!(
        reasons[&100].contains("AMQP allows at most 255"),
        "{}",
        reasons[&100]
    );
    rabbit.cleanup(&[&queue], &[]).await;
    let _ = js.delete_stream(&stream).await;
}
