"""The on-disk spool: FIFO order, bounds, durability and recovery."""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import app.bus.spool as spool_module
from app.bus.base import Record, SpoolFull
from app.bus.spool import RECORD_HEADER_SIZE, Spool, frame_size

REPO = Path(__file__).resolve().parents[1]
BIG = 1 << 30


def rec(i: int, size: int = 20, topic: str = "share-events") -> Record:
    """A record whose value starts with its number, padded to ``size`` bytes."""
    value = f"{i:08d}".encode().ljust(size, b".")
    return Record(topic, f"k{i:04d}".encode(), value)


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("segment-*.log"))


def drain(spool: Spool) -> list[Record]:
    return spool.peek(spool.depth_records + 1)


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def small(spool_dir: Path) -> Iterator[Spool]:
    """A spool whose segments hold a handful of records each."""
    spool = Spool(spool_dir, max_bytes=BIG, segment_bytes=256)
    yield spool
    spool.close()


def test_creates_directory_and_starts_empty(spool_dir: Path) -> None:
    with Spool(spool_dir / "nested", max_bytes=4096, segment_bytes=1024) as spool:
        assert (spool_dir / "nested").is_dir()
        assert spool.depth_records == 0
        assert spool.depth_bytes == 0
        assert spool.peek(10) == []
        assert spool.corrupted_records == 0


def test_fifo_order_across_segments(small: Spool, spool_dir: Path) -> None:
    records = [rec(i) for i in range(100)]
    for start in range(0, 100, 7):
        small.append(records[start : start + 7])
    assert len(segments(spool_dir)) > 10
    assert all(path.stat().st_size <= 256 for path in segments(spool_dir))
    assert small.depth_records == 100
    assert small.depth_bytes == sum(frame_size(r) for r in records)
    assert small.peek(1000) == records
    assert small.peek(3) == records[:3]
    # Read across segment boundaries in odd steps.
    seen: list[Record] = []
    while small.depth_records:
        batch = small.peek(9)
        seen.extend(batch)
        small.ack(len(batch))
    assert seen == records


def test_none_keys_empty_values_and_odd_topics_round_trip(spool_dir: Path) -> None:
    records = [
        Record("t", None, b""),
        Record("t", b"", b""),
        Record("", None, b"x"),
        Record("ünïcode-tópic", b"\x00\xff", bytes(range(256))),
        Record("t", None, b"\x00" * 1000),
    ]
    with Spool(spool_dir, max_bytes=BIG, segment_bytes=512) as spool:
        spool.append(records)
        assert spool.peek(10) == records
    with Spool(spool_dir, max_bytes=BIG, segment_bytes=512) as spool:
        got = spool.peek(10)
    assert got == records
    assert got[0].key is None
    assert got[1].key == b""
    assert all(isinstance(r.value, bytes) for r in got)


def test_record_larger_than_a_segment_gets_its_own(spool_dir: Path) -> None:
    with Spool(spool_dir, max_bytes=BIG, segment_bytes=100) as spool:
        records = [rec(0), rec(1, size=500), rec(2)]
        spool.append(records)
        assert len(segments(spool_dir)) == 3
        assert spool.peek(5) == records


def test_empty_append_is_a_noop(spool_dir: Path) -> None:
    with Spool(spool_dir, max_bytes=4096, segment_bytes=1024) as spool:
        spool.append([])
        assert spool.depth_records == 0
        assert segments(spool_dir) == []


def test_ack_validates_its_count(small: Spool) -> None:
    small.append([rec(0), rec(1)])
    with pytest.raises(ValueError):
        small.ack(3)
    with pytest.raises(ValueError):
        small.ack(-1)
    small.ack(0)
    assert small.depth_records == 2
    small.ack(2)
    assert small.depth_records == 0
    with pytest.raises(ValueError):
        small.ack(1)


def test_ack_without_peek_and_partial_acks(small: Spool) -> None:
    records = [rec(i) for i in range(30)]
    small.append(records)
    small.ack(4)  # nothing peeked
    assert small.peek(2) == records[4:6]
    small.ack(1)  # less than peeked
    assert small.peek(10) == records[5:15]
    small.ack(12)  # more than peeked
    assert small.peek(100) == records[17:]
    assert small.depth_bytes == sum(frame_size(r) for r in records[17:])


def test_ack_deletes_consumed_segments(small: Spool, spool_dir: Path) -> None:
    small.append([rec(i) for i in range(40)])
    before = segments(spool_dir)
    assert len(before) >= 5
    per_segment = 256 // frame_size(rec(0))
    small.ack(per_segment * 2 + 1)
    after = segments(spool_dir)
    assert after == before[2:]
    small.ack(small.depth_records)
    # Fully drained: no segment is left behind, only the cursor (and the lock).
    assert segments(spool_dir) == []
    assert small.depth_bytes == 0
    assert sorted(p.name for p in spool_dir.iterdir()) == ["cursor", "lock"]
    # Appending after a full drain starts a new, higher segment.
    small.append([rec(100)])
    assert [p.name for p in segments(spool_dir)] > [p.name for p in before]
    assert small.peek(5) == [rec(100)]


def test_reopen_keeps_unacked_records_and_position(spool_dir: Path) -> None:
    records = [rec(i) for i in range(50)]
    with Spool(spool_dir, max_bytes=BIG, segment_bytes=300) as spool:
        spool.append(records[:30])
        spool.append(records[30:])
        assert spool.peek(11) == records[:11]
        spool.ack(11)
        depth_bytes = spool.depth_bytes
    with Spool(spool_dir, max_bytes=BIG, segment_bytes=300) as spool:
        assert spool.depth_records == 39
        assert spool.depth_bytes == depth_bytes
        assert drain(spool) == records[11:]
        spool.ack(5)
        spool.append([rec(99)])
    with Spool(spool_dir, max_bytes=BIG, segment_bytes=300) as spool:
        assert drain(spool) == [*records[16:], rec(99)]
        assert spool.corrupted_records == 0


def test_reopen_with_different_segment_size(spool_dir: Path) -> None:
    with Spool(spool_dir, max_bytes=BIG, segment_bytes=10_000) as spool:
        spool.append([rec(i) for i in range(10)])
    with Spool(spool_dir, max_bytes=BIG, segment_bytes=100) as spool:
        spool.append([rec(i) for i in range(10, 15)])
        assert drain(spool) == [rec(i) for i in range(15)]


def test_closed_spool_refuses_calls(spool_dir: Path) -> None:
    spool = Spool(spool_dir, max_bytes=4096, segment_bytes=1024)
    spool.close()
    spool.close()  # idempotent
    with pytest.raises(ValueError):
        spool.append([rec(0)])
    with pytest.raises(ValueError):
        spool.peek(1)
    with pytest.raises(ValueError):
        spool.ack(0)


def test_second_open_of_the_same_directory_is_refused(spool_dir: Path) -> None:
    with (
        Spool(spool_dir, max_bytes=4096, segment_bytes=1024),
        pytest.raises(RuntimeError, match="already open"),
    ):
        Spool(spool_dir, max_bytes=4096, segment_bytes=1024)
    Spool(spool_dir, max_bytes=4096, segment_bytes=1024).close()


def test_spool_full_writes_nothing(spool_dir: Path) -> None:
    size = frame_size(rec(0))
    with Spool(spool_dir, max_bytes=size * 10, segment_bytes=size * 3) as spool:
        spool.append([rec(i) for i in range(8)])
        files = {p.name: p.read_bytes() for p in spool_dir.iterdir()}
        with pytest.raises(SpoolFull) as caught:
            spool.append([rec(8), rec(9), rec(10)])  # 11 > 10: all refused
        assert caught.value.retriable
        assert {p.name: p.read_bytes() for p in spool_dir.iterdir()} == files
        assert spool.depth_records == 8
        assert spool.depth_bytes == size * 8
        # Exactly at the bound is accepted.
        spool.append([rec(8), rec(9)])
        assert spool.depth_bytes == spool.max_bytes
        with pytest.raises(SpoolFull):
            spool.append([rec(10)])
        # Acking frees the space again.
        spool.ack(3)
        spool.append([rec(10), rec(11), rec(12)])
        with pytest.raises(SpoolFull):
            spool.append([rec(13)])
        assert drain(spool) == [rec(i) for i in range(3, 13)]


def test_unencodable_record_writes_nothing(small: Spool, spool_dir: Path) -> None:
    small.append([rec(0)])
    with pytest.raises(ValueError, match="topic"):
        small.append([rec(1), Record("x" * 70_000, None, b"")])
    assert small.depth_records == 1
    assert small.peek(5) == [rec(0)]


def test_one_fsync_per_batch(spool_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Spool(spool_dir, max_bytes=BIG, segment_bytes=16 << 20) as spool:
        spool.append([rec(0)])  # creates the segment
        calls: list[int] = []
        real_fsync = os.fsync

        def counting_fsync(fd: int) -> None:
            calls.append(fd)
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", counting_fsync)
        records = [rec(i, size=500) for i in range(1000)]
        started = time.perf_counter()
        spool.append(records)
        elapsed = time.perf_counter() - started
        assert len(calls) == 1
        assert elapsed < 1.0  # generous: a few ms plus one fsync in practice
        assert spool.peek(2000)[1:] == records


def test_failed_write_is_rolled_back(spool_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Spool(spool_dir, max_bytes=BIG, segment_bytes=256) as spool:
        spool.append([rec(0), rec(1)])
        sizes = {p.name: p.stat().st_size for p in segments(spool_dir)}
        real_write_all = spool_module._write_all
        writes = 0

        def failing_write_all(fd: int, data: bytes) -> None:
            nonlocal writes
            writes += 1
            if writes == 2:  # after a segment rollover: half written, then "disk full"
                real_write_all(fd, data[: len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
            real_write_all(fd, data)

        monkeypatch.setattr(spool_module, "_write_all", failing_write_all)
        with pytest.raises(OSError, match="No space"):
            spool.append([rec(i) for i in range(2, 20)])
        monkeypatch.undo()
        assert {p.name: p.stat().st_size for p in segments(spool_dir)} == sizes
        assert spool.depth_records == 2
        assert spool.peek(50) == [rec(0), rec(1)]
        spool.append([rec(2)])
    with Spool(spool_dir, max_bytes=BIG, segment_bytes=256) as spool:
        assert drain(spool) == [rec(0), rec(1), rec(2)]
        assert spool.corrupted_records == 0


@pytest.mark.parametrize(
    "damage",
    ["cut-1", "cut-header", "cut-half", "garbage", "zeros", "bad-crc-last"],
)
def test_torn_tail_is_truncated(spool_dir: Path, damage: str) -> None:
    records = [rec(i) for i in range(12)]
    with Spool(spool_dir, max_bytes=BIG, segment_bytes=256) as spool:
        spool.append(records[:10])
        spool.append(records[10:])
    last = segments(spool_dir)[-1]
    data = last.read_bytes()
    size = frame_size(records[-1])
    expected = records[:-1]
    if damage == "cut-1":
        last.write_bytes(data[:-1])
    elif damage == "cut-header":
        last.write_bytes(data[: -size + 5])
    elif damage == "cut-half":
        last.write_bytes(data[: -size // 2])
    elif damage == "garbage":
        last.write_bytes(data + b"\x13\x37 not a record at all, just noise" * 3)
        expected = records
    elif damage == "zeros":  # as after a crash that extended the file but lost its data
        last.write_bytes(data + bytes(100))
        expected = records
    else:
        last.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    with Spool(spool_dir, max_bytes=BIG, segment_bytes=256) as spool:
        assert spool.corrupted_records == 0
        assert spool.depth_records == len(expected)
        assert drain(spool) == expected
        spool.append([rec(50)])
    with Spool(spool_dir, max_bytes=BIG, segment_bytes=256) as spool:
        assert drain(spool) == [*expected, rec(50)]
        assert spool.corrupted_records == 0


def test_corruption_mid_segment_skips_to_next_segment(
    spool_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    size = frame_size(rec(0))
    per_segment = 5
    records = [rec(i) for i in range(20)]
    with Spool(spool_dir, max_bytes=BIG, segment_bytes=size * per_segment) as spool:
        spool.append(records)
        spool.ack(1)
    first = segments(spool_dir)[0]
    data = bytearray(first.read_bytes())
    data[2 * size + RECORD_HEADER_SIZE + 20] ^= 0x01  # inside record 2's body
    first.write_bytes(bytes(data))
    with (
        caplog.at_level(logging.ERROR, logger="app.bus.spool"),
        Spool(spool_dir, max_bytes=BIG, segment_bytes=size * per_segment) as spool,
    ):
        assert spool.corrupted_records == 3  # records 2, 3 and 4
        expected = [records[1], *records[5:]]
        assert spool.depth_records == len(expected)
        assert spool.depth_bytes == size * len(expected)
        assert drain(spool) == expected
        spool.ack(spool.depth_records)
        assert segments(spool_dir) == []
    assert "corrupt" in caplog.text


def test_corruption_in_the_last_segment_is_counted(spool_dir: Path) -> None:
    size = frame_size(rec(0))
    records = [rec(i) for i in range(6)]
    with Spool(spool_dir, max_bytes=BIG, segment_bytes=BIG) as spool:
        spool.append(records)
    (only,) = segments(spool_dir)
    data = bytearray(only.read_bytes())
    data[size + 3] ^= 0xFF  # record 1's magic
    only.write_bytes(bytes(data))
    with Spool(spool_dir, max_bytes=BIG, segment_bytes=BIG) as spool:
        assert spool.corrupted_records == 5
        assert drain(spool) == records[:1]
        spool.append([rec(9)])
    with Spool(spool_dir, max_bytes=BIG, segment_bytes=BIG) as spool:
        assert drain(spool) == [records[0], rec(9)]


def test_corruption_found_while_reading_is_skipped(spool_dir: Path) -> None:
    size = frame_size(rec(0))
    records = [rec(i) for i in range(12)]
    with Spool(spool_dir, max_bytes=BIG, segment_bytes=size * 4) as spool:
        spool.append(records)
        assert spool.peek(1) == records[:1]
        second = segments(spool_dir)[1]
        data = bytearray(second.read_bytes())
        data[size + 30] ^= 0x01  # record 5
        second.write_bytes(bytes(data))
        expected = [*records[:5], *records[8:]]
        assert drain(spool) == expected
        assert spool.corrupted_records == 3
        assert spool.depth_records == len(expected)
        assert spool.depth_bytes == size * len(expected)
        spool.ack(len(expected))
        assert spool.depth_records == 0
        spool.append([rec(20)])
        assert spool.peek(5) == [rec(20)]


def test_corrupt_cursor_replays_rather_than_skips(spool_dir: Path) -> None:
    records = [rec(i) for i in range(6)]
    with Spool(spool_dir, max_bytes=BIG, segment_bytes=BIG) as spool:
        spool.append(records)
        spool.ack(4)
    (spool_dir / "cursor").write_bytes(b"nonsense")
    with Spool(spool_dir, max_bytes=BIG, segment_bytes=BIG) as spool:
        assert drain(spool) == records  # duplicates are fine, gaps are not
    with Spool(spool_dir, max_bytes=BIG, segment_bytes=BIG) as spool:
        assert drain(spool) == records  # the repaired cursor points at the start


def test_stale_files_from_an_interrupted_ack_are_cleaned(spool_dir: Path) -> None:
    size = frame_size(rec(0))
    with Spool(spool_dir, max_bytes=BIG, segment_bytes=size * 2) as spool:
        spool.append([rec(i) for i in range(6)])
        first = segments(spool_dir)[0]
        saved = first.read_bytes()
        spool.ack(3)
    # As if the process died after the cursor moved but before the delete.
    first.write_bytes(saved)
    (spool_dir / "cursor.tmp").write_bytes(b"half-written")
    with Spool(spool_dir, max_bytes=BIG, segment_bytes=size * 2) as spool:
        assert drain(spool) == [rec(3), rec(4), rec(5)]
    assert not first.exists()
    assert not (spool_dir / "cursor.tmp").exists()


CHILD = """
import sys
from pathlib import Path

from app.bus.base import Record
from app.bus.spool import Spool

directory, run = Path(sys.argv[1]), int(sys.argv[2])
spool = Spool(directory, max_bytes=1 << 30, segment_bytes=32 * 1024)
batch = 0
while True:
    spool.append(
        [Record("t", None, f"{run}:{batch}:{j}:".encode() * 20) for j in range(40)]
    )
    print(batch, flush=True)
    batch += 1
"""


def parse(record: Record) -> tuple[int, int, int]:
    run, batch, j = record.value.split(b":")[:3]
    return int(run), int(batch), int(j)


@pytest.mark.parametrize("kill_after", [1, 7, 25])
def test_sigkill_loses_no_appended_batch(tmp_path: Path, kill_after: int) -> None:
    directory = tmp_path / "spool"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    acknowledged: list[int] = []
    for run in range(3):  # crash, recover and append again, three times
        with subprocess.Popen(
            [sys.executable, "-c", CHILD, str(directory), str(run)],
            stdout=subprocess.PIPE,
            cwd=REPO,
            env=env,
            text=True,
        ) as child:
            assert child.stdout is not None
            seen = 0
            for _line in child.stdout:
                seen += 1
                if seen >= kill_after + run:
                    break
            os.kill(child.pid, signal.SIGKILL)
            rest = child.stdout.read()
            assert child.wait() == -signal.SIGKILL
        acknowledged.append(seen + len(rest.split()))
    with Spool(directory, max_bytes=1 << 30, segment_bytes=32 * 1024) as spool:
        got = [parse(r) for r in drain(spool)]
        assert spool.corrupted_records == 0
    # Each run's records are a prefix of its stream that holds every acknowledged batch.
    # A batch whose append() had not returned may be there in part (at-least-once).
    assert [run for run, _, _ in got] == sorted(run for run, _, _ in got)
    for run, count in enumerate(acknowledged):
        mine = [(batch, j) for r, batch, j in got if r == run]
        assert mine == [(b, j) for b in range(len(mine) // 40 + 1) for j in range(40)][: len(mine)]
        assert len(mine) >= count * 40


def test_concurrent_append_peek_ack(spool_dir: Path) -> None:
    producers, batches, per_batch = 4, 40, 15
    total = producers * batches * per_batch
    errors: list[BaseException] = []
    consumed: list[Record] = []
    done = threading.Event()

    with Spool(spool_dir, max_bytes=BIG, segment_bytes=2048) as spool:

        def produce(p: int) -> None:
            try:
                for b in range(batches):
                    spool.append(
                        [
                            Record(f"p{p}", None, f"{b * per_batch + j}".encode())
                            for j in range(per_batch)
                        ]
                    )
            except BaseException as exc:
                errors.append(exc)

        def consume() -> None:
            try:
                deadline = time.monotonic() + 60
                while len(consumed) < total and time.monotonic() < deadline:
                    batch = spool.peek(37)
                    consumed.extend(batch)
                    spool.ack(len(batch))
            except BaseException as exc:
                errors.append(exc)

        def watch() -> None:
            try:
                while not done.is_set():
                    assert spool.depth_records >= 0
                    assert spool.depth_bytes >= 0
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
        threads += [threading.Thread(target=consume), threading.Thread(target=watch)]
        for thread in threads:
            thread.start()
        for thread in threads[:-1]:
            thread.join()
        done.set()
        threads[-1].join()
        assert errors == []
        assert spool.depth_records == 0
        assert spool.depth_bytes == 0
    assert len(consumed) == total
    for p in range(producers):
        values = [int(r.value) for r in consumed if r.topic == f"p{p}"]
        assert values == list(range(batches * per_batch))
    assert segments(spool_dir) == []


# -- property test against an in-memory model ---------------------------------

records_st = st.builds(
    Record,
    topic=st.sampled_from(["a", "share-events", "ü"]),
    key=st.none() | st.binary(max_size=12),
    value=st.binary(max_size=80),
)
ops_st = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.lists(records_st, max_size=6)),
        st.tuples(st.just("peek"), st.integers(0, 12)),
        st.tuples(st.just("ack"), st.integers(0, 12)),
        st.tuples(st.just("reopen"), st.just(0)),
    ),
    max_size=40,
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    ops=ops_st,
    segment_bytes=st.integers(40, 400),
    max_bytes=st.integers(100, 1500),
)
def test_matches_a_deque_model(
    ops: list[tuple[str, object]], segment_bytes: int, max_bytes: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "spool"
        model: deque[Record] = deque()
        spool = Spool(directory, max_bytes=max_bytes, segment_bytes=segment_bytes)
        try:
            for op, arg in ops:
                if op == "append":
                    assert isinstance(arg, list)
                    batch: list[Record] = arg
                    needed = sum(frame_size(r) for r in batch)
                    used = sum(frame_size(r) for r in model)
                    if batch and used + needed > max_bytes:
                        with pytest.raises(SpoolFull):
                            spool.append(batch)
                    else:
                        spool.append(batch)
                        model.extend(batch)
                elif op == "peek":
                    assert isinstance(arg, int)
                    assert spool.peek(arg) == list(model)[:arg]
                elif op == "ack":
                    assert isinstance(arg, int)
                    count = min(arg, len(model))
                    spool.ack(count)
                    for _ in range(count):
                        model.popleft()
                else:
                    spool.close()
                    spool = Spool(directory, max_bytes=max_bytes, segment_bytes=segment_bytes)
                assert spool.depth_records == len(model)
                assert spool.depth_bytes == sum(frame_size(r) for r in model)
            assert drain(spool) == list(model)
            assert spool.corrupted_records == 0
            if not model:
                assert segments(directory) == []
        finally:
            spool.close()


damage_st = st.lists(
    st.tuples(
        st.sampled_from(["flip", "truncate", "garbage"]),
        st.integers(0, 10_000),  # which file
        st.integers(0, 10_000),  # where
    ),
    min_size=1,
    max_size=3,
)


def is_subsequence(part: list[Record], whole: list[Record]) -> bool:
    remaining = iter(whole)
    return all(any(r == w for w in remaining) for r in part)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    batches=st.lists(st.lists(records_st, min_size=1, max_size=6), max_size=8),
    acks=st.integers(0, 20),
    damage=damage_st,
    segment_bytes=st.integers(40, 400),
)
def test_damage_never_crashes_or_reorders(
    batches: list[list[Record]], acks: int, damage: list[tuple[str, int, int]], segment_bytes: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "spool"
        history = [r for batch in batches for r in batch]
        with Spool(directory, max_bytes=BIG, segment_bytes=segment_bytes) as spool:
            for batch in batches:
                spool.append(batch)
            spool.ack(min(acks, spool.depth_records))
        files = sorted(p for p in directory.iterdir() if p.name != "lock")
        for kind, which, where in damage:
            if not files:
                break
            path = files[which % len(files)]
            data = bytearray(path.read_bytes())
            if kind == "flip" and data:
                data[where % len(data)] ^= 1 << (where % 8)
            elif kind == "truncate":
                del data[where % (len(data) + 1) :]
            else:
                data[where % (len(data) + 1) : where % (len(data) + 1)] = b"\x00VTS1\xff" * 4
            path.write_bytes(bytes(data))
        with Spool(directory, max_bytes=BIG, segment_bytes=segment_bytes) as spool:
            got = drain(spool)
            assert len(got) == spool.depth_records
            assert is_subsequence(got, history)
            spool.ack(len(got) // 2)
            spool.append([Record("after", None, b"x")])
            rest = drain(spool)
            assert rest == [*got[len(got) // 2 :], Record("after", None, b"x")]
        with Spool(directory, max_bytes=BIG, segment_bytes=segment_bytes) as spool:
            assert drain(spool) == rest
