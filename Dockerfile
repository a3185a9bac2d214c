# syntax=docker/dockerfile:1
# Multi-stage build: compile the binary, fetch the pinned ONNX Runtime library and models, then a
# slim runtime image that runs as a non-root user.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY host ./host
RUN cargo build --release --locked -p switchboard \
 && strip target/release/switchboard

FROM debian:bookworm-slim AS models
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip unzip ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY models /models
RUN bash /models/fetch.sh

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libstdc++6 libsoxr0 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin switchboard \
 && mkdir -p /data/recordings /data/personas \
 && chown -R switchboard:switchboard /data
COPY --from=build /src/target/release/switchboard /usr/local/bin/switchboard
COPY --from=models /models/libonnxruntime.so.1.31.1 /models/silero_vad.onnx /models/smart-turn-v3.2-cpu.onnx /opt/switchboard/models/
ENV SWITCHBOARD_MODELS_DIR=/opt/switchboard/models \
    ORT_DYLIB_PATH=/opt/switchboard/models/libonnxruntime.so.1.31.1 \
    RECORDINGS_DIR=/data/recordings \
    PERSONAS_DIR=/data/personas \
    HOST=0.0.0.0 \
    PORT=7860
USER switchboard
WORKDIR /data
VOLUME ["/data/recordings", "/data/personas"]
EXPOSE 7860
ENTRYPOINT ["/usr/local/bin/switchboard"]
CMD ["serve"]
