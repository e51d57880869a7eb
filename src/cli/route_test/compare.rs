//! What came of a case's input against what it expects: one readable
//! difference per mismatch.

use super::suite::Expect;
use crate::message::Message;

/// What came of one input.
pub(super) struct Got {
    pub(super) outputs: Vec<Message>,
    pub(super) dead_letters: Vec<Message>,
}

/// The differences between what a case expects and what it got, one per
/// entry; empty when they match.
pub(super) fn compare(expect: &Expect, got: &Got) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(d) = &expect.dead_letter {
        match (got.dead_letters.as_slice(), got.outputs.len()) {
            ([m], 0) => {
                let h = |n: &str| m.headers.get(n).unwrap_or("").to_owned();
                if let Some(class) = &d.error_class {
                    if h("mqfn-error-class") != *class {
                        out.push(format!(
                            "mqfn-error-class: expected {class:?}, got {:?} (mqfn-error: {})",
                            h("mqfn-error-class"),
                            h("mqfn-error")
                        ));
                    }
                }
                if let Some(text) = &d.error {
                    if !h("mqfn-error").contains(text.as_str()) {
                        out.push(format!(
                            "mqfn-error: expected it to contain {text:?}, got {:?}",
                            h("mqfn-error")
                        ));
                    }
                }
                if let Some(n) = d.attempts {
                    if h("mqfn-attempts") != n.to_string() {
                        out.push(format!(
                            "mqfn-attempts: expected {n}, got {:?}",
                            h("mqfn-attempts")
                        ));
                    }
                }
            }
            _ => out.push(format!(
                "expected a dead letter and no output, got {}",
                summary(got)
            )),
        }
        return out;
    }
    let expected = expect.outputs.as_deref().unwrap_or_default();
    if let Some(m) = got.dead_letters.first() {
        out.push(format!(
            "expected {} output(s), got a dead letter: {} ({})",
            expected.len(),
            m.headers.get("mqfn-error").unwrap_or(""),
            m.headers.get("mqfn-error-class").unwrap_or("")
        ));
        return out;
    }
    if got.outputs.len() != expected.len() {
        out.push(format!(
            "expected {} output(s), got {}",
            expected.len(),
            summary(got)
        ));
    }
    for (i, (e, m)) in expected.iter().zip(&got.outputs).enumerate() {
        let text = String::from_utf8_lossy(&m.payload);
        if let Some(p) = &e.payload {
            if *p != text {
                out.push(format!(
                    "output[{i}] payload:\n- expected {p:?}\n+ got      {text:?}"
                ));
            }
        }
        if let Some(j) = &e.json {
            let want = serde_json::to_value(j).expect("TOML is JSON");
            match serde_json::from_slice::<serde_json::Value>(&m.payload) {
                Ok(v) if v == want => {}
                Ok(v) => out.push(format!(
                    "output[{i}] json:\n- expected {want}\n+ got      {v}"
                )),
                Err(e) => out.push(format!(
                    "output[{i}] json: the payload is not JSON ({e}): {text:?}"
                )),
            }
        }
        for (k, v) in &e.headers {
            if m.headers.get(k) != Some(v.as_str()) {
                out.push(format!(
                    "output[{i}] header {k}: expected {v:?}, got {:?}",
                    m.headers.get(k)
                ));
            }
        }
        if let Some(k) = &e.key {
            let got_key = m
                .key
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned());
            if got_key.as_deref() != Some(k.as_str()) {
                out.push(format!("output[{i}] key: expected {k:?}, got {got_key:?}"));
            }
        }
    }
    out
}

/// "2 output(s): "a", "b"" or "a dead letter: why".
fn summary(got: &Got) -> String {
    let outputs: Vec<String> = got
        .outputs
        .iter()
        .map(|m| format!("{:?}", String::from_utf8_lossy(&m.payload)))
        .collect();
    let mut s = format!("{} output(s)", outputs.len());
    if !outputs.is_empty() {
        s.push_str(": ");
        s.push_str(&outputs.join(", "));
    }
    if let Some(m) = got.dead_letters.first() {
        s.push_str(&format!(
            " and a dead letter: {}",
            m.headers.get("mqfn-error").unwrap_or("")
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn got(outputs: &[&str], dead: Option<(&str, &str)>) -> Got {
        Got {
            outputs: outputs
                .iter()
                .map(|p| Message::new(p.to_string()))
                .collect(),
            dead_letters: dead
                .map(|(class, error)| {
                    let mut m = Message::new("in");
                    m.headers.set("mqfn-error-class", class);
                    m.headers.set("mqfn-error", error);
                    m.headers.set("mqfn-attempts", "3");
                    vec![m]
                })
                .unwrap_or_default(),
        }
    }

    fn expect(text: &str) -> Expect {
        toml::from_str(text).expect("an expect table")
    }

    #[test]
    fn json_outputs_compare_as_values() {
        let e = expect("outputs = [{ json = { b = 2, a = 1 } }]");
        assert!(compare(&e, &got(&[r#"{"a":1,"b":2}"#], None)).is_empty());
        let diff = compare(&e, &got(&[r#"{"a":1}"#], None));
        assert_eq!(diff.len(), 1, "{diff:?}");
        assert!(
            diff[0].contains("expected") && diff[0].contains(r#"{"a":1}"#),
            "{diff:?}"
        );
    }

    #[test]
    fn counts_payloads_and_dead_letters_are_checked() {
        let two = expect(r#"outputs = [{ payload = "x" }, { payload = "y" }]"#);
        assert!(compare(&two, &got(&["x", "y"], None)).is_empty());
        assert!(!compare(&two, &got(&["x"], None)).is_empty(), "one missing");
        assert!(
            !compare(&two, &got(&["x", "z"], None)).is_empty(),
            "one differs"
        );
        let none = expect("outputs = []");
        assert!(compare(&none, &got(&[], None)).is_empty());
        let diff = compare(&none, &got(&[], Some(("permanent", "bad"))));
        assert!(diff[0].contains("got a dead letter: bad"), "{diff:?}");

        let dl =
            expect(r#"dead_letter = { error_class = "permanent", error = "ba", attempts = 3 }"#);
        assert!(compare(&dl, &got(&[], Some(("permanent", "bad")))).is_empty());
        assert_eq!(compare(&dl, &got(&[], Some(("timeout", "bad")))).len(), 1);
        assert!(compare(&dl, &got(&["x"], None))[0].contains("expected a dead letter"));
    }
}
