# syntax=docker/dockerfile:1
# automodel-bot. Build: docker build -t automodel-bot .   (GPU: --build-arg TORCH_BUILD=cuda)
# Model weights are never part of the image: they go to the /data volume (HF_HOME) on first use,
# or ahead of time with `docker compose run --rm bot automodel-bot download`.

# --- build: a virtual environment with torch and the bot ---------------------------------------
FROM python:3.11-slim AS build
# cpu: torch from the CPU wheel index (small); cuda: PyPI's default build, with CUDA libraries.
ARG TORCH_BUILD=cpu
# Package extras: "[ray]" adds Ray Serve (INFERENCE=ray; the compose "ray" profile builds with it).
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# constraints.txt pins every library: an image rebuilt later gets the same versions.
COPY requirements-cpu.txt constraints.txt ./
RUN case "$TORCH_BUILD" in \
      cpu) pip install --index-url https://download.pytorch.org/whl/cpu -c constraints.txt -r requirements-cpu.txt ;; \
      cuda) ;; \
      *) echo "TORCH_BUILD must be cpu or cuda, not '$TORCH_BUILD'" >&2; exit 1 ;; \
    esac
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY cogs ./cogs
RUN pip install -c constraints.txt ".${EXTRAS}"

# --- runtime: the virtual environment, a non-root user, the /data volume ---------------------------
FROM python:3.11-slim
RUN useradd --create-home --uid 10001 bot && mkdir /data && chown bot:bot /data
COPY --from=build /opt/venv /opt/venv
# METRICS_HOST=0.0.0.0: reachable through a published port (the default outside Docker is 127.0.0.1).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/data \
    STATE_DIR=/data/state \
    METRICS_HOST=0.0.0.0 \
    METRICS_PORT=9100 \
    ON_CONFIG_ERROR=wait
VOLUME /data
USER bot
WORKDIR /home/bot
EXPOSE 9100
# Liveness only (/healthz): a bot waiting for Discord is alive. Models may load for minutes (PRELOAD).
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('METRICS_PORT', '9100'), timeout=4)"]
# docker stop sends SIGTERM: the bot drains (SHUTDOWN_GRACE, 10 s) and exits 0. Give it time:
# `docker stop -t 30`, or stop_grace_period in docker-compose.yml.
CMD ["automodel-bot", "run"]
