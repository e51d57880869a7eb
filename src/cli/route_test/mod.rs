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

mod compare;
mod suite;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;

use super::CliError;
use crate::app::App;
use crate::brokers::memory::Hub;
use crate::brokers::{OutMessage, Role};
use crate::config::{BrokerConfig, Config, Endpoint, RouteConfig};
use crate::message::Headers;
use compare::{compare, Got};
pub use suite::{Case, DeadLetter, Expect, Expected, Suite};

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
    let inputs = suite::check(&suite, &cfg, dir, &file)?;
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
