//! Fault injection on Kafka: a broker restart mid-run, on a private tansu
//! whose log is kept in S3. (SIGKILLs of mqfn, rebalances and poison
//! messages are in tests/kafka.rs.)

mod common;
mod kafka_support;

use std::time::Duration;

use common::{eventually, kafka_bootstrap, metric};
use kafka_support::tansu::PrivateKafka;
use kafka_support::{dump, started, Fixture, Rec, LONG};

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
        None,
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
