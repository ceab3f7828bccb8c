# syntax=docker/dockerfile:1
# One image for every role; the command picks it (ENTRYPOINT is `viraltrace`):
#   serve                the API (default); one worker per container, scale with replicas
#   consume <name>       a consumer: sink, cascades, buzz, alerts or notifier
#   migrate              ClickHouse, then control-plane migrations (one-shot)
#   up --host 0.0.0.0    everything in one process, on the embedded defaults
# Build from the repository root: `docker build -t viraltrace .` (deploy/README.md).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# The install step of scripts/venv.sh (what scripts/test.sh and scripts/up.sh run):
# upgrade pip, then install the project; here without the test extra and without
# -e, since the runtime stage carries the installed package, not the source tree.
# Package data (schemas, lexicons) is declared in pyproject.toml.
# tests/test_deploy.py keeps these steps in step with scripts/venv.sh.
# setup.py compiles the cascades consumer's hot modules with mypyc (a build
# requirement): this stage needs a C compiler, the runtime stage does not, since
# it copies the built venv. Without gcc the install would fall back to pure Python.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml setup.py README.md ./
COPY app ./app
COPY consumers ./consumers
RUN python -m pip install --upgrade pip \
 && python -m pip install . \
 && python -I -c 'import consumers.cascades as c; assert c.implementation() == "compiled", c.implementation()'

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 viraltrace \
 && useradd --system --uid 10001 --gid 10001 --create-home \
      --home-dir /var/lib/viraltrace viraltrace
COPY --from=build /opt/venv /opt/venv
# The migrations are not Python package data: the image carries the folder
# (with max_migration.txt) and points the settings at it.
COPY migrations /opt/viraltrace/migrations
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRALTRACE_DATA_DIR=/var/lib/viraltrace \
    VIRALTRACE_CLICKHOUSE_MIGRATIONS_DIR=/opt/viraltrace/migrations/clickhouse \
    VIRALTRACE_DATABASE_MIGRATIONS_DIR=/opt/viraltrace/migrations/alembic \
    VIRALTRACE_SERVER_HOST=0.0.0.0 \
    VIRALTRACE_SERVER_PORT=8000
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
WORKDIR /var/lib/viraltrace
# 8000: the API (serve, up). 9464: a consumer's Prometheus metrics (consume <name>).
EXPOSE 8000 9464
# Probes what this container's command serves: /healthz for serve and up, the
# metrics port for consume <name>, nothing for one-shot commands (app/healthcheck.py).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-m", "app.healthcheck"]
ENTRYPOINT ["viraltrace"]
CMD ["serve"]
