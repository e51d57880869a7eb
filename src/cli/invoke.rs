//! `mqfn invoke`: publish to a route's source with a correlation id, wait
//! for the result on the route's output (or a reply), and print it.

use std::io::Write;
use std::time::Duration;

use clap::Args;
use futures::stream::BoxStream;
use futures::StreamExt;

use super::CliError;
use super::MessageArgs;
use crate::app::App;
use crate::brokers::{self, Broker, BrokerErrorKind, OutMessage};
use crate::config::{Config, Endpoint, RouteConfig};
use crate::message::{Message, CORRELATION_HEADER};

/// Arguments of `mqfn invoke`.
#[derive(Debug, Args)]
pub struct InvokeArgs {
    /// The route's name.
    pub route: String,
    /// How long to wait for the result.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// The message.
    #[command(flatten)]
    pub msg: MessageArgs,
}

enum Outcome {
    Result(Message),
    DeadLetter(Message),
}

/// Runs one invocation through the brokers; prints the result payload.
pub async fn run(cfg: &Config, args: &InvokeArgs) -> Result<(), CliError> {
    let route = cfg.route(&args.route).ok_or_else(|| {
        let known: Vec<_> = cfg.routes.iter().map(|r| r.name.as_str()).collect();
        CliError::Usage(format!(
            "{}: no route {:?} (known: {})",
            cfg.file.display(),
            args.route,
            known.join(", ")
        ))
    })?;
    let payload = args.msg.read_payload()?;
    let connect = |ep: &Endpoint| {
        let bcfg = cfg.brokers[&ep.broker].clone();
        let name = ep.broker.clone();
        async move {
            brokers::connect(&name, &bcfg, true)
                .await
                .map_err(CliError::from)
        }
    };
    let source = connect(&route.source).await?;
    // No `mqfn run` elsewhere can reach an in-process broker: run the
    // route here, for this one invocation.
    let local = match source.is_local() {
        true => Some(Local::start(cfg, route).await?),
        false => None,
    };
    let correlation = uuid::Uuid::new_v4().to_string();
    let mut headers = args.msg.header_set();
    headers.set(CORRELATION_HEADER, correlation.clone());
    let mut keep: Vec<std::sync::Arc<dyn Broker>> = vec![source.clone()];
    let mut reply_to = None;
    let results: BoxStream<'static, Message> = match &route.output {
        Some(out) => {
            let b = connect(out).await?;
            let s = b.tap(out).await?;
            keep.push(b);
            s
        }
        None => {
            let (inbox, s) = source.inbox().await?;
            reply_to = Some(inbox);
            s
        }
    };
    let dead: BoxStream<'static, Message> = match &route.dead_letter {
        Some(dl) => {
            let b = connect(dl).await?;
            let tapped = b.tap(dl).await;
            keep.push(b);
            match tapped {
                Ok(s) => s,
                // A dead letter that cannot be watched (a plain AMQP queue)
                // only means a failure shows as a timeout.
                Err(e) if e.kind == BrokerErrorKind::Unsupported => {
                    eprintln!(
                        "note: the dead letter {} cannot be watched; a failure will show as a timeout",
                        dl.describe()
                    );
                    futures::stream::pending().boxed()
                }
                Err(e) => return Err(e.into()),
            }
        }
        None => futures::stream::pending().boxed(),
    };
    let mine = |m: &Message| m.correlation_id.as_deref() == Some(correlation.as_str());
    let results = results
        .filter(move |m| futures::future::ready(mine(m)))
        .map(Outcome::Result);
    let dead = dead
        .filter(move |m| futures::future::ready(mine(m)))
        .map(Outcome::DeadLetter);
    let mut both = futures::stream::select(results, dead);
    let msg = OutMessage {
        payload,
        headers,
        key: args.msg.key.clone().map(Into::into),
        correlation_id: Some(correlation.clone()),
        reply_to,
        ..OutMessage::default()
    };
    source.publisher().publish(&route.source, msg).await?;
    let got = tokio::time::timeout(args.timeout, both.next()).await;
    drop(both); // unsubscribe before the connections close
    if let Some(l) = local {
        l.stop().await;
    }
    for b in &keep {
        b.close().await;
    }
    match got {
        Err(_) => Err(CliError::Failed(format!(
            "no result for route {} within {} (correlation id {correlation}); is `mqfn run` running with this config?",
            args.route,
            humantime::format_duration(args.timeout)
        ))),
        Ok(None) => Err(CliError::Failed("the result subscription closed".to_owned())),
        Ok(Some(Outcome::Result(m))) => {
            let mut out = std::io::stdout().lock();
            out.write_all(&m.payload)
                .and_then(|_| out.write_all(b"\n"))
                .map_err(|e| CliError::io("cannot write the result", e))
        }
        Ok(Some(Outcome::DeadLetter(m))) => Err(CliError::Failed(format!(
            "dead-lettered after {} attempt(s): {}",
            m.headers.get("mqfn-attempts").unwrap_or("?"),
            m.headers.get("mqfn-error").unwrap_or("unknown error")
        ))),
    }
}

/// The route, running in this process (its source is in-process too).
struct Local {
    stop: tokio::sync::oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
}

impl Local {
    async fn start(cfg: &Config, route: &RouteConfig) -> Result<Self, CliError> {
        let mut one = cfg.clone();
        one.routes = vec![route.clone()];
        one.admin.listen = "127.0.0.1:0".to_owned();
        let app = App::start(&one).await?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let done = tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        Ok(Self { stop, done })
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.done.await;
    }
}
