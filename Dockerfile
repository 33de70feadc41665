# syntax=docker/dockerfile:1
#
# skipjack's binaries (api, worker, skipjack) in a small runtime image.
#
#   docker build -t skipjack:local .
#   docker run --rm -e DATABASE_URL=... skipjack:local skipjack migrate
#
# Stage 1 compiles with the Rust toolchain, caching the cargo registry and
# the target directory between builds (BuildKit cache mounts). Stage 2 is
# Debian slim with the three binaries, running as an unprivileged user.
# Migrations and SQL are compiled into the binaries: the image needs no
# other file.

ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY sql ./sql
COPY migrations ./migrations
# The workspace's other member (the load generator and benchmarks): cargo
# reads its manifest; the build below does not compile it.
COPY tools ./tools
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin api --bin worker --bin skipjack \
    && mkdir -p /out \
    && cp target/release/api target/release/worker target/release/skipjack /out/

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home skipjack
COPY --from=build /out/api /out/worker /out/skipjack /usr/local/bin/
USER 10001:10001
# api: 8000 (and /metrics on 8001 when SKIPJACK_METRICS_ADDR says so),
# worker health and metrics: 8080.
EXPOSE 8000 8001 8080
# `skipjack health` GETs /health of the API or the worker, on the ports
# SKIPJACK_API_ADDR and SKIPJACK_WORKER_ADDR name, and exits 0 when one
# answers 2xx: one check for both kinds of container, no curl needed.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["skipjack", "health"]
ENV RUST_LOG=info SKIPJACK_LOG_FORMAT=json
# Choose the binary per container: `api`, `worker` or `skipjack migrate`.
CMD ["api"]
