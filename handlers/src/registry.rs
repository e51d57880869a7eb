//! The one place where built-in handlers are registered.
//!
//! Adding a built-in means adding a file under `builtin/` and one line to
//! [`BUILTINS`].

use std::sync::Arc;

use serde_json::Value;

use crate::builtin::{echo::Echo, fail::Fail, json_transform};
use crate::Handler;

/// Builds a handler from its options (a JSON object, possibly empty).
pub type Constructor = fn(&Value) -> Result<Arc<dyn Handler>, String>;

/// Every built-in handler: its name and constructor.
pub const BUILTINS: &[(&str, Constructor)] = &[
    ("echo", |_| Ok(Arc::new(Echo))),
    ("fail", |_| Ok(Arc::new(Fail))),
    ("json-transform", |opts| {
        let options: json_transform::JsonTransformOptions =
            serde_json::from_value(opts.clone()).map_err(|e| e.to_string())?;
        Ok(Arc::new(json_transform::JsonTransform::new(options)))
    }),
];

/// The names of every built-in, for error messages.
pub fn names() -> Vec<&'static str> {
    BUILTINS.iter().map(|(n, _)| *n).collect()
}

/// Builds the built-in `name` with `options`.
///
/// Returns `None` when no built-in has that name, and `Some(Err(why))` when
/// the options do not fit it.
pub fn build(name: &str, options: &Value) -> Option<Result<Arc<dyn Handler>, String>> {
    BUILTINS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, make)| make(options))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_builds_with_empty_options() {
        let empty = Value::Object(Default::default());
        for name in names() {
            assert!(build(name, &empty).unwrap().is_ok(), "{name}");
        }
        assert!(build("nope", &empty).is_none());
    }

    #[test]
    fn bad_options_are_reported() {
        let bad = serde_json::json!({"renam": {}});
        let Some(Err(err)) = build("json-transform", &bad) else {
            panic!("json-transform accepted an unknown option");
        };
        assert!(err.contains("renam"), "{err}");
    }
}
