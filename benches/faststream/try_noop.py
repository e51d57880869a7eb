#!/usr/bin/env python3
"""Hand test of noop_app.py against the local brokers (loopback only).

For each broker: make a fresh input and output, pre-fill N messages of SIZE
bytes, start noop_app.py, wait for its `ready`, count the output until N, then
report the rate (N / seconds from ready to the last output) and the app's CPU
seconds (utime+stime from /proc/<pid>/stat: during the run and in total).

    python3 benches/faststream/try_noop.py [nats amqp kafka] [-n 30000] [--size 256]
        [--prefetch 256] [--kafka-batch]

Needs nats-py, aio-pika, confluent-kafka (pip). Kafka: run
scripts/kafka-broker.sh first if 127.0.0.1:9092 does not answer.
Kafka topics are left in place (fresh names each run), like the bench does.
"""

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
APP = os.path.join(HERE, "noop_app.py")
NATS_URL = "nats://127.0.0.1:4222"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2f"
KAFKA = "127.0.0.1:9092"
TICK = os.sysconf("SC_CLK_TCK")
TIMEOUT_S = 600


def payload(i: int, size: int) -> bytes:
    head = f"{i:010d}".encode()
    return head + b"x" * (size - len(head))


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): utime is field 14, stime field 15
    return (int(fields[11]) + int(fields[12])) / TICK


class App:
    """noop_app.py as a child process; stdout is read for `ready`."""

    def __init__(self, args):
        self.cmd = [sys.executable, APP, *args]
        print("  $ " + " ".join(self.cmd), flush=True)
        self.p = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=sys.stderr)
        self.t0 = time.monotonic()

    def wait_ready(self, timeout=60.0):
        line = self.p.stdout.readline()  # blocks; the app prints nothing else
        if line.strip() != b"ready":
            raise RuntimeError(f"app said {line!r} instead of ready (exit {self.p.poll()})")
        self.t_ready = time.monotonic()
        self.cpu_ready = cpu_seconds(self.p.pid)
        if self.t_ready - self.t0 > timeout:
            raise RuntimeError("app took too long to be ready")

    def alive(self):
        return self.p.poll() is None

    def stop(self):
        if self.alive():
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(20)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def report(name, n, app, t_done, cpu_done, sample_ok):
    secs = t_done - app.t_ready
    print(
        f"RESULT {name}: {n} msgs in {secs:.2f}s = {n / secs:,.0f} msg/s; "
        f"app CPU {cpu_done - app.cpu_ready:.2f}s during the run, {cpu_done:.2f}s total "
        f"(startup {app.t_ready - app.t0:.2f}s); output sample ok: {sample_ok}; "
        f"loadavg {os.getloadavg()[0]:.2f}",
        flush=True,
    )


async def wait_count(app, count, n):
    """Polls `await count()` until n; returns (t_done, cpu_done)."""
    deadline = time.monotonic() + TIMEOUT_S
    last = -1
    while True:
        c = await count()
        if c >= n:
            return time.monotonic(), cpu_seconds(app.p.pid)
        if not app.alive():
            raise RuntimeError(f"app exited with {app.p.returncode} at {c}/{n}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out at {c}/{n}")
        if c != last and c // 5000 != last // 5000:
            print(f"  ... {c}/{n}", flush=True)
        last = c
        await asyncio.sleep(0.05)


# ------------------------------------------------------------------ NATS


async def nats_setup(stream, subj_in, subj_out, n, size):
    import nats
    from nats.js.api import StorageType, StreamConfig

    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=stream, subjects=[subj_in, subj_out], storage=StorageType.FILE))
    window = 1000
    for start in range(0, n, window):
        futs = [js.publish(subj_in, payload(i, size)) for i in range(start, min(n, start + window))]
        await asyncio.gather(*futs)
    info = await js.stream_info(stream)
    await nc.close()
    return info.state.messages


async def try_nats(a):
    import nats

    rid = uuid.uuid4().hex[:8]
    stream, subj_in, subj_out, durable = f"FS_{rid}", f"fs.{rid}.in", f"fs.{rid}.out", f"fs_{rid}"
    have = await nats_setup(stream, subj_in, subj_out, a.n, a.size)
    assert have == a.n, have
    print(f"nats: stream {stream} pre-filled with {have}", flush=True)

    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()

    async def count():
        info = await js.stream_info(stream)
        return info.state.messages - a.n

    app = App(["--broker", "nats", "--url", NATS_URL, "--input", subj_in, "--output", subj_out,
               "--stream", stream, "--durable", durable, "--prefetch", str(a.prefetch)])
    try:
        app.wait_ready()
        t_done, cpu_done = await wait_count(app, count, a.n)
        m = await js.get_msg(stream, seq=a.n + 1)
        ok = m.subject == subj_out and len(m.data) == a.size and m.data.endswith(b"x")
        report("nats", a.n, app, t_done, cpu_done, ok)
    finally:
        app.stop()
        await js.delete_stream(stream)
        await nc.close()


# ------------------------------------------------------------------ AMQP


async def amqp_setup(q_in, q_out, n, size):
    import aio_pika

    conn = await aio_pika.connect(AMQP_URL)
    ch = await conn.channel(publisher_confirms=True)
    await ch.declare_queue(q_in, durable=True)
    await ch.declare_queue(q_out, durable=True)
    window = 1000
    for start in range(0, n, window):
        await asyncio.gather(*(
            ch.default_exchange.publish(
                aio_pika.Message(payload(i, size), delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=q_in,
            )
            for i in range(start, min(n, start + window))
        ))
    q = await ch.declare_queue(q_in, passive=True)
    count = q.declaration_result.message_count
    await conn.close()
    return count


async def try_amqp(a):
    import aio_pika

    rid = uuid.uuid4().hex[:8]
    q_in, q_out = f"fs.{rid}.in", f"fs.{rid}.out"
    conn = await aio_pika.connect(AMQP_URL)
    ch = await conn.channel()
    try:
        have = await amqp_setup(q_in, q_out, a.n, a.size)
        assert have == a.n, have
        print(f"amqp: queue {q_in} pre-filled with {have}", flush=True)
        await amqp_run(a, ch, q_in, q_out)
    finally:
        for q in (q_in, q_out):
            await ch.queue_delete(q)
        await conn.close()


async def amqp_run(a, ch, q_in, q_out):
    async def count():
        q = await ch.declare_queue(q_out, passive=True)
        return q.declaration_result.message_count

    app = App(["--broker", "amqp", "--url", AMQP_URL, "--input", q_in, "--output", q_out,
               "--prefetch", str(a.prefetch)])
    try:
        app.wait_ready()
        t_done, cpu_done = await wait_count(app, count, a.n)
        q = await ch.declare_queue(q_out, passive=True)
        m = await q.get(no_ack=True)
        ok = len(m.body) == a.size and m.body.endswith(b"x")
        report("amqp", a.n, app, t_done, cpu_done, ok)
    finally:
        app.stop()


# ------------------------------------------------------------------ Kafka


async def try_kafka(a):
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    rid = uuid.uuid4().hex[:8]
    t_in, t_out, group = f"fs-{rid}-in", f"fs-{rid}-out", f"fs-{rid}"
    parts = 4
    admin = AdminClient({"bootstrap.servers": KAFKA})
    for t, f in admin.create_topics([NewTopic(t, parts, 1) for t in (t_in, t_out)]).items():
        f.result(30)
    prod = Producer({"bootstrap.servers": KAFKA, "enable.idempotence": True, "linger.ms": 5})
    delivered, errors = [0], []

    def on_delivery(err, _msg):
        if err:
            errors.append(err)
        else:
            delivered[0] += 1

    for i in range(a.n):
        while True:
            try:
                prod.produce(t_in, payload(i, a.size), on_delivery=on_delivery)
                break
            except BufferError:
                prod.poll(0.05)
        prod.poll(0)
    left = prod.flush(60)
    assert left == 0 and not errors and delivered[0] == a.n, (left, delivered[0], errors[:3])
    print(f"kafka: topic {t_in} ({parts} partitions) pre-filled with {delivered[0]}", flush=True)

    # The output is counted by reading it: tansu's high watermarks are not
    # message counts (their sum stays below N), so they cannot be used.
    watch = Consumer({"bootstrap.servers": KAFKA, "group.id": f"{group}-watch", "enable.auto.commit": False})
    watch.assign([TopicPartition(t_out, p, 0) for p in range(parts)])
    seen, sample = [0], []

    async def count():
        for m in watch.consume(5000, 0.05):
            if not m.error():
                seen[0] += 1
                if not sample:
                    sample.append(m.value())
        return seen[0]

    args = ["--broker", "kafka", "--url", KAFKA, "--input", t_in, "--output", t_out,
            "--group", group, "--prefetch", str(a.prefetch)]
    if a.kafka_batch:
        args.append("--batch")
    app = App(args)
    try:
        app.wait_ready()
        t_done, cpu_done = await wait_count(app, count, a.n)
        ok = len(sample[0]) == a.size and sample[0].endswith(b"x")
        name = "kafka (batch)" if a.kafka_batch else "kafka"
        report(name, a.n, app, t_done, cpu_done, ok)
    finally:
        app.stop()
        watch.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("brokers", nargs="*", default=["nats", "amqp", "kafka"])
    p.add_argument("-n", type=int, default=30000)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--prefetch", type=int, default=256)
    p.add_argument("--kafka-batch", action="store_true")
    a = p.parse_args()
    print(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}", flush=True)
    runs = {"nats": try_nats, "amqp": try_amqp, "kafka": try_kafka}
    failed = 0
    for b in a.brokers:
        try:
            asyncio.run(runs[b](a))
        except Exception as e:  # report and go on with the next broker
            failed += 1
            print(f"RESULT {b}: FAILED: {e!r}", flush=True)
    print(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
