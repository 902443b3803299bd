# rollout-gate image: one image for every console command (worker, router, replay, ...).
# Needs BuildKit (the default builder since Docker 23) for RUN --mount.
#
#   docker build -t rollout-gate .
#   docker run --rm -e ROLLOUT_GATE_KAFKA_BOOTSTRAP=kafka:9092 rollout-gate            # the worker
#   docker run --rm rollout-gate --help                                              # the other commands
#
# Two stages: the build stage turns the project and every dependency into wheels, at exactly the
# versions in uv.lock (exported with their hashes, which pip checks); a compiler is there only for a
# dependency without a wheel for this platform. The runtime stage installs those wheels offline and
# carries no compiler, no pip cache and no source tree.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Only what the distribution is built from (no .dockerignore needed, no tests or .venv in the context
# copy). README.md* : the readme is optional for the build; the glob keeps the COPY valid without it.
ARG UV_VERSION=0.13.8
RUN pip install "uv==${UV_VERSION}"
COPY pyproject.toml uv.lock README.md* ./
COPY gates/ gates/
COPY stream/ stream/
COPY connectors/ connectors/
# --frozen: the lock as committed, never re-resolved; the otel extra (the OpenTelemetry bridge's
# protobuf decoder) is in, the dev and litellm extras are left out
RUN uv export --frozen --extra otel --no-emit-project --format requirements-txt -o /tmp/requirements.txt \
 && pip wheel --require-hashes --wheel-dir /wheels -r /tmp/requirements.txt \
 && pip wheel --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="rollout-gate" \
      org.opencontainers.image.description="Canary gates for LLM rollouts: Kafka events in, promote/halt decisions out" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/rollout-gate \
    ROLLOUT_GATE_DATA_DIR=/var/lib/rollout-gate \
    ROLLOUT_GATE_METRICS_PORT=9108
# A fixed numeric uid/gid so that Kubernetes' runAsNonRoot can verify it and volume ownership
# (fsGroup) is predictable.
RUN groupadd --system --gid 10001 rollout \
 && useradd --system --uid 10001 --gid rollout --home-dir /var/lib/rollout-gate \
            --shell /usr/sbin/nologin rollout \
 && mkdir -p /var/lib/rollout-gate /etc/rollout-gate \
 && chown rollout:rollout /var/lib/rollout-gate
# /wheels holds exactly the locked versions built in the build stage, so there is nothing to pin here.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels /wheels/*.whl
WORKDIR /var/lib/rollout-gate
USER 10001:10001
# 9108 worker metrics/health, 8080 router, 8090 verdict API.
EXPOSE 9108 8080 8090
ENTRYPOINT ["rollout-gate"]
CMD ["worker"]
