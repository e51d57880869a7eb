//! Handler kinds and the registry that builds a handler from config.
//!
//! The handler API itself (`Handler`, `Message`, `HandlerError`) lives in
//! the `mqfn-handlers` crate, so that built-ins depend on it alone. Adding a
//! handler kind means one module here and one arm in [`build`].

use std::sync::Arc;
use std::time::Duration;

pub use mqfn_handlers::{Handler, HandlerError};

use crate::config::{Config, HandlerConfig};

/// A handler that could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// No handler has that name.
    #[error("unknown handler {name:?} (known: {known})")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The names that exist.
        known: String,
    },
    /// The handler's options are wrong.
    #[error("handler {name:?}: {message}")]
    Options {
        /// The handler.
        name: String,
        /// What is wrong.
        message: String,
    },
}

/// A handler with its configured time limit.
pub struct Built {
    /// The handler.
    pub handler: Arc<dyn Handler>,
    /// The handler's own time limit, if set.
    pub timeout: Option<Duration>,
}

/// Builds the handler `name`: a `[handlers.NAME]` entry, or a built-in.
pub fn build(name: &str, cfg: &Config) -> Result<Built, BuildError> {
    let options_err = |message: String| BuildError::Options {
        name: name.to_owned(),
        message,
    };
    match cfg.handlers.get(name) {
        Some(HandlerConfig::Builtin(b)) => {
            let opts = serde_json::to_value(&b.options).map_err(|e| options_err(e.to_string()))?;
            let handler = mqfn_handlers::registry::build(&b.builtin, &opts)
                .ok_or_else(|| options_err(format!("unknown built-in {:?}", b.builtin)))?
                .map_err(options_err)?;
            Ok(Built {
                handler,
                timeout: b.timeout,
            })
        }
        None => {
            let empty = serde_json::Value::Object(Default::default());
            match mqfn_handlers::registry::build(name, &empty) {
                Some(h) => Ok(Built {
                    handler: h.map_err(options_err)?,
                    timeout: None,
                }),
                None => {
                    let mut known: Vec<String> = cfg.handlers.keys().cloned().collect();
                    known.extend(
                        mqfn_handlers::registry::names()
                            .iter()
                            .map(|s| s.to_string()),
                    );
                    known.sort();
                    Err(BuildError::Unknown {
                        name: name.to_owned(),
                        known: known.join(", "),
                    })
                }
            }
        }
    }
}
