//! Fault injection on RabbitMQ: SIGKILL mqfn three times mid-run, handler
//! faults, hostile input, and headers that the output broker cannot carry.
//! (Connection loss, unconfirmed publishes and poison messages across a
//! SIGKILL are in tests/amqp.rs.)

mod amqp_support;
mod common;

use std::collections::BTreeMap;

use amqp_support::{broker, queue_decl, Rabbit, LONG};
use common::{amqp_url, eventually, hostile, rand_name, Mqfn};

/// Random queues `{q}.in`, `{q}.out` and `{q}.dlq`.
struct Queues {
    input: String,
    output: String,
    dead: String,
}

impl Queues {
    fn new(prefix: &str) -> Self {
        let q = rand_name(prefix);
        Self {
            input: format!("{q}.in"),
            output: format!("{q}.out"),
            dead: format!("{q}.dlq"),
        }
    }

    /// A config with one route `r` from the first queue to the second,
    /// dead letters to the third. `top` goes before the broker, `extra`
    /// after the route.
    fn config(&self, handler: &str, extra: &str, top: &str) -> String {
        format!(
            r#"
{top}
{b}{qi}{qo}{qd}
[[routes]]
name = "r"
source = {{ broker = "rabbit", queue = "{input}" }}
handler = "{handler}"
output = {{ broker = "rabbit", queue = "{output}" }}
dead_letter = {{ broker = "rabbit", queue = "{dead}" }}
{extra}
"#,
            b = broker(&amqp_url()),
            qi = queue_decl(&self.input, "classic"),
            qo = queue_decl(&self.output, "classic"),
            qd = queue_decl(&self.dead, "classic"),
            input = self.input,
            output = self.output,
            dead = self.dead,
        )
    }

    fn all(&self) -> [&str; 3] {
        [&self.input, &self.output, &self.dead]
    }
}

/// Dead letters by their `id` header: (`mqfn-error-class`, `mqfn-error`).
fn reasons(dead: &[amqp_support::Got]) -> BTreeMap<String, (String, String)> {
    dead.iter()
        .map(|g| {
            (
                g.headers["id"].clone(),
                (
                    g.headers["mqfn-error-class"].clone(),
                    g.headers["mqfn-error"].clone(),
                ),
            )
        })
        .collect()
}

/// Publishes `n` messages with header `id` = their index: `bad` as ids 0
/// and 1, `fine {i}` after. Waits for the `n - 2` results and the two dead
/// letters, checks that every healthy message got its result and that both
/// dead letters were tried `attempts` times, and returns the dead letters.
async fn two_bad_among_healthy(
    rabbit: &Rabbit,
    q: &Queues,
    bad: [&str; 2],
    n: usize,
    attempts: &str,
) -> Vec<amqp_support::Got> {
    rabbit
        .publish_all(
            &q.input,
            (0..n).map(|i| {
                let body = bad
                    .get(i)
                    .map_or_else(|| format!("fine {i}"), |b| (*b).to_owned());
                (body, vec![("id", i.to_string())])
            }),
        )
        .await;
    let healthy = n - 2;
    eventually(
        LONG,
        &format!("{healthy} results and 2 dead letters"),
        || async {
            let (o, d) = (rabbit.count(&q.output).await, rabbit.count(&q.dead).await);
            (o >= healthy as u32 && d >= 2).then_some(())
        },
    )
    .await;
    let dead = rabbit.take(&q.dead, 2).await;
    let outs = rabbit.take(&q.output, healthy).await;
    let mut ids: Vec<usize> = outs
        .iter()
        .map(|g| g.headers["id"].parse().expect("a number"))
        .collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        (2..n).collect::<Vec<_>>(),
        "every healthy message went through"
    );
    for g in &dead {
        assert_eq!(
            g.headers["mqfn-attempts"], attempts,
            "retried up to max_attempts"
        );
    }
    dead
}

#[tokio::test]
async fn sigkill_three_times_loses_nothing() {
    const N: usize = 10_000;
    let q = Queues::new("crash");
    let (input, output, dead) = (q.input.clone(), q.output.clone(), q.dead.clone());
    let rabbit = Rabbit::connect(&amqp_url()).await;
    let mut m = Mqfn::start(&q.config("fail", "workers = { min = 16, max = 16 }", ""));
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
    common::assert_crash_accounting(N, &outs, &dlq, &kills);
    assert_eq!(rabbit.count(&input).await, 0, "the input queue is drained");
    rabbit.cleanup(&[&input, &output, &dead], &[]).await;
}

/// A panic and a hang past the timeout are retried, then dead-lettered;
/// the other messages flow. RabbitMQ has no practical "result too large"
/// case: its limit is the node-wide `max_message_size` (128 MiB by default
/// on 3.10), which a test cannot lower without changing the shared broker
/// (docs/reliability.md); the refused-result path on RabbitMQ is covered by
/// an over-long header name in tests/reliability_kafka.rs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_faults_are_contained_and_the_route_keeps_flowing() {
    let q = Queues::new("faults");
    let extra = r#"timeout = "300ms"
retry = { max_attempts = 2, initial_backoff = "10ms", max_backoff = "20ms" }"#;
    let m = Mqfn::start(&q.config("fail", extra, ""));
    m.wait_ready(LONG).await;
    let rabbit = Rabbit::connect(&amqp_url()).await;
    let dead = two_bad_among_healthy(&rabbit, &q, ["panic", "sleep:5000"], 103, "2").await;
    let reasons = reasons(&dead);
    println!("{reasons:#?}");
    assert_eq!(reasons["0"].0, "crashed");
    assert!(reasons["0"].1.contains("panicked"), "{:?}", reasons["0"]);
    assert!(
        reasons["1"].1.contains("timed out after 300ms"),
        "{:?}",
        reasons["1"]
    );
    let t = m.metrics().await;
    assert!(common::invocations(&t, "fail", "crash") >= Some(2.0));
    assert!(common::invocations(&t, "fail", "timeout") >= Some(2.0));
    assert_eq!(
        rabbit.count(&q.input).await,
        0,
        "the input queue is drained"
    );
    drop(m);
    rabbit.cleanup(&q.all(), &[]).await;
}

/// A process handler that writes garbage on its protocol stdout and one
/// that exits mid-request are crashes: retried, then dead-lettered, while
/// the same handler's other messages flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_handler_writing_garbage_is_dead_lettered_and_others_flow() {
    let q = Queues::new("garbage");
    let top = format!(
        "[handlers.flaky]\nkind = \"process\"\ncommand = [\"python3\", \"{}/handlers/examples/flaky.py\"]\ntimeout = \"5s\"\nmax_instances = 2\n",
        env!("CARGO_MANIFEST_DIR")
    );
    let extra = r#"retry = { max_attempts = 2, initial_backoff = "10ms", max_backoff = "20ms" }"#;
    let m = Mqfn::start(&q.config("flaky", extra, &top));
    m.wait_ready(LONG).await;
    let rabbit = Rabbit::connect(&amqp_url()).await;
    let dead = two_bad_among_healthy(&rabbit, &q, ["garbage", "exit"], 22, "2").await;
    let reasons = reasons(&dead);
    println!("{reasons:#?}");
    for bad in ["0", "1"] {
        assert_eq!(reasons[bad].0, "crashed", "{bad}: {:?}", reasons[bad]);
    }
    drop(m);
    rabbit.cleanup(&q.all(), &[]).await;
}

/// Lowers the RabbitMQ node's `max_message_size` (node-wide; read by each
/// channel when it opens) and puts the old value back when dropped. The
/// tests that run beside this one publish far less than the lowered limit.
struct MaxMessageSize(String);

impl MaxMessageSize {
    fn lower_to(bytes: u64) -> Self {
        let old = rabbitmqctl("application:get_env(rabbit, max_message_size).");
        let old = old
            .trim()
            .strip_prefix("{ok,")
            .and_then(|v| v.strip_suffix('}'))
            .unwrap_or("134217728")
            .to_owned();
        rabbitmqctl(&format!(
            "application:set_env(rabbit, max_message_size, {bytes})."
        ));
        Self(old)
    }
}

impl Drop for MaxMessageSize {
    fn drop(&mut self) {
        rabbitmqctl(&format!(
            "application:set_env(rabbit, max_message_size, {}).",
            self.0
        ));
    }
}

/// Runs `rabbitmqctl eval EXPR` on the test broker's node.
fn rabbitmqctl(expr: &str) -> String {
    amqp_support::rabbitmqctl(&["eval", expr])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_too_large_for_the_broker_is_dead_lettered_with_the_reason() {
    // 1 MiB: the 400 kB input (and its dead letter) fits, its 1.1 MB
    // result does not.
    let _limit = MaxMessageSize::lower_to(1024 * 1024);
    let q = Queues::new("toolarge");
    let pad = "p".repeat(1_100_000);
    let top = format!(
        "[handlers.inflate]\nkind = \"builtin\"\nbuiltin = \"json-transform\"\noptions = {{ set = {{ pad = \"{pad}\" }} }}\n"
    );
    let m = Mqfn::start(&q.config("inflate", "", &top));
    m.wait_ready(LONG).await;
    let rabbit = Rabbit::connect(&amqp_url()).await;
    let big = format!("{{\"fill\":\"{}\"}}", "b".repeat(400_000));
    rabbit
        .publish_all(
            &q.input,
            [
                (big.clone().into_bytes(), vec![("id", "big".to_owned())]),
                (b"{}".to_vec(), vec![("id", "small".to_owned())]),
            ],
        )
        .await;
    // Every result of this handler is 1.1 MB, so the small input's is
    // refused too: both end as dead letters, nothing is stuck.
    eventually(LONG, "two dead letters", || async {
        (rabbit.count(&q.dead).await >= 2).then_some(())
    })
    .await;
    let dead = rabbit.take(&q.dead, 2).await;
    let reasons = reasons(&dead);
    println!("{reasons:#?}");
    for id in ["big", "small"] {
        assert_eq!(reasons[id].0, "permanent", "{id}");
        assert!(
            reasons[id].1.contains("result refused by the broker")
                && reasons[id].1.contains("larger than configured max size"),
            "{id}: {:?}",
            reasons[id]
        );
    }
    let kept = dead.iter().find(|g| g.headers["id"] == "big").expect("big");
    assert_eq!(
        kept.data,
        big.as_bytes(),
        "the original input, not the result"
    );
    assert_eq!(rabbit.count(&q.output).await, 0);
    assert_eq!(rabbit.count(&q.input).await, 0, "nothing left behind");
    drop(m);
    rabbit.cleanup(&q.all(), &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_is_dead_lettered_with_the_reason() {
    let q = Queues::new("hostile");
    let m = Mqfn::start(&q.config("tag", hostile::ROUTE, hostile::HANDLER));
    m.wait_ready(LONG).await;
    let rabbit = Rabbit::connect(&amqp_url()).await;
    let cases = hostile::cases();
    rabbit
        .publish_all(
            &q.input,
            cases
                .iter()
                .map(|(id, body)| (body.clone(), vec![("id", (*id).to_owned())])),
        )
        .await;
    eventually(LONG, "four dead letters and one result", || async {
        let (o, d) = (rabbit.count(&q.output).await, rabbit.count(&q.dead).await);
        (o >= 1 && d >= 4).then_some(())
    })
    .await;
    let dead = rabbit.take(&q.dead, 4).await;
    let outs = rabbit.take(&q.output, 1).await;
    assert_eq!(outs[0].headers["id"], "good");
    assert_eq!(outs[0].payload, hostile::GOOD_RESULT);
    for g in &dead {
        let id = g.headers["id"].as_str();
        assert_eq!(
            g.data,
            hostile::original(&cases, id),
            "{id}: the original payload, byte for byte"
        );
        assert_eq!(g.headers["mqfn-error-class"], "permanent", "{id}");
    }
    hostile::assert_reasons(
        &reasons(&dead)
            .into_iter()
            .map(|(id, (_, error))| (id, error))
            .collect(),
    );
    assert_eq!(
        rabbit.count(&q.input).await,
        0,
        "the input queue is drained"
    );
    drop(m);
    rabbit.cleanup(&q.all(), &[]).await;
}

/// AMQP header values may hold line breaks and names may hold spaces; NATS
/// refuses both. The result is refused, so the input is dead-lettered on
/// NATS with its headers sanitized; the other messages flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_nats_cannot_carry_are_dead_lettered_with_the_reason() {
    let input = rand_name("hdr_in");
    let (s, stream, js) = common::js_stream("amqphdr").await;
    let cfg = format!(
        r#"
{b}{qi}
[brokers.js]
kind = "nats"
url = "{nats}"

[[routes]]
name = "r"
source = {{ broker = "rabbit", queue = "{input}" }}
handler = "echo"
output = {{ broker = "js", subject = "{s}.out" }}
dead_letter = {{ broker = "js", subject = "{s}.dlq" }}
"#,
        b = broker(&amqp_url()),
        qi = queue_decl(&input, "classic"),
        nats = common::nats_url(),
    );
    let m = Mqfn::start(&cfg);
    m.wait_ready(LONG).await;
    let rabbit = Rabbit::connect(&amqp_url()).await;
    rabbit
        .publish_all(
            &input,
            (0..22).map(|i| {
                let mut h = vec![("id", i.to_string())];
                match i {
                    0 => h.push(("note", "line one\r\nline two".to_owned())),
                    1 => h.push(("bad name", "x".to_owned())),
                    _ => {}
                }
                (format!("m{i}"), h)
            }),
        )
        .await;
    let header = |m: &async_nats::jetstream::Message, k: &str| -> String {
        let h = m.headers.as_ref().expect("headers");
        h.get(k).map(|v| v.as_str().to_owned()).unwrap_or_default()
    };
    let outs = common::js_read_at_least(&js, &stream, &format!("{s}.out"), 20, LONG).await;
    let dead = common::js_read_at_least(&js, &stream, &format!("{s}.dlq"), 2, LONG).await;
    let mut ids: Vec<usize> = outs
        .iter()
        .map(|o| header(o, "id").parse().expect("a number"))
        .collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        (2..22).collect::<Vec<_>>(),
        "the other messages went through"
    );
    let mut reasons = BTreeMap::new();
    for d in &dead {
        let id = header(d, "id");
        assert_eq!(
            d.payload,
            format!("m{id}").as_bytes(),
            "the original payload"
        );
        assert_eq!(header(d, "mqfn-error-class"), "permanent");
        assert_eq!(header(d, "mqfn-headers-sanitized"), "true");
        reasons.insert(id, header(d, "mqfn-error"));
    }
    println!("{reasons:#?}");
    let by = |id: &str| dead.iter().find(|d| header(d, "id") == id).expect(id);
    assert_eq!(header(by("0"), "note"), "line one  line two");
    assert_eq!(header(by("1"), "bad_name"), "x");
    assert!(reasons["0"].contains("line break"), "{}", reasons["0"]);
    assert!(
        reasons["1"].contains("not valid for NATS"),
        "{}",
        reasons["1"]
    );
    assert_eq!(rabbit.count(&input).await, 0, "the input queue is drained");
    drop(m);
    rabbit.cleanup(&[&input], &[]).await;
    let _ = js.delete_stream(&stream).await;
}
