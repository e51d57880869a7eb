//! `json-transform`: renames, drops and sets fields of a JSON object.
//!
//! Options (in this order of application):
//! - `rename = { old = "new" }`
//! - `drop = ["field", "a.b"]`
//! - `set = { field = value, "a.b" = value }`
//!
//! Dotted names reach into nested objects; `set` creates missing parents.
//! Input that is not a JSON object is a permanent error.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::{Handler, HandlerError, Message, Output};

/// The options of a `json-transform` handler.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonTransformOptions {
    /// Fields to rename, old name to new name.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// Fields to remove.
    #[serde(default)]
    pub drop: Vec<String>,
    /// Fields to set, with their values.
    #[serde(default)]
    pub set: BTreeMap<String, Value>,
}

/// The JSON field transformer.
#[derive(Debug, Clone, Default)]
pub struct JsonTransform {
    options: JsonTransformOptions,
}

impl JsonTransform {
    /// A transformer with these options.
    pub fn new(options: JsonTransformOptions) -> Self {
        Self { options }
    }

    fn apply(&self, obj: &mut Map<String, Value>) {
        for (from, to) in &self.options.rename {
            if let Some(v) = take(obj, from) {
                put(obj, to, v);
            }
        }
        for field in &self.options.drop {
            take(obj, field);
        }
        for (field, value) in &self.options.set {
            put(obj, field, value.clone());
        }
    }
}

fn take(obj: &mut Map<String, Value>, path: &str) -> Option<Value> {
    match path.split_once('.') {
        None => obj.remove(path),
        Some((head, rest)) => match obj.get_mut(head) {
            Some(Value::Object(inner)) => take(inner, rest),
            _ => None,
        },
    }
}

fn put(obj: &mut Map<String, Value>, path: &str, value: Value) {
    match path.split_once('.') {
        None => {
            obj.insert(path.to_owned(), value);
        }
        Some((head, rest)) => {
            let entry = obj
                .entry(head.to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            if let Value::Object(inner) = entry {
                put(inner, rest, value);
            }
        }
    }
}

#[async_trait]
impl Handler for JsonTransform {
    async fn call(&self, msg: &Message) -> Result<Vec<Output>, HandlerError> {
        let value: Value = serde_json::from_slice(&msg.payload)
            .map_err(|e| HandlerError::permanent(format!("payload is not valid JSON: {e}")))?;
        let Value::Object(mut obj) = value else {
            return Err(HandlerError::permanent(
                "payload is JSON but not an object; json-transform needs {...}",
            ));
        };
        self.apply(&mut obj);
        let bytes = serde_json::to_vec(&Value::Object(obj))
            .map_err(|e| HandlerError::permanent(format!("cannot encode JSON: {e}")))?;
        Ok(vec![Output::new(bytes)])
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn transform() -> JsonTransform {
        JsonTransform::new(JsonTransformOptions {
            rename: [("id".to_owned(), "order_id".to_owned())].into(),
            drop: vec!["secret".to_owned(), "meta.internal".to_owned()],
            set: [
                ("source".to_owned(), json!("mqfn")),
                ("meta.seen".to_owned(), json!(true)),
            ]
            .into(),
        })
    }

    #[tokio::test]
    async fn renames_drops_and_sets() {
        let msg = Message::new(r#"{"id":7,"secret":"x","meta":{"internal":1,"keep":2}}"#);
        let out = transform().call(&msg).await.unwrap();
        let v: Value = serde_json::from_slice(&out[0].payload).unwrap();
        assert_eq!(
            v,
            json!({"order_id":7,"source":"mqfn","meta":{"keep":2,"seen":true}})
        );
    }

    #[tokio::test]
    async fn non_json_is_permanent() {
        for bad in [&b"not json"[..], &[0xff, 0xfe][..], b"[1,2]"] {
            let err = transform()
                .call(&Message::new(bad.to_vec()))
                .await
                .unwrap_err();
            assert!(!err.is_retryable(), "{err}");
        }
    }
}
