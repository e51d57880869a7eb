//! Triggers in the config: a source table with no `broker` names a trigger
//! kind by its key (`source = { http = "/orders" }`), and the trigger's one
//! broker is implicit, called like the kind. This step, before the typed
//! parse, turns each trigger's top-level table (`[http]`) into that broker
//! (`[brokers.http] kind = "http"`), and adds the broker with its defaults
//! when a route uses the trigger and the table is absent. The rest of the
//! loading then sees one more broker.

use crate::brokers::triggers;

/// Moves each trigger's top-level table under `[brokers]`; the error is a
/// key path and a message.
pub(super) fn lift(value: &mut toml::Value) -> Result<(), (String, String)> {
    let Some(top) = value.as_table_mut() else {
        return Ok(());
    };
    for (kind, key) in triggers() {
        let name = kind.name();
        let table = match top.remove(name) {
            None => None,
            Some(toml::Value::Table(t)) => Some(t),
            Some(_) => {
                return Err((
                    name.to_owned(),
                    format!("expected a table: [{name}] with the trigger's settings"),
                ))
            }
        };
        if table.is_none() && !used(top, key) {
            continue;
        }
        let brokers = top
            .entry("brokers")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(brokers) = brokers.as_table_mut() else {
            return Ok(()); // the typed parse reports it
        };
        if let Some(taken) = brokers.get(name) {
            let same = taken.get("kind").and_then(toml::Value::as_str) == Some(name);
            if same && table.is_none() {
                continue; // declared as a broker: the long form of [name]
            }
            return Err((
                format!("brokers.{name}"),
                match same {
                    true => format!("set the {name} trigger's settings once: in [{name}] or in [brokers.{name}], not both"),
                    false => format!(
                        "the broker name {name:?} belongs to the {name} trigger, which routes here use; rename this broker"
                    ),
                },
            ));
        }
        let mut table = table.unwrap_or_default();
        table.insert("kind".to_owned(), toml::Value::String(name.to_owned()));
        brokers.insert(name.to_owned(), toml::Value::Table(table));
    }
    Ok(())
}

/// Whether a route names the trigger whose key is `key`: in a source with
/// no broker, or as a route key (`http = "/orders"` exposes any route).
fn used(top: &toml::Table, key: &str) -> bool {
    let Some(routes) = top.get("routes").and_then(toml::Value::as_array) else {
        return false;
    };
    routes.iter().filter_map(toml::Value::as_table).any(|r| {
        r.contains_key(key)
            || r.get("source")
                .and_then(toml::Value::as_table)
                .is_some_and(|s| !s.contains_key("broker") && s.contains_key(key))
    })
}

/// The trigger kind a source table with no `broker` names, if exactly one.
pub(super) fn named_by(keys: &toml::Table) -> Result<&'static str, String> {
    let named: Vec<_> = triggers()
        .filter(|(_, key)| keys.contains_key(*key))
        .collect();
    match named.as_slice() {
        [(kind, _)] => Ok(kind.name()),
        [] => Err(format!(
            "missing field `broker` (or a trigger: {})",
            triggers()
                .map(|(_, key)| format!("`{key}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        _ => Err(format!(
            "one trigger per source: {} are given",
            named
                .iter()
                .map(|(_, key)| format!("`{key}`"))
                .collect::<Vec<_>>()
                .join(" and ")
        )),
    }
}

/// Where a broker's table is written: `[http]` for a trigger's implicit
/// broker, `[brokers.NAME]` for the others.
pub(super) fn table_of(name: &str, kind: &str) -> String {
    match name == kind && triggers().any(|(k, _)| k.name() == kind) {
        true => name.to_owned(),
        false => format!("brokers.{name}"),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    fn load(text: &str) -> Config {
        Config::from_str(text, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_trigger_table_becomes_its_broker_and_routes_find_it() {
        let cfg = load(
            "[http]\nlisten = \"127.0.0.1:8081\"\n[[routes]]\nname = \"a\"\nsource = { http = \"/a\" }\nhandler = \"echo\"\n",
        );
        assert_eq!(cfg.brokers["http"].kind(), "http");
        assert_eq!(cfg.routes[0].source.broker, "http");
        assert_eq!(cfg.routes[0].source.address(), "/a");
        // Used without its table: the broker has its defaults.
        let cfg = load(
            "[[routes]]\nname = \"s\"\nsource = { schedule = \"@hourly\" }\nhandler = \"echo\"\n",
        );
        assert_eq!(cfg.brokers["schedule"].kind(), "schedule");
        // Not used: no broker.
        let cfg = load("[brokers.m]\nkind = \"memory\"\n");
        assert!(!cfg.brokers.contains_key("http"));
    }

    #[test]
    fn http_sources_scale_a_worker_per_waiting_request_unless_told() {
        let route = |workers: &str| {
            load(&format!(
                "[[routes]]\nname = \"a\"\nsource = {{ http = \"/a\" }}\nhandler = \"echo\"\n{workers}"
            ))
            .routes[0]
                .workers
                .target_backlog()
        };
        assert_eq!(route(""), 1);
        assert_eq!(route("workers = { target_backlog = 100 }\n"), 100);
        let queued = load("[brokers.m]\nkind = \"memory\"\n[[routes]]\nname = \"q\"\nsource = { broker = \"m\", queue = \"in\" }\nhandler = \"echo\"\ndead_letter = { broker = \"m\", queue = \"dlq\" }\nhttp = \"/q\"\n");
        assert_eq!(
            queued.routes[0].workers.target_backlog(),
            100,
            "a queue's default"
        );
    }
}
