//! Rules that span fields, checked once after parsing. Every message names
//! the key path, both values where two disagree, and what would fix it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use super::{checks, Config, ConfigError, ConfigErrors, HandlerConfig, HttpConfig, ProcessConfig};
use crate::brokers::Guarantee;

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
            for e in b.spec().validate() {
                self.err(
                    super::resolve::join(&super::triggers::table_of(name, b.kind()), &e.key),
                    e.message,
                );
            }
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
        if let Some(e) = checks::url(&h.url, &["http", "https"]) {
            self.err(format!("{key}.url"), e);
        }
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
            if let Some(d) = &r.dead_letter {
                if d.same_place(&r.source) {
                    self.err(
                        format!("{key}.dead_letter"),
                        format!(
                            "the dead letter {} is the route's own source: failed messages would loop forever; \
                             use another subject, topic or queue (e.g. \"{}.dlq\")",
                            d.describe(),
                            r.source.address()
                        ),
                    );
                }
            } else if r.source.spec().guarantee() == Guarantee::AtLeastOnce {
                self.err(
                    format!("{key}.dead_letter"),
                    "missing: a message that fails for good needs somewhere to go, or it would be lost; \
                     add e.g. dead_letter = { broker = \"...\", subject = \"...dlq\" }",
                );
            }
            self.triggers(&key, r);
            self.workers_and_retry(&key, r);
        }
        self.exclusive_places();
    }

    /// The rules of a route's triggers: a second one only where the source
    /// is not the same trigger, and hand-over to the route's broker source
    /// only where it has one.
    fn triggers(&mut self, key: &str, r: &super::RouteConfig) {
        if let Some(key_name) = r.source.spec().forwards() {
            self.err(
                format!("{key}.source.{key_name}"),
                format!(
                    "`{key_name}` hands requests to the route's broker source, and this route's source is the {} trigger itself: \
                     remove it, or expose a route that has a broker source (e.g. http = {{ path = \"{}\", {key_name} = ... }})",
                    r.source.broker,
                    r.source.address()
                ),
            );
        }
        if let Some(at) = &r.http {
            if at.broker == r.source.broker {
                self.err(
                    format!("{key}.http"),
                    format!(
                        "the route's source is already the {} trigger at {}: remove this key",
                        at.broker,
                        r.source.address()
                    ),
                );
            }
        }
    }

    /// Places that one route at most may take (HTTP paths) are taken once.
    fn exclusive_places(&mut self) {
        let mut taken: BTreeMap<(String, String), String> = BTreeMap::new();
        for (i, r) in self.cfg.routes.iter().enumerate() {
            let places = [("source", Some(&r.source)), ("http", r.http.as_ref())];
            for (field, at) in places {
                let Some(at) = at.filter(|at| at.spec().exclusive()) else {
                    continue;
                };
                let place = (at.broker.clone(), at.address());
                if let Some(other) = taken.get(&place) {
                    let message = format!(
                        "{} is taken by route {other:?} already: give each route its own",
                        at.describe()
                    );
                    self.err(format!("routes[{i}].{field}"), message);
                } else {
                    taken.insert(place, r.name.clone());
                }
            }
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
        if w.target_backlog == Some(0) {
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
