"""Sending one attempt: an httpx client that connects only to vetted addresses.

``VettingBackend`` is an httpcore network backend: asked to connect to a host, it
resolves the host itself, vets every address with the SSRF ``Guard`` and opens the
TCP connection to a vetted address, never to the name. TLS still verifies the
certificate for the host name (httpcore passes the URL's host as SNI and for the
check), and the ``Host`` header is the URL's. So what was vetted is what is
connected to, whatever the DNS answers next (DNS rebinding).

The client follows no redirects, ignores proxy environment variables (a proxy would
connect on our behalf, past the guard) and bounds a whole attempt by ``timeout_s``.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import typing
from datetime import datetime

import httpcore
import httpx

from app.webhooks import WebhookError
from app.webhooks.outbox import EXCERPT_CHARS, Claimed
from app.webhooks.policy import AttemptResult
from app.webhooks.signing import sign
from app.webhooks.ssrf import Guard, UnsafeUrl, parse_url

USER_AGENT = "viraltrace-webhooks/0.1 (+https://www.standardwebhooks.com/)"
# Read at most this much of an answer: the log keeps EXCERPT_CHARS characters.
_EXCERPT_BYTES = 4 * EXCERPT_CHARS


class VettingBackend(httpcore.AsyncNetworkBackend):
    """Connects to a vetted address of the requested host (see the module docstring).
    Raises ``UnsafeUrl`` (passed through httpx unchanged) when the host is refused."""

    def __init__(self, guard: Guard, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.guard = guard
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self.guard.vet(host, port)
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self.inner.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None  # vet() returns at least one address
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise UnsafeUrl("webhooks never connect to unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class VettedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over a connection pool whose network backend is ``VettingBackend``.

    Relies on ``AsyncHTTPTransport`` keeping its pool in ``_pool`` (httpx is pinned;
    the DNS-rebinding test fails if that ever changes).
    """

    def __init__(
        self,
        backend: VettingBackend,
        max_connections: int,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=5.0,
            network_backend=backend,
        )


def new_client(
    guard: Guard,
    timeout_s: float,
    max_connections: int,
    verify: ssl.SSLContext | bool = True,
) -> httpx.AsyncClient:
    """The notifier's client. ``verify``: the TLS trust (default: the system's CAs)."""
    return httpx.AsyncClient(
        transport=VettedTransport(VettingBackend(guard), max_connections, verify),
        follow_redirects=False,
        trust_env=False,
        timeout=httpx.Timeout(timeout_s),
        headers={"user-agent": USER_AGENT},
    )


async def send_attempt(
    client: httpx.AsyncClient,
    guard: Guard,
    claimed: Claimed,
    *,
    now: datetime,
    timeout_s: float,
) -> AttemptResult:
    """POSTs one signed attempt and says how it went. Never raises for anything the
    receiver, the network or the guard does; blocks at most ``timeout_s``."""
    started = time.perf_counter()

    def elapsed_ms() -> int:
        return round((time.perf_counter() - started) * 1000)

    try:
        parse_url(claimed.url, guard.allowlist)
        headers = sign(claimed.message_id, now, claimed.payload, claimed.secrets)
    except WebhookError as exc:
        outcome: typing.Literal["refused", "invalid"] = (
            "refused" if isinstance(exc, UnsafeUrl) else "invalid"
        )
        return AttemptResult(outcome, error=exc.reason, retriable=exc.retriable)
    headers["content-type"] = "application/json"
    try:
        async with (
            asyncio.timeout(timeout_s),
            client.stream(
                "POST", claimed.url, content=claimed.payload.encode(), headers=headers
            ) as response,
        ):
            excerpt = await _excerpt(response)
    except UnsafeUrl as exc:
        return AttemptResult("refused", error=exc.reason, latency_ms=elapsed_ms())
    except (TimeoutError, httpx.TimeoutException):
        return AttemptResult(
            "timeout", error=f"no answer within {timeout_s:g} s", latency_ms=elapsed_ms()
        )
    except (httpx.HTTPError, OSError) as exc:
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return AttemptResult("network_error", error=error, latency_ms=elapsed_ms())
    status = response.status_code
    outcome_for_status: typing.Literal["delivered", "gone", "http_error"] = (
        "delivered" if 200 <= status < 300 else "gone" if status == 410 else "http_error"
    )
    error_text = None
    if outcome_for_status == "http_error":
        error_text = f"receiver answered {status}"
        if response.is_redirect:
            error_text += " (redirects are not followed)"
    return AttemptResult(
        outcome_for_status,
        status=status,
        error=error_text,
        latency_ms=elapsed_ms(),
        excerpt=excerpt,
        retry_after=response.headers.get("retry-after"),
    )


async def _excerpt(response: httpx.Response) -> str | None:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= _EXCERPT_BYTES:
            break
    if not size:
        return None
    return b"".join(chunks)[:_EXCERPT_BYTES].decode("utf-8", "replace")[:EXCERPT_CHARS]
