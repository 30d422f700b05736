# syntax=docker/dockerfile:1
# Build stage: compile a release binary, with dependencies in their own cached layer.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
# Stub sources so `cargo build` compiles only the dependencies here.
RUN mkdir -p src sql benches \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > benches/realtime.rs \
    && cargo build --release --locked --bin chatapp
COPY src ./src
COPY sql ./sql
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin chatapp

# Runtime stage: a small Debian with just the binary, running as a non-root user.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home chatapp
COPY --from=build /src/target/release/chatapp /usr/local/bin/chatapp
COPY config.sample.yaml /etc/chatapp/config.sample.yaml
USER chatapp
ENV PORT=8080
EXPOSE 8080
ENTRYPOINT ["chatapp"]
CMD ["serve"]
