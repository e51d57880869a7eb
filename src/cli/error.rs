//! What a CLI command can fail with. `main` prints it, one problem per
//! line, and exits non-zero.

use crate::brokers::{BrokerError, PublishError};
use crate::handler::BuildError;

/// A CLI command's failure.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// An argument names something the config does not have, or does not
    /// fit it (the message names the argument and the fix).
    #[error("{0}")]
    Usage(String),
    /// A broker could not be reached, or refused an operation.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// A publish was not confirmed.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The route could not be started in process.
    #[error(transparent)]
    App(#[from] crate::app::AppError),
    /// The handler could not be built.
    #[error(transparent)]
    Handler(#[from] BuildError),
    /// The message failed (dead-lettered, out of attempts, no result in
    /// time), or the operation stopped half way; the message says which.
    #[error("{0}")]
    Failed(String),
    /// The admin listener of a running mqfn could not be reached or gave
    /// an answer that is not a status.
    #[error("{0}")]
    Admin(String),
    /// Reading the input or writing the output failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being read or written.
        what: String,
        /// Why.
        source: std::io::Error,
    },
}

impl CliError {
    /// An I/O failure while doing `what`.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}
