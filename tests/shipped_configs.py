"""The shipped configs work as their comments say, tried as a new user would.

For each config in config/ that runs against the local brokers, this starts
`mqfn run` on it, then
- runs every `mqfn ...` command written in its header comment, as written
  (from a directory with the sample files the comments name), and
- drives each route with the standard client of its broker (nats-py,
  confluent-kafka, aio-pika), the way the comments suggest: a publish and
  its result, a core NATS request and its reply, an AMQP RPC.

    python3 -m unittest tests/shipped_configs.py -v

Needs the brokers of scripts/services.sh and scripts/kafka-broker.sh, the
debug `mqfn` binary (`cargo build --bin mqfn`, or MQFN_BIN), and
`pip install nats-py aio-pika confluent-kafka` (scripts/test.sh does all
of this). The shipped configs use fixed names (stream DEMO, topics and
queues demo.*), so each check looks for a payload unique to the run.
"""

import asyncio
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(os.environ.get("MQFN_BIN", ROOT / "target" / "debug" / "mqfn"))
LONG = 120  # seconds: a bound for a hung step, not a timing assertion

NATS_URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
KAFKA = os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092")
AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def comment_commands(config):
    """The `mqfn ...` commands of a config's header comment, as written; a
    quoted argument may go on over the next comment lines."""
    out, open_cmd = [], None
    for line in config.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if open_cmd is not None:
            open_cmd += "\n" + text
        elif text.startswith("mqfn "):
            open_cmd = text
        else:
            continue
        try:
            shlex.split(open_cmd, comments=True)
        except ValueError:  # an unclosed quote: the command goes on
            continue
        out.append(open_cmd)
        open_cmd = None
    assert open_cmd is None, f"{config.name}: unterminated command in the comment: {open_cmd}"
    return out


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class Mqfn:
    """`mqfn run --config CONFIG` on a free admin port, ready on enter,
    stopped with SIGTERM (a clean drain and group leave) on exit."""

    def __init__(self, config, env=None):
        self.config = config
        self.env = env or {}
        self.admin = f"127.0.0.1:{free_port()}"
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log")

    def __enter__(self):
        self.proc = subprocess.Popen(
            [str(BIN), "run", "--config", str(self.config), "--admin", self.admin],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self.log,
            env={**os.environ, "RUST_LOG": "info", **self.env},
        )
        deadline = time.monotonic() + LONG
        while True:
            try:
                with urllib.request.urlopen(f"http://{self.admin}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mqfn run --config {self.config} never got ready:\n{self.text()}")
            time.sleep(0.2)

    def __exit__(self, *exc):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=LONG)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def text(self):
        self.log.seek(0)
        return self.log.read()


class ShippedConfigTest(unittest.TestCase):
    def setUp(self):
        if not BIN.is_file():
            self.fail(f"{BIN} is missing: run `cargo build --bin mqfn` (scripts/test.sh does)")

    def run_comment_commands(self, config, cwd=ROOT):
        """Runs each `mqfn ...` line of the comment with bash, as a user would
        paste it; `mqfn run` is the running process itself."""
        env = {**os.environ, "PATH": f"{BIN.parent}:{os.environ['PATH']}", "RUST_LOG": "warn"}
        ran = 0
        for line in comment_commands(config):
            if line.startswith("mqfn run"):
                continue
            out = subprocess.run(["bash", "-c", line], cwd=cwd, env=env,
                                 capture_output=True, text=True, timeout=LONG)
            self.assertEqual(out.returncode, 0, f"{config.name}: `{line}` failed:\n{out.stdout}{out.stderr}")
            ran += 1
        return ran

    # ------------------------------------------------------------ NATS

    def test_nats(self):
        config = ROOT / "config" / "nats.toml"
        with Mqfn(config) as m:
            self.assertGreaterEqual(self.run_comment_commands(config), 3)
            asyncio.run(self.nats_clients())

    async def nats_clients(self):
        import nats

        nc = await nats.connect(NATS_URL)
        js = nc.jetstream()
        try:
            # `nats request demo.rpc hi` gets the handler's reply, not a
            # stream's PubAck (the DEMO stream must not capture demo.rpc).
            word = unique("hi").encode()
            reply = await nc.request("demo.rpc", word, timeout=30)
            self.assertEqual(reply.data, word, f"demo.rpc answered {reply.data!r}")

            # A JetStream publish to demo.in: its echo on demo.out.
            body = unique("hello").encode()
            out = await nc.subscribe("demo.out")
            await js.publish("demo.in", body)
            await self.nats_expect(out, lambda m: m.data == body, "the echo on demo.out")

            # demo.json through json-transform: stamped, password dropped.
            marker = unique("json")
            tagged = await nc.subscribe("demo.tagged")
            await js.publish("demo.json", json.dumps({"id": marker, "password": "s3cret"}).encode())
            msg = await self.nats_expect(tagged, lambda m: marker.encode() in m.data, "the result on demo.tagged")
            doc = json.loads(msg.data)
            self.assertEqual(doc.get("processed_by"), "mqfn")
            self.assertNotIn("password", doc)
        finally:
            await nc.close()

    async def nats_expect(self, sub, want, what):
        deadline = time.monotonic() + LONG
        while time.monotonic() < deadline:
            try:
                m = await sub.next_msg(timeout=1)
            except Exception:  # nats.errors.TimeoutError: nothing yet
                continue
            if want(m):
                return m
        self.fail(f"no {what}")

    # ------------------------------------------------------------ Kafka

    def test_kafka(self):
        config = ROOT / "config" / "kafka.toml"
        with Mqfn(config) as m:
            self.assertGreaterEqual(self.run_comment_commands(config), 3)
            self.kafka_clients()

    def kafka_clients(self):
        from confluent_kafka import Consumer, Producer

        producer = Producer({"bootstrap.servers": KAFKA})
        body = unique("hello")
        poison = f"permanent:bad input {unique('p')}"
        producer.produce("demo.in", body.encode(), key=b"k1")
        producer.produce("demo.fail", poison.encode())
        self.assertEqual(producer.flush(30), 0, "records not delivered")

        def find(topic, want, what):
            consumer = Consumer({
                "bootstrap.servers": KAFKA,
                "group.id": unique("shipped-check"),  # fresh: the test broker keeps stuck groups
                "auto.offset.reset": "earliest",
                "session.timeout.ms": 6000,
            })
            consumer.subscribe([topic])
            try:
                deadline = time.monotonic() + LONG
                while time.monotonic() < deadline:
                    m = consumer.poll(1.0)
                    if m is not None and m.error() is None and want(m):
                        return m
                self.fail(f"no {what}")
            finally:
                consumer.close()

        echo = find("demo.out", lambda m: m.value() == body.encode(), "echo on demo.out")
        self.assertEqual(echo.key(), b"k1", "the result keeps the input's key")
        dead = find("demo.dlq", lambda m: m.value() == poison.encode(), "dead letter on demo.dlq")
        headers = {k: (v or b"").decode() for k, v in dead.headers() or []}
        self.assertEqual(headers.get("mqfn-error-class"), "permanent", headers)

    # ------------------------------------------------------------ RabbitMQ

    def test_amqp(self):
        config = ROOT / "config" / "amqp.toml"
        with Mqfn(config) as m:
            self.assertGreaterEqual(self.run_comment_commands(config), 3)
            asyncio.run(self.amqp_clients())

    async def amqp_clients(self):
        import aio_pika

        conn = await aio_pika.connect_robust(AMQP_URL)
        try:
            ch = await conn.channel()
            # RPC on demo.rpc: the reply comes to reply_to with the correlation id.
            replies = await ch.declare_queue("", exclusive=True)
            corr, body = unique("corr"), unique("hello").encode()
            await ch.default_exchange.publish(
                aio_pika.Message(body, reply_to=replies.name, correlation_id=corr), routing_key="demo.rpc")
            reply = await self.amqp_expect(replies, lambda m: m.correlation_id == corr, "the RPC reply")
            self.assertEqual(reply.body, body)

            # A work item on demo.work: its result reaches demo.out through
            # the demo.results exchange.
            work = unique("work").encode()
            await ch.default_exchange.publish(aio_pika.Message(work), routing_key="demo.work")
            out = await ch.get_queue("demo.out")
            await self.amqp_expect(out, lambda m: m.body == work, "the result on demo.out")
        finally:
            await conn.close()

    async def amqp_expect(self, queue, want, what):
        deadline = time.monotonic() + LONG
        while time.monotonic() < deadline:
            m = await queue.get(no_ack=True, fail=False, timeout=5)
            if m is None:
                await asyncio.sleep(0.2)
            elif want(m):
                return m
        self.fail(f"no {what}")

    # ------------------------------------------------------------ memory

    def test_memory(self):
        """config/memory.toml needs no broker: `mqfn invoke` runs the route in
        its own process. The comment's commands print the results it names."""
        config = ROOT / "config" / "memory.toml"
        commands = comment_commands(config)
        self.assertGreaterEqual(len(commands), 3)
        self.assertIn("\n", commands[0], "the CSV example spans two comment lines")
        self.assertEqual(self.run_comment_commands_allowing(config, failing={"not json"}), 3)

    def run_comment_commands_allowing(self, config, failing):
        """As run_comment_commands, but a command whose text contains one of
        `failing` must fail (the comment says it is dead-lettered)."""
        env = {**os.environ, "PATH": f"{BIN.parent}:{os.environ['PATH']}", "RUST_LOG": "warn"}
        ran = 0
        for line in comment_commands(config):
            out = subprocess.run(["bash", "-c", line], cwd=ROOT, env=env,
                                 capture_output=True, text=True, timeout=LONG)
            if any(f in line for f in failing):
                self.assertNotEqual(out.returncode, 0, f"`{line}` should report the dead letter")
                self.assertIn("dead-lettered", out.stderr, line)
            else:
                self.assertEqual(out.returncode, 0, f"`{line}` failed:\n{out.stdout}{out.stderr}")
            ran += 1
        return ran

    # ------------------------------------------------------------ local

    def test_local(self):
        """config/local.toml runs with no broker and no Docker: its HTTP
        routes answer the curl commands of its comment, the queued one
        takes an async request, and the schedule fires."""
        config = ROOT / "config" / "local.toml"
        self.assertEqual(comment_commands(config), ["mqfn run --config config/local.toml"])
        port = free_port()
        base = f"http://127.0.0.1:{port}"

        def post(path, body, headers=None):
            req = urllib.request.Request(f"{base}{path}", data=body.encode(), headers=headers or {})
            try:
                with urllib.request.urlopen(req, timeout=LONG) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as e:
                return e.code, e.read().decode()

        with Mqfn(config, env={"MQFN_HTTP_LISTEN": f"127.0.0.1:{port}"}) as m:
            self.assertEqual(post("/tag", '{"id": 7}'), (200, '{"id":7,"tagged":true}'))
            status, body = post("/tag", "not json")
            self.assertEqual(status, 422, body)
            self.assertIn("not valid JSON", json.loads(body)["error"])
            status, body = post("/csv", "name,age\nada,36\nalan,41\n")
            self.assertEqual(status, 200, body)
            rows = [json.loads(o["payload"]) for o in json.loads(body)]
            self.assertEqual(rows, [{"name": "ada", "age": "36"}, {"name": "alan", "age": "41"}])
            status, body = post("/orders", '{"id": 8}', {"Prefer": "respond-async"})
            self.assertEqual(status, 202, body)
            self.assertEqual(json.loads(body)["queued_on"], "mem/orders.in")
            self.assertEqual(post("/orders", '{"id": 9}'), (200, '{"id":9,"tagged":true}'))

            def settled():
                with urllib.request.urlopen(f"http://{m.admin}/status", timeout=LONG) as r:
                    routes = {x["name"]: x for x in json.load(r)["routes"]}
                # The queued order and the sync one; a first heartbeat.
                return routes["orders"]["succeeded"] >= 2 and routes["heartbeat"]["succeeded"] >= 1

            deadline = time.monotonic() + LONG
            while not settled():
                self.assertLess(time.monotonic(), deadline, "the queued order or the heartbeat never settled")
                time.sleep(0.2)

    # ------------------------------------------------------------ examples

    def test_examples(self):
        """config/examples.toml's commands, with the sample files they name
        in the working directory, and their results on ex.*.out."""
        config = ROOT / "config" / "examples.toml"
        with tempfile.TemporaryDirectory() as cwd, Mqfn(config):
            for name in ("config", "handlers"):
                os.symlink(ROOT / name, Path(cwd) / name)
            # A 2x2 PPM (P6) and a CSV, as the comments' @photo.ppm and @people.csv.
            (Path(cwd) / "photo.ppm").write_bytes(b"P6\n2 2\n255\n" + bytes(range(12)))
            (Path(cwd) / "people.csv").write_text("name,age\nada,36\ngrace,45\n")
            results = asyncio.run(self.collect_examples(lambda: self.run_comment_commands(config, cwd)))
        self.assertTrue(any(s == "ex.resize.out" for s, _ in results), results)
        rows = [json.loads(d) for s, d in results if s == "ex.csv.out"]
        self.assertIn({"name": "ada", "age": "36"}, rows)
        self.assertIn({"name": "grace", "age": "45"}, rows)

    async def collect_examples(self, run):
        import nats

        nc = await nats.connect(NATS_URL)
        try:
            sub = await nc.subscribe("ex.*.out")
            ran = await asyncio.get_running_loop().run_in_executor(None, run)
            self.assertGreaterEqual(ran, 5)
            got = []
            deadline = time.monotonic() + LONG
            # The resize result and both CSV rows.
            while time.monotonic() < deadline:
                if any(s == "ex.resize.out" for s, _ in got) and sum(s == "ex.csv.out" for s, _ in got) >= 2:
                    break
                try:
                    m = await sub.next_msg(timeout=1)
                except Exception:
                    continue
                got.append((m.subject, m.data))
            return got
        finally:
            await nc.close()


if __name__ == "__main__":
    unittest.main()
