//! `mqfn dlq list` and `mqfn dlq redrive` against the real NATS server.

mod amqp_support;
mod common;

use std::time::Duration;

use common::{amqp_url, cli, eventually, nats_url, rand_name, Mqfn};

const LONG: Duration = Duration::from_secs(120);

fn text(o: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `mqfn dlq VERB r --config CONFIG ARGS...` (route `r`), off the async
/// threads.
async fn dlq(config: &str, verb: &str, args: &[&str]) -> std::process::Output {
    let mut all: Vec<String> = ["dlq", verb, "r", "--config", config]
        .into_iter()
        .map(str::to_owned)
        .collect();
    all.extend(args.iter().map(|a| (*a).to_owned()));
    tokio::task::spawn_blocking(move || cli(&all.iter().map(String::as_str).collect::<Vec<_>>()))
        .await
        .unwrap()
}

/// The `dlq list` output once it shows three dead letters (a header line
/// and three rows).
async fn three_listed(config: &str) -> String {
    eventually(LONG, "three dead letters", || async {
        let out = dlq(config, "list", &[]).await;
        let (stdout, _) = text(&out);
        (out.status.success() && stdout.lines().count() == 4).then_some(stdout)
    })
    .await
}

#[tokio::test]
async fn list_is_non_destructive_and_redrive_moves_with_fresh_counters() {
    let (p, s, js) = common::js_stream("dlq").await;
    for body in [
        "permanent:bad order",
        "permanent:bad customer",
        "retry:flaky",
    ] {
        js.publish(format!("{p}.in"), body.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let cfg = format!(
        r#"
[brokers.js]
kind = "nats"
url = "{url}"

[[routes]]
name = "r"
source = {{ broker = "js", subject = "{p}.in", stream = "{s}" }}
handler = "fail"
output = {{ broker = "js", subject = "{p}.out" }}
dead_letter = {{ broker = "js", subject = "{p}.dlq" }}
retry = {{ max_attempts = 2, initial_backoff = "5ms", max_backoff = "10ms" }}
"#,
        url = nats_url()
    );
    let m = Mqfn::start(&cfg);
    let config = m.config.to_str().unwrap().to_owned();
    let listing = three_listed(&config).await;
    println!("{listing}");
    assert!(
        listing.contains("bad order")
            && listing.contains("bad customer")
            && listing.contains("flaky")
    );
    assert!(listing.contains("permanent") && listing.contains("retryable"));
    // Listing again shows the same: nothing was consumed.
    let (again, _) = text(&dlq(&config, "list", &[]).await);
    assert_eq!(again.lines().count(), 4, "{again}");

    // Redrive only the retryable one.
    let out = dlq(
        &config,
        "redrive",
        &["--filter", "mqfn-error-class=retryable"],
    )
    .await;
    let (_, err) = text(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("redrove 1 dead letter(s)") && err.contains("2 left"),
        "{err}"
    );

    // It fails again and comes back with fresh counters and a redrive count.
    let stream = js.get_stream(&s).await.unwrap();
    let back = eventually(LONG, "the redriven message dead-lettered again", || async {
        let msg = stream
            .get_last_raw_message_by_subject(&format!("{p}.dlq"))
            .await
            .ok()?;
        let h = msg.headers;
        (h.get("mqfn-redrives").map(|v| v.to_string()) == Some("1".into())).then_some(h)
    })
    .await;
    assert_eq!(
        back.get("mqfn-attempts").unwrap().to_string(),
        "2",
        "attempts start afresh"
    );
    assert_eq!(back.get("mqfn-error").unwrap().to_string(), "flaky");
    let (after, _) = text(&dlq(&config, "list", &[]).await);
    assert_eq!(
        after.lines().count(),
        4,
        "two untouched plus the one that failed again:\n{after}"
    );

    // --limit bounds a redrive of everything.
    let out = dlq(&config, "redrive", &["--limit", "2"]).await;
    let (_, err) = text(&out);
    assert!(err.contains("redrove 2 dead letter(s)"), "{err}");
    drop(m);
}

#[tokio::test]
async fn list_and_redrive_on_rabbitmq() {
    let q = rand_name("dlq");
    let (input, output, dead) = (format!("{q}.in"), format!("{q}.out"), format!("{q}.dlq"));
    let cfg = format!(
        r#"
{broker}{qi}{qo}{qd}
[[routes]]
name = "r"
source = {{ broker = "rabbit", queue = "{input}" }}
handler = "fail"
output = {{ broker = "rabbit", queue = "{output}" }}
dead_letter = {{ broker = "rabbit", queue = "{dead}" }}
retry = {{ max_attempts = 2, initial_backoff = "5ms", max_backoff = "10ms" }}
"#,
        broker = amqp_support::broker(&amqp_url()),
        qi = amqp_support::queue_decl(&input, "classic"),
        qo = amqp_support::queue_decl(&output, "classic"),
        qd = amqp_support::queue_decl(&dead, "quorum"),
    );
    let m = Mqfn::start(&cfg);
    m.wait_ready(LONG).await;
    let rabbit = amqp_support::Rabbit::connect(&amqp_url()).await;
    for body in [
        "permanent:bad order",
        "permanent:bad customer",
        "retry:flaky",
    ] {
        rabbit.publish(&input, body).await;
    }
    let config = m.config.to_str().unwrap().to_owned();
    let listing = three_listed(&config).await;
    println!("{listing}");
    assert!(listing.contains("bad order") && listing.contains("retryable"));
    let (again, _) = text(&dlq(&config, "list", &[]).await);
    assert_eq!(
        again.lines().count(),
        4,
        "listing consumed nothing:\n{again}"
    );
    assert_eq!(rabbit.count(&dead).await, 3);

    let out = dlq(
        &config,
        "redrive",
        &["--filter", "mqfn-error-class=retryable"],
    )
    .await;
    let (_, err) = text(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("redrove 1 dead letter(s)") && err.contains("2 left"),
        "{err}"
    );
    // The redriven message fails again (fresh attempts: 2 of 2) and returns.
    let back = rabbit
        .take_until(&dead, |got| {
            got.iter()
                .any(|g| g.headers.get("mqfn-redrives").map(String::as_str) == Some("1"))
        })
        .await;
    let again = back
        .iter()
        .find(|g| g.headers.get("mqfn-redrives").map(String::as_str) == Some("1"))
        .unwrap();
    assert_eq!(again.headers["mqfn-attempts"], "2", "attempts start afresh");
    assert_eq!(again.payload, "retry:flaky");
    drop(m);
    rabbit.cleanup(&[&input, &output, &dead], &[]).await;
}

/// A route from a JetStream source to `dead_letter`, with the `fail`
/// handler and one attempt per message.
fn to_source_on_js(p: &str, s: &str, extra: &str, dead_letter: &str) -> String {
    format!(
        r#"
[brokers.js]
kind = "nats"
url = "{url}"
{extra}
[[routes]]
name = "r"
source = {{ broker = "js", subject = "{p}.in", stream = "{s}" }}
handler = "fail"
output = {{ broker = "js", subject = "{p}.out" }}
dead_letter = {dead_letter}
retry = {{ max_attempts = 1 }}
"#,
        url = nats_url()
    )
}

/// The payloads of the redriven copies on the source subject.
async fn redriven(js: &async_nats::jetstream::Context, s: &str, p: &str) -> Vec<String> {
    let mut got: Vec<String> = common::js_read(js, s, &format!("{p}.in"))
        .await
        .iter()
        .filter(|m| {
            m.headers
                .as_ref()
                .and_then(|h| h.get("mqfn-redrives"))
                .is_some()
        })
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    got.sort();
    got
}

#[tokio::test]
async fn redrives_from_rabbitmq_in_separate_runs_all_reach_the_stream() {
    let (p, s, js) = common::js_stream("redrive").await;
    let dead = format!("{p}.dlq");
    let rabbit_cfg = format!(
        "{}{}",
        amqp_support::broker(&amqp_url()),
        amqp_support::queue_decl(&dead, "classic")
    );
    let cfg = to_source_on_js(
        &p,
        &s,
        &rabbit_cfg,
        &format!(r#"{{ broker = "rabbit", queue = "{dead}" }}"#),
    );
    let mut m = Mqfn::start(&cfg);
    m.wait_ready(LONG).await;
    for body in ["permanent:first", "permanent:second"] {
        js.publish(format!("{p}.in"), body.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let rabbit = amqp_support::Rabbit::connect(&amqp_url()).await;
    eventually(LONG, "two dead letters on RabbitMQ", || async {
        (rabbit.count(&dead).await == 2).then_some(())
    })
    .await;
    // Stopped, so that the redriven copies stay where they land.
    m.kill();
    let config = m.config.to_str().unwrap().to_owned();
    // Two runs, one dead letter each: each run's channel numbers its
    // deliveries from 1 again.
    for run in 1..=2 {
        let out = dlq(&config, "redrive", &["--limit", "1"]).await;
        let (_, err) = text(&out);
        assert!(out.status.success(), "run {run}: {err}");
        assert!(err.contains("redrove 1 dead letter(s)"), "run {run}: {err}");
    }
    assert_eq!(
        redriven(&js, &s, &p).await,
        ["permanent:first", "permanent:second"],
        "both dead letters are back on the stream"
    );
    assert_eq!(
        rabbit.count(&dead).await,
        0,
        "both dead letters were removed"
    );
    rabbit.cleanup(&[&dead], &[]).await;
}

#[tokio::test]
async fn a_redrive_the_stream_drops_as_a_duplicate_leaves_the_dead_letter() {
    let (p, s, js) = common::js_stream("redup").await;
    let cfg = to_source_on_js(
        &p,
        &s,
        "",
        &format!(r#"{{ broker = "js", subject = "{p}.dlq" }}"#),
    );
    let mut m = Mqfn::start(&cfg);
    js.publish(format!("{p}.in"), "permanent:once".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let dead = common::js_read_at_least(&js, &s, &format!("{p}.dlq"), 1, LONG).await;
    m.kill();
    // The stream already holds a message with the id the redrive derives
    // from the dead letter's position, as after a redrive interrupted
    // between the publish and the removal.
    let seq = dead[0].info().unwrap().stream_sequence;
    let mut h = async_nats::HeaderMap::new();
    h.insert("Nats-Msg-Id", format!("mqfn-redrive:{s}:{seq}").as_str());
    js.publish_with_headers(format!("{p}.in"), h, "earlier copy".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let config = m.config.to_str().unwrap().to_owned();
    let out = dlq(&config, "redrive", &[]).await;
    let (_, err) = text(&out);
    assert!(!out.status.success(), "a dropped copy is reported: {err}");
    assert!(err.contains("redrove 0 dead letter(s)"), "{err}");
    assert!(err.contains("duplicate"), "{err}");
    let left = common::js_read(&js, &s, &format!("{p}.dlq")).await;
    assert_eq!(left.len(), 1, "the dead letter stays: {err}");
}
