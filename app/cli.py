"""The ``viraltrace`` command."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from app.settings import Settings

cli = typer.Typer(help="viraltrace: live share-cascade tracking.", no_args_is_help=True)


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
            "app.main:app_from_env", factory=True, host=host, port=port, workers=workers,
            access_log=False, log_config=None, lifespan="on",
        )
        return
    if server != "granian":
        raise typer.BadParameter("server must be granian or uvicorn", param_hint="--server")
    from granian.constants import Interfaces, Loops
    from granian.server import Server

    Server(
        "app.main:app_from_env", address=host, port=port, interface=Interfaces.ASGI,
        workers=workers, factory=True, log_access=False, loop=Loops.uvloop,
    ).serve()


@cli.command()
def schema() -> None:
    """Print the JSON Schema of event v1 (the wire contract on the share-events topic)."""
    from app.events import EventV1

    typer.echo(json.dumps(EventV1.model_json_schema(), indent=2, sort_keys=True))


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
