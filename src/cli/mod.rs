//! The command line: `run`, `validate`, `publish`, `invoke`, `call`,
//! `dlq`, `status`, `test`, `asyncapi`, `schema`, `completions`, `man`.
//! Each command is one module.

pub mod asyncapi;
pub mod call;
pub mod dlq;
mod error;
pub mod generate;
pub mod invoke;
pub mod publish;
pub mod route_test;
pub mod status;

use std::io::Read;
use std::path::PathBuf;

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};

pub use error::CliError;

use crate::message::Headers;

/// Functions on message queues.
#[derive(Debug, Parser)]
#[command(name = "mqfn", version, about)]
pub struct Cli {
    /// The config file (default: mqfn.toml, then config/mqfn.toml).
    #[arg(long, short, global = true, env = "MQFN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, default_value = "pretty", value_parser = ["pretty", "json"])]
    pub log_format: String,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every route until SIGINT or SIGTERM, then drain and exit 0.
    ///
    /// SIGHUP reloads the config: unchanged routes keep running, changed
    /// ones drain and restart, removed ones drain and stop, new ones start;
    /// an invalid config is refused and the running one stays.
    Run {
        /// Admin listen address (overrides `[admin] listen`).
        #[arg(long)]
        admin: Option<String>,
        /// Also reload whenever the config file's contents change.
        #[arg(long)]
        watch: bool,
    },
    /// Check the config and exit 0 when it is good.
    Validate,
    /// Publish messages to a broker, to trigger handlers.
    Publish(publish::PublishArgs),
    /// Publish to a route's source and print the correlated result.
    Invoke(invoke::InvokeArgs),
    /// Run a handler locally, with no broker, and print its outputs.
    Call(call::CallArgs),
    /// Inspect and redrive a route's dead letters.
    Dlq(dlq::DlqArgs),
    /// Print the status of a running mqfn as a table.
    Status(status::StatusArgs),
    /// Run route test cases from a file, with no broker; exit 1 on a
    /// mismatch.
    ///
    /// Each case runs through the real pipeline on the in-process memory
    /// broker, and a mismatch prints a diff (docs/cli.md).
    Test(route_test::TestArgs),
    /// Print an AsyncAPI 3.0 document (JSON) of the config.
    ///
    /// Its brokers, channels and operations, without credentials.
    Asyncapi,
    /// Print a JSON Schema of the config file, for editors and CI checks
    /// (needs no config).
    Schema,
    /// Print a shell completion script (needs no config).
    ///
    /// bash: `mqfn completions bash > ~/.local/share/bash-completion/completions/mqfn`;
    /// zsh: into a directory of `$fpath` as `_mqfn`;
    /// fish: `mqfn completions fish > ~/.config/fish/completions/mqfn.fish`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page mqfn(1), or write one page per command into a
    /// directory (needs no config).
    Man {
        /// Write `mqfn.1`, `mqfn-run.1`, ... into this directory instead.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

impl Command {
    /// Whether the command reads the config before it runs (the
    /// generators need none; `test` reads the one its file names).
    pub fn needs_config(&self) -> bool {
        !matches!(
            self,
            Self::Completions { .. } | Self::Man { .. } | Self::Schema | Self::Test(_)
        )
    }
}

/// The message options shared by `publish`, `invoke` and `call`.
#[derive(Debug, Clone, Args)]
pub struct MessageArgs {
    /// The message key.
    #[arg(long)]
    pub key: Option<String>,
    /// A header, `name=value`; repeatable.
    #[arg(long = "header", short = 'H', value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// The payload: literal text, `@file`, or `-` for stdin.
    pub payload: String,
}

impl MessageArgs {
    /// The headers as an envelope header set.
    pub fn header_set(&self) -> Headers {
        self.headers.iter().cloned().collect()
    }

    /// Reads the payload argument.
    pub fn read_payload(&self) -> Result<Bytes, CliError> {
        read_payload(&self.payload)
    }
}

pub(crate) fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not name=value")),
    }
}

/// `-` reads stdin, `@path` reads a file, anything else is the payload.
pub fn read_payload(arg: &str) -> Result<Bytes, CliError> {
    if arg == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| CliError::io("cannot read the payload from stdin", e))?;
        Ok(buf.into())
    } else if let Some(path) = arg.strip_prefix('@') {
        std::fs::read(path)
            .map(Bytes::from)
            .map_err(|e| CliError::io(format!("cannot read the payload file {path}"), e))
    } else {
        Ok(Bytes::copy_from_slice(arg.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_come_from_text_or_files() {
        assert_eq!(read_payload("hello").unwrap(), "hello");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.bin");
        std::fs::write(&p, [0u8, 1, 2]).unwrap();
        assert_eq!(
            read_payload(&format!("@{}", p.display())).unwrap(),
            &[0u8, 1, 2][..]
        );
        let err = read_payload("@/no/such/file").unwrap_err().to_string();
        assert!(err.contains("/no/such/file"), "{err}");
    }

    #[test]
    fn headers_are_name_value() {
        assert_eq!(parse_header("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert!(parse_header("novalue").is_err());
    }
}
