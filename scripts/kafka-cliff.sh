#!/usr/bin/env bash
# The Kafka cliff check (docs/benchmarks.md, "The Kafka cliff"):
#   scripts/kafka-cliff.sh target/release/mqfn after
# An echo route with workers.max = 256 on a fresh one-partition topic and
# group; 50,000 records published once the route is ready; prints the time
# until all are settled and the partition pauses in the debug log.
set -uo pipefail
bin=$1; label=$2
dir=$(mktemp -d); id=cl$RANDOM$RANDOM
port=$((20000 + RANDOM % 20000))
cat > $dir/c.toml <<TOML
[admin]
listen = "127.0.0.1:$port"
[brokers.k]
kind = "kafka"
bootstrap = "127.0.0.1:9092"
[brokers.k.properties]
"session.timeout.ms" = "6000"
[[routes]]
name = "r"
source = { broker = "k", topic = "$id.in", group = "$id", create = { partitions = 1 } }
handler = "echo"
output = { broker = "k", topic = "$id.out", create = { partitions = 1 } }
dead_letter = { broker = "k", topic = "$id.dlq", create = { partitions = 1 } }
workers = { min = 128, max = 256 }
TOML
RUST_LOG=warn,mqfn::brokers::kafka=debug $bin run --config $dir/c.toml 2> $dir/log & pid=$!
for i in $(seq 1 300); do curl -sf -m 1 127.0.0.1:$port/readyz > /dev/null && break; sleep 0.2; done
sleep 4   # the group assignment follows the subscription (about half the session timeout)
start=$(date +%s.%N)
RUST_LOG=warn $bin publish --config $dir/c.toml --broker k --to $id.in --count 50000 --concurrency 1024 x
n=0
for i in $(seq 1 600); do
  n=$(curl -sf -m 1 127.0.0.1:$port/status | python3 -c 'import json,sys; print(json.load(sys.stdin)["routes"][0]["succeeded"])' 2>/dev/null || echo 0)
  [ "$n" -ge 50000 ] && break
  sleep 0.2
done
end=$(date +%s.%N)
kill $pid; wait $pid 2>/dev/null
echo "$label: $n settled in $(python3 -c "print(round($end-$start,2))") s ($(python3 -c "print(round($n/($end-$start)))") msg/s, publish included); pauses=$(grep -c 'window full; paused' $dir/log) resumes=$(grep -c 'drained; resumed' $dir/log) raised=$(grep -c 'below what the route buffers' $dir/log)"
