//! `mqfn validate`: one test per class of config error, each checking that
//! the message names the file, the key path and the fix.

mod common;

use common::{cli, refused, validate, write_config};

const GOOD: &str = r#"
[brokers.js]
kind = "nats"
url = "nats://127.0.0.1:4222"

[[routes]]
name = "r"
source = { broker = "js", subject = "in", stream = "S" }
handler = "echo"
output = { broker = "js", subject = "out" }
dead_letter = { broker = "js", subject = "dlq" }
"#;

#[test]
fn a_good_config_passes() {
    let (ok, err, _) = validate(GOOD);
    assert!(ok, "{err}");
}

#[test]
fn shipped_configs_pass() {
    let dir = format!("{}/config", env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    for f in files {
        let path = f.display().to_string();
        let out = cli(&["validate", "--config", &path]);
        assert!(
            out.status.success(),
            "{path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn unknown_handler() {
    refused(
        &GOOD.replace("handler = \"echo\"", "handler = \"ecoh\""),
        "routes[0].handler",
        &["unknown handler \"ecoh\"", "known: echo"],
    );
}

#[test]
fn unknown_broker() {
    refused(
        &GOOD.replace("output = { broker = \"js\"", "output = { broker = \"jss\""),
        "routes[0].output.broker",
        &["unknown broker \"jss\"", "known: js"],
    );
}

#[test]
fn min_greater_than_max() {
    refused(
        &format!("{GOOD}workers = {{ min = 9, max = 4 }}\n"),
        "routes[0].workers.min",
        &["min (9) is greater than max (4)", "min <= max"],
    );
}

#[test]
fn kafka_topics_are_created_with_at_least_one_partition() {
    let text = r#"
[brokers.k]
kind = "kafka"
bootstrap = "127.0.0.1:9092"

[[routes]]
name = "r"
source = { broker = "k", topic = "in", create = { partitions = 0 } }
handler = "echo"
dead_letter = { broker = "k", topic = "dlq" }
"#;
    refused(
        text,
        "routes[0].source.create.partitions",
        &["must be at least 1"],
    );
}

#[test]
fn dead_letter_equal_to_source() {
    refused(
        &GOOD.replace("subject = \"dlq\"", "subject = \"in\""),
        "routes[0].dead_letter",
        &["is the route's own source", "loop forever"],
    );
}

#[test]
fn bad_duration() {
    refused(
        &format!("{GOOD}timeout = \"30 parsecs\"\n"),
        "routes[0].timeout",
        &["parsecs", "\"30s\""],
    );
}

#[test]
fn zero_worker_threads() {
    refused(
        &format!("worker_threads = 0\n{GOOD}"),
        "worker_threads",
        &["nonzero", "1 or more"],
    );
    let (ok, err, _) = validate(&format!("worker_threads = 3\n{GOOD}"));
    assert!(ok, "{err}");
}

#[test]
fn bad_url() {
    refused(
        &GOOD.replace("nats://127.0.0.1:4222", "http://127.0.0.1:4222"),
        "brokers.js.url",
        &["scheme \"http\" is not supported", "nats"],
    );
    refused(
        &GOOD.replace("nats://127.0.0.1:4222", "not a url"),
        "brokers.js.url",
        &["not a valid URL"],
    );
}

#[test]
fn unknown_key() {
    refused(
        &format!("{GOOD}retyr = {{ max_attempts = 3 }}\n"),
        "routes[0].retyr",
        &["unknown field `retyr`", "expected one of", "`retry`"],
    );
}

#[test]
fn missing_env_var_names_the_variable() {
    refused(
        &GOOD.replace("nats://127.0.0.1:4222", "${MQFN_TEST_SURELY_UNSET}"),
        "brokers.js.url",
        &["MQFN_TEST_SURELY_UNSET is not set"],
    );
}

#[test]
fn missing_dead_letter_on_at_least_once_source() {
    let text = GOOD.replace("dead_letter = { broker = \"js\", subject = \"dlq\" }\n", "");
    refused(
        &text,
        "routes[0].dead_letter",
        &["missing", "dead_letter = {"],
    );
}

#[test]
fn every_error_is_reported_not_just_the_first() {
    let text = GOOD
        .replace("handler = \"echo\"", "handler = \"nope\"")
        .replace("output = { broker = \"js\"", "output = { broker = \"x\"");
    let (ok, err, _) = validate(&text);
    assert!(!ok);
    assert!(
        err.contains("routes[0].handler") && err.contains("routes[0].output.broker"),
        "{err}"
    );
}

#[test]
fn syntax_errors_name_the_line() {
    let (ok, err, file) = validate("[brokers.js\nkind = 1");
    assert!(!ok);
    assert!(err.contains(&file) && err.contains("line 1"), "{err}");
}

#[test]
fn auth_and_tls_files_are_checked_at_load() {
    let text = GOOD.replace(
        "url = \"nats://127.0.0.1:4222\"",
        "url = \"tls://127.0.0.1:4222\"\ncredentials_file = \"/no/such.creds\"\ntls_cert_file = \"/no/cert.pem\"",
    );
    refused(
        &text,
        "brokers.js.credentials_file",
        &["cannot read \"/no/such.creds\""],
    );
    refused(&text, "brokers.js.tls_cert_file", &["go together"]);
}

#[test]
fn kafka_properties_are_checked_by_librdkafka() {
    let kafka = |props: &str| {
        format!(
            "[brokers.k]\nkind = \"kafka\"\nbootstrap = \"127.0.0.1:9092\"\n[brokers.k.properties]\n{props}\n"
        )
    };
    refused(
        &kafka("\"sesion.timeout.ms\" = \"6000\""),
        "brokers.k.properties",
        &["librdkafka refuses", "sesion.timeout.ms"],
    );
    // TLS and SASL (PLAIN, SCRAM) are built in.
    let (ok, err, _) = validate(&kafka(
        "\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\"sasl.username\" = \"u\"\n\"sasl.password\" = \"p\"",
    ));
    assert!(ok, "{err}");
}

#[test]
fn dedup_only_on_nats_outputs_and_dead_letters() {
    let ok = GOOD.replace(
        "output = { broker = \"js\", subject = \"out\" }",
        "output = { broker = \"js\", subject = \"out\", dedup = false }",
    );
    let (passed, err, _) = validate(&ok);
    assert!(passed, "{err}");
    refused(
        &GOOD.replace("stream = \"S\" }", "stream = \"S\", dedup = false }"),
        "routes[0].source.dedup",
        &["set it on output or dead_letter"],
    );
    let kafka = format!(
        "{}\n[brokers.k]\nkind = \"kafka\"\nbootstrap = \"127.0.0.1:9092\"\n",
        GOOD.replace(
            "output = { broker = \"js\", subject = \"out\" }",
            "output = { broker = \"k\", topic = \"out\", dedup = false }",
        )
    );
    refused(
        &kafka,
        "routes[0].output.dedup",
        &["unknown field `dedup`", "route \"r\"", "\"k\" is kafka"],
    );
}

/// Loads `text` in process; the error text when it is refused.
fn load(text: &str) -> Result<mqfn::config::Config, String> {
    mqfn::config::Config::from_str(text, std::path::Path::new("t.toml")).map_err(|e| e.to_string())
}

const BROKERS: &str = r#"
[brokers.js]
kind = "nats"
url = "nats://127.0.0.1:4222"
[brokers.k]
kind = "kafka"
bootstrap = "127.0.0.1:9092"
[brokers.mq]
kind = "amqp"
url = "amqp://guest:guest@127.0.0.1:5672/%2f"
"#;

#[test]
fn a_key_of_another_broker_kind_is_refused_with_the_route_and_the_kind() {
    for (source, key, kind) in [
        (
            r#"{ broker = "k", topic = "t", ack_wait = "5s" }"#,
            "ack_wait",
            "kafka",
        ),
        (
            r#"{ broker = "mq", queue = "q", max_deliver = 3 }"#,
            "max_deliver",
            "amqp",
        ),
        (
            r#"{ broker = "k", topic = "t", max_ack_pending = 9 }"#,
            "max_ack_pending",
            "kafka",
        ),
        (
            r#"{ broker = "js", subject = "s", stream = "S", auto_offset_reset = "latest" }"#,
            "auto_offset_reset",
            "nats",
        ),
        (
            r#"{ broker = "js", subject = "s", stream = "S", routing_key = "rk" }"#,
            "routing_key",
            "nats",
        ),
        (
            r#"{ broker = "mq", queue = "q", routing_key = "rk" }"#,
            "routing_key",
            "amqp",
        ),
    ] {
        let text = format!(
            "{BROKERS}\n[[routes]]\nname = \"orders\"\nsource = {source}\nhandler = \"echo\"\n\
             dead_letter = {{ broker = \"k\", topic = \"dlq\" }}\n"
        );
        let err = load(&text).expect_err(source);
        let line = err
            .lines()
            .find(|l| l.starts_with(&format!("t.toml: routes[0].source.{key}: ")))
            .unwrap_or_else(|| panic!("no error at routes[0].source.{key} in:\n{err}"));
        for needle in [
            format!("`{key}`"),
            "route \"orders\"".into(),
            format!("is {kind}"),
        ] {
            assert!(line.contains(&needle), "{needle} not in {line}");
        }
    }
}

#[test]
fn keys_of_jetstream_need_a_stream_and_the_other_side_is_named() {
    let route = |source: &str, output: &str| {
        format!(
            "{BROKERS}\n[[routes]]\nname = \"r\"\nsource = {source}\nhandler = \"echo\"\noutput = {output}\n"
        )
    };
    let err = load(&route(
        r#"{ broker = "js", subject = "s", durable = "d" }"#,
        r#"{ broker = "js", subject = "o" }"#,
    ))
    .unwrap_err();
    assert!(
        err.contains("routes[0].source.durable: durable applies to JetStream sources"),
        "{err}"
    );
    let err = load(&route(
        r#"{ broker = "js", subject = "s" }"#,
        r#"{ broker = "js", subject = "o", durable = "d" }"#,
    ))
    .unwrap_err();
    assert!(
        err.contains("routes[0].output.durable: unknown field `durable`"),
        "{err}"
    );
    assert!(
        err.contains("`durable` is a key of nats sources: set it on source"),
        "{err}"
    );
}

#[test]
fn every_broker_kind_and_endpoint_becomes_typed() {
    let text = format!(
        "{BROKERS}\n[brokers.mem]\nkind = \"memory\"\n\
         [[routes]]\nname = \"a\"\nsource = {{ broker = \"k\", subject = \"orders\" }}\nhandler = \"echo\"\n\
         output = {{ broker = \"mq\", exchange = \"x\", routing_key = \"rk\" }}\n\
         dead_letter = {{ broker = \"mem\", topic = \"dlq\" }}\n"
    );
    let cfg = load(&text).unwrap();
    let r = &cfg.routes[0];
    assert_eq!(cfg.brokers["mem"].kind(), "memory");
    assert_eq!(
        r.source.describe(),
        "k/orders",
        "subject is a synonym of topic"
    );
    assert_eq!(r.output.as_ref().unwrap().describe(), "mq/x/rk");
    assert_eq!(r.dead_letter.as_ref().unwrap().describe(), "mem/dlq");
    assert!(r
        .source
        .get::<mqfn::brokers::kafka::KafkaSource>()
        .is_some());
    let err = load("[brokers.x]\nkind = \"redis\"\n").unwrap_err();
    assert!(err.contains("brokers.x.kind: unknown broker kind \"redis\"; expected one of nats, kafka, amqp, memory"), "{err}");
}

/// Runs mqfn in `dir`, where no config file exists, with no `$MQFN_CONFIG`.
fn cli_without_config(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(common::BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("MQFN_CONFIG")
        .output()
        .expect("run mqfn")
}

/// `completions` reads no config: run where none exists, each script
/// parses in its own shell (installed by scripts/test.sh).
#[test]
fn completions_need_no_config_and_parse_in_their_shell() {
    let empty = tempfile::tempdir().unwrap();
    for (shell, check) in [
        ("bash", &["bash", "-n"][..]),
        ("zsh", &["zsh", "-n"][..]),
        ("fish", &["fish", "--no-execute"][..]),
    ] {
        let out = cli_without_config(empty.path(), &["completions", shell]);
        assert!(
            out.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let script = empty.path().join(format!("mqfn.{shell}"));
        std::fs::write(&script, &out.stdout).unwrap();
        let parsed = std::process::Command::new(check[0])
            .args(&check[1..])
            .arg(&script)
            .output()
            .unwrap_or_else(|e| panic!("{} (scripts/test.sh installs it): {e}", check[0]));
        assert!(
            parsed.status.success(),
            "{shell} rejects the script: {}",
            String::from_utf8_lossy(&parsed.stderr)
        );
    }
}

/// `man --dir` writes a page per command, each one that `man` renders.
#[test]
fn man_pages_render() {
    let dir = tempfile::tempdir().unwrap();
    let out = cli(&["man", "--dir", dir.path().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = dir.path().join("mqfn-dlq-redrive.1");
    let shown = std::process::Command::new("man")
        .arg("-l")
        .arg(&page)
        .env("MANWIDTH", "80")
        .output()
        .expect("man (man-db)");
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.status.success() && text.contains("redrive"), "{text}");
}

/// `mqfn asyncapi` of every shipped config is a valid AsyncAPI 3.0 document
/// to the official parser (tests/asyncapi, installed by scripts/test.sh),
/// names every channel the routes use, and carries no credentials.
#[test]
fn asyncapi_documents_of_the_shipped_configs_are_valid() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for name in ["nats", "kafka", "amqp", "compose", "memory", "examples"] {
        let config = format!("{root}/config/{name}.toml");
        let out = cli(&["asyncapi", "--config", &config]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            !text.contains("guest:guest"),
            "{name}: credentials in the document"
        );
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        let cfg: toml::Table = std::fs::read_to_string(&config).unwrap().parse().unwrap();
        let routes = cfg["routes"].as_array().unwrap();
        let ops = doc["operations"].as_object().unwrap();
        for r in routes {
            let route = r["name"].as_str().unwrap();
            assert!(
                ops.contains_key(&format!("{route}-receive")),
                "{name}: {route}"
            );
            assert_eq!(
                ops.contains_key(&format!("{route}-dead-letter")),
                r.get("dead_letter").is_some(),
                "{name}: {route}"
            );
        }
        let path = dir.path().join(format!("{name}.json"));
        std::fs::write(&path, &text).unwrap();
        files.push(path);
    }
    let checked = std::process::Command::new("node")
        .arg(format!("{root}/tests/asyncapi/validate.mjs"))
        .args(&files)
        .output()
        .expect("node");
    assert!(
        checked.status.success(),
        "the AsyncAPI parser refuses a document (scripts/test.sh installs it in tests/asyncapi):\n{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}

/// `mqfn test`: the shipped cases pass, and a case that does not match
/// fails the command with a diff naming the case and the difference.
#[test]
fn mqfn_test_passes_the_shipped_cases_and_diffs_a_mismatch() {
    let root = env!("CARGO_MANIFEST_DIR");
    let shipped = cli(&[
        "test",
        &format!("{root}/handlers/examples/tests/memory.test.toml"),
    ]);
    let report = String::from_utf8_lossy(&shipped.stdout);
    assert!(
        shipped.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&shipped.stderr)
    );
    assert!(report.contains("4 passed, 0 failed"), "{report}");

    let (_dir, path) = write_config(&format!(
        r#"
config = "{root}/config/memory.toml"

[[case]]
name = "wrong expectation"
route = "tag"
json = {{ id = 7 }}
expect.outputs = [{{ json = {{ id = 7, tagged = false }} }}]

[[case]]
name = "right one"
route = "tag"
json = {{ id = 8 }}
expect.outputs = [{{ json = {{ id = 8, tagged = true }} }}]
"#
    ));
    let out = cli(&["test", path.to_str().unwrap()]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "a mismatch must fail: {report}");
    assert!(report.contains("FAIL  tag: wrong expectation"), "{report}");
    assert!(
        report.contains(r#"- expected {"id":7,"tagged":false}"#),
        "{report}"
    );
    assert!(
        report.contains(r#"+ got      {"id":7,"tagged":true}"#),
        "{report}"
    );
    assert!(report.contains("ok    tag: right one"), "{report}");
    assert!(report.contains("1 passed, 1 failed"), "{report}");
}

/// `mqfn schema`: docs/config.schema.json is what it prints now, it is a
/// valid JSON Schema, every shipped config passes it, and what `mqfn
/// validate` refuses for shape (an unknown key, a bad duration) it refuses
/// too. Checked with check-jsonschema (scripts/test.sh installs it).
#[test]
fn the_config_schema_is_current_and_fits_the_configs() {
    let root = env!("CARGO_MANIFEST_DIR");
    let empty = tempfile::tempdir().unwrap();
    let out = cli_without_config(empty.path(), &["schema"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shipped = std::fs::read(format!("{root}/docs/config.schema.json")).unwrap();
    assert!(
        out.stdout == shipped,
        "docs/config.schema.json is stale: run `mqfn schema > docs/config.schema.json`"
    );
    let check = |args: &[&str]| {
        std::process::Command::new("check-jsonschema")
            .args(args)
            .output()
            .expect("check-jsonschema (pip install check-jsonschema; scripts/test.sh does)")
    };
    let schema = format!("{root}/docs/config.schema.json");
    let meta = check(&["--check-metaschema", &schema]);
    assert!(
        meta.status.success(),
        "{}",
        String::from_utf8_lossy(&meta.stdout)
    );
    let mut configs: Vec<String> = std::fs::read_dir(format!("{root}/config"))
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .filter(|p| p.ends_with(".toml"))
        .collect();
    configs.sort();
    let mut args = vec!["--schemafile", schema.as_str()];
    args.extend(configs.iter().map(String::as_str));
    let ok = check(&args);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );

    let (_dir, bad) = write_config(&format!(
        "{}\n[[routes]]\nname = \"r\"\nsource = {{ broker = \"js\", subject = \"in\", nope = 1 }}\nhandler = \"echo\"\ntimeout = \"soon\"\n",
        GOOD.split("[[routes]]").next().unwrap()
    ));
    let refused = check(&["--schemafile", &schema, bad.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&refused.stdout);
    assert!(!refused.status.success(), "{text}");
    assert!(text.contains("'nope' was unexpected"), "{text}");
    assert!(text.contains("$.routes[0].timeout"), "{text}");
}
