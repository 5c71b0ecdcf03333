# syntax=docker/dockerfile:1
# Palisade container image.
#   docker build -t palisade .
#   docker run --rm -p 127.0.0.1:6432:6432 -v $PWD/my.toml:/etc/palisade/palisade.toml:ro palisade
# The default config (config/docker.toml) points at the docker-compose demo cluster.

# ---- build stage -----------------------------------------------------------
FROM rust:1-bookworm AS builder
# protoc: etcd-client's build compiles etcd's .proto files.
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The cache mounts keep the crate registry and the target directory between
# builds (BuildKit); the binary is copied out of the cached target dir.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
 && install -m 0755 target/release/palisade /usr/local/bin/palisade

# ---- runtime stage ---------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates: TLS to backends/etcd; postgresql-client: pg_isready for the
# healthcheck (and psql for poking at the proxy from inside the container).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates postgresql-client \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --create-home --home-dir /var/lib/palisade palisade
COPY --from=builder /usr/local/bin/palisade /usr/local/bin/palisade
COPY config/docker.toml /etc/palisade/palisade.toml
USER palisade
# Working directory for anything Palisade persists (e.g. its epoch state file).
WORKDIR /var/lib/palisade
EXPOSE 6432
ENTRYPOINT ["palisade"]
CMD ["--config", "/etc/palisade/palisade.toml"]
