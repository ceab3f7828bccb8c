"""The embedded mode: the sink on the in-process bus, the query API, and ``viraltrace up``.

Real ClickHouse engine (chdb) throughout; the in-process bus is the real
embedded bus, not a fake.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from app.bus.base import Record
from app.bus.memory import MemoryBus
from app.storage.clickhouse import ClickHouse
from consumers.base import ConsumerMetrics, run_all
from consumers.sink.pipeline import EventsPipeline
from consumers.sink.runner import sink_runners
from tests.apphelpers import running_app
from tests.conftest import make_settings, require_env
from tests.procs import ApiProcess
from tests.test_sink import check_counts, scalar, wait_for, workload

pytestmark = pytest.mark.clickhouse

READ_KEY = "test-read-key-0123456789"


async def test_sink_on_the_in_process_bus_counts_exactly_and_frees_the_bus(
    tmp_path: Path, migrated: ClickHouse
) -> None:
    settings = make_settings(
        tmp_path, consumer={"batch_max_records": 5_000, "batch_max_seconds": 0.2}
    )
    bus = MemoryBus(partitions=4)
    messages, expected = workload(20_000, 2_000, seed=21)
    topic = settings.kafka.topic
    await bus.publish([Record(topic, key, value) for key, value in messages])
    stop = asyncio.Event()
    registry = CollectorRegistry()
    runners = sink_runners(settings, migrated, stop, ConsumerMetrics(registry), bus)
    task = asyncio.create_task(run_all(runners, stop))
    try:

        async def drained() -> tuple[bool, Any]:
            lags = [bus.lag(r.group_id) for r in runners]
            return not any(lags) and bus.retained == 0, (lags, bus.retained)

        await wait_for(drained, 60, "both groups to commit everything and the bus to be freed")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    await check_counts(migrated, expected)
    # The 3 poison messages went to the DLQ topic on the same bus, then into events_dlq.
    reasons = await migrated.aquery_rows("SELECT reason FROM events_dlq ORDER BY reason")
    assert [r for (r,) in reasons] == ["bad_json", "bad_schema", "bad_schema"]
    committed = registry.get_sample_value(
        "viraltrace_consumer_committed_records_total", {"consumer": "sink"}
    )
    assert committed == len(messages)


def query_settings(tmp_path: Path, **overrides: Any) -> Any:
    return make_settings(tmp_path, query={"read_keys": READ_KEY}, **overrides)


async def test_summary_needs_a_read_key(tmp_path: Path, migrated: ClickHouse) -> None:
    settings = query_settings(tmp_path)
    async with running_app(settings, clickhouse=migrated) as (_, client):
        url = "/v1/campaigns/spring/summary"
        missing = await client.get(url)
        assert missing.status_code == 401
        assert missing.json()["error"]["field"] == "authorization"
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = await client.get(url, headers={"authorization": "Bearer not-the-key-at-all"})
        assert wrong.status_code == 401
        assert wrong.json()["error"]["reason"] == "bad_key"
        basic = await client.get(url, headers={"authorization": f"Basic {READ_KEY}"})
        assert basic.status_code == 401


async def test_summary_counts_from_the_rollups(tmp_path: Path, migrated: ClickHouse) -> None:
    settings = query_settings(tmp_path)
    messages, expected = workload(3_000, 300, seed=4)
    pipeline = EventsPipeline(migrated)
    rows = []
    for offset, (_, value) in enumerate(messages):
        try:
            event = pipeline.process(_record(value, offset))
        except Exception:
            continue  # the workload's poison messages
        rows.extend(event)
    await pipeline.write(rows, "test-summary")
    auth = {"authorization": f"Bearer {READ_KEY}"}
    async with running_app(settings, clickhouse=migrated) as (_, client):
        for campaign in ("spring", "summer"):
            got = await client.get(f"/v1/campaigns/{campaign}/summary", headers=auth)
            assert got.status_code == 200, got.text
            body = got.json()
            want = {t: n for (c, t), n in expected.items() if c == campaign}
            assert {t: n for t, n in body["events"].items() if n} == want
            assert body["views"] == want.get("view", 0)
            assert body["shares"] == want.get("share", 0)
            visitors = await scalar(
                migrated,
                f"SELECT uniqExact(visitor) FROM events FINAL WHERE campaign = '{campaign}'",
            )
            # uniq is approximate, exact at this size (40 visitors).
            assert body["unique_visitors"] == visitors
            assert body["as_of"].endswith("Z")
        unknown = await client.get("/v1/campaigns/never-seen/summary", headers=auth)
        assert unknown.status_code == 200
        assert unknown.json()["views"] == 0
        bad = await client.get("/v1/campaigns/Bad%20Name/summary", headers=auth)
        assert bad.status_code == 422
        assert bad.json()["error"]["field"] == "path.campaign"


def _record(value: bytes, offset: int) -> Any:
    from aiokafka.structs import ConsumerRecord

    return ConsumerRecord("share-events", 0, offset, 0, 0, None, value, None, 0, 0, [])


async def test_summary_without_a_reader_says_why(tmp_path: Path) -> None:
    settings = query_settings(tmp_path)  # chdb DSN and no client: the sink owns the engine
    auth = {"authorization": f"Bearer {READ_KEY}"}
    async with running_app(settings) as (_, client):
        got = await client.get("/v1/campaigns/spring/summary", headers=auth)
        assert got.status_code == 503
        assert got.json()["error"]["reason"] == "no_reader"
        assert "retry-after" in got.headers


def test_read_keys_are_comma_separated_and_long_enough(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, query={"read_keys": f"{READ_KEY}, {READ_KEY}-2"})
    assert [k.get_secret_value() for k in settings.query.read_keys] == [READ_KEY, f"{READ_KEY}-2"]
    with pytest.raises(ValueError, match="16 characters"):
        make_settings(tmp_path, query={"read_keys": "short"})


def up_env() -> dict[str, str]:
    """The environment of a user's shell: no viraltrace settings, no test services."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIRALTRACE_")}
    env["VIRALTRACE_SERVER_LOG_LEVEL"] = "warning"
    return env


def test_up_from_a_clean_data_dir_counts_a_pixel_within_2s_and_stops_cleanly(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "fresh"
    log_path = tmp_path / "up.log"
    api = ApiProcess(up_env(), log_path, args=("up", "--data-dir", str(data_dir)))
    api.start()
    try:
        key = (data_dir / "read-key").read_text().strip()
        auth = {"authorization": f"Bearer {key}"}
        summary = f"{api.url}/v1/campaigns/first-run/summary"
        assert httpx.get(summary, headers=auth).json()["views"] == 0
        sent = time.monotonic()
        pixel = httpx.get(f"{api.url}/p.gif", params={"c": "first-run", "e": "view"})
        assert pixel.status_code == 200 and pixel.headers["content-type"] == "image/gif"
        views = 0
        while time.monotonic() - sent < 2.0:
            views = httpx.get(summary, headers=auth).json()["views"]
            if views == 1:
                break
            time.sleep(0.05)
        assert views == 1, "the pixel event was not counted within 2 s"
        # A poison pixel (no campaign) still answers the GIF; it is counted as a dead letter.
        assert httpx.get(f"{api.url}/p.gif").status_code == 200
        metrics = httpx.get(f"{api.url}/metrics").text
        assert "viraltrace_consumer_batch_records" in metrics  # consumers share /metrics
    finally:
        assert api.proc is not None
        proc = api.proc
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        code = proc.wait(30)
        api.stop()
    output = log_path.read_text()
    assert code == 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]

    # The data survives a restart; migrations are not applied twice.
    again = ApiProcess(up_env(), tmp_path / "up2.log", args=("up", "--data-dir", str(data_dir)))
    again.start()
    try:
        summary = f"{again.url}/v1/campaigns/first-run/summary"
        assert httpx.get(summary, headers=auth).json()["views"] == 1
    finally:
        again.stop()
    assert "applied migrations" not in (tmp_path / "up2.log").read_text()


def test_up_refuses_a_bad_clickhouse_dsn_with_a_clear_message(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {**up_env(), "VIRALTRACE_CLICKHOUSE_DSN": "ftp://nowhere"}
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "up", "--data-dir", str(tmp_path / "d")],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert b"unsupported DSN scheme" in done.stderr
    assert b"Traceback" not in done.stderr


@pytest.mark.kafka
def test_up_with_kafka_bootstrap_uses_kafka(tmp_path: Path, unique: str) -> None:
    """``up`` with VIRALTRACE_KAFKA_BOOTSTRAP: the same process, Kafka instead of the bus."""
    from aiokafka import AIOKafkaConsumer

    bootstrap = require_env("VIRALTRACE_TEST_KAFKA_NOIDA")
    topic = f"up-{unique}"
    env = {
        **up_env(),
        "VIRALTRACE_KAFKA_BOOTSTRAP": bootstrap,
        "VIRALTRACE_KAFKA_TOPIC": topic,
        "VIRALTRACE_KAFKA_DLQ_TOPIC": f"{topic}-dlq",
        "VIRALTRACE_CONSUMER_GROUP_PREFIX": f"up-{unique}",
    }
    data_dir = tmp_path / "d"
    api = ApiProcess(env, tmp_path / "up.log", args=("up", "--data-dir", str(data_dir)))
    api.start()
    try:
        key = (data_dir / "read-key").read_text().strip()
        auth = {"authorization": f"Bearer {key}"}
        assert httpx.get(f"{api.url}/p.gif", params={"c": "kafka-up"}).status_code == 200
        summary = f"{api.url}/v1/campaigns/kafka-up/summary"
        deadline = time.monotonic() + 30  # the first group join takes a few seconds
        views = 0
        while views != 1 and time.monotonic() < deadline:
            views = httpx.get(summary, headers=auth).json()["views"]
            time.sleep(0.1)
        assert views == 1
    finally:
        api.stop(signal.SIGINT)
    assert "Traceback" not in (tmp_path / "up.log").read_text()

    async def on_topic() -> int:
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            got = await consumer.getmany(timeout_ms=5_000)
            return sum(len(batch) for batch in got.values())
        finally:
            await consumer.stop()

    assert asyncio.run(on_topic()) == 1  # the event went through Kafka
