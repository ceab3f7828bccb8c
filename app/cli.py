"""The ``viraltrace`` command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from app.bench import bench
from app.cli_control import mount as mount_control_plane
from app.settings import Settings
from app.simulate.cli import simulate
from app.storage.clickhouse import StorageError, redact_dsn
from consumers.cli import consume_app

cli = typer.Typer(help="viraltrace: live share-cascade tracking.", no_args_is_help=True)
cli.add_typer(bench, name="bench", help="Benchmarks (rerunnable; see docs/benchmarks.md).")
cli.add_typer(consume_app, name="consume", help="Run a Kafka consumer (its own process).")
mount_control_plane(cli)
cli.command()(simulate)


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address")] = None,
    port: Annotated[int | None, typer.Option(help="bind port")] = None,
    workers: Annotated[int | None, typer.Option(help="worker processes")] = None,
    server: Annotated[str | None, typer.Option(help="granian or uvicorn")] = None,
) -> None:
    """Run the HTTP API (tracking endpoints) until interrupted."""
    from app.logs import configure_logging

    settings = Settings()
    srv = settings.server
    host, port = host or srv.host, port if port is not None else srv.port
    workers, server = workers or srv.workers, server or srv.server
    configure_logging(srv.log_level)
    if server == "uvicorn":
        import uvicorn

        uvicorn.run(
            "app.main:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            access_log=False,
            log_config=None,
            lifespan="on",
        )
        return
    if server != "granian":
        raise typer.BadParameter("server must be granian or uvicorn", param_hint="--server")
    from granian.constants import Interfaces, Loops
    from granian.server import Server

    Server(
        "app.main:app_from_env",
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=workers,
        factory=True,
        log_access=False,
        loop=Loops.uvloop,
    ).serve()


@cli.command()
def up(
    host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="bind port")] = 8000,
    data_dir: Annotated[
        Path | None, typer.Option(help="where state lives (default ./.viraltrace)")
    ] = None,
) -> None:
    """Run everything in one process on the embedded defaults.

    The bus is the in-process one unless VIRALTRACE_KAFKA_BOOTSTRAP is set.
    """
    import asyncio

    from app.embedded import Embedded, ensure_read_key
    from app.logs import configure_logging

    settings = Settings() if data_dir is None else Settings(data_dir=data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings, read_key = ensure_read_key(settings)
    configure_logging(settings.server.log_level)
    bus = f"Kafka at {settings.kafka.bootstrap}" if settings.kafka.bootstrap else "in-process bus"
    base = f"http://{host}:{port}"
    typer.echo(f"viraltrace up: {bus}, ClickHouse {redact_dsn(settings.clickhouse_dsn)}")
    typer.echo(f"  data     {settings.data_dir.resolve()}")
    typer.echo(f"  pixel    {base}/p.gif?c=<campaign>")
    typer.echo(f"  events   {base}/v1/events   shares {base}/v1/shares")
    typer.echo(f"  summary  {base}/v1/campaigns/<campaign>/summary")
    typer.echo(f"  live     {base}/dashboard   snippet {base}/t.js")
    if read_key is not None:
        typer.echo(f"  read key {read_key}   (from {settings.data_dir / 'read-key'})")
    typer.echo(f"  health   {base}/healthz     metrics {base}/metrics   docs {base}/docs")
    typer.echo("Ctrl-C stops it.")
    from consumers.base import tune_gc

    tune_gc(settings.consumer)  # the consumers run in this process
    try:
        asyncio.run(Embedded(settings, host, port).run())
    except StorageError as exc:
        typer.echo(f"up failed: {exc}", err=True)
        raise typer.Exit(1) from exc


@cli.command()
def migrate(
    print_sql: Annotated[
        bool,
        typer.Option(
            "--print-sql",
            help="print the ClickHouse DDL for the configured mode (VIRALTRACE_CLICKHOUSE_CLUSTER "
            "set or not) and exit; connects to nothing",
        ),
    ] = False,
) -> None:
    """Apply pending migrations: ClickHouse, then the control-plane database (idempotent).

    Run it before starting the API and the consumers; they never migrate by themselves.
    """
    import asyncio

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from app.db.session import database_url
    from app.embedded import apply_database_migrations, apply_migrations
    from app.storage.clickhouse import ClickHouse

    settings = Settings()
    if print_sql:
        from app.storage.migrate import MIGRATIONS_DIR, render_sql

        try:
            sql = render_sql(
                settings.clickhouse.migrations_dir or MIGRATIONS_DIR,
                settings_ttl_days=settings.clickhouse.events_ttl_days,
                cluster=settings.clickhouse.cluster_spec(),
            )
        except StorageError as exc:
            typer.echo(f"migrate failed: {exc}", err=True)
            raise typer.Exit(1) from exc
        typer.echo(sql, nl=False)
        return
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        with ClickHouse(settings.clickhouse_dsn) as clickhouse:
            applied = apply_migrations(settings, clickhouse)
    except StorageError as exc:
        typer.echo(f"migrate failed: {exc}", err=True)
        raise typer.Exit(1) from exc
    if applied:
        typer.echo("ClickHouse applied: " + ", ".join(applied))
    else:
        typer.echo("ClickHouse schema is up to date")
    url = make_url(database_url(settings)).render_as_string(hide_password=True)
    try:
        revisions = asyncio.run(apply_database_migrations(settings))
    except (SQLAlchemyError, OSError) as exc:
        typer.echo(f"migrate failed on {url}: {exc}", err=True)
        raise typer.Exit(1) from exc
    if revisions:
        typer.echo(f"database {url} applied: " + ", ".join(revisions))
    else:
        typer.echo(f"database {url} is up to date")


@cli.command()
def schema() -> None:
    """Print the JSON Schema of event v1 (the wire contract on the share-events topic)."""
    from app.events import EventV1

    typer.echo(json.dumps(EventV1.model_json_schema(), indent=2, sort_keys=True))


@cli.command("score-text")
def score_text(
    languages: Annotated[
        str | None,
        typer.Option(help="comma-separated languages to detect among, e.g. en,ms"),
    ] = None,
) -> None:
    """Score JSON lines {"text": ..., "lang"?: ...} from stdin: one JSON line out per line in.

    Exits 1 if any line was bad (its output line is {"error": {...}}), else 0.
    """
    from app.sentiment import SUPPORTED_LANGUAGES, default_scorer
    from app.sentiment.jsonl import score_stream
    from app.sentiment.scorer import canonical_language

    wanted: list[str] | None = None
    if languages is not None:
        wanted = [code.strip() for code in languages.split(",") if code.strip()]
        unknown = [c for c in wanted if canonical_language(c) not in SUPPORTED_LANGUAGES]
        if not wanted or unknown:
            supported = ",".join(sorted(SUPPORTED_LANGUAGES))
            raise typer.BadParameter(
                f"unsupported {','.join(unknown) or '(none given)'}; supported: {supported}",
                param_hint="--languages",
            )
    stdin = typer.get_binary_stream("stdin")
    stdout = typer.get_binary_stream("stdout")
    bad = score_stream(stdin, stdout, default_scorer(), wanted)
    raise typer.Exit(1 if bad else 0)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
