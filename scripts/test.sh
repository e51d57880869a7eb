#!/usr/bin/env bash
# The test command: everything the project's tests need, then every test.
#
#   scripts/test.sh
#
# 1. brokers: NATS, RabbitMQ and a Kafka-compatible broker (tansu) on
#    127.0.0.1, started when missing (scripts/services.sh), and moto, the S3
#    server under the private tansu that tests/reliability_kafka.rs restarts;
# 2. the handler SDK tests (Python unittest, Node's test runner) and the
#    deploy cross-checks (compose, Prometheus and its alert rules, Grafana,
#    the Kustomize overlays), with the checkers they need;
# 3. the shipped configs, run and driven with each broker's standard client
#    as their comments say (tests/shipped_configs.py), and the route tests
#    of the example handlers (`mqfn test handlers/examples/tests/*.test.toml`);
# 4. the Rust tests: unit tests and the integration tests in tests/, which
#    talk to the real brokers.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/usr/local/sbin"

scripts/services.sh

# Build dependencies of the bundled librdkafka (TLS/SASL need OpenSSL headers).
if ! pkg-config --exists openssl zlib 2>/dev/null; then
  apt-get update -qq && apt-get install -y -qq libssl-dev zlib1g-dev pkg-config
fi

# Checkers of generated files: the shells that parse `mqfn completions`, man
# for `mqfn man`, promtool (Debian's prometheus) for the alert rules' tests.
need=()
# kubectl renders the Kustomize overlays (kustomize v5: kubectl 1.27+; Debian
# bookworm's kubernetes-client is older, so prefer a current kubectl on PATH).
for tool in zsh:zsh fish:fish man:man-db promtool:prometheus kubectl:kubernetes-client; do
  command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
done
if ((${#need[@]})); then
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

python3 -c 'import yaml' 2>/dev/null || python3 -m pip install --quiet pyyaml
command -v kubernetes-validate >/dev/null || python3 -m pip install --quiet kubernetes-validate
command -v check-jsonschema >/dev/null || python3 -m pip install --quiet check-jsonschema
# The AsyncAPI parser that checks `mqfn asyncapi` (tests/validate.rs).
[ -d tests/asyncapi/node_modules/@asyncapi/parser ] \
  || npm ci --silent --no-audit --no-fund --prefix tests/asyncapi
# The standard clients that tests/shipped_configs.py tries the configs with.
python3 -c 'import nats, aio_pika, confluent_kafka' 2>/dev/null \
  || python3 -m pip install --quiet nats-py aio-pika confluent-kafka
# moto's S3 server stores the log of the private Kafka broker (tansu) that
# tests/reliability_kafka.rs kills and restarts.
python3 -c 'import moto.server' 2>/dev/null || python3 -m pip install --quiet 'moto[server]'

echo "== handler SDKs (Python)"
python3 -m unittest discover -s tests/sdk -p 'test_*.py'
echo "== handler SDKs (Node)"
node --test tests/sdk/
echo "== deploy cross-checks"
python3 -m unittest tests/deploy_check.py

echo "== shipped configs, with the standard clients"
cargo build --locked --bin mqfn
python3 -m unittest tests/shipped_configs.py

echo "== route tests of the example handlers (mqfn test)"
for cases in handlers/examples/tests/*.test.toml; do
  target/debug/mqfn test "$cases"
done

echo "== Rust"
cargo test --workspace --locked
