//! `mqfn schema`: a JSON Schema of the config, for editors (taplo, Even
//! Better TOML, VS Code's YAML/TOML extensions) and CI checks.
//!
//! Derived from the config types with `schemars`. The parts a kind owns
//! (a broker's keys, its endpoints' keys) come from the kind
//! ([`crate::brokers::Kind::schemas`]): a broker table is one of the kinds'
//! shapes, chosen by `kind`; an endpoint is any kind's endpoint plus
//! `broker` (which kind it is depends on the broker it names, which a
//! schema cannot follow).

use std::borrow::Cow;

use schemars::generate::SchemaSettings;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde_json::{json, Value};

use super::Config;
use crate::brokers::KINDS;

/// A duration as the config writes it: `"250ms"`, `"30s"`, `"5m"`,
/// `"1h 30m"` (humantime).
pub struct DurationText;

impl JsonSchema for DurationText {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A duration: a number and a unit, e.g. \"250ms\", \"30s\", \"5m\", \"1h 30m\" (units: ns, us, ms, s, m, h, d, w).",
            "pattern": "^\\s*([0-9]+(\\.[0-9]+)?\\s*[a-zA-Zµ]+\\s*)+$"
        })
    }
}

/// The address keys every kind accepts as synonyms (docs/brokers.md), so
/// that a route moves between brokers by changing `broker` alone.
const SYNONYMS: [&str; 3] = ["subject", "topic", "queue"];

/// Where draft 7 keeps definitions (`#/definitions/NAME`).
const DEFINITIONS: &str = "definitions";

/// The JSON Schema of a config file.
pub fn document() -> Value {
    // Draft 7: what editors' TOML and JSON tooling (taplo, VS Code) read.
    let mut generator = SchemaSettings::draft07().into_generator();
    let mut root = generator.root_schema_for::<Config>().to_value();
    let mut brokers = Vec::new();
    let mut endpoints = Vec::new();
    let mut nested = serde_json::Map::new();
    // A kind's schemas come as documents of their own: their definitions
    // join the root's, and each keeps only its own shape.
    let mut inline = |schema: Schema| {
        let mut v = schema.to_value();
        if let Some(obj) = v.as_object_mut() {
            obj.remove("$schema");
            if let Some(Value::Object(defs)) = obj.remove(DEFINITIONS) {
                nested.extend(defs);
            }
        }
        v
    };
    let mut triggers = Vec::new();
    for kind in KINDS {
        let s = kind.schemas(&mut generator);
        if let Some(key) = kind.trigger_key() {
            // No `broker`: the trigger's key names it, and its broker
            // table is the top-level [name]; a trigger has no targets.
            let mut source = endpoint(inline(s.source), kind.name());
            if let Some(req) = source["required"].as_array_mut() {
                req.retain(|r| r != "broker");
            }
            source["properties"]["broker"]["description"] =
                format!("Optional: the `{key}` key names the trigger.").into();
            endpoints.push(source);
            triggers.push((kind.name(), inline(s.broker)));
            continue;
        }
        let mut broker = inline(s.broker);
        let props = broker["properties"]
            .as_object_mut()
            .expect("a broker table is an object");
        props.insert(
            "kind".into(),
            json!({ "const": kind.name(), "description": "The broker kind." }),
        );
        push_required(&mut broker, "kind");
        brokers.push(broker);
        for role in [s.source, s.target] {
            endpoints.push(endpoint(inline(role), kind.name()));
        }
    }
    let defs = root[DEFINITIONS].as_object_mut().expect("definitions");
    for (name, value) in nested.into_iter().chain(generator.take_definitions(true)) {
        defs.entry(name).or_insert(value);
    }
    defs.insert(
        "Broker".into(),
        json!({
            "description": "A broker connection: `kind` and the keys of that kind.",
            "oneOf": brokers,
        }),
    );
    defs.insert("Endpoint".into(), json!({
        "description": "Where on a broker: `broker` (a name under [brokers]) and the keys of its kind. `subject`, `topic` and `queue` are synonyms for the address on every kind.",
        "anyOf": endpoints,
    }));
    for (name, mut table) in triggers {
        table["description"] = format!("The {name} trigger's settings.").into();
        root["properties"][name] = table;
    }
    root["$id"] = "https://github.com/mqfn/mqfn/config.schema.json".into();
    root["title"] = "mqfn config".into();
    root
}

/// A kind's endpoint schema with `broker` added and the address synonyms
/// allowed.
fn endpoint(mut schema: Value, kind: &str) -> Value {
    let props = schema["properties"]
        .as_object_mut()
        .expect("an endpoint is an object");
    let address = SYNONYMS
        .iter()
        .find(|k| props.contains_key(**k))
        .map(|k| props[*k].clone());
    if let Some(a) = address {
        for k in SYNONYMS {
            props.entry(k).or_insert_with(|| a.clone());
        }
        if let Some(req) = schema["required"].as_array_mut() {
            req.retain(|r| !SYNONYMS.contains(&r.as_str().unwrap_or_default()));
        }
    }
    schema["properties"]["broker"] =
        json!({ "type": "string", "description": "The broker's name under [brokers]." });
    push_required(&mut schema, "broker");
    schema["title"] = format!("{kind} endpoint").into();
    schema
}

fn push_required(schema: &mut Value, key: &str) {
    match schema["required"].as_array_mut() {
        Some(r) => r.push(key.into()),
        None => schema["required"] = json!([key]),
    }
}

/// The schema of a broker table: its kind's, chosen by `kind`.
pub struct BrokerTable;

impl JsonSchema for BrokerTable {
    fn schema_name() -> Cow<'static, str> {
        "BrokerTable".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "$ref": format!("#/{DEFINITIONS}/Broker") })
    }
}

/// The schema of an endpoint table (`source`, `output`, `dead_letter`).
pub struct EndpointTable;

impl JsonSchema for EndpointTable {
    fn schema_name() -> Cow<'static, str> {
        "EndpointTable".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "$ref": format!("#/{DEFINITIONS}/Endpoint") })
    }
}

/// The schema of a route's `http` key: a path, or the HTTP trigger's
/// source keys.
pub struct Exposure;

impl JsonSchema for Exposure {
    fn schema_name() -> Cow<'static, str> {
        "Exposure".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Also exposes the route over HTTP: a path (\"/orders\"), or a table with `path` and the HTTP trigger's keys (mode, auth).",
            "anyOf": [
                { "type": "string", "pattern": "^/" },
                { "type": "object", "required": ["path"], "properties": { "path": { "type": "string", "pattern": "^/" } } }
            ]
        })
    }
}
