//! Handler kinds and the registry that builds a handler from config.
//!
//! The handler API itself (`Handler`, `Message`, `HandlerError`) lives in
//! the `mqfn-handlers` crate, so that built-ins depend on it alone. Adding a
//! handler kind means one module here and one arm in [`build`].

pub mod http;
pub mod process;

use std::sync::Arc;
use std::time::Duration;

pub use mqfn_handlers::{Handler, HandlerError};

use crate::config::{Config, HandlerConfig};
use crate::pool::instances::Instances;

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
#[derive(Clone)]
pub struct Built {
    /// The handler.
    pub handler: Arc<dyn Handler>,
    /// The handler's own time limit, if set.
    pub timeout: Option<Duration>,
    /// Its instance pool, for kinds that keep instances (process, http).
    pub instances: Option<Arc<dyn Instances>>,
}

impl Built {
    /// Stops the handler's instances, if it has any.
    pub async fn close(&self) {
        if let Some(i) = &self.instances {
            i.close().await;
        }
    }
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
                instances: None,
            })
        }
        Some(HandlerConfig::Process(p)) => {
            let h = process::ProcessHandler::new(name, p);
            Ok(Built {
                instances: Some(h.instances()),
                handler: Arc::new(h),
                timeout: Some(p.timeout),
            })
        }
        Some(HandlerConfig::Http(c)) => {
            let h = http::HttpHandler::new(name, c).map_err(options_err)?;
            Ok(Built {
                instances: Some(h.instances()),
                handler: Arc::new(h),
                timeout: Some(c.timeout),
            })
        }
        None => {
            let empty = serde_json::Value::Object(Default::default());
            match mqfn_handlers::registry::build(name, &empty) {
                Some(h) => Ok(Built {
                    handler: h.map_err(options_err)?,
                    timeout: None,
                    instances: None,
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
