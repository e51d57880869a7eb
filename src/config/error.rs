use std::fmt;
use std::path::PathBuf;

/// One thing wrong with a config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No `--config` and no default file.
    #[error(
        "no config file: pass --config FILE, or create mqfn.toml or config/mqfn.toml \
         (see config/ for examples)"
    )]
    NotFound,
    /// The file could not be read.
    #[error("{}: cannot read the config file: {source}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{}: invalid TOML: {message}", file.display())]
    Syntax {
        /// The file.
        file: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A value is wrong; `key` is its path, like `routes[1].dead_letter.topic`.
    #[error("{}: {key}: {message}", file.display())]
    Invalid {
        /// The file.
        file: PathBuf,
        /// The key path.
        key: String,
        /// What is wrong and what is expected.
        message: String,
    },
}

/// Every problem found in a config, one per line when displayed.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// A single error.
    pub fn one(e: ConfigError) -> Self {
        Self(vec![e])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}
