"""Nothing accepted is lost when the broker goes away, even if the API is SIGKILLed.

A private noida-db broker (persistent, restartable on its port) and the API
as a real ``viraltrace serve`` process. While the broker is down, 10,000
events arrive through ``/p.gif`` and ``/v1/events``; after the broker (and,
in the second case, a SIGKILLed API) comes back, all 10,000 event ids must
be in the topic.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.kafkahelpers import consume, values
from tests.procs import ApiProcess, NoidaBroker

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PIXELS = 5_000
BATCHES = 50  # x 100 events


async def send_while_down(api: ApiProcess) -> set[str]:
    ids: set[str] = set()
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(base_url=api.url, limits=limits, timeout=30) as client:
        semaphore = asyncio.Semaphore(32)

        async def pixel(i: int) -> None:
            eid = str(uuid.uuid4())
            ids.add(eid)
            async with semaphore:
                resp = await client.get(
                    "/p.gif", params={"c": "fault", "e": "view", "eid": eid, "ch": f"c{i % 7}"}
                )
            assert resp.status_code == 200 and len(resp.content) == 43

        async def batch() -> None:
            events = [
                {"type": "click", "campaign": "fault", "event_id": str(uuid.uuid4())}
                for _ in range(100)
            ]
            ids.update(e["event_id"] for e in events)
            async with semaphore:
                resp = await client.post("/v1/events", json=events)
            assert resp.status_code == 202, resp.text
            assert resp.json() == {"accepted": 100, "rejected": []}

        await asyncio.gather(*(pixel(i) for i in range(PIXELS)), *(batch() for _ in range(BATCHES)))
    return ids


def wait_for_spool(api: ApiProcess, depth: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    seen = -1
    while time.monotonic() < deadline:
        seen = httpx.get(f"{api.url}/readyz", timeout=5).json()["spool_depth"]
        if seen >= depth:
            return
        time.sleep(0.2)
    raise AssertionError(f"spool holds {seen} records, expected {depth}")


def wait_for_drained_spool(api: ApiProcess, timeout_s: float = 30) -> None:
    # The replayer acks the spool just after the broker acked the send, so poll.
    deadline = time.monotonic() + timeout_s
    ready: dict[str, object] = {}
    while time.monotonic() < deadline:
        ready = httpx.get(f"{api.url}/readyz", timeout=5).json()
        if ready["broker_up"] is True and ready["spool_depth"] == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"spool not drained: {ready}")


@pytest.mark.parametrize("kill_api", [False, True], ids=["broker-restart", "api-sigkill"])
async def test_no_event_is_lost_while_the_broker_is_down(tmp_path: Path, kill_api: bool) -> None:
    broker = NoidaBroker(tmp_path / "broker")
    topic = f"fault-{uuid.uuid4().hex[:8]}"
    api = ApiProcess(
        {
            "VIRALTRACE_KAFKA_BOOTSTRAP": broker.bootstrap,
            "VIRALTRACE_KAFKA_TOPIC": topic,
            "VIRALTRACE_KAFKA_DLQ_TOPIC": f"{topic}-dlq",
            "VIRALTRACE_KAFKA_PARTITIONS": "4",
            "VIRALTRACE_KAFKA_SEND_TIMEOUT_S": "2",
            "VIRALTRACE_SPOOL_RETRY_INTERVAL_S": "0.5",
            "VIRALTRACE_DATA_DIR": str(tmp_path / "api"),
            "VIRALTRACE_TRACKING_RATE_IP_PER_S": "1000000",
            "VIRALTRACE_TRACKING_RATE_IP_BURST": "1000000",
        },
        tmp_path / "api.log",
    )
    broker.start()
    try:
        api.start()
        broker.stop()
        ids = await send_while_down(api)
        assert len(ids) == PIXELS + BATCHES * 100
        if kill_api:
            await asyncio.to_thread(wait_for_spool, api, len(ids))
            api.stop(signal.SIGKILL)
            broker.start()
            api.start()  # replays the spool at start-up
        else:
            broker.start()
        records = await consume(broker.bootstrap, topic, expected=len(ids), timeout_s=120)
        found = {e["event_id"] for e in values(records)}
        missing = ids - found
        assert not missing, f"{len(missing)} of {len(ids)} accepted events never reached the topic"
        # Replay is at-least-once: duplicates are allowed (consumers dedupe on event_id).
        assert len(records) >= len(ids)
        await asyncio.to_thread(wait_for_drained_spool, api)
    finally:
        api.stop()
        broker.stop()
