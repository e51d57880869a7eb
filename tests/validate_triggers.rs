//! `mqfn validate` on triggers: each mistake refused with the file, the
//! key path and the fix.

mod common;

use common::{refused, validate};

const JS: &str = r#"
[brokers.js]
kind = "nats"
url = "nats://127.0.0.1:4222"
"#;

fn with_routes(routes: &str) -> String {
    format!("{JS}\n{routes}")
}

#[test]
fn http_routes_pass_and_need_no_dead_letter() {
    let (ok, err, _) = validate(&with_routes(
        r#"
[http]
listen = "127.0.0.1:8081"

[[routes]]
name = "api"
source = { http = "/orders" }
handler = "echo"

[[routes]]
name = "queued"
source = { broker = "js", subject = "in", stream = "S" }
handler = "echo"
dead_letter = { broker = "js", subject = "dlq" }
http = { path = "/queued", mode = "async" }
"#,
    ));
    assert!(ok, "{err}");
}

#[test]
fn paths_are_checked_and_taken_once() {
    refused(
        &with_routes(
            "[[routes]]\nname = \"a\"\nsource = { http = \"orders\" }\nhandler = \"echo\"\n",
        ),
        "routes[0].source.http",
        &["not a path", "\"/orders\""],
    );
    refused(
        &with_routes(
            r#"
[[routes]]
name = "a"
source = { http = "/x" }
handler = "echo"

[[routes]]
name = "b"
source = { broker = "js", subject = "in" }
handler = "echo"
http = "/x"
"#,
        ),
        "routes[1].http",
        &["http//x", "taken by route \"a\""],
    );
}

#[test]
fn async_mode_needs_a_broker_source_and_one_http_trigger_per_route() {
    refused(
        &with_routes(
            "[[routes]]\nname = \"a\"\nsource = { http = \"/x\", mode = \"async\" }\nhandler = \"echo\"\n",
        ),
        "routes[0].source.mode",
        &["broker source", "http = { path"],
    );
    refused(
        &with_routes(
            "[[routes]]\nname = \"a\"\nsource = { http = \"/x\" }\nhandler = \"echo\"\nhttp = \"/y\"\n",
        ),
        "routes[0].http",
        &["already the http trigger", "remove this key"],
    );
}

#[test]
fn secrets_come_from_set_environment_variables() {
    refused(
        &with_routes(
            "[[routes]]\nname = \"a\"\nsource = { http = \"/x\", auth = { bearer_env = \"MQFN_UNSET_TOKEN_VAR\" } }\nhandler = \"echo\"\n",
        ),
        "routes[0].source.auth.bearer_env",
        &["MQFN_UNSET_TOKEN_VAR", "not set", "export"],
    );
    refused(
        &with_routes(
            "[[routes]]\nname = \"a\"\nsource = { http = \"/x\", auth = { } }\nhandler = \"echo\"\n",
        ),
        "routes[0].source.auth",
        &["bearer_env", "hmac_env"],
    );
}

#[test]
fn the_trigger_table_and_its_broker_name_are_checked() {
    refused(
        &with_routes("[http]\nlisten = \"localhost\"\n"),
        "http.listen",
        &["not an address", "127.0.0.1:8080"],
    );
    refused(
        &format!(
            "{JS}\n[brokers.http]\nkind = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\n\n[[routes]]\nname = \"a\"\nsource = {{ http = \"/x\" }}\nhandler = \"echo\"\n"
        ),
        "brokers.http",
        &["belongs to the http trigger", "rename this broker"],
    );
    refused(
        &with_routes(
            "[[routes]]\nname = \"a\"\nsource = { broker = \"js\", subject = \"in\" }\nhandler = \"echo\"\noutput = { broker = \"http\", http = \"/x\" }\n[http]\n",
        ),
        "routes[0].output",
        &["source only", "broker"],
    );
    refused(
        &with_routes("[[routes]]\nname = \"a\"\nsource = { path = \"/x\" }\nhandler = \"echo\"\n"),
        "routes[0].source",
        &["missing field `broker`", "`http`"],
    );
}

#[test]
fn schedules_are_checked_with_the_fix() {
    let route = |source: &str| {
        with_routes(&format!(
            "[[routes]]\nname = \"a\"\nsource = {source}\nhandler = \"echo\"\n"
        ))
    };
    refused(
        &route("{ schedule = \"every five minutes\" }"),
        "routes[0].source.schedule",
        &["not a cron expression", "*/5 * * * *", "@every 30s"],
    );
    refused(
        &route("{ schedule = \"0 9 * * *\", timezone = \"Paris\" }"),
        "routes[0].source.timezone",
        &["unknown time zone", "Europe/Paris"],
    );
    refused(
        &route("{ schedule = \"@hourly\", catch_up = \"last\" }"),
        "routes[0].source.catch_up",
        &["state_dir"],
    );
    refused(
        &route("{ schedule = \"@hourly\", via = { broker = \"nope\", subject = \"t\" } }"),
        "routes[0].source.via.broker",
        &["unknown broker \"nope\""],
    );
    refused(
        &route("{ schedule = \"@hourly\", via = { broker = \"js\", subject = \"t\", stream = \"T\" } }"),
        "routes[0].dead_letter",
        &["missing"],
    );
    let (ok, err, _) = validate(&route(
        "{ schedule = \"*/5 * * * *\", timezone = \"Europe/Paris\", payload = \"go\" }",
    ));
    assert!(ok, "{err}");
}
