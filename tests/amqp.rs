//! mqfn against a real RabbitMQ (`AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`). Queue and exchange names are
//! random per run and deleted at the end. The connection-loss and prefetch
//! tests also need `rabbitmqctl` (`RABBITMQCTL` overrides the command, e.g.
//! `docker exec rabbitmq rabbitmqctl`).

mod amqp_support;
mod common;

use std::collections::HashMap;
use std::time::Instant;

use amqp_support::{broker, queue_decl, rabbitmqctl, series, Got, Rabbit, Vhost, LONG, SHORT};
use common::{amqp_url, cli, eventually, metric, rand_name, Mqfn};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_through_echo_give_exactly_ten_thousand_results() {
    const N: usize = 10_000;
    let (input, output, dlq) = (rand_name("in"), rand_name("out"), rand_name("dlq"));
    let config = format!(
        "{}{}{}{}
[[routes]]
name = \"echo\"
source = {{ broker = \"rabbit\", queue = \"{input}\" }}
handler = \"echo\"
output = {{ broker = \"rabbit\", queue = \"{output}\" }}
dead_letter = {{ broker = \"rabbit\", queue = \"{dlq}\" }}
workers = {{ min = 1, max = 32, target_backlog = 10 }}
",
        broker(&amqp_url()),
        queue_decl(&input, "classic"),
        queue_decl(&output, "classic"),
        queue_decl(&dlq, "classic"),
    );
    let m = Mqfn::start(&config);
    m.wait_ready(SHORT).await;
    let r = Rabbit::connect(&amqp_url()).await;
    let start = Instant::now();
    r.publish_all(&input, (0..N).map(|i| (format!("msg-{i}"), Vec::new())))
        .await;
    eventually(LONG, "10,000 results on the output queue", || async {
        (r.count(&output).await as usize >= N).then_some(())
    })
    .await;
    let elapsed = start.elapsed();
    eventually(SHORT, "every input acked", || async {
        let settled = series(
            &m,
            "mqfn_messages_settled_total{route=\"echo\",outcome=\"ok\"}",
        )
        .await;
        (settled as usize >= N && r.count(&input).await == 0).then_some(())
    })
    .await;
    let total = r.count(&output).await as usize;
    let got = r.take(&output, total).await;
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for g in &got {
        *seen.entry(g.payload.as_str()).or_default() += 1;
    }
    let duplicates = got.len() - seen.len();
    println!(
        "{N} messages: {} results, {} distinct, {duplicates} duplicates, {:.1}s ({:.0} msg/s)",
        got.len(),
        seen.len(),
        elapsed.as_secs_f64(),
        N as f64 / elapsed.as_secs_f64()
    );
    assert!((0..N).all(|i| seen.contains_key(format!("msg-{i}").as_str())));
    assert_eq!(duplicates, 0, "no crash happened, so no duplicates");
    assert_eq!(got.len(), N);
    assert_eq!(r.count(&dlq).await, 0);
    r.cleanup(&[&input, &output, &dlq], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfirmed_results_leave_the_input_in_its_queue() {
    const N: usize = 5;
    let (in_a, out_a, in_b, out_b, dlq) = (
        rand_name("in_a"),
        rand_name("out_a"),
        rand_name("in_b"),
        rand_name("out_b"),
        rand_name("dlq"),
    );
    // a: the output exchange does not exist (the broker closes the channel);
    // b: it exists but nothing is bound (mandatory publish is returned).
    let (missing, unbound) = (rand_name("x_missing"), rand_name("x_unbound"));
    let route = |name: &str, input: &str, exchange: &str| {
        format!(
            "[[routes]]
name = \"{name}\"
source = {{ broker = \"rabbit\", queue = \"{input}\" }}
handler = \"echo\"
output = {{ broker = \"rabbit\", exchange = \"{exchange}\", routing_key = \"k\" }}
dead_letter = {{ broker = \"rabbit\", queue = \"{dlq}\" }}
workers = {{ min = 1, max = 2 }}
"
        )
    };
    let config = format!(
        "{}{}{}{}{}{}
[[brokers.rabbit.exchanges]]
name = \"{unbound}\"
{}{}",
        broker(&amqp_url()),
        queue_decl(&in_a, "classic"),
        queue_decl(&out_a, "classic"),
        queue_decl(&in_b, "quorum"),
        queue_decl(&out_b, "classic"),
        queue_decl(&dlq, "classic"),
        route("a", &in_a, &missing),
        route("b", &in_b, &unbound),
    );
    let mut m = Mqfn::start(&config);
    m.wait_ready(SHORT).await;
    let r = Rabbit::connect(&amqp_url()).await;
    for i in 0..N {
        r.publish(&in_a, &format!("a-{i}")).await;
        r.publish(&in_b, &format!("b-{i}")).await;
    }
    eventually(SHORT, "every input handed back at least twice", || async {
        let a = series(&m, "mqfn_messages_redelivered_total{route=\"a\"}").await;
        let b = series(&m, "mqfn_messages_redelivered_total{route=\"b\"}").await;
        (a >= 2.0 * N as f64 && b >= 2.0 * N as f64).then_some(())
    })
    .await;
    let metrics = m.metrics().await;
    assert!(
        metric(&metrics, "mqfn_publish_errors_total{broker=\"rabbit\"}").unwrap_or(0.0)
            >= 4.0 * N as f64
    );
    assert_eq!(
        metric(&metrics, "mqfn_dead_letters_total{route=\"a\"}"),
        Some(0.0),
        "registered at start, never incremented"
    );
    assert_eq!(
        metric(&metrics, "mqfn_dead_letters_total{route=\"b\"}"),
        Some(0.0),
        "registered at start, never incremented"
    );
    // Stop: whatever was held goes back; nothing is lost or acked.
    m.signal("TERM");
    assert!(m.wait_exit(SHORT).success(), "log:\n{}", m.log_text());
    assert_eq!(r.count(&in_a).await as usize, N, "route a kept its inputs");
    assert_eq!(r.count(&in_b).await as usize, N, "route b kept its inputs");
    assert_eq!(r.count(&dlq).await, 0);
    assert!(
        m.log_text().contains("NOT_FOUND"),
        "the missing exchange is named in the log"
    );
    assert!(
        m.log_text().contains("unroutable"),
        "the return is named in the log"
    );
    // Fix the topology: every input now comes through.
    r.exchange(&missing).await;
    r.bind(&out_a, &missing, "k").await;
    r.bind(&out_b, &unbound, "k").await;
    m.spawn();
    m.wait_ready(SHORT).await;
    eventually(SHORT, "all results after the fix", || async {
        (r.count(&out_a).await as usize == N && r.count(&out_b).await as usize == N).then_some(())
    })
    .await;
    let mut a: Vec<_> = r
        .take(&out_a, N)
        .await
        .into_iter()
        .map(|g| g.payload)
        .collect();
    a.sort();
    assert_eq!(a, (0..N).map(|i| format!("a-{i}")).collect::<Vec<_>>());
    r.cleanup(&[&in_a, &out_a, &in_b, &out_b, &dlq], &[&missing, &unbound])
        .await;
}

/// Publishes to one destination are pipelined and their confirms come
/// back coalesced, but a basic.return names no delivery tag. Through a
/// headers exchange, half the results of one route are unroutable: each
/// return must fail its own publish, so the routable results arrive once
/// each and every unroutable input stays in its queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returns_are_paired_with_their_own_publishes_in_a_pipelined_batch() {
    const N: usize = 400;
    let (input, out, dlq, x) = (
        rand_name("in"),
        rand_name("out"),
        rand_name("dlq"),
        rand_name("x_headers"),
    );
    let r = Rabbit::connect(&amqp_url()).await;
    let config = format!(
        "{}{}{}{}
[[routes]]
name = \"split\"
source = {{ broker = \"rabbit\", queue = \"{input}\" }}
handler = \"echo\"
output = {{ broker = \"rabbit\", exchange = \"{x}\", routing_key = \"any\" }}
dead_letter = {{ broker = \"rabbit\", queue = \"{dlq}\" }}
workers = {{ min = 32, max = 32 }}
",
        broker(&amqp_url()),
        // Quorum: redeliveries are counted by the queue, with no
        // re-queued copies (classic queues' checkpoints) to count around.
        queue_decl(&input, "quorum"),
        queue_decl(&out, "classic"),
        queue_decl(&dlq, "classic"),
    );
    let mut m = Mqfn::start(&config);
    m.wait_ready(SHORT).await;
    r.headers_exchange(&x, &out, &[("keep", "yes")]).await;
    r.publish_all(
        &input,
        (0..N).map(|i| {
            let keep = if i % 2 == 0 { "yes" } else { "no" };
            (format!("m-{i}"), vec![("keep", keep.to_owned())])
        }),
    )
    .await;
    eventually(LONG, "the routable half out, the rest retried", || async {
        let redelivered = series(&m, "mqfn_messages_redelivered_total{route=\"split\"}").await;
        (r.count(&out).await as usize >= N / 2 && redelivered >= N as f64).then_some(())
    })
    .await;
    m.signal("TERM");
    assert!(m.wait_exit(SHORT).success(), "log:\n{}", m.log_text());
    let results = r.count(&out).await as usize;
    let mut got: Vec<_> = r
        .take(&out, results)
        .await
        .into_iter()
        .map(|g| g.payload)
        .collect();
    got.sort();
    let mut want: Vec<_> = (0..N).step_by(2).map(|i| format!("m-{i}")).collect();
    want.sort();
    assert_eq!(got, want, "each routable result exactly once");
    let mut left: Vec<_> = r
        .take(&input, r.count(&input).await as usize)
        .await
        .into_iter()
        .map(|g| g.payload)
        .collect();
    left.sort();
    let mut unroutable: Vec<_> = (1..N).step_by(2).map(|i| format!("m-{i}")).collect();
    unroutable.sort();
    assert_eq!(
        left, unroutable,
        "every unroutable input is still in its queue"
    );
    assert_eq!(r.count(&dlq).await, 0);
    r.cleanup(&[&input, &out, &dlq], &[&x]).await;
}

/// Poison messages on one queue type: retried in process up to
/// `max_attempts`, and counted across a crash of mqfn.
async fn poison(queue_type: &str) {
    let (fast, slow, dlq) = (rand_name("fast"), rand_name("slow"), rand_name("dlq"));
    let route = |name: &str, input: &str, retry: &str| {
        format!(
            "[[routes]]
name = \"{name}\"
source = {{ broker = \"rabbit\", queue = \"{input}\" }}
handler = \"fail\"
dead_letter = {{ broker = \"rabbit\", queue = \"{dlq}\" }}
workers = {{ min = 1, max = 4 }}
retry = {retry}
"
        )
    };
    let config = format!(
        "{}{}{}{}{}{}",
        broker(&amqp_url()),
        queue_decl(&fast, queue_type),
        queue_decl(&slow, queue_type),
        queue_decl(&dlq, "classic"),
        route(
            "fast",
            &fast,
            "{ max_attempts = 3, initial_backoff = \"10ms\", max_backoff = \"10ms\" }"
        ),
        // The backoff after the first failure outlasts the test: the second
        // attempt can only come from a redelivery after the crash below.
        route(
            "slow",
            &slow,
            "{ max_attempts = 2, initial_backoff = \"1h\", max_backoff = \"1h\" }"
        ),
    );
    let mut m = Mqfn::start(&config);
    m.wait_ready(SHORT).await;
    let r = Rabbit::connect(&amqp_url()).await;
    r.publish(&fast, "retry:boom").await;
    r.publish(&fast, "permanent:bad input").await;
    r.publish(&slow, "retry:again").await;
    eventually(SHORT, "two dead letters from the fast route", || async {
        (r.count(&dlq).await == 2).then_some(())
    })
    .await;
    eventually(SHORT, "the slow route's first attempt", || async {
        (series(&m, "mqfn_retries_total{route=\"slow\"}").await >= 1.0).then_some(())
    })
    .await;
    m.kill();
    m.spawn();
    m.wait_ready(SHORT).await;
    eventually(
        SHORT,
        "the slow message dead-lettered after the crash",
        || async { (r.count(&dlq).await == 3).then_some(()) },
    )
    .await;
    let got = r.take(&dlq, 3).await;
    let by_payload: HashMap<&str, &Got> = got.iter().map(|g| (g.payload.as_str(), g)).collect();
    let check =
        |payload: &str, route: &str, input: &str, error: &str, class: &str, attempts: &str| {
            let g = by_payload
                .get(payload)
                .unwrap_or_else(|| panic!("{payload} in the dead letter ({queue_type})"));
            let h = &g.headers;
            assert_eq!(
                h.get("mqfn-error").map(String::as_str),
                Some(error),
                "{payload}: {h:?}"
            );
            assert_eq!(h.get("mqfn-error-class").map(String::as_str), Some(class));
            assert_eq!(
                h.get("mqfn-attempts").map(String::as_str),
                Some(attempts),
                "{payload} on {queue_type}"
            );
            assert_eq!(h.get("mqfn-route").map(String::as_str), Some(route));
            assert_eq!(h.get("mqfn-handler").map(String::as_str), Some("fail"));
            let source = h.get("mqfn-source").expect("mqfn-source");
            assert!(source.starts_with(&format!("rabbit/{input}/")), "{source}");
            let at = h.get("mqfn-failed-at").expect("mqfn-failed-at");
            assert!(humantime::parse_rfc3339(at).is_ok(), "{at}");
            assert!(
                !h.contains_key("mqfn-attempt"),
                "the internal count stays inside"
            );
            assert!(!h.contains_key("x-delivery-count"));
        };
    check("retry:boom", "fast", &fast, "boom", "retryable", "3");
    check(
        "permanent:bad input",
        "fast",
        &fast,
        "bad input",
        "permanent",
        "1",
    );
    check("retry:again", "slow", &slow, "again", "retryable", "2");
    assert_eq!(r.count(&fast).await + r.count(&slow).await, 0);
    drop(m);
    r.cleanup(&[&fast, &slow, &dlq], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_after_max_attempts_on_a_classic_queue() {
    poison("classic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_after_max_attempts_on_a_quorum_queue() {
    poison("quorum").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_gets_rpc_replies_and_exchange_results() {
    let (rpc, work, out, plain_in, plain_out, dlq) = (
        rand_name("rpc"),
        rand_name("work"),
        rand_name("out"),
        rand_name("plain_in"),
        rand_name("plain_out"),
        rand_name("dlq"),
    );
    let (results, dlx) = (rand_name("results"), rand_name("dlx"));
    let config = format!(
        "{}{}{}{}{}{}{}
[[brokers.rabbit.exchanges]]
name = \"{results}\"
type = \"topic\"

[[brokers.rabbit.exchanges]]
name = \"{dlx}\"

[[brokers.rabbit.bindings]]
exchange = \"{results}\"
queue = \"{out}\"
routing_key = \"#\"

[[brokers.rabbit.bindings]]
exchange = \"{dlx}\"
queue = \"{dlq}\"
routing_key = \"dead\"

[[routes]]
name = \"rpc\"
source = {{ broker = \"rabbit\", queue = \"{rpc}\" }}
handler = \"fail\"
dead_letter = {{ broker = \"rabbit\", exchange = \"{dlx}\", routing_key = \"dead\" }}
retry = {{ max_attempts = 2, initial_backoff = \"10ms\", max_backoff = \"10ms\" }}

[[routes]]
name = \"work\"
source = {{ broker = \"rabbit\", queue = \"{work}\" }}
handler = \"echo\"
output = {{ broker = \"rabbit\", exchange = \"{results}\", routing_key = \"work.done\" }}
dead_letter = {{ broker = \"rabbit\", queue = \"{dlq}\" }}

[[routes]]
name = \"plain\"
source = {{ broker = \"rabbit\", queue = \"{plain_in}\" }}
handler = \"echo\"
output = {{ broker = \"rabbit\", queue = \"{plain_out}\" }}
dead_letter = {{ broker = \"rabbit\", queue = \"{dlq}\" }}
",
        broker(&amqp_url()),
        queue_decl(&rpc, "classic"),
        queue_decl(&work, "quorum"),
        queue_decl(&out, "classic"),
        queue_decl(&plain_in, "classic"),
        queue_decl(&plain_out, "classic"),
        queue_decl(&dlq, "classic"),
    );
    let m = Mqfn::start(&config);
    m.wait_ready(SHORT).await;
    let cfg = m.config.to_str().expect("utf-8 path").to_owned();
    let invoke = |route: &str, payload: &str| {
        let out = cli(&[
            "invoke",
            "--config",
            &cfg,
            "--timeout",
            "30s",
            route,
            payload,
        ]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // RPC: no output, so the result is the reply.
    let (ok, stdout, stderr) = invoke("rpc", "hello");
    assert!(ok, "{stderr}\nlog:\n{}", m.log_text());
    assert_eq!(stdout, "hello\n");
    // A failure is reported from the dead letter, with its reason.
    let (ok, _, stderr) = invoke("rpc", "permanent:nope");
    assert!(!ok);
    assert!(
        stderr.contains("dead-lettered after 1 attempt(s): nope"),
        "{stderr}"
    );
    // An output exchange is watched through a private bound queue, and the
    // real binding still gets its copy.
    let (ok, stdout, stderr) = invoke("work", "via exchange");
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "via exchange\n");
    let r = Rabbit::connect(&amqp_url()).await;
    eventually(SHORT, "the bound queue's copy", || async {
        (r.count(&out).await == 1).then_some(())
    })
    .await;
    // A plain output queue cannot be watched without stealing: refused.
    let (ok, _, stderr) = invoke("plain", "x");
    assert!(!ok);
    assert!(stderr.contains("cannot watch queue"), "{stderr}");
    let got = r.take(&out, 1).await;
    assert_eq!(got[0].payload, "via exchange");
    assert!(
        got[0].correlation_id.is_some(),
        "results keep the correlation id"
    );
    drop(m);
    r.cleanup(
        &[&rpc, &work, &out, &plain_in, &plain_out, &dlq],
        &[&results, &dlx],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_bounds_the_unacked_deliveries() {
    const N: usize = 60;
    let (input, output, dlq) = (rand_name("pf_in"), rand_name("pf_out"), rand_name("pf_dlq"));
    let config = format!(
        "{}{}{}{}
[[routes]]
name = \"slow\"
source = {{ broker = \"rabbit\", queue = \"{input}\" }}
handler = \"fail\"
output = {{ broker = \"rabbit\", queue = \"{output}\" }}
dead_letter = {{ broker = \"rabbit\", queue = \"{dlq}\" }}
workers = {{ min = 3, max = 3 }}
",
        broker(&amqp_url()),
        queue_decl(&input, "classic"),
        queue_decl(&output, "classic"),
        queue_decl(&dlq, "classic"),
    );
    // The bound: workers.max (3) × the window factor.
    let bound = 3 * mqfn::route::WINDOW_FACTOR;
    let m = Mqfn::start(&config);
    m.wait_ready(SHORT).await;
    let r = Rabbit::connect(&amqp_url()).await;
    r.publish_all(&input, (0..N).map(|_| ("sleep:300".to_owned(), Vec::new())))
        .await;
    let (mut max_seen, mut max_backlog, mut samples) = (0, 0, 0);
    let start = Instant::now();
    while (r.count(&output).await as usize) < N {
        assert!(start.elapsed() < LONG, "the slow route never finished");
        let listing = rabbitmqctl(&[
            "-q",
            "list_queues",
            "--no-table-headers",
            "name",
            "messages_unacknowledged",
        ]);
        let unacked = listing
            .lines()
            .find_map(|l| {
                let mut cols = l.split_whitespace();
                (cols.next() == Some(input.as_str())).then(|| cols.next()?.parse::<usize>().ok())?
            })
            .unwrap_or(0);
        max_seen = max_seen.max(unacked);
        samples += 1;
        let backlog = series(&m, "mqfn_backlog_messages{route=\"slow\"}").await;
        max_backlog = max_backlog.max(backlog as usize);
    }
    println!(
        "prefetch: at most {max_seen} unacked of a bound of {bound}, over {samples} samples; \
         backlog gauge up to {max_backlog}"
    );
    assert!(max_seen <= bound, "{max_seen} unacked > {bound}");
    assert!(max_seen > 0, "the sampling saw deliveries in flight");
    // The backlog is the queue's ready count (passive declare) plus what
    // waits locally: it sees the messages the prefetch keeps on the broker.
    assert!(
        max_backlog > bound && max_backlog <= N,
        "backlog {max_backlog}"
    );
    drop(m);
    r.cleanup(&[&input, &output, &dlq], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_killed_mid_run_reconnects_and_accounts_for_every_message() {
    const N: usize = 1500;
    let vhost = Vhost::create();
    let (input, output, dlq) = (rand_name("in"), rand_name("out"), rand_name("dlq"));
    let config = format!(
        "{}{}{}{}
[[routes]]
name = \"echo\"
source = {{ broker = \"rabbit\", queue = \"{input}\" }}
handler = \"fail\"
output = {{ broker = \"rabbit\", queue = \"{output}\" }}
dead_letter = {{ broker = \"rabbit\", queue = \"{dlq}\" }}
workers = {{ min = 4, max = 4 }}
",
        broker(&vhost.url(&vhost.user, "secret")),
        queue_decl(&input, "classic"),
        queue_decl(&output, "classic"),
        queue_decl(&dlq, "classic"),
    );
    let m = Mqfn::start(&config);
    m.wait_ready(SHORT).await;
    let r = Rabbit::connect(&vhost.url("guest", "guest")).await;
    // Each message sleeps 50ms: about 19s of work over 4 workers, so the
    // cut (a few slow rabbitmqctl calls) lands mid-run.
    r.publish_all(
        &input,
        (0..N).map(|i| ("sleep:50".to_owned(), vec![("n", i.to_string())])),
    )
    .await;
    eventually(SHORT, "the first hundred results", || async {
        (r.count(&output).await as usize >= 100).then_some(())
    })
    .await;
    let closed = vhost.cut();
    assert!(closed >= 1, "mqfn's connections were found and closed");
    let before = r.count(&output).await as usize;
    assert!(
        before < N,
        "the connection was killed mid-run ({before} of {N} done)"
    );
    eventually(SHORT, "/readyz to report 503 while cut off", || async {
        matches!(m.get("/readyz").await, Some((503, _))).then_some(())
    })
    .await;
    let up = metric(&m.metrics().await, "mqfn_broker_up{broker=\"rabbit\"}");
    assert_eq!(up, Some(0.0));
    vhost.grant();
    eventually(SHORT, "/readyz back to 200 after the reconnect", || async {
        matches!(m.get("/readyz").await, Some((200, _))).then_some(())
    })
    .await;
    // Read results until every message has one, then, once the input is
    // fully settled, the stragglers: duplicates from deliveries whose ack
    // died with the connection.
    let mut got = r
        .take_until(&output, |g| {
            let distinct: std::collections::HashSet<_> =
                g.iter().filter_map(|m| m.headers.get("n")).collect();
            distinct.len() == N
        })
        .await;
    eventually(LONG, "the input fully settled", || async {
        let listing = rabbitmqctl(&[
            "-q",
            "list_queues",
            "-p",
            &vhost.name,
            "--no-table-headers",
            "name",
            "messages",
        ]);
        listing
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == [input.as_str(), "0"])
            .then_some(())
    })
    .await;
    let rest = r.count(&output).await as usize;
    got.extend(r.take(&output, rest).await);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for g in &got {
        *seen
            .entry(g.headers.get("n").cloned().expect("the n header is kept"))
            .or_default() += 1;
    }
    let duplicates = got.len() - seen.len();
    println!(
        "connection loss: {closed} connection(s) closed at {before}/{N}; {} results, {} distinct, {duplicates} duplicates",
        got.len(),
        seen.len()
    );
    assert_eq!(seen.len(), N, "every message has a result");
    assert_eq!(r.count(&dlq).await, 0, "nothing was dead-lettered");
    assert!(m.log_text().contains("Lost the AMQP connection"));
    drop(m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_and_hands_the_rest_back() {
    const N: usize = 20;
    let (input, output, dlq) = (rand_name("sd_in"), rand_name("sd_out"), rand_name("sd_dlq"));
    let config = format!(
        "{}{}{}{}
[[routes]]
name = \"slow\"
source = {{ broker = \"rabbit\", queue = \"{input}\" }}
handler = \"fail\"
output = {{ broker = \"rabbit\", queue = \"{output}\" }}
dead_letter = {{ broker = \"rabbit\", queue = \"{dlq}\" }}
workers = {{ min = 2, max = 2 }}
",
        broker(&amqp_url()),
        queue_decl(&input, "classic"),
        queue_decl(&output, "classic"),
        queue_decl(&dlq, "classic"),
    );
    let mut m = Mqfn::start(&config);
    m.wait_ready(SHORT).await;
    let r = Rabbit::connect(&amqp_url()).await;
    r.publish_all(&input, (0..N).map(|_| ("sleep:300".to_owned(), Vec::new())))
        .await;
    eventually(SHORT, "the first result", || async {
        (r.count(&output).await >= 1).then_some(())
    })
    .await;
    m.signal("TERM");
    assert!(m.wait_exit(SHORT).success(), "log:\n{}", m.log_text());
    let (done, back) = (r.count(&output).await, r.count(&input).await);
    println!("shutdown: {done} done, {back} handed back");
    assert!(back > 0, "stopped mid-run");
    assert_eq!(
        done + back,
        N as u32,
        "each message is done or back in its queue, once"
    );
    r.cleanup(&[&input, &output, &dlq], &[]).await;
}

#[test]
fn the_shipped_config_validates_and_bad_topology_is_named() {
    let ok = cli(&["validate", "--config", "config/amqp.toml"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let (_dir, path) = common::write_config(&format!(
        "{}
[[brokers.rabbit.queues]]
name = \"q\"
queue_type = \"quorum\"
durable = false
arguments = {{ x-bad = [1] }}
",
        broker(&amqp_url())
    ));
    let bad = cli(&["validate", "--config", path.to_str().expect("utf-8")]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("brokers.rabbit.queues[0].durable"), "{err}");
    assert!(
        err.contains("brokers.rabbit.queues[0].arguments.x-bad"),
        "{err}"
    );
}
