//! `mqfn call`: run a handler locally, with no broker, through the same
//! invocation path as `run` (time limit, retries, panic catching).

use std::io::Write;

use clap::Args;
use tokio_util::sync::CancellationToken;

use super::{CliError, MessageArgs};
use crate::brokers::NoSettle;
use crate::config::{Config, RouteConfig};
use crate::handler;
use crate::message::Message;
use crate::route::{Attempted, Route};

/// Arguments of `mqfn call`.
#[derive(Debug, Args)]
pub struct CallArgs {
    /// The handler's name (declared under [handlers], or a built-in).
    pub handler: String,
    /// The message.
    #[command(flatten)]
    pub msg: MessageArgs,
}

/// Calls the handler and prints each output payload on its own line.
pub async fn run(cfg: &Config, args: &CallArgs) -> Result<(), CliError> {
    let built = handler::build(&args.handler, cfg)?;
    // Borrow the time limit and retry policy of a route that uses the
    // handler, so that `call` behaves as `run` would.
    let mut rcfg = cfg
        .routes
        .iter()
        .find(|r| r.handler == args.handler)
        .cloned()
        .unwrap_or_else(|| RouteConfig {
            name: "call".to_owned(),
            handler: args.handler.clone(),
            ..RouteConfig::default()
        });
    rcfg.workers.min = 1;
    rcfg.workers.max = 1;
    let route = Route::new(
        &rcfg,
        built.handler.clone(),
        built.timeout,
        None,
        None,
        None,
    );
    let mut msg = Message {
        payload: args.msg.read_payload()?,
        headers: args.msg.header_set(),
        key: args.msg.key.clone().map(Into::into),
        subject: "call".to_owned(),
        route: rcfg.name.clone(),
        attempt: 1,
        ..Message::default()
    };
    let attempted = route
        .attempt(&mut msg, &NoSettle, &CancellationToken::new())
        .await;
    // Stop the handler's processes so that `call` exits promptly.
    built.close().await;
    match attempted {
        Attempted::Done(outputs) => {
            let mut out = std::io::stdout().lock();
            for o in outputs {
                out.write_all(&o.payload)
                    .and_then(|_| out.write_all(b"\n"))
                    .map_err(|e| CliError::io("cannot write the result", e))?;
            }
            Ok(())
        }
        Attempted::Failed(f) => Err(CliError::Failed(format!(
            "{} error after {} attempt(s): {}",
            f.error.class(),
            f.attempts,
            f.error
        ))),
        Attempted::Abandoned(_) => Err(CliError::Failed("interrupted".to_owned())),
    }
}
