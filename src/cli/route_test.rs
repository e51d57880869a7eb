//! `mqfn test FILE`: route and handler test cases, run through the real
//! pipeline on the in-process memory broker, with no external broker.
//!
//! Each route a case names runs as configured (its handler, retries,
//! timeout, ordering, filter), but with its source, output and dead letter
//! moved to memory queues. A case publishes one input, waits until the
//! route has settled it, then compares what came out (outputs, or a dead
//! letter) with what the case expects, and prints a readable diff.
//!
//! The file (docs/cli.md shows it whole):
//!
//! ```toml
//! config = "../config/memory.toml"   # relative to this file
//!
//! [[case]]
//! name = "tags a JSON object"
//! route = "tag"
//! payload = '{"id": 7}'              # or json = { id = 7 }, or payload_file
//! expect.outputs = [{ json = { id = 7, tagged = true } }]
//!
//! [[case]]
//! name = "refuses what is not JSON"
//! route = "tag"
//! payload = "not json"
//! expect.dead_letter = { error_class = "permanent", error = "JSON" }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use serde::Deserialize;

use super::CliError;
use crate::app::App;
use crate::brokers::memory::Hub;
use crate::brokers::{OutMessage, Role};
use crate::config::{BrokerConfig, Config, Endpoint, RouteConfig};
use crate::message::{Headers, Message};

/// The broker every tested route is moved to.
const BROKER: &str = "mqfn-test";

/// Arguments of `mqfn test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// The test file (TOML, `[[case]]` tables).
    pub file: PathBuf,
    /// How long one case may take, retries and backoff included.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// A test file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suite {
    /// The config whose routes are tested, relative to the test file
    /// (default: `--config`, then the default locations).
    pub config: Option<PathBuf>,
    /// The cases, run in order.
    #[serde(rename = "case", default)]
    pub cases: Vec<Case>,
}

/// One input and what must come of it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Shown in the report.
    pub name: String,
    /// The route that gets the input.
    pub route: String,
    /// The payload, as text.
    pub payload: Option<String>,
    /// The payload, written as JSON.
    pub json: Option<toml::Value>,
    /// The payload, from a file (relative to the test file).
    pub payload_file: Option<PathBuf>,
    /// Headers of the input.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The input's key.
    pub key: Option<String>,
    /// What must come out.
    pub expect: Expect,
}

/// Outputs, or a dead letter.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The outputs, all of them, in order (`[]`: none).
    pub outputs: Option<Vec<Expected>>,
    /// A dead letter, and no output.
    pub dead_letter: Option<DeadLetter>,
}

/// One expected output: each given field must match.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expected {
    /// The payload, exactly, as text.
    pub payload: Option<String>,
    /// The payload as JSON (compared as values: key order and spacing do
    /// not matter).
    pub json: Option<toml::Value>,
    /// Headers the output has (others may be there too).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The output's key.
    pub key: Option<String>,
}

/// What the dead letter must say.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetter {
    /// `mqfn-error-class`: permanent, retryable (a timeout is one) or crashed.
    pub error_class: Option<String>,
    /// Text that `mqfn-error` contains.
    pub error: Option<String>,
    /// `mqfn-attempts`.
    pub attempts: Option<u32>,
}

/// Runs the file's cases; fails when one does not match.
pub async fn run(config: Option<&Path>, args: &TestArgs) -> Result<(), CliError> {
    let file = args.file.display().to_string();
    let text = std::fs::read_to_string(&args.file)
        .map_err(|e| CliError::io(format!("cannot read the test file {file}"), e))?;
    let suite: Suite =
        toml::from_str(&text).map_err(|e| CliError::Usage(format!("{file}: {}", e.message())))?;
    let dir = args.file.parent().unwrap_or(Path::new("."));
    let path = match &suite.config {
        Some(p) => dir.join(p),
        None => Config::locate(config).map_err(|e| CliError::Usage(e.to_string()))?,
    };
    let cfg = Config::load(&path).map_err(|e| CliError::Usage(e.to_string()))?;
    let inputs = check(&suite, &cfg, dir, &file)?;
    if suite.cases.is_empty() {
        return Err(CliError::Usage(format!(
            "{file}: no [[case]]; write at least one (docs/cli.md, mqfn test)"
        )));
    }
    let hub_name = format!("mqfn-test-{}", uuid::Uuid::new_v4());
    let hub = Hub::named(&hub_name);
    let app = App::start(&on_memory(&cfg, &suite, &hub_name)?).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let mut failed = 0;
    for (case, payload) in suite.cases.iter().zip(inputs) {
        let route = cfg.route(&case.route).expect("checked");
        let problems = match run_case(&hub, route, case, payload, args.timeout).await {
            Ok(got) => compare(&case.expect, &got),
            Err(why) => vec![why],
        };
        if problems.is_empty() {
            println!("ok    {}: {}", case.route, case.name);
        } else {
            failed += 1;
            println!("FAIL  {}: {}", case.route, case.name);
            for p in problems {
                for line in p.lines() {
                    println!("        {line}");
                }
            }
        }
    }
    let _ = stop.send(());
    let _ = running.await;
    let total = suite.cases.len();
    println!("{} passed, {failed} failed ({file})", total - failed);
    match failed {
        0 => Ok(()),
        n => Err(CliError::Failed(format!(
            "{n} of {total} case(s) failed in {file}"
        ))),
    }
}

/// Checks the cases against the config; returns each case's payload.
fn check(suite: &Suite, cfg: &Config, dir: &Path, file: &str) -> Result<Vec<Bytes>, CliError> {
    let mut errors = Vec::new();
    let mut payloads = Vec::new();
    for (i, c) in suite.cases.iter().enumerate() {
        let at = format!("{file}: case[{i}] ({:?})", c.name);
        if cfg.route(&c.route).is_none() {
            let known: Vec<_> = cfg.routes.iter().map(|r| r.name.as_str()).collect();
            errors.push(format!(
                "{at}: route: no route {:?} in {} (known: {})",
                c.route,
                cfg.file.display(),
                known.join(", ")
            ));
        }
        let given = [
            c.payload.is_some(),
            c.json.is_some(),
            c.payload_file.is_some(),
        ];
        let payload = match (&c.payload, &c.json, &c.payload_file) {
            _ if given.iter().filter(|g| **g).count() > 1 => {
                errors.push(format!("{at}: give one of payload, json and payload_file"));
                Bytes::new()
            }
            (Some(p), _, _) => Bytes::copy_from_slice(p.as_bytes()),
            (_, Some(j), _) => serde_json::to_vec(j).expect("TOML is JSON").into(),
            (_, _, Some(f)) => match std::fs::read(dir.join(f)) {
                Ok(b) => b.into(),
                Err(e) => {
                    errors.push(format!(
                        "{at}: payload_file: cannot read {}: {e}",
                        dir.join(f).display()
                    ));
                    Bytes::new()
                }
            },
            (None, None, None) => {
                errors.push(format!(
                    "{at}: no input: give payload, json or payload_file"
                ));
                Bytes::new()
            }
        };
        payloads.push(payload);
        match (&c.expect.outputs, &c.expect.dead_letter) {
            (Some(_), Some(_)) => errors.push(format!(
                "{at}: expect: give outputs or dead_letter, not both (a dead-lettered message has no output)"
            )),
            (None, None) => errors.push(format!(
                "{at}: expect: give outputs (`[]` for none) or dead_letter"
            )),
            _ => {}
        }
        for (j, o) in c.expect.outputs.iter().flatten().enumerate() {
            if o.payload.is_some() && o.json.is_some() {
                errors.push(format!(
                    "{at}: expect.outputs[{j}]: give payload or json, not both"
                ));
            }
        }
    }
    match errors.is_empty() {
        true => Ok(payloads),
        false => Err(CliError::Usage(errors.join("\n"))),
    }
}

/// The config with each tested route moved to the memory hub `hub`:
/// `ROUTE.in`, `ROUTE.out` (or `ROUTE.reply`, for a route that replies),
/// `ROUTE.dlq`.
fn on_memory(cfg: &Config, suite: &Suite, hub: &str) -> Result<Config, CliError> {
    let mut keys = toml::Table::new();
    keys.insert("hub".into(), hub.into());
    let broker = BrokerConfig::parse("memory", keys).map_err(|e| CliError::Usage(e.message))?;
    let queue = |role: Role, name: String| {
        let mut keys = toml::Table::new();
        keys.insert("queue".into(), name.into());
        Endpoint::parse(BROKER, &broker, role, keys).map_err(|e| CliError::Usage(e.message))
    };
    let mut out = cfg.clone();
    out.brokers = BTreeMap::from([(BROKER.to_owned(), broker.clone())]);
    out.admin.listen = "127.0.0.1:0".to_owned();
    out.routes = Vec::new();
    for name in suite.cases.iter().map(|c| c.route.as_str()) {
        if out.routes.iter().any(|r: &RouteConfig| r.name == name) {
            continue;
        }
        let mut r = cfg.route(name).expect("checked").clone();
        r.source = queue(Role::Source, format!("{name}.in"))?;
        r.output = match r.output {
            Some(_) => Some(queue(Role::Target, format!("{name}.out"))?),
            None => None,
        };
        r.dead_letter = Some(queue(Role::Target, format!("{name}.dlq"))?);
        out.routes.push(r);
    }
    Ok(out)
}

/// What came of one input.
struct Got {
    outputs: Vec<Message>,
    dead_letters: Vec<Message>,
}

async fn run_case(
    hub: &Arc<Hub>,
    route: &RouteConfig,
    case: &Case,
    payload: Bytes,
    limit: Duration,
) -> Result<Got, String> {
    let name = &route.name;
    let input = hub.queue(&format!("{name}.in"));
    // Results of a route without an output go to the input's reply address.
    let results = match route.output {
        Some(_) => format!("{name}.out"),
        None => format!("{name}.reply"),
    };
    let settled = input.acked();
    let headers: Headers = case
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let msg = OutMessage {
        payload,
        headers,
        key: case.key.clone().map(Bytes::from),
        correlation_id: Some(uuid::Uuid::new_v4().to_string()),
        reply_to: route.output.is_none().then(|| results.clone()),
        ..OutMessage::default()
    };
    input
        .push(msg)
        .map_err(|e| format!("could not publish the input: {e:?}"))?;
    let waited = tokio::time::timeout(limit, input.wait_until(|q| q.acked() > settled)).await;
    if waited.is_err() {
        return Err(format!(
            "the route did not settle the input within {} (a longer --timeout, or a shorter retry policy?)",
            humantime::format_duration(limit)
        ));
    }
    Ok(Got {
        outputs: hub.queue(&results).drain(),
        dead_letters: hub.queue(&format!("{name}.dlq")).drain(),
    })
}

/// The differences between what a case expects and what it got, one per
/// entry; empty when they match.
fn compare(expect: &Expect, got: &Got) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(d) = &expect.dead_letter {
        match (got.dead_letters.as_slice(), got.outputs.len()) {
            ([m], 0) => {
                let h = |n: &str| m.headers.get(n).unwrap_or("").to_owned();
                if let Some(class) = &d.error_class {
                    if h("mqfn-error-class") != *class {
                        out.push(format!(
                            "mqfn-error-class: expected {class:?}, got {:?} (mqfn-error: {})",
                            h("mqfn-error-class"),
                            h("mqfn-error")
                        ));
                    }
                }
                if let Some(text) = &d.error {
                    if !h("mqfn-error").contains(text.as_str()) {
                        out.push(format!(
                            "mqfn-error: expected it to contain {text:?}, got {:?}",
                            h("mqfn-error")
                        ));
                    }
                }
                if let Some(n) = d.attempts {
                    if h("mqfn-attempts") != n.to_string() {
                        out.push(format!(
                            "mqfn-attempts: expected {n}, got {:?}",
                            h("mqfn-attempts")
                        ));
                    }
                }
            }
            _ => out.push(format!(
                "expected a dead letter and no output, got {}",
                summary(got)
            )),
        }
        return out;
    }
    let expected = expect.outputs.as_deref().unwrap_or_default();
    if let Some(m) = got.dead_letters.first() {
        out.push(format!(
            "expected {} output(s), got a dead letter: {} ({})",
            expected.len(),
            m.headers.get("mqfn-error").unwrap_or(""),
            m.headers.get("mqfn-error-class").unwrap_or("")
        ));
        return out;
    }
    if got.outputs.len() != expected.len() {
        out.push(format!(
            "expected {} output(s), got {}",
            expected.len(),
            summary(got)
        ));
    }
    for (i, (e, m)) in expected.iter().zip(&got.outputs).enumerate() {
        let text = String::from_utf8_lossy(&m.payload);
        if let Some(p) = &e.payload {
            if *p != text {
                out.push(format!(
                    "output[{i}] payload:\n- expected {p:?}\n+ got      {text:?}"
                ));
            }
        }
        if let Some(j) = &e.json {
            let want = serde_json::to_value(j).expect("TOML is JSON");
            match serde_json::from_slice::<serde_json::Value>(&m.payload) {
                Ok(v) if v == want => {}
                Ok(v) => out.push(format!(
                    "output[{i}] json:\n- expected {want}\n+ got      {v}"
                )),
                Err(e) => out.push(format!(
                    "output[{i}] json: the payload is not JSON ({e}): {text:?}"
                )),
            }
        }
        for (k, v) in &e.headers {
            if m.headers.get(k) != Some(v.as_str()) {
                out.push(format!(
                    "output[{i}] header {k}: expected {v:?}, got {:?}",
                    m.headers.get(k)
                ));
            }
        }
        if let Some(k) = &e.key {
            let got_key = m
                .key
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned());
            if got_key.as_deref() != Some(k.as_str()) {
                out.push(format!("output[{i}] key: expected {k:?}, got {got_key:?}"));
            }
        }
    }
    out
}

/// "2 output(s): "a", "b"" or "a dead letter: why".
fn summary(got: &Got) -> String {
    let outputs: Vec<String> = got
        .outputs
        .iter()
        .map(|m| format!("{:?}", String::from_utf8_lossy(&m.payload)))
        .collect();
    let mut s = format!("{} output(s)", outputs.len());
    if !outputs.is_empty() {
        s.push_str(": ");
        s.push_str(&outputs.join(", "));
    }
    if let Some(m) = got.dead_letters.first() {
        s.push_str(&format!(
            " and a dead letter: {}",
            m.headers.get("mqfn-error").unwrap_or("")
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn got(outputs: &[&str], dead: Option<(&str, &str)>) -> Got {
        Got {
            outputs: outputs
                .iter()
                .map(|p| Message::new(p.to_string()))
                .collect(),
            dead_letters: dead
                .map(|(class, error)| {
                    let mut m = Message::new("in");
                    m.headers.set("mqfn-error-class", class);
                    m.headers.set("mqfn-error", error);
                    m.headers.set("mqfn-attempts", "3");
                    vec![m]
                })
                .unwrap_or_default(),
        }
    }

    fn expect(text: &str) -> Expect {
        toml::from_str(text).expect("an expect table")
    }

    #[test]
    fn json_outputs_compare_as_values() {
        let e = expect("outputs = [{ json = { b = 2, a = 1 } }]");
        assert!(compare(&e, &got(&[r#"{"a":1,"b":2}"#], None)).is_empty());
        let diff = compare(&e, &got(&[r#"{"a":1}"#], None));
        assert_eq!(diff.len(), 1, "{diff:?}");
        assert!(
            diff[0].contains("expected") && diff[0].contains(r#"{"a":1}"#),
            "{diff:?}"
        );
    }

    #[test]
    fn counts_payloads_and_dead_letters_are_checked() {
        let two = expect(r#"outputs = [{ payload = "x" }, { payload = "y" }]"#);
        assert!(compare(&two, &got(&["x", "y"], None)).is_empty());
        assert!(!compare(&two, &got(&["x"], None)).is_empty(), "one missing");
        assert!(
            !compare(&two, &got(&["x", "z"], None)).is_empty(),
            "one differs"
        );
        let none = expect("outputs = []");
        assert!(compare(&none, &got(&[], None)).is_empty());
        let diff = compare(&none, &got(&[], Some(("permanent", "bad"))));
        assert!(diff[0].contains("got a dead letter: bad"), "{diff:?}");

        let dl =
            expect(r#"dead_letter = { error_class = "permanent", error = "ba", attempts = 3 }"#);
        assert!(compare(&dl, &got(&[], Some(("permanent", "bad")))).is_empty());
        assert_eq!(compare(&dl, &got(&[], Some(("timeout", "bad")))).len(), 1);
        assert!(compare(&dl, &got(&["x"], None))[0].contains("expected a dead letter"));
    }
}
