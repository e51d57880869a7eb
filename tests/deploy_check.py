"""Static checks of the deployment files: docker-compose.yml, the Dockerfile,
config/compose.toml, deploy/prometheus, deploy/grafana and deploy/k8s.

No Docker engine or cluster is needed: every file is parsed and cross-checked
(service names, ports, mounts, metric names, KEDA targets, ConfigMap keys).

    python3 -m unittest tests/deploy_check.py -v

Needs Python 3.11+ (tomllib), PyYAML (`pip install pyyaml`) and, for the
alert rules, promtool (Debian's `prometheus`; scripts/test.sh installs both).
"""

import json
import re
import shlex
import shutil
import subprocess
import tempfile
import unittest
from pathlib import Path
from urllib.parse import urlsplit

try:
    import yaml
except ImportError:  # reported as a failure by every test, see DeployTestCase.setUp
    yaml = None

try:
    import tomllib
except ImportError:  # Python < 3.11
    try:
        import tomli as tomllib
    except ImportError:
        tomllib = None

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE_TOML = ROOT / "config" / "compose.toml"
PROMETHEUS_YML = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERTS_YML = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST_YML = ROOT / "deploy" / "prometheus" / "alerts.test.yml"
OPERATIONS_MD = ROOT / "docs" / "operations.md"
METRICS_MD = ROOT / "docs" / "metrics.md"
GRAFANA_DIR = ROOT / "deploy" / "grafana"
DASHBOARD_JSON = GRAFANA_DIR / "dashboards" / "mqfn.json"
GRAFANA_DS = GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml"
GRAFANA_DASH_PROVIDER = GRAFANA_DIR / "provisioning" / "dashboards" / "mqfn.yml"
K8S_DIR = ROOT / "deploy" / "k8s"

EXPECTED_SERVICES = ["nats", "kafka", "rabbitmq", "mqfn", "prometheus", "grafana", "demo", "minio", "minio-setup"]

# Metric catalogue: name -> labels.
METRICS = {
    "mqfn_messages_received_total": {"route"},
    "mqfn_messages_settled_total": {"route", "outcome"},
    "mqfn_handler_invocations_total": {"handler", "result"},
    "mqfn_handler_duration_seconds": {"handler"},  # histogram
    "mqfn_retries_total": {"route"},
    "mqfn_dead_letters_total": {"route"},
    "mqfn_backlog_messages": {"route"},
    "mqfn_oldest_inflight_age_seconds": {"route"},
    "mqfn_workers": {"route", "state"},
    "mqfn_workers_desired": {"route"},
    "mqfn_instances": {"handler", "state"},
    "mqfn_cold_starts_total": {"handler"},
    "mqfn_handler_billed_seconds_total": {"handler"},
    "mqfn_publish_errors_total": {"broker"},
    "mqfn_broker_up": {"broker"},
}
HISTOGRAMS = {"mqfn_handler_duration_seconds"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
BUILTIN_HANDLERS = {"echo", "json-transform", "fail"}

API_VERSIONS = {
    "ConfigMap": "v1",
    "Secret": "v1",
    "Service": "v1",
    "Deployment": "apps/v1",
    "ScaledObject": "keda.sh/v1alpha1",
    "TriggerAuthentication": "keda.sh/v1alpha1",
    "PodDisruptionBudget": "policy/v1",
    "ServiceMonitor": "monitoring.coreos.com/v1",
    "PrometheusRule": "monitoring.coreos.com/v1",
}
KEDA_OVERLAYS = {
    "keda-nats-jetstream": "nats-jetstream",
    "keda-kafka": "kafka",
    "keda-rabbitmq": "rabbitmq",
    "keda-prometheus": "prometheus",
}
OVERLAYS = ["plain", *KEDA_OVERLAYS, "servicemonitor"]

ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


# --------------------------------------------------------------------- helpers


def expand_defaults(value):
    """`${VAR:-default}` / `${VAR-default}` -> default, `${VAR}` -> ''."""
    return ENV_REF.sub(lambda m: m.group(2) or "", value)


def load_yaml(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def load_yaml_all(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def load_toml_text(text):
    return tomllib.loads(text)


def load_toml(path):
    with open(path, "rb") as f:
        return tomllib.load(f)


def as_argv(command):
    """A compose command/entrypoint/healthcheck (list or string) as argv."""
    if command is None:
        return []
    if isinstance(command, str):
        return shlex.split(command)
    return [str(c) for c in command]


def flag_value(argv, flag):
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def parse_duration(text):
    """'30s', '200ms', '1m', '1m30s' -> seconds (float)."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        raise ValueError(f"bad duration {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


def container_port(spec):
    """Container side of a compose `ports` entry (short or long syntax)."""
    if isinstance(spec, dict):
        return int(spec["target"])
    spec = str(spec).split("/")[0]  # drop /tcp
    return int(spec.rsplit(":", 1)[-1])


def host_port(spec):
    """Host side of a `ports` entry, with `${VAR:-default}` at its default."""
    if isinstance(spec, dict):
        return int(expand_defaults(str(spec["published"]))) if "published" in spec else None
    parts = expand_defaults(str(spec)).split("/")[0].split(":")
    return int(parts[-2]) if len(parts) >= 2 else None


def listener_ports(listeners):
    """'PLAINTEXT://:9092,CONTROLLER://:9093' -> {'PLAINTEXT': ('', 9092), ...}
    (`${VAR:-default}` at its default)."""
    out = {}
    for item in expand_defaults(str(listeners)).split(","):
        name, _, addr = item.strip().partition("://")
        host, _, port = addr.rpartition(":")
        out[name] = (host, int(port))
    return out


def env_dict(environment):
    if environment is None:
        return {}
    if isinstance(environment, dict):
        return {str(k): "" if v is None else str(v) for k, v in environment.items()}
    out = {}
    for item in environment:
        k, _, v = str(item).partition("=")
        out[k] = v
    return out


def service_listen_ports(service):
    """Container ports a compose service listens on: `ports` (container side),
    `expose`, and for Kafka the ports of KAFKA_LISTENERS."""
    ports = {container_port(p) for p in service.get("ports", [])}
    ports |= {int(str(p).split("/")[0]) for p in service.get("expose", [])}
    env = env_dict(service.get("environment"))
    if "KAFKA_LISTENERS" in env:
        ports |= {port for _, port in listener_ports(env["KAFKA_LISTENERS"]).values()}
    return ports


def nats_subject_matches(pattern, subject):
    p, s = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


def metric_names(expr):
    return set(re.findall(r"\bmqfn_[a-z_]+", expr))


def known_metric(name):
    if name in METRICS:
        return True
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in HISTOGRAMS:
            return True
    return False


def base_metric(name):
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in HISTOGRAMS:
            return name[: -len(suffix)]
    return name


def iter_panels(panels):
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def route_source_key(source):
    """What a route consumes: ('subject'|'topic'|'queue', value)."""
    for key in ("subject", "topic", "queue"):
        if key in source:
            return key, source[key]
    raise AssertionError(f"route source without subject/topic/queue: {source}")


class DeployTestCase(unittest.TestCase):
    def setUp(self):
        if yaml is None:
            self.fail("PyYAML is not installed: run `pip install pyyaml` (python3 -m pip install pyyaml)")
        if tomllib is None:
            self.fail("tomllib needs Python 3.11+ (or `pip install tomli`)")

    # shared, lazily loaded
    @property
    def compose(self):
        return load_yaml(COMPOSE_FILE)

    @property
    def services(self):
        return self.compose["services"]

    @property
    def config(self):
        return load_toml(COMPOSE_TOML)

    def mqfn_argv(self):
        """argv of the compose mqfn service: its `command`, else the Dockerfile CMD."""
        svc = self.services["mqfn"]
        if "command" in svc:
            return as_argv(svc["command"])
        return dockerfile_instruction_json(DOCKERFILE.read_text(), "CMD")

    def admin_port(self):
        admin = flag_value(self.mqfn_argv(), "--admin")
        self.assertIsNotNone(admin, "mqfn service runs without --admin HOST:PORT")
        return int(admin.rsplit(":", 1)[1])


def dockerfile_lines(text):
    """Dockerfile logical lines (continuations joined, comments dropped)."""
    lines, cur = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") and not cur:
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            cur += stripped[:-1] + " "
            continue
        cur += stripped
        if cur.strip():
            lines.append(cur.strip())
        cur = ""
    if cur.strip():
        lines.append(cur.strip())
    return lines


def dockerfile_instruction_json(text, instruction):
    """Last exec-form (JSON) value of CMD/ENTRYPOINT in the final stage."""
    value = None
    for line in dockerfile_lines(text):
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            value = None
        elif word.upper() == instruction:
            value = json.loads(rest)
    return value


# --------------------------------------------------------------------- compose


class ComposeTest(DeployTestCase):
    def test_services_exist(self):
        missing = [s for s in EXPECTED_SERVICES if s not in self.services]
        self.assertEqual(missing, [], "services missing from docker-compose.yml")

    def test_images(self):
        s = self.services
        self.assertEqual(s["nats"]["image"], "nats:2.10-alpine")
        self.assertEqual(s["kafka"]["image"], "apache/kafka:3.9.0")
        self.assertEqual(s["rabbitmq"]["image"], "rabbitmq:3.13-management")
        self.assertEqual(s["prometheus"]["image"], "prom/prometheus:v2.53.0")
        self.assertEqual(s["grafana"]["image"], "grafana/grafana:11.1.0")
        for name in ("mqfn", "demo"):
            build = s[name].get("build")
            context = build if isinstance(build, str) else (build or {}).get("context")
            self.assertEqual(context, ".", f"{name} must be built from the repo root")

    def test_depends_on_healthy_services_have_healthchecks(self):
        checked = 0
        for name, svc in self.services.items():
            deps = svc.get("depends_on", {})
            if isinstance(deps, list):
                deps = {d: {"condition": "service_started"} for d in deps}
            for dep, spec in deps.items():
                self.assertIn(dep, self.services, f"{name} depends on unknown service {dep}")
                if (spec or {}).get("condition") == "service_healthy":
                    hc = self.services[dep].get("healthcheck")
                    self.assertTrue(hc and hc.get("test") and not hc.get("disable"),
                                    f"{name} waits for {dep} to be healthy, but {dep} has no healthcheck")
                    checked += 1
        self.assertGreater(checked, 0)

    def test_required_dependencies(self):
        def healthy_deps(name):
            deps = self.services[name].get("depends_on", {})
            return {d for d, spec in deps.items() if (spec or {}).get("condition") == "service_healthy"}

        self.assertEqual(healthy_deps("mqfn"), {"nats", "kafka", "rabbitmq"})
        self.assertIn("mqfn", healthy_deps("demo"))
        self.assertIn("prometheus", self.services["grafana"].get("depends_on", {}))

    def test_healthcheck_commands(self):
        s = self.services
        nats = " ".join(as_argv(s["nats"]["healthcheck"]["test"]))
        self.assertRegex(nats, r"wget -qO- http://(localhost|127\.0\.0\.1):8222/healthz")
        self.assertIn("8222", " ".join(as_argv(s["nats"]["command"])))
        kafka = as_argv(s["kafka"]["healthcheck"]["test"])
        self.assertIn("/opt/kafka/bin/kafka-broker-api-versions.sh", kafka)
        # `ping` passes before the AMQP listener is up.
        self.assertIn("rabbitmq-diagnostics -q check_port_connectivity",
                      " ".join(as_argv(s["rabbitmq"]["healthcheck"]["test"])))
        mqfn = " ".join(as_argv(s["mqfn"]["healthcheck"]["test"]))
        self.assertRegex(mqfn, rf"curl -fsS .*http://127\.0\.0\.1:{self.admin_port()}/readyz")
        self.assertIn("curl", DOCKERFILE.read_text(), "runtime image must install curl for the healthcheck")

    def test_healthchecks_are_cheap_after_start(self):
        """Checks that start a JVM or an Erlang VM run once a minute at most
        once started; every check polls fast while starting."""
        heavy = ("kafka-broker-api-versions.sh", "rabbitmq-diagnostics")
        for name, svc in self.services.items():
            hc = svc.get("healthcheck")
            if not hc:
                continue
            interval = parse_duration(hc["interval"])
            self.assertIn("start_interval", hc, f"{name}: no start_interval (slow to turn healthy)")
            self.assertLessEqual(parse_duration(hc["start_interval"]), 2, name)
            if any(h in " ".join(as_argv(hc["test"])) for h in heavy):
                self.assertGreaterEqual(interval, 60, f"{name}: a VM-starting healthcheck every {interval}s")
            else:
                self.assertGreaterEqual(interval, 15, f"{name}: healthcheck every {interval}s")

    def test_logs_are_rotated(self):
        for name, svc in self.services.items():
            logging = svc.get("logging") or {}
            opts = logging.get("options", {})
            self.assertEqual(logging.get("driver"), "json-file", f"{name}: no rotated log driver")
            self.assertIn("max-size", opts, name)
            self.assertIn("max-file", opts, name)

    def test_processes_that_spawn_run_under_an_init(self):
        for name in ("mqfn", "demo"):
            self.assertIs(self.services[name].get("init"), True, f"{name}: init: true")

    def test_demo_stops_at_once_on_sigterm(self):
        demo = self.services["demo"]
        script = "\n".join(as_argv(demo.get("command")))
        self.assertRegex(script, r"trap '[^']*exit 0' TERM")
        # A foreground sleep would hold the trap until it ends.
        self.assertRegex(script, r"sleep \d+ &\s*\n\s*wait \$\$!")
        self.assertLessEqual(parse_duration(demo.get("stop_grace_period", "10s")), 10)

    def test_every_host_port_can_be_moved(self):
        for name, svc in self.services.items():
            for p in svc.get("ports", []):
                text = str(p)
                self.assertTrue(text.startswith("127.0.0.1:"), f"{name}: {text} not bound to 127.0.0.1")
                self.assertRegex(text, r"^127\.0\.0\.1:\$\{[A-Z_]+_PORT:-\d+\}:\d+$",
                                 f"{name}: host port of {text} has no env var")
        header = COMPOSE_FILE.read_text().split("\nx-logging", 1)[0]
        for var in set(re.findall(r"\$\{([A-Z_]+_PORT):-", COMPOSE_FILE.read_text())):
            self.assertIn(var, header, f"{var} is not listed in the compose file's header")

    def test_kafka_keeps_what_fits_on_a_laptop(self):
        env = env_dict(self.services["kafka"]["environment"])
        self.assertLessEqual(int(env["KAFKA_LOG_RETENTION_MS"]), 24 * 3600 * 1000)
        self.assertLessEqual(int(env["KAFKA_LOG_RETENTION_BYTES"]), 256 * 2**20)
        self.assertLessEqual(int(env["KAFKA_LOG_SEGMENT_BYTES"]), 64 * 2**20)
        # Retention deletes closed segments only: a segment must roll in time.
        self.assertLessEqual(int(env["KAFKA_LOG_ROLL_MS"]), int(env["KAFKA_LOG_RETENTION_MS"]))

    def test_mqfn_logs_plainly(self):
        env = env_dict(self.services["mqfn"]["environment"])
        self.assertEqual(env.get("NO_COLOR"), "1")
        self.assertEqual(expand_defaults(env["RUST_LOG"]), "info", "a bare level (mqfn only)")

    def test_nats_jetstream_enabled(self):
        argv = as_argv(self.services["nats"]["command"])
        self.assertIn("-js", argv)
        self.assertEqual(flag_value(argv, "-sd"), "/data")

    def test_kafka_kraft_single_node(self):
        env = env_dict(self.services["kafka"]["environment"])
        self.assertEqual(env["KAFKA_PROCESS_ROLES"], "broker,controller")
        self.assertEqual(env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"], "false")
        for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
                    "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"):
            self.assertEqual(env[key], "1", key)
        listeners = listener_ports(env["KAFKA_LISTENERS"])
        advertised = listener_ports(env["KAFKA_ADVERTISED_LISTENERS"])
        protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
        self.assertEqual(listeners["PLAINTEXT"][1], 9092)
        self.assertEqual(listeners["CONTROLLER"][1], 9093)
        self.assertEqual(advertised["PLAINTEXT"], ("kafka", 9092))
        self.assertIn(env["KAFKA_CONTROLLER_LISTENER_NAMES"], listeners)
        self.assertNotIn(env["KAFKA_CONTROLLER_LISTENER_NAMES"], advertised)
        for name in listeners:
            self.assertIn(name, protocols, f"listener {name} missing from the security protocol map")
        # Quorum voters: <node id>@kafka:<controller port>.
        node_id, _, addr = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].partition("@")
        self.assertEqual(node_id, env["KAFKA_NODE_ID"])
        self.assertEqual(addr, f"kafka:{listeners['CONTROLLER'][1]}")
        # The host-facing listener is advertised as localhost:<published port>.
        external = [n for n, (h, _) in advertised.items() if h == "localhost"]
        self.assertEqual(len(external), 1, "exactly one listener advertised as localhost (for the host)")
        ext_port = advertised[external[0]][1]
        self.assertEqual(listeners[external[0]][1], ext_port)
        published = {host_port(p): container_port(p) for p in self.services["kafka"].get("ports", [])}
        self.assertEqual(published.get(ext_port), ext_port, "EXTERNAL listener port must be published 1:1")
        # Moving the host port moves what is advertised to host clients too.
        var = re.search(r"EXTERNAL://localhost:\$\{(\w+):-\d+\}", env["KAFKA_ADVERTISED_LISTENERS"])
        self.assertIsNotNone(var, "the EXTERNAL advertised port must follow the host port's env var")
        self.assertTrue(any(f"${{{var.group(1)}:-" in str(p) for p in self.services["kafka"]["ports"]),
                        f"the published EXTERNAL port must use ${{{var.group(1)}}} too")
        if "CLUSTER_ID" in env:
            self.assertRegex(env["CLUSTER_ID"], r"^[A-Za-z0-9_-]{22}$", "CLUSTER_ID is a base64url 16-byte UUID")

    def test_published_ports(self):
        s = self.services

        def published(name):
            return {host_port(p): container_port(p) for p in s[name].get("ports", [])}

        self.assertEqual(published("nats").get(4222), 4222)
        self.assertEqual(published("rabbitmq").get(5672), 5672)
        self.assertEqual(published("rabbitmq").get(15672), 15672)
        self.assertEqual(published("prometheus").get(9091), 9090)
        self.assertEqual(published("grafana").get(3000), 3000)
        self.assertEqual(published("mqfn").get(9090), 9090)
        # No host port is published twice.
        seen = {}
        for name, svc in s.items():
            for p in svc.get("ports", []):
                hp = host_port(p)
                if hp is not None:
                    self.assertNotIn(hp, seen, f"host port {hp} published by {name} and {seen.get(hp)}")
                    seen[hp] = name

    def test_interpolation_is_escaped(self):
        """Compose interpolates `$VAR`/`${VAR}`; shell variables must be written `$$`."""
        text = COMPOSE_FILE.read_text()
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.lstrip().startswith("#"):
                continue
            stripped = re.sub(r"\$\$", "", line)
            stripped = re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?[-?][^}]*)?\}", "", stripped)
            self.assertNotIn("$", stripped, f"docker-compose.yml:{lineno}: unescaped `$`: {line.strip()}")

    def test_bind_mounts_exist(self):
        for name, svc in self.services.items():
            for vol in svc.get("volumes", []):
                source = vol["source"] if isinstance(vol, dict) else str(vol).split(":")[0]
                if source.startswith(("./", "../", "/")):
                    self.assertTrue((ROOT / source).exists(), f"{name}: bind-mount source {source} missing")

    def test_mqfn_runs_the_compose_config(self):
        argv = self.mqfn_argv()
        self.assertEqual(argv[0], "run")
        cfg = flag_value(argv, "--config")
        self.assertEqual(cfg, "config/compose.toml")
        self.assertTrue((ROOT / cfg).is_file())
        self.assertTrue(flag_value(argv, "--admin").startswith("0.0.0.0:"), "admin must listen on all interfaces")

    def test_demo_publishes_to_route_inputs(self):
        demo = self.services["demo"]
        script = "\n".join(as_argv(demo.get("entrypoint")) + as_argv(demo.get("command")))
        cfg = self.config
        sources = {}
        for route in cfg["routes"]:
            src = route["source"]
            sources.setdefault(src["broker"], set()).add(route_source_key(src)[1])
        calls = re.findall(r"mqfn publish\b([^\n]*)", script)
        self.assertTrue(calls, "demo never runs `mqfn publish`")
        seen = set()
        counts = set()
        for call in calls:
            argv = shlex.split(call.replace("$$", "$"))
            broker, dest = flag_value(argv, "--broker"), flag_value(argv, "--to")
            self.assertIn(broker, cfg["brokers"], f"demo publishes to unknown broker {broker}")
            self.assertIn(dest, sources.get(broker, set()), f"demo publishes to {broker}:{dest}, no route reads it")
            self.assertIsNotNone(flag_value(argv, "--config"))
            counts.add(int(flag_value(argv, "--count") or 1))
            seen.add(broker)
        self.assertEqual(seen, set(cfg["brokers"]), "demo must feed every broker")
        self.assertTrue(any(c >= 1000 for c in counts), "demo has no burst")
        self.assertTrue(any(c <= 10 for c in counts), "demo has no trickle")


# --------------------------------------------------------------------- Dockerfile


class DockerfileTest(DeployTestCase):
    def test_minio_notifies_the_uploads_route(self):
        """MinIO publishes upload events to a subject that a declared stream
        captures and the uploads route consumes; the setup job creates the
        bucket and the notification (under photos/ only, so thumbnails do
        not notify); the handler reaches MinIO with the AWS_* variables."""
        s = self.services
        image = s["minio"]["image"]
        self.assertRegex(image, r"^minio/minio:RELEASE\.\d{4}-\d\d-\d\dT")
        self.assertEqual(s["minio-setup"]["image"], image, "the setup job uses the server image's mc")
        env = env_dict(s["minio"]["environment"])
        ids = {k.rsplit("_", 1)[1] for k in env if k.startswith("MINIO_NOTIFY_NATS_ENABLE_")}
        self.assertEqual(len(ids), 1, env)
        target = ids.pop()
        self.assertEqual(env[f"MINIO_NOTIFY_NATS_ENABLE_{target}"], "on")
        self.assertEqual(env[f"MINIO_NOTIFY_NATS_JETSTREAM_{target}"], "on")
        self.assertIn(f"MINIO_NOTIFY_NATS_QUEUE_DIR_{target}", env, "events would be lost while NATS is away")
        host, _, port = env[f"MINIO_NOTIFY_NATS_ADDRESS_{target}"].partition(":")
        self.assertIn(host, s)
        self.assertIn(int(port), service_listen_ports(s[host]))
        subject = env[f"MINIO_NOTIFY_NATS_SUBJECT_{target}"]
        setup = "\n".join(as_argv(s["minio-setup"]["command"]))
        self.assertIn(f"arn:minio:sqs::{target}:nats", setup)
        self.assertRegex(setup, r"--event put --prefix photos/")
        routes = [r for r in self.config["routes"] if r["source"].get("subject") == subject]
        self.assertEqual(len(routes), 1, f"one route consumes {subject}")
        route = routes[0]
        streams = {x["name"]: x for x in self.config["brokers"][route["source"]["broker"]]["streams"]}
        self.assertTrue(any(nats_subject_matches(p, subject) for p in streams[route["source"]["stream"]]["subjects"]))
        handler = self.config["handlers"][route["handler"]]
        self.assertIn("handlers/examples/resize.py", handler["command"])
        mqfn_env = env_dict(s["mqfn"]["environment"])
        for var in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"):
            self.assertIn(var, handler["env"], f"the handler never sees {var}")
            self.assertIn(var, mqfn_env, f"compose does not set {var} for mqfn")
        endpoint = urlsplit(mqfn_env["AWS_ENDPOINT_URL"])
        self.assertEqual(endpoint.hostname, "minio")
        self.assertIn(endpoint.port, service_listen_ports(s["minio"]))
        self.assertEqual(mqfn_env["AWS_ACCESS_KEY_ID"], env["MINIO_ROOT_USER"])
        self.assertEqual(mqfn_env["AWS_SECRET_ACCESS_KEY"], env["MINIO_ROOT_PASSWORD"])
        self.assertIn("python3-boto3", DOCKERFILE.read_text(), "the runtime image needs boto3 for resize.py")

    def test_thin_lto_by_default(self):
        lines = dockerfile_lines(DOCKERFILE.read_text())
        self.assertIn("ARG LTO=thin", lines)
        env = next(l for l in lines if l.startswith("ENV CARGO_PROFILE_RELEASE_LTO="))
        self.assertIn("CARGO_PROFILE_RELEASE_LTO=${LTO}", env)

    def test_stages_and_runtime(self):
        text = DOCKERFILE.read_text()
        lines = dockerfile_lines(text)
        froms = [l for l in lines if l.upper().startswith("FROM ")]
        self.assertEqual(len(froms), 2, "builder + runtime")
        self.assertIn("rust:1-bookworm", froms[0])
        self.assertIn("debian:bookworm-slim", froms[1])
        self.assertIn("cargo build --release --locked --bin mqfn", text)
        self.assertIn("--mount=type=cache", text)
        for pkg in ("build-essential", "python3", "zlib1g-dev", "pkg-config", "ca-certificates", "nodejs", "curl"):
            self.assertIn(pkg, text)
        self.assertEqual(dockerfile_instruction_json(text, "ENTRYPOINT"), ["/app/mqfn"])
        cmd = dockerfile_instruction_json(text, "CMD")
        self.assertEqual(cmd, ["run", "--config", "config/compose.toml", "--admin", "0.0.0.0:9090"])
        self.assertTrue(any(l.upper().startswith("USER ") and not l.split()[1].startswith("0")
                            and l.split()[1] != "root" for l in lines), "runtime must not run as root")
        self.assertIn("WORKDIR /app", lines)
        exposed = {int(p) for l in lines if l.upper().startswith("EXPOSE ") for p in l.split()[1:]}
        self.assertIn(self.admin_port(), exposed)
        self.assertIn(int(cmd[-1].rsplit(":", 1)[1]), exposed)
        copies = " ".join(l for l in lines if l.upper().startswith("COPY "))
        for src in ("handlers/", "config/"):
            self.assertIn(src, copies)
            self.assertTrue((ROOT / src).is_dir(), f"{src} must exist for COPY")

    def test_dockerignore(self):
        patterns = [l.strip().rstrip("/") for l in DOCKERIGNORE.read_text().splitlines()
                    if l.strip() and not l.startswith("#")]
        self.assertIn("target", patterns)
        self.assertIn(".git", patterns)
        for needed in ("src", "handlers", "config", "Cargo.toml", "Cargo.lock"):
            self.assertNotIn(needed, patterns, f".dockerignore must not exclude {needed}")


# --------------------------------------------------------------------- mqfn config


class ComposeConfigTest(DeployTestCase):
    def test_broker_addresses_point_at_compose_services(self):
        for name, broker in self.config["brokers"].items():
            kind = broker["kind"]
            if kind in ("nats", "amqp"):
                url = urlsplit(expand_defaults(broker["url"]))
                self.assertEqual(url.scheme, {"nats": "nats", "amqp": "amqp"}[kind])
                endpoints = [(url.hostname, url.port or {"nats": 4222, "amqp": 5672}[kind])]
            elif kind == "kafka":
                endpoints = []
                for hp in expand_defaults(broker["bootstrap"]).split(","):
                    host, _, port = hp.strip().rpartition(":")
                    endpoints.append((host, int(port)))
            else:
                self.fail(f"broker {name}: unknown kind {kind}")
            for host, port in endpoints:
                self.assertIn(host, self.services, f"broker {name}: host {host} is not a compose service")
                self.assertIn(port, service_listen_ports(self.services[host]),
                              f"broker {name}: {host} does not listen on {port}")
                if kind == "kafka":
                    # The listener on that port must advertise an address reachable from the
                    # compose network, or clients get redirected after bootstrap.
                    env = env_dict(self.services[host]["environment"])
                    listeners = listener_ports(env["KAFKA_LISTENERS"])
                    advertised = listener_ports(env["KAFKA_ADVERTISED_LISTENERS"])
                    lname = next(n for n, (_, p) in listeners.items() if p == port)
                    self.assertEqual(advertised.get(lname), (host, port))

    def test_storage_is_bounded(self):
        for name, broker in self.config["brokers"].items():
            for stream in broker.get("streams", []):
                self.assertIn("max_age", stream, f"{name}: stream {stream['name']} kept for ever")
                self.assertTrue("max_messages" in stream or "max_bytes" in stream,
                                f"{name}: stream {stream['name']} has no size bound")
            for queue in broker.get("queues", []):
                args = queue.get("arguments", {})
                self.assertIn("x-max-length", args, f"{name}: queue {queue['name']} has no bound")
                self.assertIn(args.get("x-overflow"), {"drop-head", "reject-publish"}, queue["name"])

    def test_a_route_runs_a_process_handler(self):
        """Built-ins keep no instances: without a process handler the
        instance and cold-start panels have no data."""
        handlers = self.config.get("handlers", {})
        used = {r["handler"] for r in self.config["routes"]}
        process = [h for h in used if handlers.get(h, {}).get("kind") == "process"]
        self.assertTrue(process, "no compose route uses a process handler")
        for h in process:
            command = handlers[h]["command"]
            script = next((c for c in command if c.startswith("handlers/")), None)
            self.assertIsNotNone(script, f"{h}: its script is not under handlers/ (copied into the image)")
            self.assertTrue((ROOT / script).is_file(), f"{h}: {script} missing")
        self.assertIn("python3", DOCKERFILE.read_text(), "the runtime image needs python3")

    def test_env_defaults_match_compose_env(self):
        """Env vars that compose sets for mqfn agree with the config's defaults."""
        env = env_dict(self.services["mqfn"].get("environment"))
        text = COMPOSE_TOML.read_text()
        for var, default in ENV_REF.findall(text):
            if var in env and default:
                self.assertEqual(env[var], default, f"compose sets {var} differently from the config default")

    def test_routes(self):
        cfg = self.config
        brokers = cfg["brokers"]
        handlers = set(cfg.get("handlers", {})) | BUILTIN_HANDLERS
        names = [r["name"] for r in cfg["routes"]]
        self.assertEqual(len(names), len(set(names)), "route names must be unique")
        self.assertEqual({brokers[r["source"]["broker"]]["kind"] for r in cfg["routes"]}, {"nats", "kafka", "amqp"},
                         "one route per broker kind")
        for route in cfg["routes"]:
            rn = route["name"]
            self.assertIn(route["handler"], handlers, f"{rn}: unknown handler")
            for key in ("source", "output", "dead_letter"):
                ref = route[key]
                broker = brokers.get(ref["broker"])
                self.assertIsNotNone(broker, f"{rn}.{key}: unknown broker {ref['broker']}")
                field, dest = route_source_key(ref)
                self.assertEqual(field, {"nats": "subject", "kafka": "topic", "amqp": "queue"}[broker["kind"]],
                                 f"{rn}.{key}: {field} on a {broker['kind']} broker")
                if broker["kind"] == "amqp":
                    declared = {q["name"] for q in broker.get("queues", [])}
                    self.assertIn(dest, declared, f"{rn}.{key}: queue {dest} not declared")
                if broker["kind"] == "kafka" and key == "source":
                    self.assertIn("group", ref)
            src = route["source"]
            if brokers[src["broker"]]["kind"] == "nats" and "stream" in src:
                streams = {s["name"]: s for s in brokers[src["broker"]].get("streams", [])}
                self.assertIn(src["stream"], streams, f"{rn}: stream {src['stream']} not declared")
                self.assertTrue(any(nats_subject_matches(p, src["subject"]) for p in streams[src["stream"]]["subjects"]),
                                f"{rn}: subject {src['subject']} not in stream {src['stream']}")
            w = route["workers"]
            self.assertLessEqual(w["min"], w["max"])
            self.assertGreater(w["target_backlog"], 0)
            r = route["retry"]
            self.assertGreaterEqual(r["max_attempts"], 1)
            self.assertLessEqual(parse_duration(r["initial_backoff"]), parse_duration(r["max_backoff"]))
            parse_duration(route["timeout"])
        # Kafka auto-creation is off in compose: every Kafka topic a route touches is created by mqfn.
        auto_create = env_dict(self.services["kafka"]["environment"]).get("KAFKA_AUTO_CREATE_TOPICS_ENABLE")
        if auto_create == "false":
            for route in cfg["routes"]:
                for key in ("source", "output", "dead_letter"):
                    ref = route[key]
                    if brokers[ref["broker"]]["kind"] == "kafka":
                        self.assertIn("create", ref, f"{route['name']}.{key}: topic {ref['topic']} is never created")


# --------------------------------------------------------------------- Prometheus


class PrometheusTest(DeployTestCase):
    def test_scrapes_mqfn_admin_port(self):
        prom = load_yaml(PROMETHEUS_YML)
        port = self.admin_port()
        jobs = [j for j in prom["scrape_configs"]
                if any(f"mqfn:{port}" in sc.get("targets", []) for sc in j.get("static_configs", []))]
        self.assertEqual(len(jobs), 1, f"exactly one job must scrape mqfn:{port}")
        job = jobs[0]
        self.assertEqual(job.get("metrics_path", "/metrics"), "/metrics")
        self.assertEqual(job.get("scrape_interval"), "5s")
        # ... and that port is the one compose maps for the mqfn service.
        self.assertIn(port, {container_port(p) for p in self.services["mqfn"]["ports"]})

    def test_config_is_mounted(self):
        mounts = [str(v) for v in self.services["prometheus"]["volumes"]]
        self.assertTrue(any(m.startswith("./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml")
                            for m in mounts))


class AlertRulesTest(DeployTestCase):
    """deploy/prometheus/alerts.yml: loaded, tested with promtool, and each
    alert has a runbook section in docs/operations.md."""

    def promtool(self, *args):
        tool = shutil.which("promtool")
        if tool is None:
            self.fail("promtool is missing: scripts/test.sh installs it (apt-get install prometheus)")
        return subprocess.run([tool, *args], cwd=ROOT, capture_output=True, text=True)

    def alerts(self):
        return [r for g in load_yaml(ALERTS_YML)["groups"] for r in g["rules"] if "alert" in r]

    def test_loaded_by_prometheus_and_mounted(self):
        prom = load_yaml(PROMETHEUS_YML)
        self.assertIn("alerts.yml", prom.get("rule_files", []))
        mounts = [str(v) for v in self.services["prometheus"]["volumes"]]
        self.assertIn("./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro", mounts,
                      "mounted next to prometheus.yml, where rule_files resolves it")
        checked = self.promtool("check", "config", str(PROMETHEUS_YML))
        self.assertEqual(checked.returncode, 0, checked.stdout + checked.stderr)

    def test_promtool_unit_tests_pass(self):
        tested = self.promtool("test", "rules", str(ALERTS_TEST_YML))
        self.assertEqual(tested.returncode, 0, tested.stdout + tested.stderr)

    def test_every_alert_is_tested_firing(self):
        tests = load_yaml(ALERTS_TEST_YML)["tests"]
        fired = {c["alertname"] for t in tests for c in t.get("alert_rule_test", []) if c.get("exp_alerts")}
        quiet = {c["alertname"] for t in tests for c in t.get("alert_rule_test", []) if not c.get("exp_alerts")}
        for rule in self.alerts():
            self.assertIn(rule["alert"], fired, f"{rule['alert']}: no test shows it firing")
            self.assertIn(rule["alert"], quiet, f"{rule['alert']}: no test shows it quiet")

    def test_the_issue_s_alerts_exist_with_for_severity_and_runbook(self):
        names = {r["alert"] for r in self.alerts()}
        self.assertEqual(names, {"MqfnBrokerDown", "MqfnRouteStuck", "MqfnRouteBehind",
                                 "MqfnDeadLettersRising", "MqfnRouteRestarting"})
        runbook = OPERATIONS_MD.read_text()
        anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).strip().replace(" ", "-")
                   for h in re.findall(r"^#+ (.*)$", runbook, re.M)}
        for rule in self.alerts():
            name = rule["alert"]
            self.assertRegex(rule.get("for", ""), r"^\d+[smh]$", f"{name}: no `for:`")
            self.assertIn(rule["labels"].get("severity"), {"warning", "critical"}, name)
            link = rule["annotations"].get("runbook", "")
            self.assertTrue(link.startswith("docs/operations.md#"), f"{name}: runbook {link!r}")
            self.assertIn(link.split("#", 1)[1], anchors, f"{name}: no section {link} in docs/operations.md")

    def test_alerts_use_catalogued_metrics_and_labels(self):
        catalogue = {}
        for line in METRICS_MD.read_text().splitlines():
            m = re.match(r"\| `(mqfn_[a-z_]+)` \| \w+ \| ([^|]*)\|", line)
            if m:
                catalogue[m.group(1)] = set(re.findall(r"`([a-z_]+)`", m.group(2)))
        for rule in self.alerts():
            expr = rule["expr"]
            names = set(re.findall(r"\bmqfn_[a-z_]+", expr))
            self.assertTrue(names, rule["alert"])
            for name in names:
                self.assertIn(name, catalogue, f"{rule['alert']}: {name} is not in docs/metrics.md")
            labels = set().union(*(catalogue[n] for n in names)) | {"instance", "job"}
            for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
                for label in re.split(r"\s*,\s*", group.strip()):
                    self.assertIn(label, labels, f"{rule['alert']}: no label {label}")
            for label in re.findall(r"\$labels\.(\w+)", json.dumps(rule["annotations"])):
                self.assertIn(label, labels, f"{rule['alert']}: annotation uses unknown label {label}")


# --------------------------------------------------------------------- Grafana


class GrafanaTest(DeployTestCase):
    def mount_target(self, source):
        for vol in self.services["grafana"]["volumes"]:
            src, dst = str(vol).split(":")[:2]
            if src.rstrip("/") == source:
                return dst
        self.fail(f"grafana does not mount {source}")

    def test_provisioning(self):
        self.assertEqual(self.mount_target("./deploy/grafana/provisioning"), "/etc/grafana/provisioning")
        ds = load_yaml(GRAFANA_DS)["datasources"]
        prom = [d for d in ds if d["type"] == "prometheus"]
        self.assertEqual(len(prom), 1)
        self.assertEqual(prom[0]["uid"], "prometheus")
        url = urlsplit(prom[0]["url"])
        self.assertEqual(url.hostname, "prometheus")
        self.assertIn(url.port, service_listen_ports(self.services["prometheus"]))
        providers = load_yaml(GRAFANA_DASH_PROVIDER)["providers"]
        self.assertEqual(len(providers), 1)
        self.assertEqual(providers[0]["options"]["path"], self.mount_target("./deploy/grafana/dashboards"))
        env = env_dict(self.services["grafana"]["environment"])
        self.assertEqual(env.get("GF_AUTH_ANONYMOUS_ENABLED"), "true")
        self.assertEqual(env.get("GF_AUTH_ANONYMOUS_ORG_ROLE"), "Viewer")

    def test_dashboard(self):
        dash = json.loads(DASHBOARD_JSON.read_text())
        self.assertEqual(dash["schemaVersion"], 39)
        self.assertTrue(dash.get("uid"))
        variables = {v["name"]: v for v in dash["templating"]["list"]}
        route = variables["route"]
        query = route["query"]["query"] if isinstance(route["query"], dict) else route["query"]
        self.assertEqual(re.sub(r"\s", "", query), "label_values(mqfn_backlog_messages,route)")
        self.assertTrue(route["multi"])
        self.assertTrue(route["includeAll"])

        ds_uid = load_yaml(GRAFANA_DS)["datasources"][0]["uid"]
        ids, exprs = set(), []
        panels = list(iter_panels(dash["panels"]))
        for panel in panels:
            self.assertNotIn(panel["id"], ids, f"duplicate panel id {panel['id']}")
            ids.add(panel["id"])
            if panel["type"] == "row":
                continue
            self.assertTrue(panel.get("targets"), f"panel {panel['title']!r} has no targets")
            for target in panel["targets"]:
                ds = target.get("datasource") or panel.get("datasource")
                self.assertEqual(ds["uid"], ds_uid, f"panel {panel['title']!r}: datasource uid")
                exprs.append((panel["title"], target["expr"]))
        for v in variables.values():
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            exprs.append((f"variable {v['name']}", q))

        used = set()
        for title, expr in exprs:
            names = metric_names(expr)
            self.assertTrue(names, f"{title}: no mqfn metric in {expr!r}")
            for name in names:
                self.assertTrue(known_metric(name), f"{title}: unknown metric {name} in {expr!r}")
                used.add(base_metric(name))
            for var in re.findall(r"\$(\w+)", expr):
                if not var.startswith("__"):
                    self.assertIn(var, variables, f"{title}: undefined variable ${var}")
            # label matchers only use labels the metric has (simple `metric{...}` selectors).
            for metric, matchers in re.findall(r"\b(mqfn_[a-z_]+)\{([^}]*)\}", expr):
                for label in re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)", matchers):
                    allowed = METRICS[base_metric(metric)] | ({"le"} if metric.endswith("_bucket") else set())
                    self.assertIn(label, allowed, f"{title}: {metric} has no label {label}")
            for labels in re.findall(r"\bby\s*\(([^)]*)\)", expr):
                metrics_here = {base_metric(n) for n in names}
                allowed = set().union(*(METRICS[m] for m in metrics_here)) | {"le"}
                for label in re.split(r"\s*,\s*", labels.strip()):
                    self.assertIn(label, allowed, f"{title}: grouping by unknown label {label}")
        # Every catalogued metric is on the dashboard.
        self.assertEqual(set(METRICS) - used, set(), "metrics not shown on the dashboard")
        for q in ("0.5", "0.99"):
            self.assertTrue(any(f"histogram_quantile({q}," in e for _, e in exprs), f"no p{q} latency panel")

        # Layout: panels inside the 24-column grid and not overlapping.
        cells = {}
        for panel in panels:
            g = panel["gridPos"]
            self.assertLessEqual(g["x"] + g["w"], 24, f"{panel['title']!r} past the grid")
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    self.assertNotIn((x, y), cells, f"{panel['title']!r} overlaps {cells.get((x, y))!r}")
                    cells[(x, y)] = panel["title"]


# --------------------------------------------------------------------- Kubernetes


class KubernetesTest(DeployTestCase):
    """deploy/k8s: a Kustomize base and overlays, each rendered with
    `kubectl kustomize` and checked as rendered, core kinds also with
    kubernetes-validate (scripts/test.sh installs both when missing)."""

    rendered_cache = {}

    def render(self, overlay):
        if overlay not in self.rendered_cache:
            kubectl = shutil.which("kubectl")
            if kubectl is None:
                self.fail("kubectl is missing: scripts/test.sh installs it (apt-get install kubernetes-client)")
            out = subprocess.run([kubectl, "kustomize", str(K8S_DIR / "overlays" / overlay)],
                                 capture_output=True, text=True)
            self.assertEqual(out.returncode, 0, f"overlays/{overlay}: {out.stderr}")
            self.rendered_cache[overlay] = (out.stdout, [d for d in yaml.safe_load_all(out.stdout) if d])
        return self.rendered_cache[overlay]

    def docs(self, overlay="plain"):
        return self.render(overlay)[1]

    def one(self, kind, overlay="plain"):
        found = [d for d in self.docs(overlay) if d["kind"] == kind]
        self.assertEqual(len(found), 1, f"overlays/{overlay}: expected exactly one {kind}")
        return found[0]

    def k8s_config(self, overlay="plain"):
        dep, cm = self.one("Deployment", overlay), self.one("ConfigMap", overlay)
        container = dep["spec"]["template"]["spec"]["containers"][0]
        cfg_path = flag_value(container["args"], "--config")
        key = Path(cfg_path).name
        return load_toml_text(cm["data"][key])

    def test_layout(self):
        self.assertTrue((K8S_DIR / "base" / "kustomization.yaml").is_file())
        found = sorted(p.name for p in (K8S_DIR / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
        self.assertEqual(found, sorted(OVERLAYS), "overlays/ must hold exactly the documented overlays")
        readme = (K8S_DIR / "README.md").read_text()
        for overlay in OVERLAYS:
            self.assertIn(f"overlays/{overlay}", readme, f"deploy/k8s/README.md does not show {overlay}")
        self.assertEqual(list(K8S_DIR.glob("*.yaml")), [], "manifests live in base/ and overlays/")

    def test_every_overlay_renders_and_validates(self):
        validate = shutil.which("kubernetes-validate")
        if validate is None:
            self.fail("kubernetes-validate is missing: scripts/test.sh installs it (pip install kubernetes-validate)")
        for overlay in OVERLAYS:
            text, docs = self.render(overlay)
            for d in docs:
                self.assertIn(d.get("kind"), API_VERSIONS, f"{overlay}: unexpected kind {d.get('kind')}")
                self.assertEqual(d.get("apiVersion"), API_VERSIONS[d["kind"]], f"{overlay}: {d['kind']} apiVersion")
                self.assertTrue(d.get("metadata", {}).get("name"), f"{overlay}: {d['kind']} without a name")
            with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
                f.write(text)
                f.flush()
                # Custom resources (KEDA, Prometheus Operator) have no bundled
                # schema: they are warned about, and checked below instead.
                out = subprocess.run([validate, "--strict", "--quiet", f.name], capture_output=True, text=True)
            self.assertEqual(out.returncode, 0, f"overlays/{overlay}: {out.stdout}{out.stderr}")

    def test_plain_has_fixed_replicas_and_keda_overlays_none(self):
        self.assertGreaterEqual(self.one("Deployment", "plain")["spec"].get("replicas", 1), 2)
        for overlay, _ in KEDA_OVERLAYS.items():
            self.assertNotIn("replicas", self.one("Deployment", overlay)["spec"],
                             f"{overlay}: the HPA KEDA creates owns replicas")

    def test_pod_disruption_budget(self):
        for overlay in OVERLAYS:
            pdb, dep = self.one("PodDisruptionBudget", overlay), self.one("Deployment", overlay)
            labels = dep["spec"]["template"]["metadata"]["labels"]
            self.assertTrue(set(pdb["spec"]["selector"]["matchLabels"].items()) <= set(labels.items()))
            # maxUnavailable, so that a drain proceeds at one replica (and at zero).
            self.assertEqual(pdb["spec"].get("maxUnavailable"), 1)
            self.assertNotIn("minAvailable", pdb["spec"])

    def test_configmap_key_is_mounted(self):
        dep, cm = self.one("Deployment"), self.one("ConfigMap")
        pod = dep["spec"]["template"]["spec"]
        container = pod["containers"][0]
        cfg_path = flag_value(container["args"], "--config")
        self.assertIsNotNone(cfg_path)
        mounted = None
        for vm in container["volumeMounts"]:
            if cfg_path.startswith(vm["mountPath"].rstrip("/") + "/"):
                mounted = vm
        self.assertIsNotNone(mounted, f"{cfg_path} is not under any volumeMount")
        volume = next(v for v in pod["volumes"] if v["name"] == mounted["name"])
        self.assertEqual(volume["configMap"]["name"], cm["metadata"]["name"])
        rel = cfg_path[len(mounted["mountPath"].rstrip("/")) + 1:]
        items = volume["configMap"].get("items")
        key = next(i["key"] for i in items if i["path"] == rel) if items else rel
        self.assertIn(key, cm["data"], f"ConfigMap has no key {key}")
        cfg = load_toml_text(cm["data"][key])  # must be valid TOML
        self.assertTrue(cfg["routes"])

    def test_deployment(self):
        dep = self.one("Deployment")
        pod = dep["spec"]["template"]["spec"]
        container = pod["containers"][0]
        self.assertEqual(container["image"], "ghcr.io/mqfn/mqfn:latest")
        admin = flag_value(container["args"], "--admin")
        self.assertEqual(container["args"][0], "run")
        self.assertIn("--watch", container["args"], "ConfigMap updates reload without a restart")
        port = int(admin.rsplit(":", 1)[1])
        ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
        self.assertIn(port, ports.values())

        def probe_port(probe):
            p = probe["httpGet"]["port"]
            return ports[p] if isinstance(p, str) else p

        self.assertEqual(container["livenessProbe"]["httpGet"]["path"], "/healthz")
        self.assertEqual(container["readinessProbe"]["httpGet"]["path"], "/readyz")
        self.assertEqual(probe_port(container["livenessProbe"]), port)
        self.assertEqual(probe_port(container["readinessProbe"]), port)
        ann = dep["spec"]["template"]["metadata"]["annotations"]
        self.assertEqual(ann["prometheus.io/scrape"], "true")
        self.assertEqual(int(ann["prometheus.io/port"]), port)
        self.assertEqual(ann.get("prometheus.io/path", "/metrics"), "/metrics")
        for kind in ("requests", "limits"):
            self.assertIn("cpu", container["resources"][kind])
            self.assertIn("memory", container["resources"][kind])
        self.assertTrue(pod["securityContext"]["runAsNonRoot"])
        self.assertNotEqual(pod["securityContext"].get("runAsUser", 1), 0)
        self.assertFalse(container["securityContext"]["allowPrivilegeEscalation"])
        # Grace period outlives mqfn's shutdown_timeout (default 30s).
        cfg = self.k8s_config()
        shutdown = parse_duration(str(cfg.get("shutdown_timeout", "30s")))
        self.assertGreater(pod["terminationGracePeriodSeconds"], shutdown)
        selector = dep["spec"]["selector"]["matchLabels"]
        labels = dep["spec"]["template"]["metadata"]["labels"]
        self.assertTrue(set(selector.items()) <= set(labels.items()))

    def test_service(self):
        svc, dep = self.one("Service"), self.one("Deployment")
        labels = dep["spec"]["template"]["metadata"]["labels"]
        self.assertTrue(set(svc["spec"]["selector"].items()) <= set(labels.items()), "Service selects no pod")
        container = dep["spec"]["template"]["spec"]["containers"][0]
        ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
        admin = int(flag_value(container["args"], "--admin").rsplit(":", 1)[1])
        targets = [p.get("targetPort", p["port"]) for p in svc["spec"]["ports"]]
        self.assertIn(admin, [ports[t] if isinstance(t, str) else t for t in targets])

    def test_service_monitor_and_rules(self):
        docs = self.docs("servicemonitor")
        svc = self.one("Service", "servicemonitor")
        sm = self.one("ServiceMonitor", "servicemonitor")
        self.assertTrue(set(sm["spec"]["selector"]["matchLabels"].items()) <= set(svc["metadata"]["labels"].items()),
                        "the ServiceMonitor selects no Service")
        port_names = {p["name"] for p in svc["spec"]["ports"]}
        for ep in sm["spec"]["endpoints"]:
            self.assertIn(ep["port"], port_names)
            self.assertEqual(ep.get("path", "/metrics"), "/metrics")
        rule = self.one("PrometheusRule", "servicemonitor")
        self.assertEqual(rule["spec"], load_yaml(ALERTS_YML),
                         "the PrometheusRule differs from alerts.yml: run scripts/prometheus-rule.py")
        self.assertGreaterEqual(self.one("Deployment", "servicemonitor")["spec"].get("replicas", 1), 2,
                                "builds on the plain overlay")
        self.assertEqual(len(docs), 6, "the plain overlay and the two Prometheus Operator objects")

    def test_scaled_objects(self):
        for overlay, trigger_type in KEDA_OVERLAYS.items():
            dep = self.one("Deployment", overlay)
            cfg = self.k8s_config(overlay)
            routes = {r["name"]: r for r in cfg["routes"]}
            docs = self.docs(overlay)
            so = self.one("ScaledObject", overlay)["spec"]
            ref = so["scaleTargetRef"]
            self.assertEqual(ref["name"], dep["metadata"]["name"], f"{overlay}: scaleTargetRef")
            self.assertEqual(ref.get("kind", "Deployment"), "Deployment")
            self.assertIn(so["minReplicaCount"], (0, 1), overlay)
            self.assertEqual(so["maxReplicaCount"], 10, overlay)
            self.assertTrue(so["triggers"])
            for trig in so["triggers"]:
                self.assertEqual(trig["type"], trigger_type, overlay)
                self.check_trigger(overlay, trig, cfg, routes, docs)
        # Scaling on a metric mqfn itself exports cannot start from zero replicas.
        self.assertEqual(self.one("ScaledObject", "keda-prometheus")["spec"]["minReplicaCount"], 1)
    def check_trigger(self, fname, trig, cfg, routes, docs):
        md = trig["metadata"]
        for v in md.values():
            self.assertIsInstance(v, str, f"{fname}: KEDA metadata values are strings")

        def routes_on(kind):
            return [r for r in routes.values() if cfg["brokers"][r["source"]["broker"]]["kind"] == kind]

        t = trig["type"]
        if t == "nats-jetstream":
            for key in ("natsServerMonitoringEndpoint", "account", "stream", "consumer", "lagThreshold"):
                self.assertIn(key, md, f"{fname}: {key}")
            self.assertTrue(md["natsServerMonitoringEndpoint"].endswith(":8222"))
            self.assertIn((md["stream"], md["consumer"]),
                          {(r["source"].get("stream"), r["source"].get("durable")) for r in routes_on("nats")},
                          f"{fname}: stream/consumer is not a route's stream/durable")
        elif t == "kafka":
            for key in ("bootstrapServers", "consumerGroup", "topic", "lagThreshold"):
                self.assertIn(key, md, f"{fname}: {key}")
            self.assertIn((md["consumerGroup"], md["topic"]),
                          {(r["source"]["group"], r["source"]["topic"]) for r in routes_on("kafka")},
                          f"{fname}: group/topic is not a route's source")
        elif t == "rabbitmq":
            for key in ("queueName", "mode", "value"):
                self.assertIn(key, md, f"{fname}: {key}")
            self.assertEqual(md["mode"], "QueueLength")
            self.assertIn(md["queueName"], {r["source"]["queue"] for r in routes_on("amqp")})
            auth_name = trig["authenticationRef"]["name"]
            auths = {d["metadata"]["name"]: d for d in docs if d["kind"] == "TriggerAuthentication"}
            self.assertIn(auth_name, auths, f"{fname}: TriggerAuthentication {auth_name} missing")
            refs = auths[auth_name]["spec"]["secretTargetRef"]
            self.assertIn("host", {r["parameter"] for r in refs})
            # The Deployment reads the same Secret for its AMQP URL.
            dep = self.one("Deployment", fname)
            env = dep["spec"]["template"]["spec"]["containers"][0].get("env", [])
            secrets = {e["valueFrom"]["secretKeyRef"]["name"] for e in env if "valueFrom" in e}
            self.assertTrue({r["name"] for r in refs} <= secrets, f"{fname}: Secret differs from the Deployment's")
        elif t == "prometheus":
            for key in ("serverAddress", "query", "threshold"):
                self.assertIn(key, md, f"{fname}: {key}")
            names = metric_names(md["query"])
            self.assertEqual(names, {"mqfn_backlog_messages"}, f"{fname}: scale on the backlog mqfn scales on")
            for route in re.findall(r'route="([^"]+)"', md["query"]):
                self.assertIn(route, routes, f"{fname}: no route {route} in the configmap")
        else:
            self.fail(f"{fname}: unexpected trigger {t}")

    def test_every_route_is_covered_by_prometheus_scaler(self):
        cfg = self.k8s_config("keda-prometheus")
        prom = self.one("ScaledObject", "keda-prometheus")
        scaled_routes = {r for t in prom["spec"]["triggers"] for r in re.findall(r'route="([^"]+)"', t["metadata"]["query"])}
        self.assertEqual(scaled_routes, {r["name"] for r in cfg["routes"]})


if __name__ == "__main__":
    unittest.main()
