//! Fault injection on RabbitMQ: SIGKILL mqfn three times mid-run.
//! (Connection loss, unconfirmed publishes and poison messages across a
//! SIGKILL are in tests/amqp.rs.)

mod amqp_support;
mod common;

use std::collections::BTreeMap;

use amqp_support::{broker, queue_decl, Rabbit, LONG};
use common::{amqp_url, eventually, rand_name, Mqfn};

#[tokio::test]
async fn sigkill_three_times_loses_nothing() {
    const N: usize = 10_000;
    let q = rand_name("crash");
    let (input, output, dead) = (format!("{q}.in"), format!("{q}.out"), format!("{q}.dlq"));
    let rabbit = Rabbit::connect(&amqp_url()).await;
    let cfg = format!(
        r#"
{b}{qi}{qo}{qd}
[[routes]]
name = "r"
source = {{ broker = "rabbit", queue = "{input}" }}
handler = "fail"
output = {{ broker = "rabbit", queue = "{output}" }}
dead_letter = {{ broker = "rabbit", queue = "{dead}" }}
workers = {{ min = 16, max = 16 }}
"#,
        b = broker(&amqp_url()),
        qi = queue_decl(&input, "classic"),
        qo = queue_decl(&output, "classic"),
        qd = queue_decl(&dead, "classic"),
    );
    let mut m = Mqfn::start(&cfg);
    m.wait_ready(LONG).await;
    rabbit
        .publish_all(
            &input,
            (0..N).map(|i| {
                let body = if i % 1000 == 7 {
                    "permanent:poison"
                } else {
                    "sleep:1"
                };
                (body.to_owned(), vec![("id", i.to_string())])
            }),
        )
        .await;
    let kills = common::kill_three_times(&mut m, LONG).await;
    // Done when the input queue is empty and nothing is in flight (the
    // output count alone includes duplicates, so it is not enough).
    eventually(
        LONG,
        "every input to have a result or a dead letter",
        || async {
            let n = rabbit.count(&output).await + rabbit.count(&dead).await;
            let ready = rabbit.count(&input).await;
            let inflight = m.status().await["routes"][0]["inflight"].as_u64()?;
            (n as usize >= N && ready == 0 && inflight == 0).then_some(())
        },
    )
    .await;
    m.signal("TERM");
    m.wait_exit(LONG);
    let count = |got: Vec<amqp_support::Got>| {
        let mut by: BTreeMap<String, usize> = BTreeMap::new();
        for g in got {
            *by.entry(g.headers.get("id").cloned().unwrap_or_default())
                .or_default() += 1;
        }
        by
    };
    let n_out = rabbit.count(&output).await as usize;
    let n_dead = rabbit.count(&dead).await as usize;
    let outs = count(rabbit.take(&output, n_out).await);
    let dlq = count(rabbit.take(&dead, n_dead).await);
    let dups = (n_out - outs.len()) + (n_dead - dlq.len());
    println!(
        "crash accounting: {N} in; {} results + {} dead letters; {dups} duplicates; in flight at the kills: {kills:?}",
        outs.len(),
        dlq.len()
    );
    for i in 0..N {
        let id = i.to_string();
        assert!(
            outs.contains_key(&id) || dlq.contains_key(&id),
            "input {id} was lost"
        );
    }
    assert_eq!(dlq.len(), 10, "the ten poison messages are dead-lettered");
    let bound: u64 = kills.iter().map(|k| k + 32).sum();
    assert!(
        dups as u64 <= bound,
        "duplicates {dups} exceed what was in flight ({bound})"
    );
    assert_eq!(rabbit.count(&input).await, 0, "the input queue is drained");
    rabbit.cleanup(&[&input, &output, &dead], &[]).await;
}
