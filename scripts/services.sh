#!/usr/bin/env bash
# Make sure every broker the tests talk to answers on 127.0.0.1:
#   NATS with JetStream on 4222, RabbitMQ on 5672, Kafka (tansu) on 9092.
# NATS and RabbitMQ come with the machine; they are restarted if stopped.
# Kafka is installed and started by scripts/kafka-broker.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

wait_port() {
  local name=$1 port=$2
  for _ in $(seq 1 120); do
    port_open "$port" && return 0
    sleep 0.5
  done
  echo "services.sh: $name does not answer on 127.0.0.1:$port" >&2
  exit 1
}

if ! port_open 4222; then
  echo "services.sh: starting nats-server (JetStream) on 4222" >&2
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
  wait_port NATS 4222
fi

if ! port_open 5672; then
  echo "services.sh: starting rabbitmq-server on 5672" >&2
  rabbitmq-server -detached
  wait_port RabbitMQ 5672
fi

scripts/kafka-broker.sh
