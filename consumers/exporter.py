"""The standalone consumers' own HTTP endpoint: ``/metrics`` and ``/healthz``.

``viraltrace consume <name>`` serves its process's Prometheus registry on
``consumer.metrics_host:consumer.metrics_port`` (``0.0.0.0:9464`` by default;
port 0 turns it off). ``viraltrace up`` does not use this: its API's
``/metrics`` already carries the consumers' metrics (one shared registry).

The server is prometheus_client's WSGI app on the standard library's
threading WSGI server, in a daemon thread, so a scrape never waits for the
event loop and a busy loop never delays a scrape.

- ``GET /metrics``: the registry, in the exposition format the scraper asks for.
- ``GET /healthz``: 200 ``{"status": "ok"}`` while the event loop has ticked
  within ``STALL_AFTER_S``; 503 ``{"status": "stalled"}`` otherwise (a blocked
  loop consumes nothing although the process is alive, which is what a
  liveness probe should catch).
- Any other path: 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIEnvironment

import orjson
from prometheus_client import CollectorRegistry, make_wsgi_app

from app.settings import ConsumerSettings

log = logging.getLogger(__name__)

# A loop that has not ticked for this long is reported stalled. Generous: a
# liveness probe that restarts a consumer busy with a large restore does harm.
STALL_AFTER_S = 30.0
TICK_S = 1.0
# How long stop() waits for the server thread after shutting the server down.
STOP_TIMEOUT_S = 5.0


class MetricsEndpointError(Exception):
    """The endpoint cannot listen (address in use, unknown host, ...)."""


class LoopHeartbeat:
    """Records when the event loop last ran; ``run`` is the task that ticks."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.last = clock()

    async def run(self) -> None:
        """Ticks every ``TICK_S`` until cancelled."""
        while True:
            self.last = self.clock()
            await asyncio.sleep(TICK_S)

    def stalled_for(self) -> float | None:
        """Seconds since the last tick when that is over ``STALL_AFTER_S``, else None."""
        age = self.clock() - self.last
        return age if age > STALL_AFTER_S else None


class _QuietHandler(WSGIRequestHandler):
    """No access log line per scrape."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _server_class(family: socket.AddressFamily) -> type[WSGIServer]:
    class Server(ThreadingMixIn, WSGIServer):
        address_family = family
        daemon_threads = True  # a slow scraper never holds up exit

    return Server


class MetricsEndpoint:
    """``/metrics`` and ``/healthz`` for ``registry`` on ``host:port``, in a daemon thread.

    ``start`` binds and returns at once (raises ``MetricsEndpointError`` naming the
    address); ``stop`` blocks until the server thread has ended and the port is free.
    """

    def __init__(
        self, host: str, port: int, registry: CollectorRegistry, heartbeat: LoopHeartbeat
    ) -> None:
        self.host = host
        self.port = port
        self.heartbeat = heartbeat
        self._metrics = make_wsgi_app(registry)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        try:
            family = socket.getaddrinfo(
                self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0][0]
            self._server = make_server(
                self.host, self.port, self._app, _server_class(family), _QuietHandler
            )
        except OSError as exc:
            raise MetricsEndpointError(
                f"cannot serve consumer metrics on {self.host}:{self.port}: "
                f"{exc.strerror or exc}; set VIRALTRACE_CONSUMER_METRICS_PORT to a free "
                f"port, or to 0 to turn the endpoint off"
            ) from exc
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-endpoint", daemon=True
        )
        self._thread.start()
        log.info("consumer metrics on http://%s:%s/metrics", self.host, self.port)

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()  # returns once serve_forever has
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_S)
        self._server = self._thread = None

    def _app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            body: Iterable[bytes] = self._metrics(environ, start_response)
            return body
        if path == "/healthz":
            stalled = self.heartbeat.stalled_for()
            status, answer = (
                ("200 OK", {"status": "ok"})
                if stalled is None
                else ("503 Service Unavailable", {"status": "stalled", "stalled_s": stalled})
            )
            start_response(status, [("Content-Type", "application/json")])
            return [orjson.dumps(answer)]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics or /healthz\n"]


@contextlib.asynccontextmanager
async def serve_consumer_metrics(
    config: ConsumerSettings, registry: CollectorRegistry
) -> AsyncIterator[MetricsEndpoint | None]:
    """Serve ``registry`` on ``config.metrics_host:metrics_port`` while the block runs
    (yields None and serves nothing when the port is 0). Call inside the running loop:
    the heartbeat is a task of it. Raises ``MetricsEndpointError`` if it cannot listen.
    On exit the server is stopped (off the loop) and the port is free again."""
    if config.metrics_port == 0:
        yield None
        return
    heartbeat = LoopHeartbeat()
    endpoint = MetricsEndpoint(config.metrics_host, config.metrics_port, registry, heartbeat)
    endpoint.start()
    ticking = asyncio.create_task(heartbeat.run(), name="metrics-heartbeat")
    try:
        yield endpoint
    finally:
        ticking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticking
        await asyncio.to_thread(endpoint.stop)
