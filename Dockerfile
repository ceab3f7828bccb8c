# syntax=docker/dockerfile:1
# One image for every role; the command picks it: serve (default), migrate,
# up, bench, and the subcommands later issues add (consume <name>).

FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Same install step as scripts/test.sh, without the test extra.
COPY pyproject.toml README.md ./
COPY app ./app
COPY consumers ./consumers
RUN python -m pip install --upgrade pip && python -m pip install .

FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/viraltrace viraltrace
COPY --from=build /opt/venv /opt/venv
COPY migrations /opt/viraltrace/migrations
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    VIRALTRACE_DATA_DIR=/var/lib/viraltrace \
    VIRALTRACE_CLICKHOUSE_MIGRATIONS_DIR=/opt/viraltrace/migrations/clickhouse \
    VIRALTRACE_DATABASE_MIGRATIONS_DIR=/opt/viraltrace/migrations/alembic \
    VIRALTRACE_SERVER_HOST=0.0.0.0 \
    VIRALTRACE_SERVER_PORT=8000
USER viraltrace
WORKDIR /var/lib/viraltrace
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
ENTRYPOINT ["viraltrace"]
CMD ["serve"]
