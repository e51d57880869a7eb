//! `${VAR}` and `${VAR:-default}` expansion in every string of the config.
//!
//! Written here rather than taken from a shell-expansion crate on purpose:
//! those also expand bare `$VAR`, which would corrupt passwords and
//! regular expressions that contain `$`. Only the braced form expands; `$${`
//! is a literal `${`.

/// Expands every string in `value` in place. On a failure, returns the key
/// path and the message.
pub fn expand(
    value: &mut toml::Value,
    lookup: &mut dyn FnMut(&str) -> Option<String>,
) -> Result<(), (String, String)> {
    walk(value, String::new(), lookup)
}

fn walk(
    value: &mut toml::Value,
    path: String,
    lookup: &mut dyn FnMut(&str) -> Option<String>,
) -> Result<(), (String, String)> {
    match value {
        toml::Value::String(s) => {
            *s = expand_str(s, lookup).map_err(|m| (path, m))?;
        }
        toml::Value::Array(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                walk(v, format!("{path}[{i}]"), lookup)?;
            }
        }
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                walk(v, p, lookup)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Expands one string.
pub fn expand_str(
    s: &str,
    lookup: &mut dyn FnMut(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix("${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').ok_or_else(|| {
                format!("unclosed `${{` in {s:?}: write `${{VAR}}`, or `$${{` for a literal")
            })?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "`${{{expr}}}` is not a variable reference: names are letters, digits and _"
                ));
            }
            match (lookup(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set: set it, or write \
                         `${{{name}:-default}}`"
                    ))
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "HOST").then(|| "nats.local".to_owned())
    }

    #[test]
    fn expands_braced_variables_with_defaults() {
        let got = expand_str("nats://${HOST}:${PORT:-4222}", &mut env).unwrap();
        assert_eq!(got, "nats://nats.local:4222");
    }

    #[test]
    fn leaves_bare_dollars_and_escapes_alone() {
        assert_eq!(
            expand_str("pa$s $${HOST}", &mut env).unwrap(),
            "pa$s ${HOST}"
        );
    }

    #[test]
    fn missing_variable_names_it_and_the_fix() {
        let err = expand_str("${NOPE}", &mut env).unwrap_err();
        assert!(err.contains("NOPE is not set"), "{err}");
        assert!(err.contains(":-default"), "{err}");
    }

    #[test]
    fn reports_the_key_path() {
        let mut v: toml::Value = toml::from_str("[brokers.a]\nurl = \"${NOPE}\"").unwrap();
        let (path, _) = expand(&mut v, &mut env).unwrap_err();
        assert_eq!(path, "brokers.a.url");
    }
}
