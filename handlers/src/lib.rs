//! The mqfn handler API and the built-in Rust handlers.
//!
//! A handler is a named, stateless function: it gets a [`Message`] and
//! returns zero or more [`Output`]s, or a [`HandlerError`] that says whether
//! the failure is worth retrying. Everything around the call (time limits,
//! retries, concurrency, acknowledgements) belongs to the runtime, not to the
//! handler.
//!
//! Built-in handlers are registered in one place, [`registry::BUILTINS`].

pub mod builtin;
mod error;
mod message;
pub mod registry;

pub use error::HandlerError;
pub use message::{Headers, Message, Output, Position};

use async_trait::async_trait;

/// A stateless function that turns one message into zero or more outputs.
///
/// Handlers live behind `Arc<dyn Handler>` and are called concurrently from
/// many workers, so they take `&self` only.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Handles one message.
    async fn call(&self, msg: &Message) -> Result<Vec<Output>, HandlerError>;
}
