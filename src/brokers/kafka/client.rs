//! librdkafka client settings, layered (mqfn's defaults, the user's
//! properties, then what mqfn relies on), and the context that forwards
//! librdkafka's logs and errors.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext};
use tracing::{debug, error, warn};

use super::set_up;
use super::{KafkaConfig, KafkaSource};
use crate::config::RouteConfig;
use crate::telemetry::quiet::{Quiet, Verdict};

/// A client config: bootstrap and mqfn's `defaults`, then the user's
/// properties (which may override those defaults).
pub(super) fn base_config(cfg: &KafkaConfig, defaults: &[(&str, &str)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.bootstrap);
    // Topics are created by `create = { .. }` through the admin API only.
    c.set("allow.auto.create.topics", "false");
    for (k, v) in defaults {
        c.set(*k, *v);
    }
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
    // librdkafka filters by a level taken from the `log` crate at startup;
    // with a `debug` property, let everything through to `tracing`
    // (shown with RUST_LOG=mqfn::brokers::kafka=debug).
    c.set_log_level(if cfg.properties.contains_key("debug") {
        RDKafkaLogLevel::Debug
    } else {
        RDKafkaLogLevel::Info
    });
    c
}

/// Sets `key` to `value`, warning when the user's properties said otherwise.
fn force(c: &mut ClientConfig, broker: &str, key: &str, value: &str) {
    if let Some(given) = c.get(key).filter(|g| *g != value) {
        warn!(
            broker,
            key, given, value, "mqfn needs this Kafka property; overriding it."
        );
    }
    c.set(key, value);
}

pub(super) fn producer_config(name: &str, cfg: &KafkaConfig) -> ClientConfig {
    let client_id = format!("mqfn/{name}");
    let mut defaults = vec![("client.id", client_id.as_str())];
    defaults.extend_from_slice(cfg.latency.producer());
    let mut c = base_config(cfg, &defaults);
    // No duplicates or reordering from producer retries; implies acks=all.
    force(&mut c, name, "enable.idempotence", "true");
    c
}

/// librdkafka's prefetch bound per consumer, in KiB (user-overridable).
const PREFETCH_KBYTES: &str = "1024";

/// The group consumer of one route.
pub(super) fn consumer_config(
    name: &str,
    cfg: &KafkaConfig,
    route: &RouteConfig,
    src: &KafkaSource,
) -> ClientConfig {
    let client_id = format!("mqfn/{name}/{}", route.name);
    let reset = src.auto_offset_reset.as_str();
    let mut defaults = vec![
        ("client.id", client_id.as_str()),
        ("auto.offset.reset", reset),
        ("enable.partition.eof", "false"),
        // librdkafka prefetches up to 64 MiB by default, whatever the
        // route's window. 1 MiB keeps a fast broker streaming (the same
        // throughput as 4 MiB) and RSS under a 1M backlog within the
        // memory goal (docs/benchmarks.md).
        ("queued.max.messages.kbytes", PREFETCH_KBYTES),
        // With a small prefetch queue the default 1 s back-off after
        // the queue fills stalls the partition; fetch again soon.
        ("fetch.queue.backoff.ms", "10"),
    ];
    defaults.extend_from_slice(cfg.latency.consumer());
    let mut c = base_config(cfg, &defaults);
    // The route's own group, whatever a shared property says.
    c.set("group.id", group_of(route, src));
    // Offsets are stored and committed by mqfn, contiguously, after the
    // results are confirmed.
    force(&mut c, name, "enable.auto.offset.store", "false");
    force(&mut c, name, "enable.auto.commit", "false");
    c
}

/// The route's consumer group: `group`, else `mqfn-ROUTE`.
pub fn group_of(route: &RouteConfig, src: &KafkaSource) -> String {
    src.group
        .clone()
        .unwrap_or_else(|| format!("mqfn-{}", route.name))
}

/// Forwards librdkafka's logs to `tracing` and tracks reachability.
#[derive(Debug, Clone)]
pub struct LogContext {
    pub(super) broker: String,
    pub(super) up: Option<Arc<AtomicBool>>,
}

impl ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log(&self.broker, level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            if let Some(up) = &self.up {
                set_up(up, &self.broker, false);
            }
        }
        on_error(&self.broker, &error, reason);
    }
}

impl ConsumerContext for LogContext {}

/// Logs one librdkafka line at a matching level. Property warnings (a
/// consumer property given to the producer) are expected: the properties
/// table is shared by both.
/// Connection failures (facility `FAIL`) go through the broker's [`Quiet`]:
/// every client logs one per reconnect attempt.
pub(super) fn log(broker: &str, level: RDKafkaLogLevel, fac: &str, line: &str) {
    use RDKafkaLogLevel as L;
    let loud = matches!(
        level,
        L::Emerg | L::Alert | L::Critical | L::Error | L::Warning
    );
    if loud && fac == "FAIL" {
        return match Quiet::of(broker).complain(Instant::now()) {
            Verdict::Log => warn!(broker, facility = fac, "librdkafka: {line}"),
            Verdict::Summary(n) => {
                warn!(
                    broker,
                    suppressed = n,
                    last = line,
                    "Kafka still unreachable; {n} similar lines in the last minute."
                )
            }
            Verdict::Drop => debug!(broker, facility = fac, "librdkafka: {line}"),
        };
    }
    match level {
        L::Emerg | L::Alert | L::Critical | L::Error => {
            error!(broker, facility = fac, "librdkafka: {line}")
        }
        L::Warning if fac != "CONFWARN" => warn!(broker, facility = fac, "librdkafka: {line}"),
        _ => debug!(broker, facility = fac, "librdkafka: {line}"),
    }
}

/// A client error: the first of an outage is logged, the rest are counted
/// and summed up once a minute (see [`Quiet`]).
pub(super) fn on_error(broker: &str, error: &KafkaError, reason: &str) {
    match Quiet::of(broker).complain(Instant::now()) {
        Verdict::Log => {
            warn!(broker, error = %error, reason, "Kafka client error; it reconnects by itself. Repeats are summed up once a minute.")
        }
        Verdict::Summary(n) => {
            warn!(broker, suppressed = n, last_error = %error, last_reason = reason, "Kafka client errors go on; {n} in the last minute.")
        }
        Verdict::Drop => debug!(broker, error = %error, reason, "Kafka client error."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(broker_keys: &str) -> crate::config::Config {
        let text = format!(
            r#"
[brokers.k]
kind = "kafka"
bootstrap = "127.0.0.1:9092"
{broker_keys}

[[routes]]
name = "r"
source = {{ broker = "k", topic = "in" }}
handler = "echo"
dead_letter = {{ broker = "k", topic = "in.dlq" }}
"#
        );
        crate::config::Config::from_str(&text, std::path::Path::new("t.toml")).expect("valid")
    }

    fn kafka(keys: &str) -> (KafkaConfig, crate::config::Config) {
        let cfg = config(keys);
        let k: KafkaConfig =
            toml::from_str(&format!("bootstrap = \"127.0.0.1:9092\"\n{keys}")).expect("kafka keys");
        (k, cfg)
    }

    #[test]
    fn low_latency_sets_fetch_and_linger_and_properties_still_win() {
        let (k, cfg) = kafka("latency = \"low\"\nproperties = { \"linger.ms\" = \"2\" }");
        let route = &cfg.routes[0];
        let src = route.source.get::<KafkaSource>().expect("a kafka source");
        let c = consumer_config("k", &k, route, src);
        assert_eq!(c.get("fetch.wait.max.ms"), Some("5"));
        assert_eq!(c.get("socket.nagle.disable"), Some("true"));
        let p = producer_config("k", &k);
        assert_eq!(p.get("linger.ms"), Some("2"), "the user's property wins");
        assert_eq!(p.get("socket.nagle.disable"), Some("true"));
        assert_eq!(
            p.get("fetch.wait.max.ms"),
            None,
            "consumer keys stay off the producer"
        );
    }

    #[test]
    fn the_default_profile_leaves_librdkafka_s_defaults() {
        let (k, cfg) = kafka("");
        let route = &cfg.routes[0];
        let src = route.source.get::<KafkaSource>().expect("a kafka source");
        assert_eq!(
            consumer_config("k", &k, route, src).get("fetch.wait.max.ms"),
            None
        );
        assert_eq!(producer_config("k", &k).get("linger.ms"), None);
    }
}
