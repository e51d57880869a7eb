//! Rules that span fields, checked once after parsing. Every message names
//! the key path, both values where two disagree, and what would fix it.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use super::{
    BrokerConfig, BrokerKind, Config, ConfigError, ConfigErrors, Endpoint, HandlerConfig,
    HttpConfig, ProcessConfig,
};

/// Checks `cfg`; returns every problem found, not just the first.
pub fn validate(cfg: &Config) -> Result<(), ConfigErrors> {
    let mut v = Validator {
        cfg,
        errors: Vec::new(),
    };
    v.admin();
    v.brokers();
    v.handlers();
    v.routes();
    if v.errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(v.errors))
    }
}

struct Validator<'a> {
    cfg: &'a Config,
    errors: Vec<ConfigError>,
}

impl Validator<'_> {
    fn err(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError::Invalid {
            file: self.cfg.file.clone(),
            key: key.into(),
            message: message.into(),
        });
    }

    fn admin(&mut self) {
        let listen = &self.cfg.admin.listen;
        if listen.parse::<SocketAddr>().is_err() {
            self.err(
                "admin.listen",
                format!("{listen:?} is not an IP:port address; expected e.g. \"127.0.0.1:9090\""),
            );
        }
    }

    fn brokers(&mut self) {
        for (name, b) in &self.cfg.brokers {
            let key = format!("brokers.{name}");
            match b {
                BrokerConfig::Nats(n) => {
                    for (field, path) in [
                        ("credentials_file", &n.credentials_file),
                        ("nkey_file", &n.nkey_file),
                        ("tls_ca_file", &n.tls_ca_file),
                        ("tls_cert_file", &n.tls_cert_file),
                        ("tls_key_file", &n.tls_key_file),
                    ] {
                        self.readable(&format!("{key}.{field}"), path.as_deref());
                    }
                    if n.tls_cert_file.is_some() != n.tls_key_file.is_some() {
                        self.err(
                            format!("{key}.tls_cert_file"),
                            "tls_cert_file and tls_key_file go together: give both for mutual TLS, or neither",
                        );
                    }
                    if n.credentials_file.is_some() && n.nkey_file.is_some() {
                        self.err(
                            format!("{key}.nkey_file"),
                            "give credentials_file or nkey_file, not both (a .creds file already holds the nkey)",
                        );
                    }
                    for (i, u) in n.url.split(',').enumerate() {
                        self.url(
                            &format!("{key}.url"),
                            u.trim(),
                            &["nats", "tls", "ws", "wss"],
                            i,
                        );
                    }
                    for (i, s) in n.streams.iter().enumerate() {
                        if !matches!(s.storage.as_str(), "file" | "memory") {
                            self.err(
                                format!("{key}.streams[{i}].storage"),
                                format!(
                                    "{:?} is not a storage type; expected \"file\" or \"memory\"",
                                    s.storage
                                ),
                            );
                        }
                        if s.subjects.is_empty() {
                            self.err(
                                format!("{key}.streams[{i}].subjects"),
                                "a stream needs at least one subject",
                            );
                        }
                    }
                }
                BrokerConfig::Kafka(k) => {
                    for hp in k.bootstrap.split(',') {
                        let hp = hp.trim();
                        let ok = hp
                            .rsplit_once(':')
                            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
                        if !ok {
                            self.err(
                                format!("{key}.bootstrap"),
                                format!(
                                    "{hp:?} is not host:port; expected e.g. \"127.0.0.1:9092\""
                                ),
                            );
                        }
                    }
                    self.kafka_properties(&key, k);
                    if k.partition_window == 0 {
                        self.err(format!("{key}.partition_window"), "must be at least 1");
                    }
                }
                BrokerConfig::Amqp(a) => {
                    self.url(&format!("{key}.url"), &a.url, &["amqp", "amqps"], 0);
                    for (i, q) in a.queues.iter().enumerate() {
                        if !matches!(q.queue_type.as_str(), "classic" | "quorum") {
                            self.err(
                                format!("{key}.queues[{i}].queue_type"),
                                format!(
                                    "{:?} is not a queue type; expected \"classic\" or \"quorum\"",
                                    q.queue_type
                                ),
                            );
                        }
                        if q.queue_type == "quorum" && !q.durable && !q.passive {
                            self.err(
                                format!("{key}.queues[{i}].durable"),
                                "a quorum queue is always durable; remove durable = false",
                            );
                        }
                        for (name, v) in &q.arguments {
                            if !matches!(
                                v,
                                toml::Value::String(_)
                                    | toml::Value::Integer(_)
                                    | toml::Value::Float(_)
                                    | toml::Value::Boolean(_)
                            ) {
                                self.err(
                                    format!("{key}.queues[{i}].arguments.{name}"),
                                    format!(
                                        "is a {}; expected a string, integer, float or boolean",
                                        v.type_str()
                                    ),
                                );
                            }
                        }
                    }
                    for (i, x) in a.exchanges.iter().enumerate() {
                        if !matches!(x.kind.as_str(), "direct" | "topic" | "fanout" | "headers") {
                            self.err(
                                format!("{key}.exchanges[{i}].type"),
                                format!("{:?} is not an exchange type; expected direct, topic, fanout or headers", x.kind),
                            );
                        }
                    }
                }
            }
        }
    }

    /// Lets librdkafka judge the pass-through properties (names and values),
    /// so that a typo fails `validate`, not the first connection.
    fn kafka_properties(&mut self, key: &str, k: &super::KafkaConfig) {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", &k.bootstrap);
        for (name, value) in &k.properties {
            c.set(name, value);
        }
        // Sets every property on a native librdkafka config (no client, no
        // threads, no connection): unknown names and bad values fail here.
        if let Err(e) = c.create_native_config() {
            self.err(
                format!("{key}.properties"),
                format!("librdkafka refuses these properties: {e}; see https://github.com/confluentinc/librdkafka/blob/master/CONFIGURATION.md"),
            );
        }
    }

    /// Checks that a configured file can be read.
    fn readable(&mut self, key: &str, path: Option<&str>) {
        if let Some(p) = path {
            if let Err(e) = std::fs::File::open(p) {
                self.err(key, format!("cannot read {p:?}: {e}; check the path (relative paths start at the working directory)"));
            }
        }
    }

    fn url(&mut self, key: &str, raw: &str, schemes: &[&str], _index: usize) {
        match url::Url::parse(raw) {
            Ok(u) if schemes.contains(&u.scheme()) && u.host_str().is_some() => {}
            Ok(u) if !schemes.contains(&u.scheme()) => self.err(
                key,
                format!(
                    "scheme {:?} is not supported here; expected one of {}",
                    u.scheme(),
                    schemes.join(", ")
                ),
            ),
            _ => self.err(
                key,
                format!(
                    "{:?} is not a valid URL; expected e.g. \"{}://host:port\"",
                    crate::telemetry::redact_url(raw),
                    schemes[0]
                ),
            ),
        }
    }

    fn handlers(&mut self) {
        for (name, h) in &self.cfg.handlers {
            match h {
                HandlerConfig::Builtin(b) => {
                    let opts = serde_json::to_value(&b.options).unwrap_or_default();
                    match mqfn_handlers::registry::build(&b.builtin, &opts) {
                        None => self.err(
                            format!("handlers.{name}.builtin"),
                            format!(
                                "unknown built-in {:?} (known: {})",
                                b.builtin,
                                mqfn_handlers::registry::names().join(", ")
                            ),
                        ),
                        Some(Err(why)) => self.err(format!("handlers.{name}.options"), why),
                        Some(Ok(_)) => {}
                    }
                }
                HandlerConfig::Process(p) => self.process_handler(&format!("handlers.{name}"), p),
                HandlerConfig::Http(h) => self.http_handler(&format!("handlers.{name}"), h),
            }
        }
    }

    fn process_handler(&mut self, key: &str, p: &ProcessConfig) {
        if p.command.first().map_or(true, |c| c.trim().is_empty()) {
            self.err(
                format!("{key}.command"),
                "must name a program, e.g. [\"python3\", \"handlers/examples/noop.py\"]",
            );
        }
        for (i, var) in p.env.iter().enumerate() {
            if var.is_empty() || var.contains(['=', '\0']) {
                self.err(
                    format!("{key}.env[{i}]"),
                    format!("{var:?} is not a variable name; list names only, e.g. [\"PATH\", \"MY_SETTING\"]"),
                );
            }
        }
        self.instances(key, p.timeout, p.max_instances, p.idle_timeout);
    }

    fn http_handler(&mut self, key: &str, h: &HttpConfig) {
        self.url(&format!("{key}.url"), &h.url, &["http", "https"], 0);
        for name in h.headers.keys() {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                self.err(
                    format!("{key}.headers.{name}"),
                    format!("{name:?} is not a valid HTTP header name"),
                );
            }
        }
        if h.ce_type.is_empty() {
            self.err(format!("{key}.ce_type"), "must not be empty");
        }
        self.instances(key, h.timeout, h.max_instances, h.idle_timeout);
    }

    fn instances(&mut self, key: &str, timeout: Duration, max: usize, idle: Duration) {
        if timeout.is_zero() {
            self.err(format!("{key}.timeout"), "must be longer than 0s");
        }
        if max == 0 {
            self.err(format!("{key}.max_instances"), "must be at least 1");
        }
        if idle.is_zero() {
            self.err(format!("{key}.idle_timeout"), "must be longer than 0s");
        }
    }

    fn known_handlers(&self) -> Vec<String> {
        let mut names: BTreeSet<String> = self.cfg.handlers.keys().cloned().collect();
        names.extend(
            mqfn_handlers::registry::names()
                .into_iter()
                .map(String::from),
        );
        names.into_iter().collect()
    }

    fn routes(&mut self) {
        let mut seen = BTreeSet::new();
        for (i, r) in self.cfg.routes.iter().enumerate() {
            let key = format!("routes[{i}]");
            if r.name.is_empty()
                || !r
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                self.err(
                    format!("{key}.name"),
                    format!(
                        "{:?} is not a valid route name; use letters, digits, - and _",
                        r.name
                    ),
                );
            }
            if !seen.insert(r.name.clone()) {
                self.err(
                    format!("{key}.name"),
                    format!(
                        "route name {:?} is used twice; names must be unique",
                        r.name
                    ),
                );
            }
            let known = self.known_handlers();
            if !known.contains(&r.handler) {
                self.err(
                    format!("{key}.handler"),
                    format!(
                        "unknown handler {:?} (known: {})",
                        r.handler,
                        known.join(", ")
                    ),
                );
            }
            let src_kind = self.endpoint(&format!("{key}.source"), &r.source, true);
            if let Some(o) = &r.output {
                self.endpoint(&format!("{key}.output"), o, false);
            }
            match &r.dead_letter {
                Some(d) => {
                    self.endpoint(&format!("{key}.dead_letter"), d, false);
                    if d.same_place(&r.source) {
                        self.err(
                            format!("{key}.dead_letter"),
                            format!(
                                "the dead letter {} is the route's own source: failed messages would loop forever; \
                                 use another subject, topic or queue (e.g. \"{}.dlq\")",
                                d.describe(),
                                r.source.address().unwrap_or("source")
                            ),
                        );
                    }
                }
                None => {
                    let at_most_once =
                        src_kind == Some(BrokerKind::Nats) && r.source.stream.is_none();
                    if !at_most_once && src_kind.is_some() {
                        self.err(
                            format!("{key}.dead_letter"),
                            "missing: a message that fails for good needs somewhere to go, or it would be lost; \
                             add e.g. dead_letter = { broker = \"...\", subject = \"...dlq\" }",
                        );
                    }
                }
            }
            self.workers_and_retry(&key, r);
        }
    }

    fn workers_and_retry(&mut self, key: &str, r: &super::RouteConfig) {
        let w = &r.workers;
        if w.max == 0 {
            self.err(format!("{key}.workers.max"), "must be at least 1");
        }
        if w.min > w.max {
            self.err(
                format!("{key}.workers.min"),
                format!(
                    "min ({}) is greater than max ({}); set min <= max",
                    w.min, w.max
                ),
            );
        }
        if w.target_backlog == 0 {
            self.err(
                format!("{key}.workers.target_backlog"),
                "must be at least 1",
            );
        }
        if w.scale_interval.is_zero() {
            self.err(
                format!("{key}.workers.scale_interval"),
                "must be longer than 0s",
            );
        }
        let rt = &r.retry;
        if rt.max_attempts == 0 {
            self.err(
                format!("{key}.retry.max_attempts"),
                "must be at least 1 (1 means no retries)",
            );
        }
        if rt.initial_backoff > rt.max_backoff {
            self.err(
                format!("{key}.retry.initial_backoff"),
                format!(
                    "initial_backoff ({}) is longer than max_backoff ({}); make it shorter",
                    humantime::format_duration(rt.initial_backoff),
                    humantime::format_duration(rt.max_backoff)
                ),
            );
        }
        if r.timeout.is_some_and(|t| t.is_zero()) {
            self.err(format!("{key}.timeout"), "must be longer than 0s");
        }
        if let (Some(md), true) = (r.source.max_deliver, r.source.stream.is_some()) {
            if md != -1 && md < 1 {
                self.err(
                    format!("{key}.source.max_deliver"),
                    format!("{md} is invalid; use -1 (unlimited) or a positive number"),
                );
            }
        }
    }

    /// Checks one endpoint; returns its broker's kind when the broker exists.
    fn endpoint(&mut self, key: &str, ep: &Endpoint, is_source: bool) -> Option<BrokerKind> {
        let Some(broker) = self.cfg.brokers.get(&ep.broker) else {
            let known: Vec<_> = self.cfg.brokers.keys().cloned().collect();
            self.err(
                format!("{key}.broker"),
                format!(
                    "unknown broker {:?} (known: {})",
                    ep.broker,
                    if known.is_empty() {
                        "none; add a [brokers.NAME] table".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            );
            return None;
        };
        let kind = broker.kind();
        let given = [&ep.subject, &ep.topic, &ep.queue]
            .iter()
            .filter(|a| a.is_some())
            .count();
        let exchange_ok = kind == BrokerKind::Amqp && !is_source && ep.exchange.is_some();
        if given > 1 {
            self.err(
                key,
                "give one of subject, topic or queue, not several (they are synonyms)",
            );
        } else if given == 0 && !exchange_ok {
            self.err(key, "missing the address: give subject, topic or queue");
        }
        if ep.address().is_some_and(str::is_empty) {
            self.err(key, "the subject, topic or queue is empty");
        }
        let only = |given: bool, name: &str, wanted: BrokerKind, this: &mut Self| {
            if given && kind != wanted {
                this.err(
                    format!("{key}.{name}"),
                    format!(
                        "{name} applies to {} brokers, but broker {:?} is {}",
                        wanted.as_str(),
                        ep.broker,
                        kind.as_str()
                    ),
                );
            }
        };
        only(ep.stream.is_some(), "stream", BrokerKind::Nats, self);
        only(ep.durable.is_some(), "durable", BrokerKind::Nats, self);
        only(
            ep.queue_group.is_some(),
            "queue_group",
            BrokerKind::Nats,
            self,
        );
        only(ep.group.is_some(), "group", BrokerKind::Kafka, self);
        only(ep.create.is_some(), "create", BrokerKind::Kafka, self);
        only(ep.exchange.is_some(), "exchange", BrokerKind::Amqp, self);
        only(ep.dedup.is_some(), "dedup", BrokerKind::Nats, self);
        if is_source && ep.dedup.is_some() {
            self.err(
                format!("{key}.dedup"),
                "dedup applies to what mqfn publishes: set it on output or dead_letter",
            );
        }
        if let Some(c) = &ep.create {
            if c.partitions < 1 {
                self.err(format!("{key}.create.partitions"), "must be at least 1");
            }
            if c.replication < 1 {
                self.err(format!("{key}.create.replication"), "must be at least 1");
            }
        }
        if let Some(r) = &ep.auto_offset_reset {
            if !matches!(r.as_str(), "earliest" | "latest") {
                self.err(
                    format!("{key}.auto_offset_reset"),
                    format!("{r:?} is invalid; expected \"earliest\" or \"latest\""),
                );
            }
        }
        if is_source && kind == BrokerKind::Amqp && ep.exchange.is_some() {
            self.err(format!("{key}.exchange"), "a source consumes a queue: give queue, and bind it under [[brokers.NAME.bindings]]");
        }
        Some(kind)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::config::{Config, HandlerConfig, DEFAULT_PROCESS_ENV};

    fn load(text: &str) -> Result<Config, String> {
        Config::from_str(text, Path::new("t.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn process_handlers_have_safe_defaults() {
        let cfg = load(
            r#"
            [handlers.resize]
            kind = "process"
            command = ["python3", "handlers/examples/resize.py"]
            "#,
        )
        .unwrap();
        let HandlerConfig::Process(p) = &cfg.handlers["resize"] else {
            panic!("not a process handler");
        };
        assert_eq!(p.env, DEFAULT_PROCESS_ENV);
        assert_eq!(p.idle_timeout, Duration::from_secs(300));
        assert_eq!(p.max_instances, 8);
        assert_eq!(
            cfg.handlers["resize"].timeout(),
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn process_handler_errors_name_the_key() {
        let err = load(
            r#"
            [handlers.p]
            kind = "process"
            command = []
            env = ["A=b"]
            max_instances = 0
            idle_timeout = "0s"
            "#,
        )
        .unwrap_err();
        for key in [
            "handlers.p.command",
            "handlers.p.env[0]",
            "handlers.p.max_instances",
            "handlers.p.idle_timeout",
        ] {
            assert!(err.contains(&format!("t.toml: {key}: ")), "{key} in {err}");
        }
        let err =
            load("[handlers.p]\nkind = \"process\"\ncommand = [\"x\"]\ncomand = 1\n").unwrap_err();
        assert!(
            err.contains("handlers.p") && err.contains("comand"),
            "{err}"
        );
    }

    #[test]
    fn http_handlers_are_checked() {
        let cfg = load(
            r#"
            [handlers.hook]
            kind = "http"
            url = "http://127.0.0.1:8080/fn"
            headers = { Authorization = "Bearer x" }
            "#,
        )
        .unwrap();
        assert!(matches!(cfg.handlers["hook"], HandlerConfig::Http(_)));
        let err = load(
            r#"
            [handlers.hook]
            kind = "http"
            url = "ftp://x/"
            headers = { "bad header" = "x" }
            timeout = "0s"
            "#,
        )
        .unwrap_err();
        for key in [
            "handlers.hook.url",
            "handlers.hook.headers.bad header",
            "handlers.hook.timeout",
        ] {
            assert!(err.contains(&format!("t.toml: {key}: ")), "{key} in {err}");
        }
    }
}
