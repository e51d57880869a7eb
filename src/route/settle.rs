//! After the handler: publish outputs, the reply or the dead letter, wait
//! for the broker's confirmation, and only then acknowledge the input.

use std::time::{Duration, SystemTime};

use mqfn_handlers::{HandlerError, Output};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use super::meters::Outcome;
use super::{Attempted, Failure, Route};
use crate::brokers::{Answer, Delivery, OutMessage, PublishError, PublishErrorKind};
use crate::message::{Headers, Message, REPLY_HEADER};
use crate::telemetry::names;

/// How long a message handed back after a failed publish waits before the
/// broker redelivers it.
const REDELIVERY_DELAY: Duration = Duration::from_secs(1);

/// The longest `mqfn-error` header value.
const MAX_ERROR_LEN: usize = 1024;

impl Route {
    /// Handles one delivery from start to settle.
    pub(super) async fn process(&self, mut d: Delivery, shutdown: &CancellationToken) {
        if let Some(f) = &self.filter {
            if !f
                .headers
                .iter()
                .all(|(k, v)| d.msg.headers.get(k) == Some(v.as_str()))
            {
                return self.ack(&d, Outcome::Filtered).await;
            }
        }
        let attempted = match self.max_message_bytes {
            Some(max) if d.msg.payload.len() > max => Attempted::Failed(Failure::new(
                HandlerError::permanent(format!(
                    "payload of {} bytes is larger than max_message_bytes ({max})",
                    d.msg.payload.len()
                )),
                d.msg.attempt,
            )),
            _ => self.attempt(&mut d.msg, d.settle.as_ref(), shutdown).await,
        };
        match attempted {
            Attempted::Done(outputs) => self.deliver(&d, outputs).await,
            // Boxed: the rare path would otherwise add its size to every
            // message's future, which is moved into a box per message.
            Attempted::Failed(f) => Box::pin(self.dead_letter(&d, f)).await,
            Attempted::Abandoned(delay) => self.nack(&d, delay).await,
        }
    }

    async fn deliver(&self, d: &Delivery, outputs: Vec<Output>) {
        let (sink, reply, mut outcome) = match (&self.output, &d.msg.reply_to, &self.replier) {
            (Some(sink), _, _) => (Some(sink), None, Outcome::Ok),
            (None, Some(reply), Some(replier)) => (None, Some((reply, replier)), Outcome::Replied),
            _ => (None, None, Outcome::Ok),
        };
        let waits = d.settle.waits();
        let mut answer = Vec::new();
        for (i, out) in outputs.into_iter().enumerate() {
            let msg = self.out_message(&d.msg, out, i);
            if waits {
                answer.push(msg.clone());
            }
            let result = match (sink, reply) {
                (Some(s), _) => s.publisher.publish(&s.at, msg).await,
                (None, Some((to, replier))) => replier.reply(to, msg).await,
                (None, None) => {
                    debug!(route = %self.name, "The route has no output and the message no reply address; result dropped.");
                    Ok(())
                }
            };
            if let Err(e) = result {
                return self.publish_failed(d, e).await;
            }
        }
        if waits {
            d.settle.answer(Answer::Done(&answer));
            outcome = Outcome::Replied;
        }
        self.ack(d, outcome).await;
    }

    async fn publish_failed(&self, d: &Delivery, e: PublishError) {
        let broker = e.to.split('/').next().unwrap_or_default().to_owned();
        metrics::counter!(names::PUBLISH_ERRORS_TOTAL, "broker" => broker).increment(1);
        self.stats.error(e.to_string());
        match e.kind {
            PublishErrorKind::Transient => {
                warn!(route = %self.name, error = %e, "Publish not confirmed; the input goes back to the broker.");
                self.nack(d, REDELIVERY_DELAY).await;
            }
            PublishErrorKind::Rejected => {
                warn!(route = %self.name, error = %e, "The broker refused the result; dead-lettering the input.");
                let f = Failure::new(
                    HandlerError::permanent(format!("result refused by the broker: {}", e.message)),
                    d.msg.attempt,
                );
                Box::pin(self.dead_letter(d, f)).await;
            }
        }
    }

    async fn dead_letter(&self, d: &Delivery, f: Failure) {
        self.stats.error(f.error.to_string());
        if d.settle.waits() {
            d.settle.answer(Answer::Failed {
                error: &f.error,
                timed_out: f.timed_out,
            });
            return self.ack(d, Outcome::Answered).await;
        }
        let Some(sink) = &self.dead_letter else {
            // Only at-most-once sources may lack a dead letter (validated).
            error!(route = %self.name, error = %f.error, attempts = f.attempts, "Message failed and the route has no dead letter; dropped.");
            return self.ack(d, Outcome::Dropped).await;
        };
        let mut headers: Headers = d
            .msg
            .headers
            .iter()
            .filter(|(k, _)| !self.is_reserved(k))
            .collect();
        let error = one_line(&f.error.to_string());
        headers.set("mqfn-error", error);
        headers.set("mqfn-error-class", f.error.class());
        headers.set("mqfn-attempts", f.attempts.to_string());
        headers.set("mqfn-route", self.name.clone());
        headers.set("mqfn-handler", self.handler_name.clone());
        headers.set("mqfn-source", source_position(&self.source, &d.msg));
        headers.set(
            "mqfn-failed-at",
            humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        );
        let msg = OutMessage {
            payload: d.msg.payload.clone(),
            headers,
            key: d.msg.key.clone(),
            correlation_id: d.msg.correlation_id.clone(),
            dedup_id: if sink.at.spec().deduplicates() {
                dedup_id(&self.name, &d.msg, None)
            } else {
                None
            },
            ..OutMessage::default()
        };
        let mut result = sink.publisher.publish(&sink.at, msg.clone()).await;
        if let Err(e) = &result {
            if e.kind == PublishErrorKind::Rejected {
                // Headers that the source carried may be invalid on the dead
                // letter's broker: try once more with them made safe.
                warn!(route = %self.name, error = %e, "Dead letter refused; retrying with sanitized headers.");
                let mut safe = msg;
                safe.headers = sanitized(&safe.headers);
                result = sink.publisher.publish(&sink.at, safe).await;
            }
        }
        match result {
            Ok(()) => {
                self.meters.dead_lettered();
                warn!(route = %self.name, attempts = f.attempts, error = %f.error, "Dead-lettered.");
                self.ack(d, Outcome::DeadLettered).await;
            }
            Err(e) => {
                let broker = e.to.split('/').next().unwrap_or_default().to_owned();
                metrics::counter!(names::PUBLISH_ERRORS_TOTAL, "broker" => broker).increment(1);
                error!(route = %self.name, error = %e, "Dead letter not confirmed; the input goes back to the broker.");
                self.stats.error(e.to_string());
                // A refusal will not change by itself: come back slowly, so
                // the message stays visible in the backlog without spinning.
                let delay = match e.kind {
                    PublishErrorKind::Rejected => self.retry.max_backoff,
                    PublishErrorKind::Transient => REDELIVERY_DELAY,
                };
                self.nack(d, delay).await;
            }
        }
    }

    fn out_message(&self, input: &Message, out: Output, index: usize) -> OutMessage {
        let mut headers: Headers = input
            .headers
            .iter()
            .filter(|(k, _)| {
                !self.is_reserved(k) && *k != REPLY_HEADER && !k.starts_with("mqfn-error")
            })
            .collect();
        headers.merge(&out.headers);
        OutMessage {
            payload: out.payload,
            headers,
            key: out.key.or_else(|| input.key.clone()),
            correlation_id: input.correlation_id.clone(),
            // Replies keep it: a stream may capture the reply subject.
            dedup_id: if self
                .output
                .as_ref()
                .map_or(true, |s| s.at.spec().deduplicates())
            {
                dedup_id(&self.name, input, Some(index))
            } else {
                None
            },
            ..OutMessage::default()
        }
    }

    /// Whether the source's broker reserves this header name.
    fn is_reserved(&self, name: &str) -> bool {
        self.reserved.iter().any(|p| name.starts_with(p))
    }

    async fn ack(&self, d: &Delivery, outcome: Outcome) {
        match d.settle.ack().await {
            Ok(()) => {
                self.meters.settled(outcome);
            }
            Err(e) => {
                // The broker will redeliver; the results are already out, so
                // this can only cause a duplicate, never a loss.
                warn!(route = %self.name, error = %e, "Ack failed; the message may be delivered again.");
                self.stats.error(e.to_string());
            }
        }
    }

    async fn nack(&self, d: &Delivery, delay: Duration) {
        self.meters.redelivered();
        if let Err(e) = d.settle.nack(&d.msg, delay).await {
            warn!(route = %self.name, error = %e, "Nack failed; the broker redelivers after its ack timeout.");
        }
    }
}

/// Headers any broker accepts: names of `[A-Za-z0-9_.-]`, values without
/// control characters; marked with `mqfn-headers-sanitized`.
fn sanitized(headers: &Headers) -> Headers {
    let mut out: Headers = headers
        .iter()
        .map(|(k, v)| {
            let name: String = k
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            let value: String = v
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            (
                if name.is_empty() {
                    "_".to_owned()
                } else {
                    name
                },
                value,
            )
        })
        .collect();
    out.set("mqfn-headers-sanitized", "true");
    out
}

/// A deduplication id for results of inputs whose position is a stable
/// identity, the same across redeliveries of the message:
/// `mqfn:ROUTE:IDENTITY:` and the output's index, or `dlq` for the dead
/// letter (JetStream: `mqfn:ROUTE:STREAM:SEQ:0`).
fn dedup_id(route: &str, msg: &Message, output: Option<usize>) -> Option<String> {
    let identity = msg.position.identity()?;
    // Built by hand: `format!` here was 3% of the instructions per message.
    let mut n = itoa::Buffer::new();
    let mut id = String::with_capacity(route.len() + identity.len() + 16);
    for part in ["mqfn:", route, ":", identity, ":"] {
        id.push_str(part);
    }
    id.push_str(match output {
        Some(i) => n.format(i),
        None => "dlq",
    });
    Some(id)
}

/// `broker/address[/position]` for `mqfn-source`.
fn source_position(source: &str, msg: &Message) -> String {
    match msg.position.is_empty() {
        true => source.to_owned(),
        false => format!("{source}/{}", msg.position),
    }
}

/// Error text safe for a header: one line, bounded length.
fn one_line(s: &str) -> String {
    let mut line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.len() > MAX_ERROR_LEN {
        let mut cut = MAX_ERROR_LEN;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push('…');
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitized_headers_are_safe_everywhere() {
        let h: Headers = [("bad name:x", "line\r\nbreak"), ("ok", "fine")]
            .into_iter()
            .collect();
        let s = sanitized(&h);
        assert_eq!(s.get("bad_name_x"), Some("line  break"));
        assert_eq!(s.get("ok"), Some("fine"));
        assert_eq!(s.get("mqfn-headers-sanitized"), Some("true"));
    }

    #[test]
    fn dedup_ids_need_a_stable_position() {
        let msg = Message {
            position: crate::message::Position::stable("IN", "42"),
            ..Message::default()
        };
        assert_eq!(
            dedup_id("r", &msg, Some(3)).as_deref(),
            Some("mqfn:r:IN:42:3")
        );
        assert_eq!(
            dedup_id("r", &msg, None).as_deref(),
            Some("mqfn:r:IN:42:dlq")
        );
        assert_eq!(dedup_id("r", &Message::default(), Some(0)), None);
        let delivery_tag = Message {
            position: crate::message::Position::transient("7"),
            ..Message::default()
        };
        assert_eq!(dedup_id("r", &delivery_tag, Some(0)), None);
        assert_eq!(source_position("b/q", &delivery_tag), "b/q/7");
        assert_eq!(source_position("b/q", &Message::default()), "b/q");
    }

    #[test]
    fn error_headers_are_single_bounded_lines() {
        let long = "x\r\ny".repeat(1000);
        let line = one_line(&long);
        assert!(!line.contains(['\r', '\n']));
        assert!(line.len() <= MAX_ERROR_LEN + '…'.len_utf8());
    }
}
