//! Logs, metrics and the admin HTTP listener.
//!
//! Every metric name lives in [`names`]; label values come from config names
//! and fixed enums only, never from error text.

pub mod admin;
pub mod billing;
pub mod names;
pub mod quiet;
pub mod status;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Installs the Prometheus recorder once per process and returns its handle.
pub fn install_metrics() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(names::HANDLER_DURATION_SECONDS.to_owned()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0, 30.0, 60.0,
                    ],
                )
                .expect("the bucket list is not empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // A recorder may already be set (tests that run several apps in
            // one process); the first one keeps serving.
            let _ = metrics::set_global_recorder(recorder);
            names::describe();
            handle
        })
        .clone()
}

/// How often histogram samples are folded into their buckets.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Folds recorded histogram samples into their buckets every 5 s until
/// `shutdown`. The recorder keeps every raw sample until this runs (or
/// until `/metrics` is scraped), so without it an unscraped mqfn would
/// grow by 8 bytes per invocation.
pub async fn upkeep(handle: PrometheusHandle, shutdown: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(UPKEEP_EVERY) => handle.run_upkeep(),
        }
    }
}

/// Replaces the password (and a token-like user) in a URL with `***`, so
/// that URLs can be logged. Works on comma-separated lists too, and on text
/// that does not parse as a URL.
pub fn redact_url(raw: &str) -> String {
    raw.split(',')
        .map(|one| match url::Url::parse(one.trim()) {
            Ok(mut u) if u.password().is_some() => {
                let _ = u.set_password(Some("***"));
                u.to_string()
            }
            Ok(mut u) if !u.username().is_empty() && u.scheme().starts_with("nats") => {
                // A NATS URL with only a user part carries a token.
                let _ = u.set_username("***");
                u.to_string()
            }
            Ok(_) => one.trim().to_owned(),
            Err(_) => redact_unparsed(one.trim()),
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn redact_unparsed(s: &str) -> String {
    // `scheme://user:pass@host` that the URL parser refused: cut at the last '@'.
    match (s.find("://"), s.rfind('@')) {
        (Some(i), Some(j)) if j > i => format!("{}://***@{}", &s[..i], &s[j + 1..]),
        _ => s.to_owned(),
    }
}

/// Sets up `tracing`: `format` is `pretty` or `json`; `RUST_LOG` filters
/// (see [`filter_directives`]). Colours only on a terminal, and never with
/// `NO_COLOR` set: a container's log is a file.
pub fn init_logs(format: &str, default_level: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let env = std::env::var("RUST_LOG").ok();
    let directives = filter_directives(env.as_deref(), default_level);
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|e| {
        eprintln!("warning: RUST_LOG={directives:?} is not a valid filter ({e}); using the default. Example: RUST_LOG=debug or RUST_LOG=warn,mqfn=debug,rdkafka=info");
        EnvFilter::new(filter_directives(None, default_level))
    });
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

/// The log filter for `RUST_LOG`.
///
/// - unset or empty: `default_level` for mqfn, `warn` for client libraries;
/// - a bare level (`RUST_LOG=debug`): that level for mqfn, the libraries
///   staying at `warn` unless the level is quieter (`error`, `off`), so that
///   `RUST_LOG=info` does not turn on every crate's info lines;
/// - anything else is an `EnvFilter` directive list, taken as written
///   (`RUST_LOG=info,lapin=debug`).
pub fn filter_directives(env: Option<&str>, default_level: &str) -> String {
    let env = env.map(str::trim).unwrap_or_default();
    let level = if env.is_empty() { default_level } else { env };
    match level.to_ascii_lowercase().as_str() {
        quiet @ ("error" | "off") => quiet.to_owned(),
        bare @ ("warn" | "info" | "debug" | "trace") => format!("warn,mqfn={bare}"),
        _ => env.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_level_applies_to_mqfn_and_directives_are_taken_as_written() {
        assert_eq!(filter_directives(None, "info"), "warn,mqfn=info");
        assert_eq!(filter_directives(Some(""), "warn"), "warn,mqfn=warn");
        assert_eq!(filter_directives(Some("info"), "warn"), "warn,mqfn=info");
        assert_eq!(
            filter_directives(Some(" DEBUG "), "info"),
            "warn,mqfn=debug"
        );
        assert_eq!(filter_directives(Some("error"), "info"), "error");
        assert_eq!(filter_directives(Some("off"), "info"), "off");
        assert_eq!(
            filter_directives(Some("info,lapin=debug"), "info"),
            "info,lapin=debug"
        );
        assert_eq!(filter_directives(Some("mqfn=trace"), "info"), "mqfn=trace");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("amqp://guest:s3cret@rabbit:5672/%2f"),
            "amqp://guest:***@rabbit:5672/%2f"
        );
        assert_eq!(
            redact_url("nats://tok3n@a:4222,nats://u:p@b:4222"),
            "nats://***@a:4222,nats://u:***@b:4222"
        );
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert!(!redact_url("amqp://u:pa ss@h:x").contains("pa ss"));
    }
}
