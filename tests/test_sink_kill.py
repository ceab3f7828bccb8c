"""The sink killed mid-batch (SIGKILL) and restarted: no event lost, none counted twice.

Runs the sink as a real process (``consumers.cli``'s ``sink`` command). The
chdb data directory can be open in one process at a time, so migrating and
reading the results also run in short child processes, never in this one.

noida-db 0.2.2 never expires a SIGKILLed member: the group's next
generation keeps the dead member as its leader and a new member waits for
its SyncGroup forever (Apache Kafka and Tansu evict it after the session
timeout). On noida the test therefore runs on a private broker that is
restarted between the kill and the second run, which clears the group while
keeping the log and the committed offsets, which is all the test is about.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from app.settings import Settings
from tests.conftest import make_settings
from tests.procs import NoidaBroker
from tests.test_sink import committed, create_topics, produce, workload

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]

RUN_SINK = "from consumers.cli import consume_app; consume_app(['sink'])"
MIGRATE = (
    "import sys; from app.storage.clickhouse import ClickHouse; "
    "from app.storage.migrate import migrate; "
    "ch = ClickHouse(sys.argv[1]); migrate(ch, settings_ttl_days=400); ch.close()"
)
COUNTS = (
    "import sys, json; from app.storage.clickhouse import ClickHouse; "
    "ch = ClickHouse(sys.argv[1]); "
    "q = lambda s: ch.query_rows(s); print(json.dumps({"
    "'final': q('SELECT count() FROM events FINAL')[0][0], "
    "'rows': q('SELECT count() FROM events')[0][0], "
    "'dlq': q('SELECT uniqExact(topic, partition, offset) FROM events_dlq')[0][0], "
    "'dlq_rows': q('SELECT count() FROM events_dlq')[0][0], "
    "'raw': q('SELECT campaign, type, count() FROM events FINAL GROUP BY campaign, type'), "
    "'rollup': q('SELECT campaign, type, uniqExactMerge(events) FROM events_per_hour "
    "GROUP BY campaign, type')})); ch.close()"
)


def child_env(settings: Settings, dsn: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIRALTRACE_")}
    assert settings.kafka.bootstrap is not None
    env.update(
        {
            "VIRALTRACE_ENVIRONMENT": "development",
            "VIRALTRACE_DATA_DIR": str(settings.data_dir),
            "VIRALTRACE_CLICKHOUSE_DSN": dsn,
            "VIRALTRACE_KAFKA_BOOTSTRAP": settings.kafka.bootstrap,
            "VIRALTRACE_KAFKA_TOPIC": settings.kafka.topic,
            "VIRALTRACE_KAFKA_DLQ_TOPIC": settings.kafka.dlq_topic,
            "VIRALTRACE_KAFKA_IDEMPOTENCE": str(settings.kafka.idempotence).lower(),
            "VIRALTRACE_CONSUMER_GROUP_PREFIX": settings.consumer.group_prefix,
            "VIRALTRACE_CONSUMER_BATCH_MAX_RECORDS": "1500",
            "VIRALTRACE_CONSUMER_BATCH_MAX_SECONDS": "0.5",
            "VIRALTRACE_CONSUMER_MAX_POLL_RECORDS": "500",
            "VIRALTRACE_SERVER_LOG_LEVEL": "warning",
            # No metrics port: the fixed default (9464) would collide between test runs
            # sharing the machine. tests/test_consumer_metrics.py sets a free one.
            "VIRALTRACE_CONSUMER_METRICS_PORT": "0",
        }
    )
    return env


def run_child(code: str, dsn: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code, dsn], env=env, capture_output=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return done.stdout.decode()


async def committed_total(settings: Settings) -> int:
    got = await committed(settings, "sink", settings.kafka.topic)
    return sum(v or 0 for v in got.values())


async def kill_restart_finish(
    code: str,
    env: dict[str, str],
    committed_so_far: Callable[[], Awaitable[int]],
    total: int,
    private: NoidaBroker | None,
) -> None:
    """Run consumer ``code`` in a child, SIGKILL it once some offsets are committed
    (asserting the kill was mid-stream), restart the private noida broker if any,
    run it again until ``total`` records are committed, then SIGTERM: exit 0."""
    first = await asyncio.create_subprocess_exec(sys.executable, "-c", code, env=env)
    try:
        deadline = time.monotonic() + 60
        # Polling the broker: there is no event to wait on across processes.
        while time.monotonic() < deadline and await committed_so_far() == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        first.send_signal(signal.SIGKILL)
    finally:
        if first.returncode is None:
            first.kill()
        await asyncio.wait_for(first.wait(), 20)
    at_kill = await committed_so_far()
    assert 0 < at_kill < total, f"the kill was not mid-stream ({at_kill} of {total})"
    if private is not None:  # see the module docstring: noida keeps the dead member
        await asyncio.to_thread(private.stop)
        await asyncio.to_thread(private.start)

    # Second run: to the end, then SIGTERM (final flush and commit, clean exit).
    second = await asyncio.create_subprocess_exec(sys.executable, "-c", code, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and await committed_so_far() < total:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        second.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(second.wait(), 30) == 0
    finally:
        if second.returncode is None:
            second.kill()
            await asyncio.wait_for(second.wait(), 20)


@pytest.fixture
def kill_broker(
    tmp_path: Path, broker: tuple[str, str, bool]
) -> Iterator[tuple[str, bool, NoidaBroker | None]]:
    """(bootstrap, idempotence, private noida broker to restart after the kill, or None)."""
    name, bootstrap, idempotence = broker
    if name != "noida":
        yield bootstrap, idempotence, None
        return
    (tmp_path / "noida").mkdir()
    private = NoidaBroker(tmp_path / "noida" / "data")
    private.start()
    try:
        yield private.bootstrap, idempotence, private
    finally:
        private.stop()


async def test_sigkill_mid_batch_then_restart_loses_nothing(
    tmp_path: Path, kill_broker: tuple[str, bool, NoidaBroker | None], unique: str
) -> None:
    bootstrap, idempotence, private = kill_broker
    settings = make_settings(
        tmp_path,
        kafka={
            "bootstrap": bootstrap,
            "idempotence": idempotence,
            "topic": f"kill-{unique}",
            "dlq_topic": f"kill-dlq-{unique}",
        },
        consumer={"group_prefix": f"kill-{unique}"},
    )
    dsn = f"chdb://{tmp_path / 'chdb'}"
    env = child_env(settings, dsn)
    await asyncio.to_thread(run_child, MIGRATE, dsn, env)
    await create_topics(settings)
    messages, expected = workload(20_000, 1_000, seed=3)
    ends = await produce(settings, messages)
    total = sum(ends.values())

    total_committed = functools.partial(committed_total, settings)
    await kill_restart_finish(RUN_SINK, env, total_committed, total, private)
    got = await committed(settings, "sink", settings.kafka.topic)
    assert {tp: v for tp, v in got.items() if v is not None} == ends

    counts = json.loads(await asyncio.to_thread(run_child, COUNTS, dsn, env))
    assert counts["final"] == 20_000
    assert counts["rows"] >= 20_000  # copies from the replay collapse under FINAL
    # Each poison message once by origin. A poison message read again after the
    # kill (its batch was not committed yet) is dead-lettered again: at least once.
    assert counts["dlq"] == 3
    assert counts["dlq_rows"] >= 3
    assert {(c, t): n for c, t, n in counts["raw"]} == dict(expected)
    assert {(c, t): n for c, t, n in counts["rollup"]} == dict(expected)
