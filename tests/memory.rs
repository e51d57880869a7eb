//! The memory broker from the command line: `mqfn invoke` runs a route
//! whose source is in-process, so config/memory.toml works with no broker
//! at all.

mod common;

use common::cli;

fn invoke(route: &str, payload: &str) -> (bool, String, String) {
    let config = format!("{}/config/memory.toml", env!("CARGO_MANIFEST_DIR"));
    let out = cli(&["invoke", "--config", &config, route, payload]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn invoke_runs_an_in_process_route_and_prints_its_result() {
    let (ok, out, err) = invoke("tag", r#"{"id": 7}"#);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), r#"{"id":7,"tagged":true}"#);
}

#[test]
fn invoke_reports_an_in_process_dead_letter_with_the_reason() {
    let (ok, out, err) = invoke("tag", "not json");
    assert!(!ok);
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("dead-lettered after 1 attempt(s): payload is not valid JSON"),
        "{err}"
    );
}
