//! The test file: its cases, and the checks that refuse a bad one with the
//! case and the fix.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::Deserialize;

use super::CliError;
use crate::config::Config;

/// A test file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suite {
    /// The config whose routes are tested, relative to the test file
    /// (default: `--config`, then the default locations).
    pub config: Option<PathBuf>,
    /// The cases, run in order.
    #[serde(rename = "case", default)]
    pub cases: Vec<Case>,
}

/// One input and what must come of it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Shown in the report.
    pub name: String,
    /// The route that gets the input.
    pub route: String,
    /// The payload, as text.
    pub payload: Option<String>,
    /// The payload, written as JSON.
    pub json: Option<toml::Value>,
    /// The payload, from a file (relative to the test file).
    pub payload_file: Option<PathBuf>,
    /// Headers of the input.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The input's key.
    pub key: Option<String>,
    /// What must come out.
    pub expect: Expect,
}

/// Outputs, or a dead letter.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The outputs, all of them, in order (`[]`: none).
    pub outputs: Option<Vec<Expected>>,
    /// A dead letter, and no output.
    pub dead_letter: Option<DeadLetter>,
}

/// One expected output: each given field must match.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expected {
    /// The payload, exactly, as text.
    pub payload: Option<String>,
    /// The payload as JSON (compared as values: key order and spacing do
    /// not matter).
    pub json: Option<toml::Value>,
    /// Headers the output has (others may be there too).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The output's key.
    pub key: Option<String>,
}

/// What the dead letter must say.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetter {
    /// `mqfn-error-class`: permanent, retryable (a timeout is one) or crashed.
    pub error_class: Option<String>,
    /// Text that `mqfn-error` contains.
    pub error: Option<String>,
    /// `mqfn-attempts`.
    pub attempts: Option<u32>,
}

/// Checks the cases against the config; returns each case's payload.
pub(super) fn check(
    suite: &Suite,
    cfg: &Config,
    dir: &Path,
    file: &str,
) -> Result<Vec<Bytes>, CliError> {
    let mut errors = Vec::new();
    let mut payloads = Vec::new();
    for (i, c) in suite.cases.iter().enumerate() {
        let at = format!("{file}: case[{i}] ({:?})", c.name);
        if cfg.route(&c.route).is_none() {
            let known: Vec<_> = cfg.routes.iter().map(|r| r.name.as_str()).collect();
            errors.push(format!(
                "{at}: route: no route {:?} in {} (known: {})",
                c.route,
                cfg.file.display(),
                known.join(", ")
            ));
        }
        let given = [
            c.payload.is_some(),
            c.json.is_some(),
            c.payload_file.is_some(),
        ];
        let payload = match (&c.payload, &c.json, &c.payload_file) {
            _ if given.iter().filter(|g| **g).count() > 1 => {
                errors.push(format!("{at}: give one of payload, json and payload_file"));
                Bytes::new()
            }
            (Some(p), _, _) => Bytes::copy_from_slice(p.as_bytes()),
            (_, Some(j), _) => serde_json::to_vec(j).expect("TOML is JSON").into(),
            (_, _, Some(f)) => match std::fs::read(dir.join(f)) {
                Ok(b) => b.into(),
                Err(e) => {
                    errors.push(format!(
                        "{at}: payload_file: cannot read {}: {e}",
                        dir.join(f).display()
                    ));
                    Bytes::new()
                }
            },
            (None, None, None) => {
                errors.push(format!(
                    "{at}: no input: give payload, json or payload_file"
                ));
                Bytes::new()
            }
        };
        payloads.push(payload);
        match (&c.expect.outputs, &c.expect.dead_letter) {
            (Some(_), Some(_)) => errors.push(format!(
                "{at}: expect: give outputs or dead_letter, not both (a dead-lettered message has no output)"
            )),
            (None, None) => errors.push(format!(
                "{at}: expect: give outputs (`[]` for none) or dead_letter"
            )),
            _ => {}
        }
        for (j, o) in c.expect.outputs.iter().flatten().enumerate() {
            if o.payload.is_some() && o.json.is_some() {
                errors.push(format!(
                    "{at}: expect.outputs[{j}]: give payload or json, not both"
                ));
            }
        }
    }
    match errors.is_empty() {
        true => Ok(payloads),
        false => Err(CliError::Usage(errors.join("\n"))),
    }
}
