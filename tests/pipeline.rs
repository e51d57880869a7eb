//! The pipeline in process: `App` on the memory broker under paused time.
//!
//! Every settle branch, ordering lanes, drain, the autoscaler, scale to
//! zero and supervision, with no broker and no real sleep: the clock is
//! tokio's, paused, and moves only when every task waits on it. Each test
//! waits on conditions (a queue's length, a count), never on time; a test
//! that would wait for ever fails at [`LIMIT`] of virtual time instead.
//!
//! Broker behaviour is tested against the real brokers in the other files
//! of `tests/`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mqfn::app::App;
use mqfn::brokers::memory::{Hub, Queue};
use mqfn::brokers::OutMessage;
use mqfn::config::Config;
use mqfn::message::{Headers, Message};
use mqfn::state::AppState;
use mqfn::telemetry::status::{snapshot, RouteStatus};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Virtual time after which a test that is still waiting fails.
const LIMIT: Duration = Duration::from_secs(3600);

/// Runs a test body; fails it if it waits past [`LIMIT`].
async fn within(body: impl Future<Output = ()>) {
    if tokio::time::timeout(LIMIT, body).await.is_err() {
        panic!("the test was still waiting after {LIMIT:?} of virtual time");
    }
}

/// A name no other test of this process uses.
fn unique(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// One app with one route `in` → `fail` handler → `out`, dead letters to
/// `dlq`, on a hub of its own.
struct Bed {
    hub: Arc<Hub>,
    route: String,
    state: Arc<AppState>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    stop: oneshot::Sender<()>,
    done: JoinHandle<()>,
}

impl Bed {
    /// Starts with the route's keys overridden (or added) by `keys`, and
    /// the top-level keys `top`.
    async fn start(keys: &[(&str, &str)], top: &[(&str, &str)]) -> Bed {
        Self::start_with(keys, top, |_| {}).await
    }

    /// As [`Bed::start`], scripting faults on the hub before the app starts.
    async fn start_with(
        keys: &[(&str, &str)],
        top: &[(&str, &str)],
        script: impl FnOnce(&Hub),
    ) -> Bed {
        let hub_name = unique("hub");
        let route = unique("route");
        let mut r: BTreeMap<&str, String> = BTreeMap::new();
        r.insert("name", format!("{route:?}"));
        r.insert("source", r#"{ broker = "mem", queue = "in" }"#.into());
        r.insert("handler", r#""fail""#.into());
        r.insert("output", r#"{ broker = "mem", queue = "out" }"#.into());
        r.insert("dead_letter", r#"{ broker = "mem", queue = "dlq" }"#.into());
        r.insert(
            "retry",
            r#"{ max_attempts = 3, initial_backoff = "100ms", max_backoff = "1s" }"#.into(),
        );
        r.insert("timeout", r#""1s""#.into());
        for (k, v) in keys {
            r.insert(k, (*v).to_owned());
        }
        let mut t: BTreeMap<&str, String> = BTreeMap::new();
        t.insert("shutdown_timeout", r#""10s""#.into());
        for (k, v) in top {
            t.insert(k, (*v).to_owned());
        }
        let mut text: String = t.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
        text.push_str(&format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[brokers.mem]\nkind = \"memory\"\nhub = \"{hub_name}\"\n[[routes]]\n"
        ));
        for (k, v) in &r {
            text.push_str(&format!("{k} = {v}\n"));
        }
        let cfg = Config::from_str(&text, std::path::Path::new("pipeline.toml"))
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        let hub = Hub::named(&hub_name);
        script(&hub);
        let app = App::start(&cfg).await.expect("the app starts");
        let (stop, stopped) = oneshot::channel::<()>();
        let state = app.state();
        let metrics = app.metrics.clone();
        let done = tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        Bed {
            hub,
            route,
            state,
            metrics,
            stop,
            done,
        }
    }

    fn q(&self, name: &str) -> Arc<Queue> {
        self.hub.queue(name)
    }

    fn send(&self, payload: &str) {
        self.q("in").send(payload.to_owned());
    }

    fn send_keyed(&self, key: &str, payload: &str) {
        let msg = OutMessage {
            payload: payload.to_owned().into(),
            key: Some(key.to_owned().into()),
            ..OutMessage::default()
        };
        self.q("in").push(msg).expect("the input queue takes it");
    }

    /// Waits for `n` messages on `queue`, then takes them all.
    async fn take(&self, queue: &str, n: usize) -> Vec<Message> {
        let q = self.q(queue);
        q.wait_len(n).await;
        q.drain()
    }

    /// Waits until every input is acknowledged (`acked` in all).
    async fn acked(&self, acked: u64) {
        self.q("in").wait_until(|q| q.acked() >= acked).await;
    }

    fn status(&self) -> RouteStatus {
        snapshot(&self.state).routes.remove(0)
    }

    /// Checks `done` every 10 ms of virtual time until it holds.
    async fn until(&self, done: impl Fn(&Bed) -> bool) {
        while !done(self) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Shuts down and waits for the drain to end.
    async fn stop(self) {
        let _ = self.stop.send(());
        self.done.await.expect("run_until returns");
    }
}

fn payloads(msgs: &[Message]) -> Vec<String> {
    msgs.iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect()
}

fn header<'a>(m: &'a Message, name: &str) -> &'a str {
    m.headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", m.headers))
}

#[tokio::test(start_paused = true)]
async fn a_result_is_published_then_the_input_acked() {
    within(async {
        let bed = Bed::start(&[], &[]).await;
        bed.send("hello");
        let out = bed.take("out", 1).await;
        assert_eq!(payloads(&out), ["hello"]);
        bed.acked(1).await;
        let s = bed.status();
        assert_eq!((s.received, s.succeeded, s.dead_lettered), (1, 1, 0));
        assert!(bed.q("dlq").is_empty());
        bed.stop().await;
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_refused_output_sends_the_input_to_the_dead_letter() {
    within(async {
        let bed = Bed::start(&[], &[]).await;
        bed.q("out").refuse_publishes(1);
        bed.send("x");
        let dl = bed.take("dlq", 1).await;
        assert_eq!(payloads(&dl), ["x"]);
        assert_eq!(header(&dl[0], "mqfn-error-class"), "permanent");
        assert!(header(&dl[0], "mqfn-error").contains("result refused by the broker"));
        assert_eq!(header(&dl[0], "mqfn-route"), bed.route);
        assert_eq!(header(&dl[0], "mqfn-handler"), "fail");
        assert_eq!(header(&dl[0], "mqfn-source"), "mem/in/1");
        bed.acked(1).await;
        assert!(bed.q("out").is_empty());
        bed.stop().await;
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn an_unconfirmed_output_hands_the_input_back_and_it_comes_again() {
    within(async {
        let bed = Bed::start(&[], &[]).await;
        bed.q("out").fail_publishes(1);
        bed.send("x");
        let out = bed.take("out", 1).await;
        assert_eq!(payloads(&out), ["x"]);
        bed.acked(1).await;
        let s = bed.status();
        assert_eq!((s.received, s.redelivered, s.succeeded), (2, 1, 1));
        assert!(bed.q("dlq").is_empty());
        bed.stop().await;
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_lost_ack_means_a_duplicate_never_a_loss() {
    within(async {
        let bed = Bed::start(&[], &[]).await;
        bed.q("in").fail_settles(1);
        bed.send("x");
        bed.acked(1).await;
        let out = bed.q("out").drain();
        assert_eq!(
            payloads(&out),
            ["x", "x"],
            "at-least-once: the redelivery publishes again"
        );
        bed.stop().await;
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn retries_then_success() {
    within(async {
        let bed = Bed::start(&[], &[]).await;
        bed.send("retry-until:3");
        let out = bed.take("out", 1).await;
        assert_eq!(payloads(&out), ["retry-until:3"]);
        bed.acked(1).await;
        let s = bed.status();
        assert_eq!((s.succeeded, s.dead_lettered, s.redelivered), (1, 0, 0));
        assert_eq!(bed.state.routes[0].route.meters.counts().retries, 2);
        bed.stop().await;
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn out_of_attempts_goes_to_the_dead_letter() {
    within(async {
        let bed = Bed::start(&[], &[]).await;
        bed.send("retry:still broken");
        let dl = bed.take("dlq", 1).await;
        assert_eq!(header(&dl[0], "mqfn-error-class"), "retryable");
        assert_eq!(header(&dl[0], "mqfn-attempts"), "3");
        assert!(header(&dl[0], "mqfn-error").contains("still broken"));
        bed.acked(1).await;
        bed.stop().await;
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_permanent_failure_is_not_retried() {
    within(async {
        let bed = Bed::start(&[], &[]).await;
        bed.send("permanent:bad input");
        let dl = bed.take("dlq", 1).await;
        assert_eq!(header(&dl[0], "mqfn-error-class"), "permanent");
        assert_eq!(header(&dl[0], "mqfn-attempts"), "1");
        assert!(header(&dl[0], "mqfn-error").contains("bad input"));
        assert!(!header(&dl[0], "mqfn-failed-at").is_empty());
        bed.acked(1).await;
        assert_eq!(bed.state.routes[0].route.meters.counts().retries, 0);
        bed.stop().await;
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_timeout_is_retried_then_dead_lettered() {
    within(async {
        let bed = Bed::start(&[("timeout", r#""500ms""#)], &[]).await;
        bed.send("sleep:60000");
        let dl = bed.take("dlq", 1).await;
        assert_eq!(header(&dl[0], "mqfn-error-class"), "retryable");
        assert_eq!(header(&dl[0], "mqfn-attempts"), "3");
        assert!(header(&dl[0], "mqfn-error").contains("timed out after 500ms"));
        bed.acked(1).await;
        bed.stop().await;
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_panic_is_a_crash_and_the_route_keeps_flowing() {
    within(async {
        let bed = Bed::start(&[], &[]).await;
        bed.send("panic");
        bed.send("after");
        let dl = bed.take("dlq", 1).await;
        assert_eq!(header(&dl[0], "mqfn-error-class"), "crashed");
        assert!(header(&dl[0], "mqfn-error").contains("panicked"));
        let out = bed.take("out", 1).await;
        assert_eq!(payloads(&out), ["after"]);
        bed.acked(2).await;
        bed.stop().await;
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn filtered_messages_are_acked_without_a_call() {
    within(async {
        let bed = Bed::start(&[("filter", r#"{ headers = { kind = "order" } }"#)], &[]).await;
        let mut h = Headers::new();
        h.append("kind", "order");
        bed.q("in")
            .push(OutMessage {
                payload: "wanted".into(),
                headers: h,
                ..OutMessage::default()
            })
            .unwrap();
        bed.send("permanent:never called");
        bed.acked(2).await;
        assert_eq!(payloads(&bed.q("out").drain()), ["wanted"]);
        assert!(
            bed.q("dlq").is_empty(),
            "the filtered message never reached the handler"
        );
        assert_eq!(bed.status().succeeded, 2);
        bed.stop().await;
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn an_oversize_payload_is_dead_lettered_without_a_call() {
    within(async {
        let bed = Bed::start(&[("max_message_bytes", "8")], &[]).await;
        bed.send("panic and more than eight bytes");
        let dl = bed.take("dlq", 1).await;
        assert_eq!(header(&dl[0], "mqfn-error-class"), "permanent");
        assert!(header(&dl[0], "mqfn-error").contains("larger than max_message_bytes (8)"));
        bed.acked(1).await;
        bed.stop().await;
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_dead_letter_that_is_not_confirmed_hands_the_input_back() {
    within(async {
        let bed = Bed::start(&[], &[]).await;
        bed.q("dlq").fail_publishes(1);
        bed.send("permanent:bad");
        let dl = bed.take("dlq", 1).await;
        assert_eq!(header(&dl[0], "mqfn-attempts"), "2", "the second delivery");
        bed.acked(1).await;
        assert_eq!(bed.status().redelivered, 1);
        bed.stop().await;
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn key_ordering_runs_one_at_a_time_per_key_and_keys_in_parallel() {
    within(async {
        let workers = r#"{ min = 4, max = 4 }"#;
        let bed = Bed::start(&[("ordering", r#""key""#), ("workers", workers)], &[]).await;
        for p in ["sleep:300", "sleep:10", "sleep:100"] {
            bed.send_keyed("a", p);
        }
        bed.send_keyed("b", "sleep:20");
        let out = bed.take("out", 4).await;
        // Key a in arrival order, whatever each takes; key b did not wait
        // behind a.
        assert_eq!(
            payloads(&out),
            ["sleep:20", "sleep:300", "sleep:10", "sleep:100"]
        );
        bed.stop().await;

        // Without ordering the same messages finish by duration.
        let bed = Bed::start(&[("workers", workers)], &[]).await;
        for p in ["sleep:300", "sleep:10", "sleep:100"] {
            bed.send_keyed("a", p);
        }
        bed.send_keyed("b", "sleep:20");
        let out = bed.take("out", 4).await;
        assert_eq!(
            payloads(&out),
            ["sleep:10", "sleep:20", "sleep:100", "sleep:300"]
        );
        bed.stop().await;
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_finishes_work_within_the_shutdown_timeout() {
    within(async {
        let bed = Bed::start(
            &[("timeout", r#""10s""#)],
            &[("shutdown_timeout", r#""5s""#)],
        )
        .await;
        bed.send("sleep:3000");
        bed.q("in").wait_until(|q| q.inflight() == 1).await;
        let (input, output) = (bed.q("in"), bed.q("out"));
        bed.stop().await;
        assert_eq!(
            payloads(&output.drain()),
            ["sleep:3000"],
            "finished during the drain"
        );
        assert_eq!(input.acked(), 1);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_past_the_timeout_leaves_the_message_to_the_broker() {
    within(async {
        let bed = Bed::start(
            &[("timeout", r#""120s""#)],
            &[("shutdown_timeout", r#""1s""#)],
        )
        .await;
        bed.send("sleep:60000");
        bed.q("in").wait_until(|q| q.inflight() == 1).await;
        let (input, output) = (bed.q("in"), bed.q("out"));
        let started = tokio::time::Instant::now();
        bed.stop().await;
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the drain was cut short"
        );
        assert!(
            output.is_empty(),
            "nothing published for the unfinished message"
        );
        assert_eq!(
            input.acked(),
            0,
            "not acknowledged: the broker redelivers it"
        );
        assert_eq!(input.inflight() + input.len(), 1, "and not lost");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn the_autoscaler_scales_up_at_once_and_down_one_step_per_cooldown() {
    within(async {
        let workers =
            r#"{ min = 1, max = 4, target_backlog = 2, cooldown = "10s", scale_interval = "1s" }"#;
        let bed = Bed::start(&[("workers", workers), ("timeout", r#""10s""#)], &[]).await;
        for _ in 0..20 {
            bed.send("sleep:1000");
        }
        bed.take("out", 20).await;
        bed.until(|b| b.status().workers.current == 1).await;
        let decisions = bed.status().decisions;
        let up: Vec<_> = decisions.iter().filter(|d| d.next > d.current).collect();
        assert_eq!(up.len(), 1, "one step up: {decisions:?}");
        assert_eq!(
            (up[0].current, up[0].next),
            (1, 4),
            "straight to max: {decisions:?}"
        );
        let down: Vec<_> = decisions.iter().filter(|d| d.next < d.current).collect();
        assert_eq!(down.len(), 3, "{decisions:?}");
        assert!(
            down.iter().all(|d| d.current - d.next == 1),
            "one step at a time: {decisions:?}"
        );
        for pair in down.windows(2) {
            let ticks = pair[1].tick - pair[0].tick;
            assert!(
                ticks >= 10,
                "a cooldown (10 ticks of 1s) between steps: {decisions:?}"
            );
        }
        bed.stop().await;
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn an_idle_route_scales_to_zero_and_the_next_message_wakes_it() {
    within(async {
        let workers = r#"{ min = 0, max = 2, idle_timeout = "30s", cooldown = "1s" }"#;
        let bed = Bed::start(&[("workers", workers)], &[]).await;
        assert_eq!(bed.status().workers.current, 0, "starts at zero");
        bed.send("first");
        assert_eq!(payloads(&bed.take("out", 1).await), ["first"]);
        assert!(bed.status().workers.current >= 1, "woken");
        bed.until(|b| b.status().workers.current == 0).await;
        bed.send("second");
        assert_eq!(payloads(&bed.take("out", 1).await), ["second"]);
        bed.stop().await;
    })
    .await;
}

/// At rest (zero workers, nothing waiting) a route asks its broker for the
/// backlog on one tick in ten; a message still wakes it at once, and a
/// route with work samples every tick.
#[tokio::test(start_paused = true)]
async fn a_route_at_rest_probes_its_broker_ten_times_less_often() {
    within(async {
        let workers = r#"{ min = 0, max = 2, idle_timeout = "5s", cooldown = "1s" }"#;
        let bed = Bed::start(&[("workers", workers)], &[]).await;
        bed.until(|b| b.status().subscribed).await;
        let every = mqfn::pool::autoscale::QUIET_PROBE_EVERY as u64;
        let q = bed.q("in");
        let p0 = q.probes();
        // 100 ticks of `scale_interval` (1 s) at rest.
        tokio::time::sleep(Duration::from_secs(100)).await;
        let at_rest = q.probes() - p0;
        assert!(
            (100 / every - 1..=100 / every + 1).contains(&at_rest),
            "{at_rest} probes in 100 ticks at rest"
        );
        bed.send("x");
        assert_eq!(payloads(&bed.take("out", 1).await), ["x"]);
        // Awake (workers > 0 until idle_timeout): every tick probes.
        let p1 = q.probes();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(bed.status().workers.current >= 1);
        assert!(q.probes() - p1 >= 2, "awake, every tick probes");
        bed.stop().await;
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_source_that_fails_for_good_is_reported_and_restarted() {
    within(async {
        let bed = Bed::start_with(&[], &[], |hub| {
            hub.queue("in").end_receives(1);
            // Keep it down long enough to look at it.
            hub.queue("in").refuse_subscribes(3);
        })
        .await;
        bed.until(|b| b.status().restarts == 1).await;
        let down = bed
            .state
            .readiness()
            .expect_err("not ready while restarting");
        assert!(
            down[0].contains("failed") && down[0].contains("subscription ended"),
            "{down:?}"
        );
        let s = bed.status();
        assert!(!s.subscribed);
        assert!(s.failure.unwrap().message.contains("subscription ended"));
        bed.until(|b| b.status().subscribed).await;
        assert!(bed.state.readiness().is_ok());
        assert!(bed.status().failure.is_none());
        bed.send("x");
        assert_eq!(payloads(&bed.take("out", 1).await), ["x"]);
        let text = bed.metrics.render();
        let line = format!("mqfn_route_restarts_total{{route=\"{}\"}} 1", bed.route);
        assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        bed.stop().await;
    })
    .await;
}

/// Ready means receiving: a subscribed source that has not joined yet (a
/// Kafka group member before its first assignment) keeps `/readyz` at 503
/// with the reason, and `/status` shows it.
#[tokio::test(start_paused = true)]
async fn a_route_is_not_ready_until_its_source_has_joined() {
    within(async {
        let bed = Bed::start_with(&[], &[], |hub| hub.queue("in").hold_joins()).await;
        bed.until(|b| b.status().subscribed).await;
        let down = bed.state.readiness().expect_err("not ready before joining");
        assert_eq!(
            down,
            [format!(
                "route {} is joining its consumer group (no assignment yet)",
                bed.route
            )]
        );
        assert!(!bed.status().joined);
        bed.hub.queue("in").release_joins();
        assert!(bed.state.readiness().is_ok());
        assert!(bed.status().joined);
        bed.send("x");
        assert_eq!(payloads(&bed.take("out", 1).await), ["x"]);
        bed.stop().await;
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_panicking_route_task_is_reported_and_restarted() {
    within(async {
        let bed = Bed::start_with(&[], &[], |hub| hub.queue("in").panic_receives(1)).await;
        bed.until(|b| b.status().restarts == 1 && b.status().subscribed)
            .await;
        let last = bed.status().last_error.unwrap().message;
        assert!(
            last.contains("panicked") && last.contains("scripted panic"),
            "{last}"
        );
        bed.send("x");
        assert_eq!(payloads(&bed.take("out", 1).await), ["x"]);
        bed.stop().await;
    })
    .await;
}

/// A config reload: the unchanged route keeps running untouched (the same
/// handle, its figures going on), the changed one drains and restarts, the
/// removed one drains and stops, the new one starts, and no message of the
/// routes that go on is lost or doubled.
#[tokio::test(start_paused = true)]
async fn a_reload_keeps_restarts_stops_and_starts_routes_and_loses_nothing() {
    within(async {
        let hub_name = unique("hub");
        let hub = Hub::named(&hub_name);
        let config = |routes: &[(&str, &str)]| {
            let mut text = format!(
                "shutdown_timeout = \"10s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[brokers.mem]\nkind = \"memory\"\nhub = \"{hub_name}\"\n"
            );
            for (name, workers) in routes {
                text.push_str(&format!(
                    "[[routes]]\nname = \"{name}\"\nsource = {{ broker = \"mem\", queue = \"{name}.in\" }}\nhandler = \"echo\"\noutput = {{ broker = \"mem\", queue = \"{name}.out\" }}\ndead_letter = {{ broker = \"mem\", queue = \"{name}.dlq\" }}\nworkers = {workers}\n"
                ));
            }
            Config::from_str(&text, std::path::Path::new("reload.toml"))
                .unwrap_or_else(|e| panic!("{e}\n{text}"))
        };
        let small = "{ min = 1, max = 2 }";
        let v1 = config(&[("keep", small), ("change", small), ("gone", small)]);
        let v2 = config(&[("keep", small), ("change", "{ min = 1, max = 4 }"), ("new", small)]);
        let mut app = App::start(&v1).await.expect("the app starts");
        let send = |queue: &str, from: usize, to: usize| {
            for i in from..to {
                hub.queue(queue).send(format!("{queue}-{i}"));
            }
        };
        send("keep.in", 0, 50);
        send("change.in", 0, 50);
        send("gone.in", 0, 20);
        hub.queue("keep.out").wait_len(10).await;
        let kept_before = app.state().routes[0].clone();
        let received_before = kept_before.route.meters.counts().received;

        let done = app.reload(&v2).await.expect("reloaded");
        assert_eq!(done.kept, ["keep"]);
        assert_eq!(done.restarted, ["change"]);
        assert_eq!(done.stopped, ["gone"]);
        assert_eq!(done.started, ["new"]);
        let state = app.state();
        let names: Vec<_> = state.routes.iter().map(|h| h.cfg.name.clone()).collect();
        assert_eq!(names, ["keep", "change", "new"], "config order");
        assert!(
            Arc::ptr_eq(&state.routes[0], &kept_before),
            "the unchanged route runs on, untouched"
        );
        assert_eq!(state.routes[1].cfg.workers.max, 4, "the new config");

        send("keep.in", 50, 100);
        send("change.in", 50, 100);
        send("new.in", 0, 30);
        send("gone.in", 20, 25);
        for (queue, n) in [("keep.out", 100), ("change.out", 100), ("new.out", 30)] {
            hub.queue(queue).wait_len(n).await;
            let mut got = payloads(&hub.queue(queue).drain());
            got.sort();
            got.dedup();
            assert_eq!(got.len(), n, "{queue}: each input once");
        }
        for q in ["keep.in", "change.in", "new.in"] {
            hub.queue(q).wait_settled().await;
        }
        assert!(
            state.routes[0].route.meters.counts().received >= received_before + 50,
            "the kept route's figures go on"
        );
        // The stopped route consumes nothing more: what came after it
        // stopped is still there (it had drained before reload returned).
        let gone = hub.queue("gone.in");
        assert!(gone.len() >= 5, "{} left on gone.in", gone.len());
        assert_eq!(gone.inflight(), 0, "nothing held by a stopped route");
        app.run_until(async {}).await;
    })
    .await;
}
