//! `mqfn publish`: send messages to trigger handlers.

use std::time::Instant;

use clap::Args;
use futures::StreamExt;

use super::{CliError, MessageArgs};
use crate::brokers::{self, OutMessage, Role};
use crate::config::{Config, Endpoint};

/// Arguments of `mqfn publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The broker's name in the config.
    #[arg(long)]
    pub broker: String,
    /// The subject, topic or queue (AMQP: the routing key when --exchange is given).
    #[arg(long)]
    pub to: String,
    /// AMQP: publish to this exchange instead of the default one.
    #[arg(long)]
    pub exchange: Option<String>,
    /// How many copies to send.
    #[arg(long, default_value_t = 1)]
    pub count: u64,
    /// Publishes awaiting confirmation at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// The message.
    #[command(flatten)]
    pub msg: MessageArgs,
}

/// Publishes `count` copies, each confirmed by the broker.
pub async fn run(cfg: &Config, args: &PublishArgs) -> Result<(), CliError> {
    let bcfg = cfg.brokers.get(&args.broker).ok_or_else(|| {
        CliError::Usage(format!(
            "{}: --broker {:?} is not in [brokers] (known: {})",
            cfg.file.display(),
            args.broker,
            cfg.brokers.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    })?;
    let payload = args.msg.read_payload()?;
    let broker = brokers::connect(&args.broker, bcfg, true).await?;
    let publisher = broker.publisher();
    let mut keys = toml::Table::new();
    match &args.exchange {
        Some(x) => {
            keys.insert("exchange".into(), x.clone().into());
            keys.insert("routing_key".into(), args.to.clone().into());
        }
        None => {
            keys.insert("subject".into(), args.to.clone().into());
        }
    }
    let at = Endpoint::parse(&args.broker, bcfg, Role::Target, keys).map_err(|e| {
        CliError::Usage(format!(
            "--to/--exchange: {} ({}; broker {:?} is {})",
            e.message,
            e.key,
            args.broker,
            bcfg.kind()
        ))
    })?;
    let template = OutMessage {
        payload,
        headers: args.msg.header_set(),
        key: args.msg.key.clone().map(Into::into),
        ..OutMessage::default()
    };
    let start = Instant::now();
    let mut results = futures::stream::iter(0..args.count)
        .map(|_| publisher.publish(&at, template.clone()))
        .buffer_unordered(args.concurrency.max(1));
    let mut failed = None;
    let mut sent = 0u64;
    while let Some(r) = results.next().await {
        match r {
            Ok(()) => sent += 1,
            Err(e) => failed = Some(e),
        }
    }
    drop(results);
    broker.close().await;
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "published {sent} of {} message(s) to {} in {secs:.3}s ({:.0}/s)",
        args.count,
        at.describe(),
        sent as f64 / secs.max(1e-9)
    );
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}
