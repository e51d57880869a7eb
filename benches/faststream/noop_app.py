#!/usr/bin/env python3
"""FastStream 0.7 competitor for mqfn-bench: a no-op subscriber that republishes
each message's body unchanged to the output, at-least-once, in one process.

    python3 noop_app.py --broker nats  --url nats://127.0.0.1:4222 \
        --input SUBJ_IN --output SUBJ_OUT --stream STREAM --durable NAME \
        [--output-stream STREAM_OUT] [--prefetch 256]
    python3 noop_app.py --broker amqp  --url amqp://guest:guest@127.0.0.1:5672/%2f \
        --input QUEUE_IN --output QUEUE_OUT [--prefetch 256]
    python3 noop_app.py --broker kafka --url 127.0.0.1:9092 \
        --input TOPIC_IN --output TOPIC_OUT --group GROUP [--batch] [--prefetch 256]

At-least-once everywhere: FastStream publishes a handler's return value to the
`@broker.publisher(...)` targets *inside* the subscriber's middleware stack, and
its acknowledgement middleware acks only when that stack exits without an
error, i.e. after the publish call has returned (PubAck / publisher confirm /
delivery report awaited). `AckPolicy.NACK_ON_ERROR` makes a failed publish
redeliver the input instead of dropping it (the default, REJECT_ON_ERROR,
would terminate / dead-letter it).

Prints exactly `ready` on stdout once the broker and its subscriber have
started; every log line goes to stderr (FastStream's default access logger
writes to stdout, so the broker gets a stderr logger of its own).
"""

import argparse
import asyncio
import logging
import sys

from faststream import AckPolicy, FastStream
from faststream.message import StreamMessage


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--broker", required=True, choices=["nats", "amqp", "kafka"])
    p.add_argument("--url", required=True)
    p.add_argument("--input", required=True, help="subject / queue / topic to consume")
    p.add_argument("--output", required=True, help="subject / queue / topic to publish to")
    p.add_argument("--stream", help="NATS: the existing JetStream stream of --input")
    p.add_argument("--durable", help="NATS: durable consumer name")
    p.add_argument(
        "--output-stream",
        help="NATS: the stream of --output (default: --stream); JetStream publish checks it",
    )
    p.add_argument("--group", help="Kafka: consumer group id (use a fresh one per run)")
    p.add_argument(
        "--batch",
        action="store_true",
        help="Kafka: batch subscriber + batch publisher (one commit per poll of up to --prefetch)",
    )
    p.add_argument(
        "--prefetch",
        type=int,
        default=256,
        help="NATS pull batch size / AMQP prefetch count / Kafka batch max_records (default 256, mqfn's window)",
    )
    p.add_argument(
        "--log-level",
        default="WARNING",
        help="level of the broker logger (INFO shows FastStream's per-message access log)",
    )
    a = p.parse_args(argv)
    if a.broker == "nats" and not (a.stream and a.durable):
        p.error("--broker nats needs --stream and --durable")
    if a.broker == "kafka" and not a.group:
        p.error("--broker kafka needs --group")
    if a.prefetch < 1:
        p.error("--prefetch must be >= 1")
    return a


def stderr_logger(level: str) -> logging.Logger:
    log = logging.getLogger("noop_app")
    log.setLevel(level.upper())
    log.propagate = False
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(h)
    return log


async def raw_body(msg: StreamMessage) -> bytes:
    """Custom decoder: the body as it came. Without a content-type FastStream's
    default decoder tries JSON, which would change what the handler gets (and
    return it re-encoded); a handler parameter `msg: NatsMessage` instead costs
    a thread-pool hop per message (FastDepends runs the sync Context field in
    a worker thread)."""
    return msg.body


def nats_broker(a, log):
    from faststream.nats import ConsumerConfig, JStream, NatsBroker, PullSub

    broker = NatsBroker(a.url, logger=log)

    # The streams exist already (the bench makes them): declare=False, so
    # FastStream neither creates nor updates them.
    in_stream = JStream(a.stream, declare=False)
    out_stream = JStream(a.output_stream or a.stream, declare=False)

    @broker.subscriber(
        a.input,
        stream=in_stream,
        durable=a.durable,
        # Pull consumer: fetch up to --prefetch messages, handle them
        # concurrently, fetch again when the whole batch is done.
        pull_sub=PullSub(batch_size=a.prefetch, timeout=1.0),
        # Explicit acks (nats-py's default ack policy), the same ack wait and
        # max_ack_pending as mqfn and the bench's baseline.
        config=ConsumerConfig(ack_wait=30, max_ack_pending=max(2 * a.prefetch, 1000)),
        ack_policy=AckPolicy.NACK_ON_ERROR,  # nack = redeliver (term would drop it)
        decoder=raw_body,
    )
    # A publisher with a stream goes through JetStream publish and awaits the
    # PubAck; without `stream` FastStream would use a core NATS publish (no ack).
    @broker.publisher(a.output, stream=out_stream)
    async def noop(body: bytes) -> bytes:
        return body

    return broker


def amqp_broker(a, log):
    from faststream.rabbit import Channel, RabbitBroker, RabbitQueue

    # The default channel (used to publish) has publisher confirms on
    # (Channel.publisher_confirms=True): publish awaits the broker's confirm.
    broker = RabbitBroker(a.url, logger=log)

    @broker.subscriber(
        # durable queue made by the bench: declare=False is a passive declare
        RabbitQueue(a.input, durable=True, declare=False),
        # the consumer gets a channel of its own, with mqfn's window as prefetch;
        # aio-pika runs each delivery as its own task, so up to --prefetch
        # messages are in flight
        channel=Channel(prefetch_count=a.prefetch),
        ack_policy=AckPolicy.NACK_ON_ERROR,  # nack = requeue
        decoder=raw_body,
    )
    # Default exchange, routing key = the queue name; persistent like the input.
    @broker.publisher(RabbitQueue(a.output, durable=True, declare=False), persist=True)
    async def noop(body: bytes) -> bytes:
        return body

    return broker


def kafka_broker(a, log):
    from faststream.confluent import KafkaBroker

    # Idempotent producer (acks=all), as the bench's baseline producer;
    # FastStream's linger_ms default is already 0.
    broker = KafkaBroker(a.url, enable_idempotence=True, logger=log)

    # Any ack policy but ACK_FIRST turns enable.auto.commit off: the message's
    # ack() is consumer.commit() of what the last poll returned, done after the
    # publisher awaited its delivery report. FastStream refuses max_workers > 1
    # in that mode ("Max workers not work with manual commit mode"), so the
    # per-message subscriber handles one message at a time.
    sub_opts = dict(
        group_id=a.group,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,  # tansu's group join waits half of it
        heartbeat_interval_ms=2000,
        ack_policy=AckPolicy.NACK_ON_ERROR,  # nack = seek back, redeliver
        decoder=raw_body,  # batch: the list of bodies
    )

    if a.batch:
        # One poll of up to --prefetch records, published as one batch (each
        # record's delivery awaited), then one commit for the poll.
        @broker.subscriber(a.input, batch=True, max_records=a.prefetch, **sub_opts)
        @broker.publisher(a.output, batch=True)
        async def noop_batch(bodies: list[bytes]) -> tuple[bytes, ...]:
            return tuple(bodies)

    else:

        @broker.subscriber(a.input, **sub_opts)
        @broker.publisher(a.output)
        async def noop(body: bytes) -> bytes:
            return body

    return broker


def main(argv=None):
    a = parse_args(argv)
    log = stderr_logger(a.log_level)
    build = {"nats": nats_broker, "amqp": amqp_broker, "kafka": kafka_broker}[a.broker]
    broker = build(a, log)
    # The app's own lifecycle log ("FastStream app started ...") is on stderr.
    app = FastStream(broker)

    @app.after_startup
    async def say_ready() -> None:
        # broker connected, subscriber started (Kafka: subscribed; the group
        # join may still be under way, as for the bench's own baseline)
        sys.stdout.write("ready\n")
        sys.stdout.flush()

    asyncio.run(app.run())  # SIGINT / SIGTERM: graceful stop


if __name__ == "__main__":
    main()
