"""The standalone consumers' metrics endpoint (consumers/exporter.py).

The endpoint itself is tested in process (its HTTP answers, a stalled loop,
the port freed on stop, a port in use). The end-to-end test runs a real
``viraltrace consume sink`` process against the Tansu broker and real
ClickHouse (chdb, migrated in a child process: one process per data
directory), scrapes it while events flow, then stops it by its PID.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from app.settings import ConsumerSettings
from consumers.base import ConsumerMetrics
from consumers.exporter import (
    STALL_AFTER_S,
    LoopHeartbeat,
    MetricsEndpoint,
    MetricsEndpointError,
    serve_consumer_metrics,
)
from tests.conftest import make_settings, require_env
from tests.procs import free_port, stop
from tests.test_sink import create_topics, produce, workload
from tests.test_sink_kill import MIGRATE, child_env, run_child

CONSUME_SINK = [sys.executable, "-m", "app.cli", "consume", "sink"]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, keyed by (sample name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def port_is_free(port: int) -> bool:
    """Nothing listens there: a server could bind it again (as ours do, with SO_REUSEADDR,
    which lets the closed scrape connections linger in TIME_WAIT)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


async def test_the_endpoint_serves_metrics_and_health_and_frees_its_port() -> None:
    registry = CollectorRegistry()
    metrics = ConsumerMetrics(registry)
    metrics.batch_records.labels("sink").observe(42)
    port = free_port()
    config = ConsumerSettings(metrics_host="127.0.0.1", metrics_port=port)
    async with (
        serve_consumer_metrics(config, registry) as endpoint,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        assert endpoint is not None
        scraped = await client.get("/metrics")
        assert scraped.status_code == 200
        assert scraped.headers["content-type"].startswith("text/plain")
        samples = parse(scraped.text)
        assert value(samples, "viraltrace_consumer_batch_records_sum", consumer="sink") == 42
        health = await client.get("/healthz")
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        assert (await client.get("/")).status_code == 404
        # A second server cannot take the port while this one holds it.
        with pytest.raises(MetricsEndpointError, match="VIRALTRACE_CONSUMER_METRICS_PORT"):
            async with serve_consumer_metrics(config, registry):
                pass
    assert port_is_free(port), "the port is released on exit"


async def test_port_zero_serves_nothing() -> None:
    async with serve_consumer_metrics(ConsumerSettings(metrics_port=0), CollectorRegistry()) as e:
        assert e is None


async def test_a_stalled_event_loop_makes_health_answer_503() -> None:
    now = [1000.0]
    heartbeat = LoopHeartbeat(clock=lambda: now[0])
    port = free_port()
    endpoint = MetricsEndpoint("127.0.0.1", port, CollectorRegistry(), heartbeat)
    endpoint.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            now[0] += STALL_AFTER_S  # exactly the limit: still healthy
            assert (await client.get("/healthz")).status_code == 200
            now[0] += 1
            stalled = await client.get("/healthz")
            assert stalled.status_code == 503
            assert stalled.json() == {"status": "stalled", "stalled_s": STALL_AFTER_S + 1}
    finally:
        await asyncio.to_thread(endpoint.stop)
    assert port_is_free(port)


def test_consume_refuses_to_start_on_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            "PATH": "/usr/bin:/bin",
            "VIRALTRACE_DATA_DIR": str(tmp_path),
            "VIRALTRACE_CONSUMER_METRICS_HOST": "127.0.0.1",
            "VIRALTRACE_CONSUMER_METRICS_PORT": str(port),
        }
        done = subprocess.run(CONSUME_SINK, env=env, capture_output=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr.decode()[-2000:]
    stderr = done.stderr.decode()
    assert f"cannot serve consumer metrics on 127.0.0.1:{port}" in stderr
    assert "VIRALTRACE_CONSUMER_METRICS_PORT" in stderr


@pytest.mark.kafka
@pytest.mark.clickhouse
async def test_a_consume_sink_process_exports_lag_batches_and_latency(
    tmp_path: Path, unique: str
) -> None:
    bootstrap = require_env("VIRALTRACE_TEST_KAFKA_TANSU")
    settings = make_settings(
        tmp_path,
        kafka={
            "bootstrap": bootstrap,
            "idempotence": False,  # Tansu 0.6 has no idempotent producer
            "topic": f"metrics-{unique}",
            "dlq_topic": f"metrics-dlq-{unique}",
        },
        consumer={"group_prefix": f"metrics-{unique}"},
    )
    dsn = f"chdb://{tmp_path / 'chdb'}"
    port = free_port()
    env = {
        **child_env(settings, dsn),
        "VIRALTRACE_CONSUMER_METRICS_HOST": "127.0.0.1",
        "VIRALTRACE_CONSUMER_METRICS_PORT": str(port),
    }
    await asyncio.to_thread(run_child, MIGRATE, dsn, env)
    await create_topics(settings)
    messages, expected = workload(2_000, 0, seed=11)  # 2,000 events and 3 poison messages
    ends = await produce(settings, messages)
    written = sum(expected.values())

    log_path = tmp_path / "sink.log"
    proc = start_logged(CONSUME_SINK, env, log_path)
    try:
        samples = await scrape_until(
            port,
            lambda s: (
                value(s, "viraltrace_consumer_committed_records_total", consumer="sink")
                == len(messages)
                and value(s, "viraltrace_consumer_committed_records_total", consumer="sink-dlq")
                == 3
            ),
            proc,
            log_path,
        )
        e2e = "viraltrace_consumer_end_to_end_seconds"
        assert value(samples, f"{e2e}_count", consumer="sink") == written
        assert value(samples, f"{e2e}_bucket", consumer="sink", le="+Inf") == written
        assert value(samples, "viraltrace_consumer_batch_records_sum", consumer="sink") == len(
            messages
        )
        for histogram in ("batch_records", "write_seconds"):
            count = value(samples, f"viraltrace_consumer_{histogram}_count", consumer="sink")
            assert count is not None and count >= 1
        dlq = {
            dict(labels)["reason"]: v
            for (name, labels), v in samples.items()
            if name == "viraltrace_consumer_dlq_messages_total"
            and dict(labels)["consumer"] == "sink"
        }
        assert sum(dlq.values()) == 3 and dlq["bad_json"] == 1
        # One lag series per partition read, all caught up.
        lag = {
            (dict(labels)["topic"], dict(labels)["partition"]): v
            for (name, labels), v in samples.items()
            if name == "viraltrace_consumer_lag_records" and dict(labels)["consumer"] == "sink"
        }
        assert lag == {(tp.topic, str(tp.partition)): 0.0 for tp in ends}
        # The global registry: the process collector comes along.
        assert value(samples, "process_resident_memory_bytes") is not None
        async with httpx.AsyncClient() as client:
            health = await client.get(f"http://127.0.0.1:{port}/healthz")
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
    finally:
        await asyncio.to_thread(stop, proc, signal.SIGTERM)
    assert proc.returncode == 0, log_tail(log_path)
    assert port_is_free(port), "the metrics server stopped with the process"


def start_logged(
    command: list[str], env: dict[str, str], log_path: Path
) -> subprocess.Popen[bytes]:
    """``command`` in its own session (``tests.procs.stop`` ends it by its PID), output to a log."""
    with open(log_path, "ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def log_tail(log_path: Path) -> str:
    return log_path.read_text()[-3000:]


async def scrape_until(
    port: int,
    done: Callable[[Samples], bool],
    proc: subprocess.Popen[bytes],
    log_path: Path,
    timeout_s: float = 90.0,
) -> Samples:
    """Scrape ``/metrics`` until ``done(samples)``; fails with the last scrape or the log."""
    deadline = time.monotonic() + timeout_s
    samples: Samples = {}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"the sink exited:\n{log_tail(log_path)}"
            try:
                samples = parse((await client.get("/metrics")).text)
            except httpx.TransportError:
                pass  # not listening yet
            else:
                if done(samples):
                    return samples
            await asyncio.sleep(0.25)
    viraltrace = {k: v for k, v in samples.items() if k[0].startswith("viraltrace_")}
    pytest.fail(f"metrics never showed every record written; last scrape: {viraltrace}")
