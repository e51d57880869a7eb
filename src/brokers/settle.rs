//! The settle half of the broker contract: the token that acknowledges a
//! delivery on its broker, and the delivery that carries it.

use std::time::{Duration, Instant};

use async_trait::async_trait;

use mqfn_handlers::HandlerError;

use super::{BrokerError, OutMessage};
use crate::message::Message;

/// How a message ended, for a caller that waits on it (see
/// [`Settle::waits`]).
#[derive(Debug)]
pub enum Answer<'a> {
    /// The handler's results, as the route published them (or would
    /// have: a route without an output publishes none).
    Done(&'a [OutMessage]),
    /// The handler failed: a permanent error, a retryable one (the caller
    /// may try again), or a time limit run out.
    Failed {
        /// The error.
        error: &'a HandlerError,
        /// Whether the invocation ran past its time limit.
        timed_out: bool,
    },
}

/// Settles one delivery on its broker.
#[async_trait]
pub trait Settle: Send + Sync {
    /// The message is done: its results are safely published.
    async fn ack(&self) -> Result<(), BrokerError>;
    /// Hand the message back for redelivery, no sooner than `delay`.
    /// `msg` is the message as the route last tried it: a broker that
    /// cannot take a message back (Kafka) redelivers this copy itself, so
    /// no copy is kept for the nack that rarely comes.
    async fn nack(&self, msg: &Message, delay: Duration) -> Result<(), BrokerError>;
    /// Still working on it: extend the broker's ack deadline.
    async fn in_progress(&self) -> Result<(), BrokerError> {
        Ok(())
    }
    /// How often `in_progress` must be called during a long invocation.
    fn keepalive(&self) -> Option<Duration> {
        None
    }
    /// Whether a caller waits for this message's outcome (a synchronous
    /// HTTP request). The route then invokes the handler once, as Lambda
    /// does for a synchronous call, hands the outcome to
    /// [`Settle::answer`] and dead-letters nothing: the caller decides
    /// whether to try again. A nack (a publish not confirmed, a shutdown)
    /// tells the caller to come back later.
    fn waits(&self) -> bool {
        false
    }
    /// Tells the waiting caller how its message ended; called once, before
    /// the ack.
    fn answer(&self, answer: Answer<'_>) {
        let _ = answer;
    }
}

/// A settle token for sources that need none (core NATS, `mqfn call`).
#[derive(Debug, Default)]
pub struct NoSettle;

#[async_trait]
impl Settle for NoSettle {
    async fn ack(&self) -> Result<(), BrokerError> {
        Ok(())
    }
    async fn nack(&self, _msg: &Message, _delay: Duration) -> Result<(), BrokerError> {
        Ok(())
    }
}

/// A message in flight, with the token that settles it.
pub struct Delivery {
    /// The message.
    pub msg: Message,
    /// Acknowledges it on its broker.
    pub settle: Box<dyn Settle>,
    /// When mqfn received it.
    pub received: Instant,
}

impl Delivery {
    /// Wraps a message and its token.
    pub fn new(msg: Message, settle: Box<dyn Settle>) -> Self {
        Self {
            msg,
            settle,
            received: Instant::now(),
        }
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("subject", &self.msg.subject)
            .field("position", &self.msg.position)
            .finish_non_exhaustive()
    }
}
