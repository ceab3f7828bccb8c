"""``viraltrace bench pixel``: the pixel's own per-hit work, without a server.

Drives ``PixelIngest`` (capture, then the staged drain: rate limit, validate,
enrich, serialize, publish to an in-process bus) with synthetic ASGI scopes
shaped like ``bench ingest``'s wrk requests: a valid share token, a page URL,
a fresh ``eid`` on every hit, one user agent and one client address. The
server's own cost (granian, the GIF answer) is not in it.

Variants, measured round-robin in one process so machine noise hits both:

* ``fast``: the pixel path servers run (``PixelIngest(state)``);
* ``reference``: the generic stages (pydantic ``parse_event``,
  ``build_event``), which is what the pixel ran before the fast path, and
  what the fast path is tested against (tests/test_pixel_fastpath.py).

For instruction counts, which do not depend on the machine's noise, run one
variant under callgrind, and again with ``--variant none`` (same scopes, no
ingest), both with ``--hits N --rounds 1``; the difference divided by N is
the per-hit cost (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import statistics
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import typer

VARIANTS = ("fast", "reference")
# Builds the scopes and runs no ingest: the callgrind run to subtract.
NO_INGEST = "none"
CAMPAIGN = "bench"
USER_AGENT = (
    b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    b"(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)


def _scopes(token: str, count: int) -> list[Mapping[str, Any]]:
    query = urlencode(
        {"c": CAMPAIGN, "e": "view", "ch": "email", "t": token, "u": "https://shop.example/page"}
    )
    scopes: list[Mapping[str, Any]] = []
    for n in range(count):
        eid = secrets.token_hex(16)
        eid = f"{eid[:8]}-{eid[8:12]}-4{eid[13:16]}-8{eid[17:20]}-{eid[20:]}"
        scopes.append(
            {
                "type": "http",
                "method": "GET",
                "path": "/p.gif",
                "query_string": f"{query}&eid={eid}&n={n}".encode(),
                "headers": [
                    (b"host", b"127.0.0.1:8000"),
                    (b"user-agent", USER_AGENT),
                    (b"accept", b"image/avif,image/webp,*/*"),
                ],
                "client": ("203.0.113.7", 50_000 + n % 10_000),
            }
        )
    return scopes


def pixel(
    hits: Annotated[int, typer.Option(min=0, help="synthetic hits per variant and round")] = 20_000,
    batch: Annotated[
        int, typer.Option(min=1, help="hits captured per drain (a loop turn under load)")
    ] = 32,
    rounds: Annotated[int, typer.Option(min=1, help="rounds; the median is reported")] = 5,
    variant: Annotated[
        list[str] | None, typer.Option(help=f"only these variants (repeatable): {VARIANTS}")
    ] = None,
) -> None:
    """Per-hit CPU of the pixel's own work (no server), fast path vs the generic stages."""
    from app.bus.memory import MemoryBus
    from app.ingest import PixelIngest
    from app.main import create_app
    from app.settings import Settings
    from app.tokens import TokenSigner

    chosen = list(variant or VARIANTS)
    unknown = sorted(set(chosen) - {*VARIANTS, NO_INGEST})
    if unknown:
        raise typer.BadParameter(f"unknown variants {unknown}", param_hint="--variant")
    key = secrets.token_urlsafe(36)
    settings = Settings(
        environment="test",
        data_dir=Path(tempfile.mkdtemp(prefix="viraltrace-bench-pixel-")),
        tracking={
            "token_keys": {1: key},
            "salt_secret": secrets.token_urlsafe(36),
            "rate_ip_per_s": 1e9,
            "rate_ip_burst": 1e9,
            "rate_campaign_per_s": 1e9,
            "rate_campaign_burst": 1e9,
        },
    )
    token = TokenSigner({1: key.encode()}, 1).mint_root(CAMPAIGN).raw
    state = create_app(settings).state.vt
    scopes = _scopes(token, hits)

    def make(name: str) -> PixelIngest:
        # ``reference`` only exists where the fast path does; elsewhere (an older
        # checkout run under callgrind) the default ingest is the only one.
        return PixelIngest(state, reference=True) if name == "reference" else PixelIngest(state)

    async def run_round(name: str, warmup: bool = False) -> float:
        state.bus = MemoryBus(4)  # fresh: the retained records would grow otherwise
        if name == NO_INGEST:
            return 0.0
        ingest = state.pixels = make(name)
        submit, drain = ingest.submit, ingest.drain
        count = min(hits, batch * 4) if warmup else hits
        started = time.perf_counter_ns()
        for start in range(0, count, batch):
            for scope in scopes[start : start + batch]:
                submit(scope)
            drain()
        elapsed = time.perf_counter_ns() - started
        await asyncio.sleep(0)  # the drains submit scheduled find nothing left
        return elapsed / max(count, 1)

    async def main() -> dict[str, list[float]]:
        results: dict[str, list[float]] = {name: [] for name in chosen}
        for name in chosen:  # warm-up: first-use costs (ua-parser's regexes, caches)
            await run_round(name, warmup=True)
        for round_no in range(rounds):
            order = chosen if round_no % 2 == 0 else chosen[::-1]
            for name in order:
                results[name].append(await run_round(name))
        return results

    results = asyncio.run(main())
    typer.echo(
        f"bench pixel: {hits} hits x {rounds} rounds, batch {batch}, pid {os.getpid()}, "
        f"CPU affinity {sorted(os.sched_getaffinity(0))}"
    )
    medians = {}
    for name, values in results.items():
        medians[name] = statistics.median(values)
        rounds_text = " ".join(f"{v / 1000:.2f}" for v in values)
        typer.echo(
            f"  {name:<10} median {medians[name] / 1000:6.2f} us/hit  (rounds: {rounds_text})"
        )
    if "fast" in medians and "reference" in medians and hits:
        typer.echo(f"  fast / reference: {medians['fast'] / medians['reference']:.3f}")
