# syntax=docker/dockerfile:1
# pushgate gateway image.
#
#   docker build -t pushgate .
#   docker run --rm -p 3000:3000 pushgate
#
# Build stage: the official Rust image on Debian bookworm. Only the files the
# gateway's build needs are copied (the workspace manifests, src/ and the
# loadtest member's manifest and sources, which the workspace names).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY loadtest ./loadtest
# Cache mounts keep the registry and the target dir between builds; the
# binary is copied out of the cached target dir in the same step. The release
# profile keeps line tables (debug = 1) for backtraces; they are compressed,
# not stripped.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p pushgate --bin pushgate \
    && objcopy --compress-debug-sections target/release/pushgate /usr/local/bin/pushgate

# Run stage: Debian slim with the gateway binary, as an unprivileged user.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 pushgate \
    && useradd --system --uid 10001 --gid pushgate --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin pushgate
COPY --from=build /usr/local/bin/pushgate /usr/local/bin/pushgate
USER pushgate:pushgate
ENV PUSHGATE_LISTEN=0.0.0.0:3000 \
    RUST_LOG=info
EXPOSE 3000
# The gateway drains on SIGTERM for PUSHGATE_SHUTDOWN_TIMEOUT_MS (10 s by
# default): give the container more than that to stop (docker stop -t 20,
# compose stop_grace_period).
STOPSIGNAL SIGTERM
# /readyz over bash's /dev/tcp: the image needs no curl.
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${PUSHGATE_LISTEN##*:} && printf 'GET /readyz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && IFS= read -r -t 2 line <&3 && [[ $line == 'HTTP/1.1 200'* ]]"]
ENTRYPOINT ["/usr/local/bin/pushgate"]
