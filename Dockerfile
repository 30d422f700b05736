# syntax=docker/dockerfile:1.7
# A release build of chatapp, then a small non-root runtime image.
#
# The build caches crates and the target directory in BuildKit cache mounts,
# so a change to the sources (or a new binary or test target) rebuilds only
# what changed; no dependency layer to keep in step with Cargo.toml.
FROM rust:1.95.0-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY sql ./sql
COPY web ./web
COPY benches ./benches
COPY tests ./tests
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin chatapp \
    && cp target/release/chatapp /usr/local/bin/chatapp

FROM debian:12.12-slim
RUN useradd --system --uid 10001 --no-create-home chatapp
COPY --from=build /usr/local/bin/chatapp /usr/local/bin/chatapp
COPY config.sample.yaml /etc/chatapp/config.sample.yaml
USER 10001
ENV PORT=8080
EXPOSE 8080
# SIGTERM starts the drain (http.drain_delay_secs, 5 s): /readyz says 503,
# then connections close; give the container longer than that to stop.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["chatapp", "healthcheck"]
ENTRYPOINT ["chatapp"]
CMD ["serve"]
