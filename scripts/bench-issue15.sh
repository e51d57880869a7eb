#!/usr/bin/env bash
# Every measurement of issue 15 in one go (docs/benchmarks.md, "The config
# space"): the sweep on each broker, latency at half the bare rate and at
# 100 msg/s, waking from zero, 1,000 routes, and handlers against
# FastStream. Reports go to DIR (default: a new temp dir), one Markdown file
# per measurement, progress to DIR/*.err.
#
#   scripts/bench-issue15.sh [DIR]
#
# Needs the brokers (scripts/services.sh, scripts/kafka-broker.sh) and, for
# the FastStream rows, pip install 'faststream[nats,rabbit,confluent]==0.7.8'.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-$(mktemp -d)}
mkdir -p "$out"
cargo build --release -p mqfn-bench -p mqfn --bins
bench() { local name=$1; shift; echo "== $name" >&2
  target/release/mqfn-bench --mqfn target/release/mqfn "$@" > "$out/$name.md" 2> "$out/$name.err"; }
one="--latency-secs 0 --backlog 0 --no-idle --no-handlers"
lat="--pairs 1 --backlog 0 --no-idle --no-handlers"

# The sweep. NATS against a bare client that sends the same Nats-Msg-Id.
bench sweep-nats  --broker nats  --sweep -n 200000 --pairs 2 --baseline-msg-id
bench sweep-amqp  --broker amqp  --sweep -n 50000  --pairs 2
bench sweep-kafka --broker kafka --sweep -n 300000 --pairs 1
# NATS with the default dedup, against the plain and the same-id bare client.
bench nats-dedup-plain --broker nats -n 200000 --pairs 3 $one
bench nats-dedup-same  --broker nats -n 200000 --pairs 3 $one --baseline-msg-id
# Latency: half the bare rate, then 100 msg/s; Kafka also with latency = "low".
bench latency-nats  --broker nats  -n 100000 $lat --latency-secs 5 --baseline-msg-id
bench latency-amqp  --broker amqp  -n 30000  $lat --latency-secs 5
bench latency-kafka --broker kafka -n 100000 $lat --latency-secs 5
bench latency100-nats  --broker nats  -n 2000 $lat --latency-secs 10 --latency-rate 100 --baseline-msg-id
bench latency100-amqp  --broker amqp  -n 2000 $lat --latency-secs 10 --latency-rate 100
bench latency100-kafka --broker kafka -n 2000 $lat --latency-secs 10 --latency-rate 100
bench latency100-kafka-low --broker kafka -n 2000 $lat --latency-secs 10 --latency-rate 100 --kafka-low-latency
# Waking from zero, 1,000 routes, handlers in other languages.
bench wake      --broker all --wake 20
bench wake-kafka-low --broker kafka --wake 20 --kafka-low-latency
bench many      --many-routes 1000 --quiet-secs 60
bench vs        --broker all --vs-faststream -n 30000 --pairs 1
echo "reports in $out" >&2
