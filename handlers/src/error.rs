use std::time::Duration;

/// Why a handler failed, and what the runtime should do about it.
///
/// The retry decision is data, not a string to parse: callers match on the
/// variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// A transient failure: the runtime retries with backoff up to the
    /// route's `retry.max_attempts`.
    #[error("{message}")]
    Retryable {
        /// What went wrong, for logs and the dead letter's `mqfn-error`.
        message: String,
        /// A lower bound on the next backoff, such as an HTTP `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// The handler instance died or broke its protocol. Retried like
    /// `Retryable`, and counted apart.
    #[error("{message}")]
    Crashed {
        /// What happened to the instance.
        message: String,
    },
    /// A failure that no retry can fix: the message goes straight to the
    /// dead letter.
    #[error("{message}")]
    Permanent {
        /// What went wrong.
        message: String,
    },
}

impl HandlerError {
    /// A retryable error with no backoff hint.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self::Retryable {
            message: message.into(),
            retry_after: None,
        }
    }

    /// A permanent error.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::Permanent {
            message: message.into(),
        }
    }

    /// An instance crash.
    pub fn crashed(message: impl Into<String>) -> Self {
        Self::Crashed {
            message: message.into(),
        }
    }

    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::Permanent { .. })
    }

    /// The class name written to the dead letter's `mqfn-error-class`.
    pub fn class(&self) -> &'static str {
        match self {
            Self::Retryable { .. } => "retryable",
            Self::Crashed { .. } => "crashed",
            Self::Permanent { .. } => "permanent",
        }
    }
}
