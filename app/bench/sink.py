"""``viraltrace bench sink`` and ``viraltrace bench latency``.

``sink``: how fast the ClickHouse sink writes into the embedded engine (chdb)
on ONE core (the process pins itself to CPU 0; chdb's threads share it).
One run measures, side by side and alternating, for each batch size:

* ``process``: the sink's pure step alone (decode + validate + row), records/s;
* ``insert``: ClickHouse inserts of ready rows alone, rows/s;
* ``sink``: the whole consumer (``ConsumerRunner`` over the in-process bus:
  fetch, process, batch, insert with its dedup token, commit), events/s,
  from the first fetch until every offset is committed.

``latency``: event to queryable with every part on this machine. It runs
``viraltrace up`` (in-process bus, or Kafka with a private noida-db broker)
as a subprocess and sends ``/v1/events`` batches at a steady rate from this
process, then reads the sink's ``viraltrace_consumer_end_to_end_seconds``
histogram (API receipt to insert returned; an insert is queryable when it
returns, materialized views included) and checks every event was counted.
Percentiles are interpolated within histogram buckets, as Prometheus'
``histogram_quantile`` does.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

SINK_CPU = 0
CAMPAIGNS = ("spring", "summer", "autumn", "winter")
TYPES = ("view", "view", "view", "click", "share", "convert")


def bench_events(n: int, seed: int = 1) -> list[bytes]:
    """``n`` realistic v1 events as the API publishes them (JSON bytes)."""
    import orjson

    rng = random.Random(seed)
    now = time.time_ns() // 1_000_000
    out = []
    for _ in range(n):
        ts = now - rng.randrange(0, 86_400_000)
        out.append(
            orjson.dumps(
                {
                    "v": 1,
                    "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    "type": rng.choice(TYPES),
                    "campaign": rng.choice(CAMPAIGNS),
                    "ts": ts,
                    "received_at": ts + rng.randrange(0, 300),
                    "source": "pixel",
                    "token": None,
                    "root": f"{rng.getrandbits(64):016x}",
                    "node": f"{rng.getrandbits(64):016x}",
                    "parent": None,
                    "depth": rng.randrange(0, 6),
                    "channel": rng.choice([None, "x", "email", "whatsapp"]),
                    "url": "https://shop.example/launch",
                    "text": None,
                    "value": None,
                    "reaction": None,
                    "preview_of": None,
                    "visitor": f"{rng.getrandbits(64):016x}",
                    "net": f"{rng.getrandbits(64):016x}",
                    "country": rng.choice([None, "MY", "ID", "NO", "AE"]),
                    "bot": False,
                    "browser": "Chrome",
                    "os": "Android",
                    "device": "Generic Smartphone",
                    "privacy": None,
                }
            )
        )
    return out


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def _run_sink_once(
    settings: Any, clickhouse: Any, values: Sequence[bytes], batch: int
) -> float:
    """Seconds for the sink to write and commit every value (in-process bus)."""
    from prometheus_client import CollectorRegistry

    from app.bus.base import Record
    from app.bus.memory import MemoryBus
    from consumers.base import ConsumerMetrics, run_all
    from consumers.sink.runner import sink_runners

    consumer = settings.consumer.model_copy(
        update={
            "batch_max_records": batch,
            "max_poll_records": batch,
            "batch_max_seconds": 5.0,
            "group_prefix": f"bench-{uuid.uuid4().hex[:8]}",
        }
    )
    settings = settings.model_copy(update={"consumer": consumer})
    bus = MemoryBus(partitions=12, max_records=len(values) + 1)
    topic = settings.kafka.topic
    await bus.publish([Record(topic, f"k{i % 997}".encode(), v) for i, v in enumerate(values)])
    stop = asyncio.Event()
    runners = sink_runners(settings, clickhouse, stop, ConsumerMetrics(CollectorRegistry()), bus)
    started = time.perf_counter()
    task = asyncio.create_task(run_all(runners, stop))
    # The bus has no "caught up" event; the check is cheap and its interval
    # (1 ms) is far below the times measured.
    group = runners[0].group_id
    while not bus.joined(group) or bus.lag(group):  # noqa: ASYNC110
        await asyncio.sleep(0.001)
    elapsed = time.perf_counter() - started
    stop.set()
    await task
    return elapsed


def sink(
    events: Annotated[int, typer.Option(help="events per measured run")] = 300_000,
    batches: Annotated[str, typer.Option(help="batch sizes, comma-separated")] = "10000,50000",
    rounds: Annotated[int, typer.Option(help="alternating rounds per variant")] = 3,
    json_out: Annotated[Path | None, typer.Option("--json", help="write results here")] = None,
) -> None:
    """The sink into chdb on one core: process, insert and the whole consumer."""
    from app.bus.memory import MemoryRecord
    from app.settings import Settings
    from app.storage.clickhouse import ClickHouse
    from app.storage.migrate import MIGRATIONS_DIR, migrate
    from consumers.sink.pipeline import EVENT_COLUMNS, EventsPipeline

    console = Console()
    os.sched_setaffinity(0, {SINK_CPU})
    sizes = [int(b) for b in batches.split(",")]
    values = bench_events(events)
    records = [MemoryRecord("share-events", 0, i, 0, None, v) for i, v in enumerate(values)]
    pipeline = EventsPipeline()
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="viraltrace-bench-sink-") as tmp:
        settings = Settings(environment="development", data_dir=Path(tmp))
        with ClickHouse(f"chdb://{tmp}/clickhouse") as clickhouse:
            migrate(clickhouse, MIGRATIONS_DIR, settings_ttl_days=400)
            rows = [row for record in records for row in pipeline.process(record)]
            for round_no in range(rounds):
                order = sizes if round_no % 2 == 0 else list(reversed(sizes))
                gc.collect()
                started = time.perf_counter()
                for record in records:
                    pipeline.process(record)
                results.setdefault("process", []).append(
                    len(records) / (time.perf_counter() - started)
                )
                for size in order:
                    started = time.perf_counter()
                    for at in range(0, len(rows), size):
                        clickhouse.insert(
                            "events",
                            rows[at : at + size],
                            EVENT_COLUMNS,
                            dedup_token=f"bench-{round_no}-{size}-{at}",
                        )
                    results.setdefault(f"insert batch {size}", []).append(
                        len(rows) / (time.perf_counter() - started)
                    )
                    seconds = asyncio.run(_run_sink_once(settings, clickhouse, values, size))
                    results.setdefault(f"sink batch {size}", []).append(len(values) / seconds)
                clickhouse.command("TRUNCATE TABLE events")
                console.print(f"round {round_no + 1}/{rounds} done")
    table = Table(title=f"Sink into chdb on CPU {SINK_CPU} ({events:,} events per run)")
    for column in ("variant", "median /s", "min /s", "max /s", "vs process"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    process_median = statistics.median(results["process"])
    summary = {}
    for name, rates in results.items():
        median = statistics.median(rates)
        summary[name] = median
        table.add_row(
            name,
            f"{median:,.0f}",
            f"{min(rates):,.0f}",
            f"{max(rates):,.0f}",
            f"{median / process_median:.2f}x",
        )
    console.print(table)
    console.print(f"peak RSS {_rss_mib():.0f} MiB; target: sink >= 50,000 events/s")
    if json_out is not None:
        json_out.write_text(json.dumps({"rates": results, "medians": summary}, indent=2))


# ---- latency -------------------------------------------------------------


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """Prometheus' estimate: ``buckets`` are cumulative (upper bound, count), sorted."""
    total = buckets[-1][1]
    if total == 0:
        return float("nan")
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            width = count - lower_count
            share = (rank - lower_count) / width if width else 1.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


def _buckets(metrics_text: str, name: str, consumer: str) -> list[tuple[float, float]]:
    from prometheus_client.parser import text_string_to_metric_families

    out = []
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == f"{name}_bucket" and sample.labels.get("consumer") == consumer:
                out.append((float(sample.labels["le"]), sample.value))
    return sorted(out)


async def _load(url: str, rate: int, seconds: float, per_request: int) -> int:
    """POST ``rate`` events/s for ``seconds`` in requests of ``per_request``; returns sent."""
    import httpx
    import orjson

    interval = per_request / rate
    sent = 0
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        started = time.perf_counter()
        tick = 0
        pending: set[asyncio.Task[Any]] = set()
        while time.perf_counter() - started < seconds:
            body = orjson.dumps(
                [{"type": "view", "campaign": "latency", "channel": "x"}] * per_request
            )
            request = client.post(
                "/v1/events", content=body, headers={"content-type": "application/json"}
            )
            task = asyncio.ensure_future(request)
            pending.add(task)
            task.add_done_callback(pending.discard)
            sent += per_request
            tick += 1
            delay = started + tick * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        results = await asyncio.gather(*pending, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) or result.status_code != 202:
                raise RuntimeError(f"a load request failed: {result!r}")
    return sent


def _start_up(tmp: Path, env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    log = open(tmp / "up.log", "ab")  # noqa: SIM115 - the child keeps it
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", "up", "--port", str(port), "--data-dir", str(tmp / "d")],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def latency(
    rate: Annotated[int, typer.Option(help="events per second")] = 5_000,
    seconds: Annotated[float, typer.Option(help="sustained for")] = 60.0,
    flush: Annotated[str, typer.Option(help="batch_max_seconds values")] = "1.0,0.5,0.25",
    modes: Annotated[str, typer.Option(help="embedded and/or kafka")] = "embedded,kafka",
    json_out: Annotated[Path | None, typer.Option("--json", help="write results here")] = None,
) -> None:
    """Event to queryable at a steady rate, per bus and flush interval (p50/p95/p99)."""
    import httpx

    from app.bench.ingest import BenchError, _free_port, _start_broker, _stop, _wait_ready

    console = Console()
    rows: list[dict[str, Any]] = []
    for mode in modes.split(","):
        for interval in (float(f) for f in flush.split(",")):
            with tempfile.TemporaryDirectory(prefix="viraltrace-bench-latency-") as name:
                tmp = Path(name)
                env = {k: v for k, v in os.environ.items() if not k.startswith("VIRALTRACE_")}
                env.update(
                    {
                        "VIRALTRACE_CONSUMER_BATCH_MAX_SECONDS": str(interval),
                        "VIRALTRACE_TRACKING_RATE_IP_PER_S": "1e9",
                        "VIRALTRACE_TRACKING_RATE_IP_BURST": "1e9",
                        "VIRALTRACE_TRACKING_RATE_CAMPAIGN_PER_S": "1e9",
                        "VIRALTRACE_TRACKING_RATE_CAMPAIGN_BURST": "1e9",
                        "VIRALTRACE_SERVER_LOG_LEVEL": "warning",
                    }
                )
                broker = None
                if mode == "kafka":
                    broker, bootstrap = _start_broker(tmp)
                    env["VIRALTRACE_KAFKA_BOOTSTRAP"] = bootstrap
                port = _free_port()
                proc = _start_up(tmp, env, port)
                url = f"http://127.0.0.1:{port}"
                try:
                    try:
                        _wait_ready(proc, port, tmp / "up.log")
                    except BenchError as exc:
                        console.print(str(exc))
                        raise typer.Exit(2) from exc
                    sent = asyncio.run(_load(url, rate, seconds, per_request=50))
                    key = (tmp / "d" / "read-key").read_text().strip()
                    auth = {"authorization": f"Bearer {key}"}
                    counted = 0
                    deadline = time.monotonic() + 30
                    while counted < sent and time.monotonic() < deadline:
                        summary = httpx.get(f"{url}/v1/campaigns/latency/summary", headers=auth)
                        counted = summary.json()["views"]
                        time.sleep(0.2)
                    metrics = httpx.get(f"{url}/metrics").text
                finally:
                    proc.send_signal(signal.SIGINT)
                    try:
                        proc.wait(30)
                    finally:
                        _stop(proc)
                        if broker is not None:
                            _stop(broker)
                buckets = _buckets(metrics, "viraltrace_consumer_end_to_end_seconds", "sink")
                row = {
                    "mode": mode,
                    "flush_s": interval,
                    "sent": sent,
                    "counted": counted,
                    **{
                        f"p{int(q * 100)}_s": round(histogram_quantile(q, buckets), 3)
                        for q in (0.5, 0.95, 0.99)
                    },
                }
                rows.append(row)
                console.print(row)
    table = Table(title=f"Event to queryable at {rate:,} events/s for {seconds:.0f} s")
    for column in ("mode", "flush s", "sent", "counted", "p50 s", "p95 s", "p99 s"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            str(row["mode"]),
            str(row["flush_s"]),
            f"{row['sent']:,}",
            f"{row['counted']:,}",
            str(row["p50_s"]),
            str(row["p95_s"]),
            str(row["p99_s"]),
        )
    console.print(table)
    console.print("target: p99 <= 2 s in both modes; counted must equal sent")
    if json_out is not None:
        json_out.write_text(json.dumps(rows, indent=2))
    if any(r["counted"] != r["sent"] for r in rows):
        raise typer.Exit(1)
