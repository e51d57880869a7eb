//! `mqfn dlq list|redrive ROUTE`: inspect a route's dead letters, and move
//! them back to its source with fresh attempt counters.

use std::time::SystemTime;

use clap::{Args, Subcommand};
use tracing::warn;

use super::CliError;
use crate::brokers::{self, BrokerErrorKind, OutMessage, Published};
use crate::config::{Config, RouteConfig};
use crate::message::{Headers, Message};

/// Arguments of `mqfn dlq`.
#[derive(Debug, Args)]
pub struct DlqArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: DlqCommand,
}

/// The `dlq` subcommands.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Show a route's dead letters (reason, attempts, age) without consuming them.
    List {
        /// The route.
        route: String,
        /// Show at most this many, oldest first.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Move dead letters back to the route's source, with fresh attempt counters.
    Redrive {
        /// The route.
        route: String,
        /// Only dead letters whose header has this value (`name=value`,
        /// e.g. `mqfn-error-class=retryable`); repeatable, all must match.
        #[arg(long, value_parser = super::parse_header)]
        filter: Vec<(String, String)>,
        /// Move at most this many.
        #[arg(long)]
        limit: Option<usize>,
    },
}

/// Headers that describe a failure and are dropped on redrive.
const FAILURE_HEADERS: &[&str] = &[
    "mqfn-error",
    "mqfn-error-class",
    "mqfn-attempts",
    "mqfn-attempt",
    "mqfn-route",
    "mqfn-handler",
    "mqfn-source",
    "mqfn-failed-at",
];

fn route<'a>(cfg: &'a Config, name: &str) -> Result<&'a RouteConfig, CliError> {
    let r = cfg.route(name).ok_or_else(|| {
        let known: Vec<_> = cfg.routes.iter().map(|r| r.name.as_str()).collect();
        CliError::Usage(format!(
            "{}: no route {name:?} (known: {})",
            cfg.file.display(),
            known.join(", ")
        ))
    })?;
    if r.dead_letter.is_none() {
        return Err(CliError::Usage(format!(
            "route {name} has no dead_letter; only routes with one have dead letters to list or redrive"
        )));
    }
    Ok(r)
}

/// Runs a `dlq` subcommand.
pub async fn run(cfg: &Config, args: &DlqArgs) -> Result<(), CliError> {
    match &args.command {
        DlqCommand::List { route: name, limit } => list(cfg, route(cfg, name)?, *limit).await,
        DlqCommand::Redrive {
            route: name,
            filter,
            limit,
        } => redrive(cfg, route(cfg, name)?, filter, limit.unwrap_or(usize::MAX)).await,
    }
}

async fn list(cfg: &Config, r: &RouteConfig, limit: usize) -> Result<(), CliError> {
    let dl = r.dead_letter.as_ref().expect("checked");
    let broker = brokers::connect(&dl.broker, &cfg.brokers[&dl.broker], true).await?;
    let msgs = broker.browse(dl, limit).await?;
    broker.close().await;
    println!(
        "{:<10} {:>9} {:>8} {:<10} {:<48} PAYLOAD",
        "POSITION", "AGE", "ATTEMPTS", "CLASS", "ERROR"
    );
    for m in &msgs {
        let h = &m.headers;
        println!(
            "{:<10} {:>9} {:>8} {:<10} {:<48} {}",
            position(m),
            age(h.get("mqfn-failed-at")),
            h.get("mqfn-attempts").unwrap_or("-"),
            h.get("mqfn-error-class").unwrap_or("-"),
            clip(h.get("mqfn-error").unwrap_or("-"), 48),
            clip(&String::from_utf8_lossy(&m.payload), 40),
        );
    }
    eprintln!("{} dead letter(s) on {}", msgs.len(), dl.describe());
    Ok(())
}

async fn redrive(
    cfg: &Config,
    r: &RouteConfig,
    filter: &[(String, String)],
    limit: usize,
) -> Result<(), CliError> {
    let dl = r.dead_letter.as_ref().expect("checked");
    let dl_broker = brokers::connect(&dl.broker, &cfg.brokers[&dl.broker], true).await?;
    let src_broker = if r.source.broker == dl.broker {
        dl_broker.clone()
    } else {
        brokers::connect(&r.source.broker, &cfg.brokers[&r.source.broker], true).await?
    };
    let publisher = src_broker.publisher();
    let mut taker = dl_broker.take(dl).await?;
    let (mut moved, mut skipped, mut dropped) = (0usize, 0usize, 0usize);
    let result = loop {
        if moved >= limit {
            break Ok(());
        }
        let d = match taker.next().await {
            Ok(d) => d,
            Err(e) if e.kind == BrokerErrorKind::Drained => break Ok(()),
            Err(e) => break Err(e.into()),
        };
        if !filter
            .iter()
            .all(|(k, v)| d.msg.headers.get(k) == Some(v.as_str()))
        {
            skipped += 1;
            continue; // left in place, untouched
        }
        let out = fresh(&d.msg, dl_broker.reserved_headers());
        match publisher.publish_new(&r.source, out).await {
            Ok(Published::New) => {}
            Ok(Published::Duplicate) => {
                // The source kept an earlier message with this copy's
                // deduplication id and stored nothing: removing the dead
                // letter could lose it, so it stays, untouched.
                warn!(position = %position(&d.msg), "The source took the copy as a duplicate; the dead letter stays.");
                dropped += 1;
                continue;
            }
            Err(e) => {
                let _ = d.settle.nack(&d.msg, std::time::Duration::ZERO).await;
                break Err(CliError::Failed(format!("redrive stopped: {e}")));
            }
        }
        // Only once the source confirmed the copy is the dead letter removed.
        if let Err(e) = d.settle.ack().await {
            break Err(CliError::Failed(format!(
                "republished but could not remove the dead letter: {e}"
            )));
        }
        moved += 1;
    };
    taker.close().await;
    dl_broker.close().await;
    src_broker.close().await;
    eprintln!(
        "redrove {moved} dead letter(s) from {} to {}; {skipped} left (filter did not match)",
        dl.describe(),
        r.source.describe()
    );
    if dropped > 0 && result.is_ok() {
        return Err(CliError::Failed(format!(
            "{dropped} dead letter(s) left in place: the source took their copies as duplicates \
             of messages it already holds (its duplicate window); redrive them again once it has passed"
        )));
    }
    result
}

/// The original message, without the failure headers and the headers the
/// dead letter's broker reserves, counting redrives.
fn fresh(m: &Message, reserved: &[&str]) -> OutMessage {
    let redrives: u32 = m
        .headers
        .get("mqfn-redrives")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut headers: Headers = m
        .headers
        .iter()
        .filter(|(k, _)| !FAILURE_HEADERS.contains(k) && !reserved.iter().any(|p| k.starts_with(p)))
        .collect();
    headers.set("mqfn-redrives", (redrives + 1).to_string());
    OutMessage {
        payload: m.payload.clone(),
        headers,
        key: m.key.clone(),
        correlation_id: m.correlation_id.clone(),
        dedup_id: dedup_id(m),
        ..OutMessage::default()
    }
}

/// The redriven copy's deduplication id: the dead letter's position where
/// that names one dead letter for good (a JetStream stream sequence, a
/// Kafka partition and offset). An AMQP delivery tag is numbered per
/// channel, from 1 on every run, so an AMQP dead letter gets none.
fn dedup_id(m: &Message) -> Option<String> {
    m.position.identity().map(|id| format!("mqfn-redrive:{id}"))
}

fn position(m: &Message) -> String {
    match m.position.is_empty() {
        true => m.subject.clone(),
        false => format!("{}/{}", m.subject, m.position),
    }
}

fn age(failed_at: Option<&str>) -> String {
    let Some(t) = failed_at.and_then(|s| humantime::parse_rfc3339_weak(s).ok()) else {
        return "-".to_owned();
    };
    let secs = SystemTime::now()
        .duration_since(t)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn clip(s: &str, n: usize) -> String {
    let one: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one.chars().count() <= n {
        one
    } else {
        one.chars().take(n - 1).chain(['…']).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lasting_positions_give_a_redrive_dedup_id() {
        use crate::message::Position;
        let mut m = Message::new("x");
        m.subject = "q.dlq".into();
        m.position = Position::stable("S", "7");
        assert_eq!(fresh(&m, &[]).dedup_id.as_deref(), Some("mqfn-redrive:S:7"));
        m.position = Position::stable("q.dlq", "2/9").in_partition(2);
        assert_eq!(
            fresh(&m, &[]).dedup_id.as_deref(),
            Some("mqfn-redrive:q.dlq:2/9")
        );
        m.position = Position::transient("1");
        assert_eq!(
            fresh(&m, &[]).dedup_id,
            None,
            "delivery tags restart per channel"
        );
    }
}
