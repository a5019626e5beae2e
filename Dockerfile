# syntax=docker/dockerfile:1
# IACE container image. Used by the cluster's nodes iace-1, iace-2 and iace-3 in
# docker-compose.yml (profile `app`): docker compose --profile app up --build

FROM rust:1-bookworm AS builder
WORKDIR /src
# The whole workspace is copied (cargo resolves every member), but only the server is built:
# its normal dependencies carry no fake and no test-only feature (.ci/run checks that). No
# database is needed at build time: the store uses plain `sqlx::query` calls (none of the
# compile-time-checked `query!` macros), and `sqlx::migrate!` embeds migrations/.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p iace --bin iace \
 && install -m 0755 target/release/iace /usr/local/bin/iace

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin iace
COPY --from=builder /usr/local/bin/iace /usr/local/bin/iace
# Metrics on their own port: reachable by a scraper on the container network, published
# only where the deployment chooses (never on the API's load balancer).
ENV IACE_BIND=0.0.0.0:8080 \
    IACE_METRICS_BIND=0.0.0.0:9464 \
    DATABASE_URL=postgres://iace:iace@postgres:5432/iace \
    REDIS_URL=redis://redis:6379 \
    RUST_LOG=info
EXPOSE 8080 9464
USER iace
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/iace"]
CMD ["serve"]
