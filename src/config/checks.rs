//! Small checks that broker kinds and handler kinds share. Each returns
//! the message of the problem, for the caller to put at its key.

/// Checks that `raw` is a URL with one of `schemes` and a host.
pub fn url(raw: &str, schemes: &[&str]) -> Option<String> {
    match url::Url::parse(raw) {
        Ok(u) if schemes.contains(&u.scheme()) && u.host_str().is_some() => None,
        Ok(u) if !schemes.contains(&u.scheme()) => Some(format!(
            "scheme {:?} is not supported here; expected one of {}",
            u.scheme(),
            schemes.join(", ")
        )),
        _ => Some(format!(
            "{:?} is not a valid URL; expected e.g. \"{}://host:port\"",
            crate::telemetry::redact_url(raw),
            schemes[0]
        )),
    }
}

/// Checks that a configured file can be read.
pub fn readable(path: &str) -> Option<String> {
    std::fs::File::open(path).err().map(|e| {
        format!("cannot read {path:?}: {e}; check the path (relative paths start at the working directory)")
    })
}

/// Checks that `raw` is a comma-separated list of `host:port`.
pub fn host_ports(raw: &str) -> Option<String> {
    raw.split(',').map(str::trim).find_map(|hp| {
        let ok = hp
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        (!ok).then(|| format!("{hp:?} is not host:port; expected e.g. \"127.0.0.1:9092\""))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_need_a_known_scheme_and_a_host() {
        assert_eq!(url("nats://h:4222", &["nats"]), None);
        assert!(url("ftp://h/", &["http"])
            .unwrap()
            .contains("scheme \"ftp\""));
        let e = url("amqp://u:secret@", &["amqp"]).unwrap();
        assert!(
            e.contains("not a valid URL") && !e.contains("secret"),
            "{e}"
        );
    }

    #[test]
    fn host_ports_are_checked_one_by_one() {
        assert_eq!(host_ports("a:1, b:2"), None);
        assert!(host_ports("a:1,b").unwrap().contains("\"b\""));
    }
}
