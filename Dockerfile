# syntax=docker/dockerfile:1.7
#
# mqfn container image.
#
#   docker build -t mqfn .
#   docker run --rm -p 127.0.0.1:9090:9090 mqfn            # runs config/compose.toml
#   docker run --rm mqfn run --config /etc/mqfn/mqfn.toml --admin 0.0.0.0:9090
#
# Needs BuildKit (the default builder of current Docker) for the cache mounts.

############################ builder ############################
FROM rust:1-bookworm AS builder

# rdkafka (via rdkafka-sys) builds its bundled librdkafka with librdkafka's own
# ./configure + make: it needs a C toolchain, python3, pkg-config, zlib and
# OpenSSL headers (Kafka TLS and SASL). The jemalloc allocator
# (tikv-jemalloc-sys) builds with the same C toolchain and make. No cmake: nothing in Cargo.lock needs the cmake binary on
# x86_64/aarch64 Linux (aws-lc-sys uses its cc builder there).
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        build-essential \
        libssl-dev \
        pkg-config \
        python3 \
        zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /build

# The whole workspace (`.` = mqfn, `handlers/` = mqfn-handlers); .dockerignore
# keeps target/ and .git/ out of the context.
COPY . .

# Link-time optimisation: Cargo.toml's release profile uses fat LTO with one
# codegen unit (the smallest, fastest binary; docs/benchmarks.md measures it).
# Its whole-program optimisation runs on one thread at the end of the build,
# with the whole program in memory: about 10 minutes on 2 cores, and a risk of
# running out of memory in a small Docker VM. The image defaults to thin LTO
# with 16 codegen units, which optimises in parallel pieces with far less
# memory; `docker compose build --build-arg LTO=fat --build-arg CODEGEN_UNITS=1`
# builds the benchmarked binary.
ARG LTO=thin
ARG CODEGEN_UNITS=16
ENV CARGO_PROFILE_RELEASE_LTO=${LTO} \
    CARGO_PROFILE_RELEASE_CODEGEN_UNITS=${CODEGEN_UNITS}

# Registry, git checkouts and target/ live in BuildKit cache mounts, so a
# rebuild after a source change only recompiles the workspace crates. The
# target dir is a cache mount, so the binary is copied out in the same step.
RUN --mount=type=cache,id=mqfn-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=mqfn-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=mqfn-target,target=/build/target,sharing=locked \
    cargo build --release --locked --bin mqfn \
 && install -D -m 0755 target/release/mqfn /out/mqfn

############################ runtime ############################
FROM debian:bookworm-slim AS runtime

LABEL org.opencontainers.image.title="mqfn" \
      org.opencontainers.image.description="Functions on message queues (NATS/JetStream, Kafka, RabbitMQ)" \
      org.opencontainers.image.licenses="Apache-2.0"

# ca-certificates: TLS to brokers.
# python3, nodejs: interpreters for process handlers (handlers/examples, handlers/sdk);
# python3-boto3: the resize example's S3 client (the compose stack's uploads route).
# curl: the compose healthcheck (GET /readyz on the admin port).
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        ca-certificates \
        curl \
        libssl3 \
        nodejs \
        python3 \
        python3-boto3 \
 && rm -rf /var/lib/apt/lists/*

# Fixed numeric uid/gid so Kubernetes' runAsNonRoot can verify it (see deploy/k8s).
RUN groupadd --system --gid 10001 mqfn \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin mqfn

WORKDIR /app

COPY --from=builder /out/mqfn /app/mqfn
# Process-handler examples and SDKs (the whole handlers/ dir: it also carries the
# mqfn-handlers crate sources, a few KB, harmless) and the bundled configs.
# Files stay root-owned: the service user can read but not modify them.
COPY handlers/ /app/handlers/
COPY config/ /app/config/

USER 10001:10001

# Admin HTTP: /metrics, /healthz, /readyz.
EXPOSE 9090

ENTRYPOINT ["/app/mqfn"]
CMD ["run", "--config", "config/compose.toml", "--admin", "0.0.0.0:9090"]
