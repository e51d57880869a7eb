//! The schedule trigger: firings on their slots under paused time (in
//! process, on the memory broker), catch-up after downtime, and three
//! `mqfn run` processes on one schedule through JetStream giving one
//! result per slot.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::*;
use mqfn::app::App;
use mqfn::brokers::memory::Hub;
use mqfn::config::Config;
use mqfn::message::Message;

/// Virtual time after which a paused-time test that still waits fails.
const VIRTUAL_LIMIT: Duration = Duration::from_secs(24 * 3600);

fn slot_of(m: &Message) -> DateTime<Utc> {
    let at = m.headers.get("mqfn-scheduled-at").expect("the slot header");
    DateTime::parse_from_rfc3339(at)
        .unwrap()
        .with_timezone(&Utc)
}

/// Runs `route` (its keys) with a memory output `out` on a hub of its own
/// until `n` results arrived; returns them.
async fn fire(route: &str, top: &str, n: usize) -> Vec<Message> {
    let hub = rand_name("sched");
    let text = format!(
        "{top}\n[admin]\nlisten = \"127.0.0.1:0\"\n[brokers.mem]\nkind = \"memory\"\nhub = \"{hub}\"\n\n[[routes]]\nname = \"tick\"\nhandler = \"echo\"\noutput = {{ broker = \"mem\", queue = \"out\" }}\n{route}\n"
    );
    let cfg = Config::from_str(&text, Path::new("schedule.toml"))
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let app = App::start(&cfg).await.expect("the app starts");
    let out = Hub::named(&hub).queue("out");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    tokio::time::timeout(VIRTUAL_LIMIT, out.wait_len(n))
        .await
        .expect("the firings came");
    let got = out.drain();
    let _ = stop.send(());
    done.await.unwrap();
    got
}

#[tokio::test(start_paused = true)]
async fn an_every_schedule_fires_on_its_aligned_slots() {
    let start = Utc::now();
    let got = fire(
        "source = { schedule = \"@every 30s\", payload = \"tick\" }",
        "",
        3,
    )
    .await;
    let slots: Vec<_> = got.iter().map(slot_of).collect();
    for (m, slot) in got.iter().zip(&slots) {
        assert_eq!(&m.payload[..], b"tick");
        assert_eq!(slot.timestamp() % 30, 0, "aligned to the epoch: {slot}");
        assert!(*slot > start, "no firing before the first slot after start");
    }
    assert_eq!((slots[1] - slots[0]).num_seconds(), 30);
    assert_eq!((slots[2] - slots[1]).num_seconds(), 30);
}

#[tokio::test(start_paused = true)]
async fn cron_in_a_time_zone_fires_at_its_local_time() {
    // India is UTC+05:30: the top of each local hour is half past in UTC.
    let got = fire(
        "source = { schedule = \"0 * * * *\", timezone = \"Asia/Kolkata\" }",
        "",
        2,
    )
    .await;
    let tz: chrono_tz::Tz = "Asia/Kolkata".parse().unwrap();
    for m in &got {
        let slot = slot_of(m);
        assert_eq!(slot.with_timezone(&tz).format("%M:%S").to_string(), "00:00");
        assert_eq!(slot.format("%M:%S").to_string(), "30:00", "{slot}");
    }
    assert_eq!((slot_of(&got[1]) - slot_of(&got[0])).num_hours(), 1);
}

#[tokio::test(start_paused = true)]
async fn catch_up_last_fires_the_missed_slot_once_and_none_skips_it() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("tick.last");
    let top = format!("[schedule]\nstate_dir = {:?}\n", dir.path());
    let long_ago = "2020-01-01T00:00:00Z";

    std::fs::write(&state, long_ago).unwrap();
    let start = Utc::now();
    let got = fire(
        "source = { schedule = \"@every 1h\", catch_up = \"last\" }",
        &top,
        2,
    )
    .await;
    let (missed, next) = (slot_of(&got[0]), slot_of(&got[1]));
    assert!(
        missed <= start,
        "the first firing is the missed slot: {missed}"
    );
    assert!(
        start - missed < chrono::TimeDelta::hours(1),
        "the last one: {missed}"
    );
    assert!(next > start, "then the next slot: {next}");
    let kept = std::fs::read_to_string(&state).unwrap();
    assert_ne!(kept, long_ago, "each acked firing is recorded");

    std::fs::write(&state, long_ago).unwrap();
    let start = Utc::now();
    let got = fire("source = { schedule = \"@every 1h\" }", &top, 1).await;
    assert!(
        slot_of(&got[0]) > start,
        "catch_up = none skips what was missed"
    );
}

#[tokio::test]
async fn three_replicas_on_one_schedule_give_one_result_per_slot() {
    let (p, s, js) = js_stream("sched").await;
    let cfg = format!(
        r#"
[brokers.js]
kind = "nats"
url = "{nats}"

[[routes]]
name = "{p}"
source = {{ schedule = "@every 1s", via = {{ broker = "js", subject = "{p}.ticks", stream = "{s}", durable = "{p}" }} }}
handler = "echo"
output = {{ broker = "js", subject = "{p}.out" }}
dead_letter = {{ broker = "js", subject = "{p}.dlq" }}
"#,
        nats = nats_url()
    );
    let replicas: Vec<Mqfn> = (0..3).map(|_| Mqfn::start(&cfg)).collect();
    for m in &replicas {
        m.wait_ready(Duration::from_secs(60)).await;
    }
    let text = replicas[0].metrics().await;
    let firings = format!("mqfn_schedule_firings_total{{route=\"{p}\"}}");
    assert!(metric(&text, &firings).is_some(), "exported from start");
    let outs = js_read_at_least(&js, &s, &format!("{p}.out"), 10, Duration::from_secs(60)).await;
    // Firings counted first, slots kept after: without deduplication the
    // stream would then hold every counted firing but the one each
    // replica may have in flight.
    let mut fired = 0.0;
    for m in &replicas {
        let text = m.metrics().await;
        let mine = metric(
            &text,
            &format!("mqfn_schedule_firings_total{{route=\"{p}\"}}"),
        );
        fired += mine.expect("each replica fires");
    }
    let ticks = js_read(&js, &s, &format!("{p}.ticks")).await;
    drop(replicas);
    let count = |msgs: &[async_nats::jetstream::Message]| {
        let mut per_slot: BTreeMap<String, usize> = BTreeMap::new();
        for m in msgs {
            *per_slot
                .entry(js_header(m, "mqfn-scheduled-at"))
                .or_default() += 1;
        }
        per_slot
    };
    let (ticks, outs) = (count(&ticks), count(&outs));
    println!(
        "firings by the 3 replicas: {fired}; slots kept: {}; results: {}",
        ticks.len(),
        outs.len()
    );
    assert!(ticks.len() >= 10, "{ticks:?}");
    assert!(
        fired > ticks.len() as f64 + 3.0,
        "the replicas fired {fired} times for {} slots kept: the stream deduplicated",
        ticks.len()
    );
    assert!(
        ticks.values().all(|n| *n == 1),
        "one firing per slot kept: {ticks:?}"
    );
    assert!(
        outs.values().all(|n| *n == 1),
        "one result per slot: {outs:?}"
    );
    assert!(outs.keys().all(|slot| ticks.contains_key(slot)));
}
