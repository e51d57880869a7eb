//! `fail`: fails on purpose, as the payload asks, so that users and tests
//! can watch retries and dead letters.
//!
//! The payload is a command (surrounding whitespace ignored):
//! - `permanent` or `permanent:REASON`: a permanent error;
//! - `retry` or `retry:REASON`: a retryable error on every attempt;
//! - `retry-until:N`: retryable on attempts `1..N`, then echoes;
//! - `sleep:MS`: sleeps `MS` milliseconds, then echoes;
//! - `panic`: panics (the runtime catches it as a crash);
//! - anything else: echoes the payload.

use std::time::Duration;

use async_trait::async_trait;

use crate::{Handler, HandlerError, Message, Output};

/// The deliberately failing handler.
#[derive(Debug, Default)]
pub struct Fail;

#[async_trait]
impl Handler for Fail {
    async fn call(&self, msg: &Message) -> Result<Vec<Output>, HandlerError> {
        let text = String::from_utf8_lossy(&msg.payload);
        let text = text.trim();
        let (cmd, arg) = text.split_once(':').unwrap_or((text, ""));
        match cmd {
            "permanent" => Err(HandlerError::permanent(reason(arg, "permanent failure"))),
            "retry" => Err(HandlerError::retryable(reason(arg, "retryable failure"))),
            "retry-until" => {
                let n: u32 = arg.parse().map_err(|_| {
                    HandlerError::permanent(format!("retry-until:{arg}: expected a number"))
                })?;
                if msg.attempt < n {
                    Err(HandlerError::retryable(format!(
                        "attempt {} of the {} needed",
                        msg.attempt, n
                    )))
                } else {
                    Ok(vec![Output::new(msg.payload.clone())])
                }
            }
            "sleep" => {
                let ms: u64 = arg.parse().map_err(|_| {
                    HandlerError::permanent(format!("sleep:{arg}: expected milliseconds"))
                })?;
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(vec![Output::new(msg.payload.clone())])
            }
            "panic" => panic!("the fail handler was asked to panic"),
            _ => Ok(vec![Output::new(msg.payload.clone())]),
        }
    }
}

fn reason(arg: &str, default: &str) -> String {
    if arg.is_empty() {
        default.to_owned()
    } else {
        arg.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(payload: &str, attempt: u32) -> Message {
        Message {
            attempt,
            ..Message::new(payload.to_owned())
        }
    }

    #[tokio::test]
    async fn permanent_and_retryable_are_told_apart() {
        let p = Fail.call(&at("permanent:bad input", 1)).await.unwrap_err();
        assert_eq!(p, HandlerError::permanent("bad input"));
        let r = Fail.call(&at("retry", 1)).await.unwrap_err();
        assert!(r.is_retryable());
    }

    #[tokio::test]
    async fn retry_until_succeeds_on_the_nth_attempt() {
        assert!(Fail.call(&at("retry-until:3", 2)).await.is_err());
        let out = Fail.call(&at("retry-until:3", 3)).await.unwrap();
        assert_eq!(out[0].payload, "retry-until:3");
    }

    #[tokio::test]
    async fn other_payloads_echo() {
        let out = Fail.call(&at("hello", 1)).await.unwrap();
        assert_eq!(out, vec![Output::new("hello")]);
    }
}
