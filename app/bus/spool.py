"""A bounded, append-only, crash-safe on-disk FIFO of ``Record``s.

The Kafka publisher appends here while the broker is unreachable; a replayer
``peek``s the oldest records, sends them, then ``ack``s them. Once ``append``
returns, its records are fsynced and survive a crash of the process or the
machine. Delivery is at-least-once: a crash between a send and its ``ack``
replays those records again, but no accepted record is ever skipped.

On-disk format (all integers big-endian), in one directory:

``segment-000000000001.log``
    Records appended back to back. A new segment (next id) is started when
    the current one would exceed ``segment_bytes``; a single record larger
    than that gets a segment of its own. Segment ids only grow.
record frame
    A 19-byte header ``magic "VTS1" | flags u8 | topic_len u16 | key_len u32
    | value_len u32 | crc32 u32``, then the UTF-8 topic, the key and the
    value. Flag bit 0 means the key is None (``key_len`` is then 0). The
    CRC32 covers the first 15 header bytes and the body.
``cursor``
    24 bytes ``magic "VTC1" | segment id u64 | byte offset u64 | crc32 u32``:
    the position of the first unacknowledged record. Replaced atomically
    (write ``cursor.tmp``, fsync, rename, fsync the directory). A missing
    cursor means "the start of the oldest segment".
``lock``
    Held with ``flock`` while a ``Spool`` is open, so that two processes
    cannot share one directory.

Durability: ``append`` writes the whole batch with one ``write`` per segment
and fsyncs once (plus the finished segment and the directory when the batch
rolls over to a new segment). ``ack`` persists the cursor, then deletes the
segments that are fully consumed; when the spool drains completely the
last segment is deleted too, so an idle spool holds only ``cursor`` and
``lock``.

Recovery on open scans every record after the cursor and checks its CRC.
An invalid or incomplete record in the last segment is a torn write from a
crash: the segment is truncated there (if valid records follow the damage,
it was corruption instead and they are counted as lost). An invalid record
in an older segment is corruption: it is logged, the rest of that segment
is skipped and the records lost are counted in ``corrupted_records``.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import re
import struct
import threading
import zlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, NamedTuple

from app.bus.base import Record, SpoolFull

__all__ = ["RECORD_HEADER_SIZE", "Spool", "frame_size"]

log = logging.getLogger(__name__)

_MAGIC = b"VTS1"
_HEADER = struct.Struct(">4sBHIII")  # magic, flags, topic_len, key_len, value_len, crc
RECORD_HEADER_SIZE = _HEADER.size  # 19
_CRC_OFFSET = RECORD_HEADER_SIZE - 4
_FLAG_KEY_NONE = 0x01
_MAX_TOPIC = 0xFFFF
_MAX_BLOB = 0xFFFF_FFFF

_CURSOR_MAGIC = b"VTC1"
_CURSOR = struct.Struct(">4sQQI")
_CURSOR_FILE = "cursor"
_CURSOR_TMP = "cursor.tmp"
_LOCK_FILE = "lock"
_SEGMENT_RE = re.compile(r"segment-(\d{12})\.log")

_READ_CHUNK = 1 << 20


def frame_size(record: Record) -> int:
    """Bytes ``record`` takes on disk (header included); what ``depth_bytes`` counts."""
    key_len = 0 if record.key is None else len(record.key)
    return RECORD_HEADER_SIZE + len(record.topic.encode()) + key_len + len(record.value)


def _encode(record: Record) -> bytes:
    topic = record.topic.encode()
    key = record.key
    if len(topic) > _MAX_TOPIC:
        raise ValueError(f"topic is {len(topic)} bytes, more than {_MAX_TOPIC}")
    if key is not None and len(key) > _MAX_BLOB:
        raise ValueError("key is larger than 4 GiB")
    if len(record.value) > _MAX_BLOB:
        raise ValueError("value is larger than 4 GiB")
    flags = _FLAG_KEY_NONE if key is None else 0
    key_bytes = b"" if key is None else bytes(key)
    value = bytes(record.value)
    head = _HEADER.pack(_MAGIC, flags, len(topic), len(key_bytes), len(value), 0)[:_CRC_OFFSET]
    crc = zlib.crc32(value, zlib.crc32(key_bytes, zlib.crc32(topic, zlib.crc32(head))))
    return b"".join((head, crc.to_bytes(4, "big"), topic, key_bytes, value))


class _Frame(NamedTuple):
    record: Record
    size: int


def _parse_header(header: bytes) -> tuple[int, int, int, int, int] | None:
    """(flags, topic_len, key_len, value_len, crc), or None if it cannot be a header."""
    magic, flags, topic_len, key_len, value_len, crc = _HEADER.unpack(header)
    if magic != _MAGIC or flags & ~_FLAG_KEY_NONE or (flags & _FLAG_KEY_NONE and key_len):
        return None
    return flags, topic_len, key_len, value_len, crc


def _decode(header: bytes, body: bytes) -> Record | None:
    """The record, or None if the CRC does not match."""
    fields = _parse_header(header)
    if fields is None:
        return None
    flags, topic_len, key_len, _value_len, crc = fields
    if zlib.crc32(body, zlib.crc32(header[:_CRC_OFFSET])) != crc:
        return None
    try:
        topic = body[:topic_len].decode()
    except UnicodeDecodeError:
        return None
    key = None if flags & _FLAG_KEY_NONE else body[topic_len : topic_len + key_len]
    return Record(topic, key, body[topic_len + key_len :])


def _read_frame(fh: BinaryIO, pos: int, limit: int) -> _Frame | str:
    """Reads the frame at ``pos`` (``fh`` is positioned there), not reading past ``limit``.

    Returns the frame, ``"torn"`` when the frame does not fit before ``limit``
    or ``"bad"`` when it is not a valid frame.
    """
    if limit - pos < RECORD_HEADER_SIZE:
        return "torn"
    header = fh.read(RECORD_HEADER_SIZE)
    if len(header) < RECORD_HEADER_SIZE:
        return "torn"
    fields = _parse_header(header)
    if fields is None:
        return "bad"
    _flags, topic_len, key_len, value_len, _crc = fields
    body_len = topic_len + key_len + value_len
    if limit - pos - RECORD_HEADER_SIZE < body_len:
        return "torn"
    body = fh.read(body_len)
    if len(body) < body_len:
        return "torn"
    record = _decode(header, body)
    if record is None:
        return "bad"
    return _Frame(record, RECORD_HEADER_SIZE + body_len)


def _count_frames(data: bytes) -> int:
    """Best-effort count of the valid frames in ``data`` (damaged bytes in between)."""
    count = 0
    pos = data.find(_MAGIC)
    while 0 <= pos <= len(data) - RECORD_HEADER_SIZE:
        header = data[pos : pos + RECORD_HEADER_SIZE]
        fields = _parse_header(header)
        if fields is not None:
            end = pos + RECORD_HEADER_SIZE + fields[1] + fields[2] + fields[3]
            if end <= len(data) and _decode(header, data[pos + RECORD_HEADER_SIZE : end]):
                count += 1
                pos = data.find(_MAGIC, end)
                continue
        pos = data.find(_MAGIC, pos + 1)
    return count


def _segment_name(segment_id: int) -> str:
    return f"segment-{segment_id:012d}.log"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


@dataclass(eq=False)
class _Segment:
    id: int
    # End of the valid records; appends go here for the last segment.
    end: int
    # Records in this segment not yet acknowledged.
    records: int


@dataclass(eq=False)
class _Entry:
    """A record read ahead by ``peek`` and not yet acknowledged."""

    record: Record
    segment: _Segment
    end: int
    size: int


class SpoolLocked(RuntimeError):
    """Another process holds this spool directory."""


class Spool:
    """Thread-safe (internal threading.Lock): the async publisher calls these via asyncio.to_thread.

    ``corrupted_records`` counts records found damaged (and so dropped) since
    this instance was opened; for damage in the middle of a segment the count
    is a best-effort estimate.
    """

    def __init__(self, directory: Path, max_bytes: int, segment_bytes: int) -> None:
        if max_bytes <= 0 or segment_bytes <= 0:
            raise ValueError("max_bytes and segment_bytes must be positive")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.corrupted_records = 0
        self._lock = threading.Lock()
        self._closed = False
        self._segments: deque[_Segment] = deque()
        # Position of the first unacknowledged record, as persisted in `cursor`.
        self._cursor_id = 1
        self._cursor_off = 0
        self._next_id = 1
        # Append handle on the last segment, None when the next append starts a new one.
        self._wfd: int | None = None
        # Read-ahead: records peeked but not acked, then where reading resumes.
        self._buffer: deque[_Entry] = deque()
        self._ridx = 0
        self._roff = 0
        self._rfh: BinaryIO | None = None
        self._rfh_id = -1
        self._depth_records = 0
        self._depth_bytes = 0
        self._lock_fd = self._open_directory()
        try:
            self._recover()
        except BaseException:
            self._close_files()
            raise

    # -- public API ---------------------------------------------------------

    def append(self, records: Sequence[Record]) -> None:
        """Writes every record and fsyncs once; all or nothing. Raises ``SpoolFull``."""
        if not records:
            return
        frames = [_encode(record) for record in records]
        total = sum(len(frame) for frame in frames)
        with self._lock:
            self._check_open()
            if self._depth_bytes + total > self.max_bytes:
                raise SpoolFull(
                    f"spool full: {self._depth_bytes} of {self.max_bytes} bytes used, "
                    f"batch needs {total}"
                )
            self._append_locked(frames)
            self._depth_records += len(frames)
            self._depth_bytes += total

    def peek(self, max_records: int) -> list[Record]:
        """The oldest unacknowledged records in append order, at most ``max_records``."""
        with self._lock:
            self._check_open()
            while len(self._buffer) < max_records:
                entry = self._read_next()
                if entry is None:
                    break
                self._buffer.append(entry)
            return [entry.record for entry in itertools.islice(self._buffer, max(max_records, 0))]

    def ack(self, count: int) -> None:
        """Drops the ``count`` oldest records and persists the new read position."""
        with self._lock:
            self._check_open()
            if count < 0 or count > self._depth_records:
                raise ValueError(f"cannot ack {count} of {self._depth_records} records")
            if count == 0:
                return
            for _ in range(count):
                entry = self._buffer.popleft() if self._buffer else self._read_next()
                if entry is None:  # Corruption found while reading lowered the depth.
                    break
                entry.segment.records -= 1
                self._depth_records -= 1
                self._depth_bytes -= entry.size
                self._cursor_id, self._cursor_off = entry.segment.id, entry.end
            consumed = self._drop_consumed()
            self._write_cursor()
            for segment_id in consumed:
                self._unlink_segment(segment_id)

    @property
    def depth_records(self) -> int:
        """Records not yet acknowledged."""
        with self._lock:
            return self._depth_records

    @property
    def depth_bytes(self) -> int:
        """Bytes on disk of the records not yet acknowledged (headers included)."""
        with self._lock:
            return self._depth_bytes

    def close(self) -> None:
        """Closes the files; idempotent. Everything appended is already durable."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._close_files()

    def __enter__(self) -> Spool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- opening and recovery -----------------------------------------------

    def _open_directory(self) -> int:
        if not self.directory.is_dir():
            self.directory.mkdir(parents=True, exist_ok=True)
            _fsync_dir(self.directory.parent)
        fd = os.open(self.directory / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolLocked(f"spool {self.directory} is already open elsewhere") from None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _read_cursor(self) -> tuple[int, int] | None:
        path = self.directory / _CURSOR_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if len(data) == _CURSOR.size:
            magic, segment_id, offset, crc = _CURSOR.unpack(data)
            if magic == _CURSOR_MAGIC and zlib.crc32(data[: _CURSOR.size - 4]) == crc:
                return segment_id, offset
        log.error("spool cursor %s is corrupt; replaying from the oldest segment", path)
        return None

    def _write_cursor(self) -> None:
        head = _CURSOR.pack(_CURSOR_MAGIC, self._cursor_id, self._cursor_off, 0)[:-4]
        data = head + zlib.crc32(head).to_bytes(4, "big")
        tmp = self.directory / _CURSOR_TMP
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.directory / _CURSOR_FILE)
        _fsync_dir(self.directory)

    def _recover(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.directory / _CURSOR_TMP).unlink()
        ids = sorted(
            int(match.group(1))
            for path in self.directory.iterdir()
            if (match := _SEGMENT_RE.fullmatch(path.name))
        )
        persisted = self._read_cursor()
        if persisted is None:
            cursor_id, cursor_off = (ids[0] if ids else 1), 0
        else:
            cursor_id, cursor_off = persisted
        for segment_id in ids:
            if segment_id < cursor_id:  # Consumed; the crash came before the delete.
                self._unlink_segment(segment_id)
        ids = [segment_id for segment_id in ids if segment_id >= cursor_id]
        if ids and ids[0] != cursor_id:
            log.error(
                "spool cursor segment %s is missing; replaying from segment %s",
                cursor_id,
                ids[0],
            )
            cursor_id, cursor_off = ids[0], 0
        elif not ids:
            cursor_off = 0
        self._next_id = max(ids[-1] + 1 if ids else cursor_id, cursor_id)
        for index, segment_id in enumerate(ids):
            segment, start = self._scan(
                segment_id, cursor_off if index == 0 else 0, last=index == len(ids) - 1
            )
            if index == 0:
                cursor_off = start
            self._segments.append(segment)
            self._depth_records += segment.records
            self._depth_bytes += segment.end - start
        self._cursor_id, self._cursor_off = cursor_id, cursor_off
        self._roff = cursor_off
        if self._segments:
            last = self._segments[-1]
            self._wfd = os.open(self.directory / _segment_name(last.id), os.O_WRONLY | os.O_APPEND)
        consumed = self._drop_consumed()
        if (self._cursor_id, self._cursor_off) != persisted:
            self._write_cursor()
        for segment_id in consumed:
            self._unlink_segment(segment_id)

    def _scan(self, segment_id: int, start: int, *, last: bool) -> tuple[_Segment, int]:
        """Validates one segment's records from ``start``; truncates a torn tail.

        Returns the segment and the offset actually scanned from.
        """
        path = self.directory / _segment_name(segment_id)
        size = path.stat().st_size
        if start > size:
            log.error(
                "spool cursor offset %s is past the end of %s (%s bytes); replaying it all",
                start,
                path,
                size,
            )
            start = 0
        records = 0
        pos = start
        found = 0
        with path.open("rb", buffering=_READ_CHUNK) as fh:
            fh.seek(pos)
            while pos < size:
                frame = _read_frame(fh, pos, size)
                if isinstance(frame, str):
                    break
                pos += frame.size
                records += 1
            if pos < size:
                fh.seek(pos + 1)
                found = _count_frames(fh.read())
        if pos < size:
            if last and not found:
                log.warning(
                    "spool segment %s: truncating a torn tail of %s bytes at offset %s",
                    path,
                    size - pos,
                    pos,
                )
            else:
                self.corrupted_records += 1 + found
                log.error(
                    "spool segment %s is corrupt at offset %s: skipping its last %s bytes "
                    "(about %s records)",
                    path,
                    pos,
                    size - pos,
                    1 + found,
                )
            if last:
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.ftruncate(fd, pos)
                    os.fsync(fd)
                finally:
                    os.close(fd)
        return _Segment(segment_id, pos, records), start

    # -- appending ----------------------------------------------------------

    def _append_locked(self, frames: list[bytes]) -> None:
        """Writes ``frames``, rolling segments as needed, then fsyncs; undoes it on failure."""
        old_last = self._segments[-1] if self._wfd is not None else None
        old_end = old_last.end if old_last is not None else 0
        # (segment, fd, frames) for each segment this batch writes to, in order.
        chunks: list[tuple[_Segment, int, list[bytes]]] = []
        if old_last is not None and self._wfd is not None:
            chunks.append((old_last, self._wfd, []))
        new: list[tuple[_Segment, int]] = []
        size = old_end
        try:
            for frame in frames:
                if chunks and size > 0 and size + len(frame) > self.segment_bytes:
                    _segment, fd, pending = chunks[-1]
                    if pending:
                        _write_all(fd, b"".join(pending))
                        os.fsync(fd)
                    chunks.append(self._new_segment(new))
                    size = 0
                elif not chunks:
                    chunks.append(self._new_segment(new))
                chunks[-1][2].append(frame)
                size += len(frame)
            _segment, fd, pending = chunks[-1]
            _write_all(fd, b"".join(pending))
            os.fsync(fd)
            if new:
                _fsync_dir(self.directory)
        except BaseException:
            self._rollback(old_end, new)
            raise
        # Committed: publish the new state.
        for segment, _fd, written in chunks:
            segment.end += sum(len(frame) for frame in written)
            segment.records += len(written)
        if new:
            if self._wfd is not None:
                os.close(self._wfd)
            for _segment, fd in new[:-1]:
                os.close(fd)
            self._segments.extend(segment for segment, _fd in new)
            self._wfd = new[-1][1]

    def _new_segment(self, new: list[tuple[_Segment, int]]) -> tuple[_Segment, int, list[bytes]]:
        segment = _Segment(self._next_id, 0, 0)
        self._next_id += 1
        fd = os.open(
            self.directory / _segment_name(segment.id),
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND,
            0o644,
        )
        new.append((segment, fd))
        return segment, fd, []

    def _rollback(self, old_end: int, new: list[tuple[_Segment, int]]) -> None:
        """Removes a failed batch: truncates the old last segment, deletes the new ones."""
        ok = True
        for segment, fd in new:
            os.close(fd)
            try:
                self._unlink_segment(segment.id)
            except OSError as exc:
                log.error("spool: cannot delete segment %s: %s", segment.id, exc)
                ok = False
        if self._wfd is not None:
            try:
                os.ftruncate(self._wfd, old_end)
            except OSError as exc:
                log.error("spool: cannot truncate a failed append: %s", exc)
                ok = False
            if not ok:
                # Start a fresh segment next time. The reader stops at the old
                # segment's `end`, and recovery would skip the garbage as corruption.
                os.close(self._wfd)
                self._wfd = None

    # -- reading ------------------------------------------------------------

    def _read_next(self) -> _Entry | None:
        """The next record after the read-ahead buffer, or None at the end."""
        while self._ridx < len(self._segments):
            segment = self._segments[self._ridx]
            if self._roff >= segment.end:
                if self._ridx == len(self._segments) - 1:
                    return None
                self._ridx += 1
                self._roff = 0
                continue
            fh = self._reader(segment)
            frame = _read_frame(fh, self._roff, segment.end)
            if isinstance(frame, str):
                self._corrupt_at(segment)
                continue
            self._roff += frame.size
            return _Entry(frame.record, segment, self._roff, frame.size)
        return None

    def _reader(self, segment: _Segment) -> BinaryIO:
        if self._rfh is None or self._rfh_id != segment.id:
            if self._rfh is not None:
                self._rfh.close()
                self._rfh = None
            fh = (self.directory / _segment_name(segment.id)).open("rb", buffering=_READ_CHUNK)
            self._rfh, self._rfh_id = fh, segment.id
        if self._rfh.tell() != self._roff:
            self._rfh.seek(self._roff)
        return self._rfh

    def _corrupt_at(self, segment: _Segment) -> None:
        """A record that recovery validated no longer reads back: skip the segment's rest."""
        buffered = sum(1 for entry in self._buffer if entry.segment is segment)
        lost = segment.records - buffered
        self.corrupted_records += lost
        self._depth_records -= lost
        self._depth_bytes -= segment.end - self._roff
        segment.records -= lost
        log.error(
            "spool segment %s is corrupt at offset %s: skipping %s records",
            self.directory / _segment_name(segment.id),
            self._roff,
            lost,
        )
        segment.end = self._roff
        if segment is self._segments[-1] and self._wfd is not None:
            os.close(self._wfd)
            self._wfd = None

    # -- acknowledging ------------------------------------------------------

    def _drop_consumed(self) -> list[int]:
        """Forgets the fully consumed head segments and moves the cursor past them.

        Returns their ids; the caller deletes the files once the cursor is durable.
        """
        consumed: list[int] = []
        while self._segments:
            head = self._segments[0]
            if head.records or (head.id == self._cursor_id and self._cursor_off < head.end):
                break
            self._segments.popleft()
            consumed.append(head.id)
            if self._rfh is not None and self._rfh_id == head.id:
                self._rfh.close()
                self._rfh = None
            if self._ridx > 0:
                self._ridx -= 1
            else:
                self._roff = 0
            if self._segments:
                if self._cursor_id == head.id:
                    self._cursor_id, self._cursor_off = self._segments[0].id, 0
            else:
                if self._wfd is not None:
                    os.close(self._wfd)
                    self._wfd = None
                self._cursor_id, self._cursor_off = self._next_id, 0
        return consumed

    # -- helpers ------------------------------------------------------------

    def _unlink_segment(self, segment_id: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.directory / _segment_name(segment_id)).unlink()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("the spool is closed")

    def _close_files(self) -> None:
        if self._rfh is not None:
            self._rfh.close()
            self._rfh = None
        if self._wfd is not None:
            os.close(self._wfd)
            self._wfd = None
        os.close(self._lock_fd)
