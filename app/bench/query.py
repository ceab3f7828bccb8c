"""``viraltrace bench query``: the dashboard query API over HTTP on 10,000,000 events.

Load (into an embedded engine, chdb, under a temporary or given directory):

* ``--events`` events made inside ClickHouse (``INSERT ... SELECT FROM
  numbers()``), so the rollups' materialized views fill exactly as the sink's
  inserts fill them: 5 campaigns, 10 event types (views most), 5 channels
  (one of them none), 300,000 distinct visitors, event times spread evenly
  over the 2 days before now;
* one ``--nodes`` cascade (a random recursive tree: each share under a
  uniformly chosen earlier one, mean depth ~ ln n) plus 200 small ones, with
  half a click per share, through the REAL cascades consumer step
  (``CascadesPipeline``), written every 20,000 events as the consumer writes;
* then background merges are given up to 2 minutes to settle.

Measure: the real app (``create_asgi``) served by uvicorn in a thread of this
process, requests from ``httpx.Client`` over loopback TCP, one at a time,
with an operator read key; the clock covers one request (send to body read).
Three instances of the app (the variants below) serve at once. Each endpoint
of each variant gets one request with cold caches (reported as ``first``),
then ``--requests`` rounds each send one request to every endpoint of every
variant in turn, so that the shared machine's load changes touch them alike;
p50/p95/p99 are over those. Variants:

* ``summary`` and ``timeseries`` (1 day at 1m; ``shares``, also ``events``
  and ``visitors``) as configured by default (the per-bucket counts cache on),
  and with the cache off (``rollup_cache_buckets=0``: every request merges
  every uniqExact state of its range);
* ``cascade`` (first page, 1,000 nodes, of the big cascade) with the tree
  cache off (the target) and on.

``--check`` exits 1 when a target of issue 7 is missed: summary and
timeseries (shares) p99 <= 50 ms with the default settings, the cascade's
first page p99 <= 200 ms without the tree cache.
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from collections.abc import Iterator

    import httpx

    from app.storage.clickhouse import ClickHouse

CAMPAIGNS = ["bench-0", "bench-1", "bench-2", "bench-3", "bench-4"]
# Weighted by repetition: mostly views.
TYPES = ["view"] * 8 + ["click"] * 4 + ["share"] * 2 + ["signup", "convert", "reaction",
         "comment", "preview", "report", "unsubscribe"]  # fmt: skip
CHANNELS = [None, "whatsapp", "x", "email", "facebook"]
VISITORS = 300_000
SPAN_MS = 2 * 86_400_000
READ_KEY = "bench-read-key-0123456789abcdef"
TARGETS_MS = {"summary": 50.0, "timeseries shares": 50.0, "cascade first page": 200.0}

_EVENTS_SQL = """
INSERT INTO events (v, event_id, type, campaign, ts, received_at, source, visitor, channel,
                    bot, _topic, _partition, _offset)
SELECT 1, generateUUIDv4(number),
       {types:Array(String)}[cityHash64(number, 1) % length({types:Array(String)}) + 1],
       {campaigns:Array(String)}[cityHash64(number, 2) % length({campaigns:Array(String)}) + 1],
       fromUnixTimestamp64Milli(toInt64({end_ms:Int64} - cityHash64(number, 3) % {span_ms:UInt64}),
                                'UTC') AS t,
       t, 'pixel', leftPad(lower(hex(cityHash64(number, 4) % {visitors:UInt64})), 16, '0'),
       {channels:Array(Nullable(String))}[cityHash64(number, 5) % 5 + 1],
       false, 'share-events', 0, number
FROM numbers({start:UInt64}, {count:UInt64})
"""


def load_events(ch: ClickHouse, n: int, end_ms: int, console: Console) -> float:
    """``n`` events, 2,000,000 per insert (each insert feeds the rollup views once)."""
    started = time.perf_counter()
    chunk = 2_000_000
    for start in range(0, n, chunk):
        ch.command(
            _EVENTS_SQL,
            {
                "types": TYPES,
                "campaigns": CAMPAIGNS,
                "channels": CHANNELS,
                "end_ms": end_ms,
                "span_ms": SPAN_MS,
                "visitors": VISITORS,
                "start": start,
                "count": min(chunk, n - start),
            },
        )
        console.print(
            f"  events: {min(start + chunk, n):,} ({time.perf_counter() - started:.0f} s)"
        )
    return time.perf_counter() - started


def _share(campaign: str, root: int, node: int, parent: int | None, depth: int, ts: int) -> bytes:
    import uuid

    import orjson

    return orjson.dumps(
        {
            "v": 1, "event_id": str(uuid.uuid4()), "type": "share", "campaign": campaign,
            "ts": ts, "received_at": ts + 40,
            "source": "api", "token": None, "root": f"{root:016x}", "node": f"{node:016x}",
            "parent": None if parent is None else f"{parent:016x}", "depth": depth,
            "channel": CHANNELS[node % 5], "url": None, "text": None, "value": None,
            "reaction": None, "preview_of": None, "visitor": f"{node ^ 0x5A5A:016x}",
            "net": None, "country": None, "bot": False, "browser": None, "os": None,
            "device": None, "privacy": None,
        }
    )  # fmt: skip


def _click(campaign: str, root: int, node: int, ts: int, visitor: int) -> bytes:
    import uuid

    import orjson

    return orjson.dumps(
        {
            "v": 1, "event_id": str(uuid.uuid4()), "type": "click", "campaign": campaign,
            "ts": ts, "received_at": ts + 40, "source": "link", "token": None,
            "root": f"{root:016x}", "node": f"{node:016x}", "parent": None, "depth": None,
            "channel": None, "url": None, "text": None, "value": None, "reaction": None,
            "preview_of": None, "visitor": f"{visitor:016x}", "net": None, "country": None,
            "bot": False, "browser": None, "os": None, "device": None, "privacy": None,
        }
    )  # fmt: skip


def cascade_records(
    campaign: str, n: int, rng: random.Random, start_ms: int, span_ms: int
) -> list[tuple[bytes, bytes]]:
    """(key, value) of a random recursive tree of ``n`` shares, then half a click per share."""
    ids = [rng.getrandbits(63) | 1 for _ in range(n)]
    depth = [0] * n
    out = [(f"{ids[0]:016x}".encode(), _share(campaign, ids[0], ids[0], None, 0, start_ms))]
    step = max(1, span_ms // n)
    for i in range(1, n):
        parent = rng.randrange(i)
        depth[i] = depth[parent] + 1
        ts = start_ms + i * step
        out.append((out[0][0], _share(campaign, ids[0], ids[i], ids[parent], depth[i], ts)))
    for _ in range(n // 2):
        i = rng.randrange(n)
        ts = start_ms + i * step + rng.randrange(1, 60_000)
        out.append((out[0][0], _click(campaign, ids[0], ids[i], ts, rng.getrandbits(63) | 1)))
    return out


def load_cascades(ch: ClickHouse, nodes: int, end_ms: int) -> tuple[str, float]:
    """The big cascade and 200 small ones through ``CascadesPipeline``; (big root, seconds)."""
    import asyncio

    from app.bus.memory import MemoryRecord
    from app.settings import CascadeSettings
    from consumers.cascades.pipeline import CascadesPipeline

    started = time.perf_counter()
    rng = random.Random(7)
    start_ms = end_ms - SPAN_MS // 2
    big = cascade_records(CAMPAIGNS[0], nodes, rng, start_ms, SPAN_MS // 2 - 600_000)
    records = list(big)
    for i in range(200):
        size = rng.randrange(2, 100)
        records += cascade_records(CAMPAIGNS[i % 5], size, rng, start_ms + i * 60_000, 600_000)
    pipeline = CascadesPipeline(CascadeSettings(), ch)

    async def run() -> None:
        rows: list[Any] = []
        for offset, (key, value) in enumerate(records):
            rows.extend(pipeline.process(MemoryRecord("share-events", 0, offset, 0, key, value)))
            if (offset + 1) % 20_000 == 0:
                await pipeline.write(rows, f"bench-query-{offset}")
                rows = []
        await pipeline.write(rows, "bench-query-last")

    asyncio.run(run())
    return big[0][0].decode(), time.perf_counter() - started


def settle_merges(ch: ClickHouse, limit_s: float = 120.0) -> float:
    """Wait (at most ``limit_s``) until the engine runs no merge; returns the wait."""
    started = time.perf_counter()
    while time.perf_counter() - started < limit_s:
        [(running,)] = ch.query_rows("SELECT count() FROM system.merges")
        if not running:
            break
        time.sleep(1.0)
    return time.perf_counter() - started


@contextmanager
def serving(ch: ClickHouse, data_dir: Path, **query: Any) -> Iterator[str]:
    """The app on a free loopback port, uvicorn in a thread; yields its base URL."""
    import asyncio
    import socket

    import uvicorn

    from app.db import migrate as control_plane
    from app.db.session import database_url
    from app.main import create_asgi
    from app.settings import Settings

    settings = Settings(
        environment="test",
        data_dir=data_dir,
        query={"read_keys": READ_KEY, **query},
        tracking={"token_keys": {1: "bench-token-key-0123456789abcdef0123"},
                  "salt_secret": "bench-salt-secret-0123456789abcdef0123"},
    )  # fmt: skip
    data_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(control_plane.upgrade(database_url(settings)))  # an empty control plane
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(
        create_asgi(settings, clickhouse=ch), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="bench-query-api", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the API did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def _timed(get: Callable[[], int]) -> float:
    started = time.perf_counter()
    status = get()
    elapsed = (time.perf_counter() - started) * 1000
    if status != 200:
        raise RuntimeError(f"HTTP {status}")
    return elapsed


def summarize(first: float, times: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(sorted(times), n=100, method="inclusive")
    return {"n": len(times), "first": first, "p50": cuts[49], "p95": cuts[94], "p99": cuts[98],
            "max": max(times)}  # fmt: skip


def load(ch: ClickHouse, events: int, nodes: int, console: Console) -> dict[str, Any]:
    """Migrate and load; what was loaded (for ``--data-dir`` reuse)."""
    from app.storage.migrate import MIGRATIONS_DIR, migrate

    migrate(ch, MIGRATIONS_DIR, settings_ttl_days=400)
    end_ms = time.time_ns() // 1_000_000
    console.print(f"loading {events:,} events and a {nodes:,}-node cascade ...")
    events_s = load_events(ch, events, end_ms, console)
    root, cascades_s = load_cascades(ch, nodes, end_ms)
    merges_s = settle_merges(ch)
    [(total,)] = ch.query_rows("SELECT count() FROM events")
    parts = ch.query_rows(
        "SELECT table, count() FROM system.parts WHERE active AND database = currentDatabase()"
        " AND table IN ('events', 'events_per_minute', 'events_per_hour', 'cascade_nodes')"
        " GROUP BY table ORDER BY table"
    )
    console.print(
        f"loaded {total:,} events in {events_s:.0f} s, cascades in {cascades_s:.0f} s,"
        f" merges settled in {merges_s:.0f} s; active parts: "
        + ", ".join(f"{t} {n}" for t, n in parts)
    )
    return {"events": events, "nodes": nodes, "root": root, "end_ms": end_ms}


def query(
    events: Annotated[int, typer.Option(help="events to load")] = 10_000_000,
    nodes: Annotated[int, typer.Option(help="nodes of the big cascade")] = 100_000,
    requests: Annotated[int, typer.Option(help="timed requests per endpoint")] = 200,
    uncached_requests: Annotated[
        int, typer.Option(help="timed requests per endpoint with the rollup cache off")
    ] = 20,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="keep the data here (default: a temporary directory); reused when"
            " it already holds the same --events and --nodes"
        ),
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write results here")] = None,
    check: Annotated[bool, typer.Option(help="exit 1 when a target is missed")] = False,
) -> None:
    """The query API's latency over HTTP on a loaded embedded engine (docs/benchmarks.md)."""
    from app.storage.clickhouse import ClickHouse

    console = Console()
    with tempfile.TemporaryDirectory(prefix="vt-bench-query-") as tmp:
        base = data_dir or Path(tmp)
        ch = ClickHouse(f"chdb://{(base / 'clickhouse').resolve()}")
        try:
            marker = base / "bench-query.json"
            loaded = json.loads(marker.read_text()) if marker.exists() else {}
            if loaded.get("events") == events and loaded.get("nodes") == nodes:
                console.print(f"reusing the data loaded in {base} (delete it to reload)")
            else:
                loaded = load(ch, events, nodes, console)
                marker.write_text(json.dumps(loaded))
            results = run_requests(
                ch, base, loaded["root"], loaded["end_ms"], requests, uncached_requests
            )
        finally:
            ch.close()
    table = Table(title=f"query API, {events:,} events, {nodes:,}-node cascade (ms)")
    for column in ("endpoint", "variant", "n", "first", "p50", "p95", "p99", "target"):
        table.add_column(column, justify="left" if column in ("endpoint", "variant") else "right")
    missed = []
    for (name, variant), r in results.items():
        target = TARGETS_MS.get(name) if variant in ("default", "tree cache off") else None
        ok = target is None or r["p99"] <= target
        if not ok:
            missed.append(f"{name} ({variant}): p99 {r['p99']:.1f} ms > {target:.0f} ms")
        table.add_row(
            name, variant, str(int(r["n"])),
            *(f"{r[k]:.1f}" for k in ("first", "p50", "p95", "p99")),
            "" if target is None else f"<= {target:.0f} {'ok' if ok else 'MISSED'}",
        )  # fmt: skip
    console.print(table)
    if json_out is not None:
        json_out.write_text(
            json.dumps({f"{n} | {v}": r for (n, v), r in results.items()}, indent=2)
        )
    if missed:
        console.print("missed: " + "; ".join(missed))
        if check:
            raise typer.Exit(1)


def _getter(client: httpx.Client, path: str, **params: str) -> Callable[[], int]:
    return lambda: client.get(path, params=params).status_code


def run_requests(
    ch: ClickHouse, base: Path, root: str, end_ms: int, n: int, n_uncached: int
) -> dict[tuple[str, str], dict[str, float]]:
    """Every endpoint and variant, interleaved round by round (so the machine's
    load changes touch them all alike); see the module docstring."""
    import httpx

    from app.storage.query import iso_s

    end = end_ms // 1000 - end_ms // 1000 % 60
    day = {"from": iso_s(end - 86_400), "to": iso_s(end)}
    campaign = f"/v1/campaigns/{CAMPAIGNS[0]}"
    auth = {"authorization": f"Bearer {READ_KEY}"}
    servers = {
        "default": {"tree_cache_size": 0},
        "rollup cache off": {"rollup_cache_buckets": 0, "tree_cache_size": 0},
        "tree cache on": {"tree_cache_size": 8},
    }
    with ExitStack() as stack:
        clients = {
            variant: stack.enter_context(
                httpx.Client(
                    base_url=stack.enter_context(
                        serving(ch, base / variant.replace(" ", "-"), **settings)
                    ),
                    headers=auth,
                    timeout=120,
                )
            )
            for variant, settings in servers.items()
        }
        calls: list[tuple[str, str, Callable[[], int], int]] = []
        for variant in ("default", "rollup cache off"):
            client = clients[variant]
            count = n if variant == "default" else n_uncached
            calls.append(("summary", variant, _getter(client, f"{campaign}/summary"), count))
            for metric in ("shares", "events", "visitors"):
                series = _getter(client, f"{campaign}/timeseries", metric=metric, **day)
                calls.append((f"timeseries {metric}", variant, series, count))
        for variant, name in (("default", "tree cache off"), ("tree cache on", "tree cache on")):
            page = _getter(clients[variant], f"/v1/cascades/{root}")
            calls.append(("cascade first page", name, page, n))
        first = {(name, variant): _timed(get) for name, variant, get, _ in calls}
        times: dict[tuple[str, str], list[float]] = {key: [] for key in first}
        for round_ in range(n):
            for name, variant, get, count in calls:
                if round_ < count:
                    times[(name, variant)].append(_timed(get))
    return {key: summarize(first[key], times[key]) for key in first}
