"""The cascades consumer SIGKILLed mid-stream and restarted: the final stats
equal an uninterrupted run.

Runs ``viraltrace consume cascades`` as a real process on chdb; migrating
and reading the results run in short child processes (one process per chdb
directory). On noida-db the broker is restarted after the kill (see
test_sink_kill's docstring).
"""

from __future__ import annotations

import asyncio
import functools
import json
from pathlib import Path

import pytest

from app.settings import Settings
from consumers.cascades.pipeline import STATS_COLUMNS
from tests.cascadehelpers import cascade_workload
from tests.procs import NoidaBroker
from tests.test_cascades import (
    STATS_SQL,
    assert_matches,
    cascade_settings,
    create_topics,
    messages_for,
    oracle,
)
from tests.test_sink import committed, produce
from tests.test_sink_kill import MIGRATE, child_env, kill_broker, kill_restart_finish, run_child

__all__ = ["kill_broker"]  # the fixture, used by name

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]

RUN = "from consumers.cli import consume_app; consume_app(['cascades'])"
STATS = (
    "import sys, json; from app.storage.clickhouse import ClickHouse; "
    "ch = ClickHouse(sys.argv[1]); "
    f"rows = ch.query_rows({STATS_SQL!r}, {{'c': 'launch'}}); "
    "print(json.dumps(rows)); ch.close()"
)


def cascades_env(settings: Settings, dsn: str) -> dict[str, str]:
    env = child_env(settings, dsn)
    cfg = settings.cascades
    env.update(
        {
            "VIRALTRACE_KAFKA_SIGNALS_TOPIC": settings.kafka.signals_topic,
            "VIRALTRACE_CONSUMER_MAX_POLL_RECORDS": "300",
            "VIRALTRACE_CASCADES_SNAPSHOT_INTERVAL_S": "0.2",
            "VIRALTRACE_CASCADES_ORPHAN_AFTER_S": str(cfg.orphan_after_s),
            "VIRALTRACE_CASCADES_MAX_PENDING": str(cfg.max_pending),
        }
    )
    return env


async def committed_total(settings: Settings) -> int:
    got = await committed(settings, "cascades", settings.kafka.topic)
    return sum(v or 0 for v in got.values())


async def test_sigkill_mid_stream_then_restart_equals_an_uninterrupted_run(
    tmp_path: Path, kill_broker: tuple[str, bool, NoidaBroker | None], unique: str
) -> None:
    bootstrap, idempotence, private = kill_broker
    settings = cascade_settings(tmp_path, bootstrap, idempotence, unique)
    dsn = f"chdb://{tmp_path / 'chdb'}"
    env = cascades_env(settings, dsn)
    await asyncio.to_thread(run_child, MIGRATE, dsn, env)
    await create_topics(settings)
    streams, _ = cascade_workload(seed=44, cascades=20, max_size=800)
    messages = messages_for(streams, seed=3)
    ends = await produce(settings, messages)
    total = sum(ends.values())

    total_committed = functools.partial(committed_total, settings)
    await kill_restart_finish(RUN, env, total_committed, total, private)
    assert await committed_total(settings) == total

    names = [c for c in STATS_COLUMNS if c != "written_at"]
    rows = json.loads(await asyncio.to_thread(run_child, STATS, dsn, env))
    got = {row[1]: dict(zip(names, row, strict=True)) for row in rows}
    want = oracle(streams, settings)
    assert set(got) == set(want)
    for root, row in got.items():
        assert_matches(row, want[root])
