"""The publishing side of a bus, as the API sees it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol


class Record(NamedTuple):
    """One message: topic, partitioning key (None lets the broker choose) and value bytes."""

    topic: str
    key: bytes | None
    value: bytes


def right_sized(value: bytes) -> bytes:
    """A copy of ``value`` whose allocation is its length.

    orjson (3.12 and later) returns its whole output buffer, 4 KiB and more,
    as the bytes object, with only the length cut down (ijl/orjson; the same
    finding made Home Assistant go back to 3.11.9). A 700-byte event kept in
    the in-process bus pinned about 8 KiB, ten times what it needs, and
    faulting those pages in cost the pixel about 15% of its CPU. Whatever
    holds serialized values for long (a bus, a batch) keeps a copy instead.
    """
    return bytes(memoryview(value))


class BusError(Exception):
    """Base of bus errors. ``retriable`` says whether the caller may try again later."""

    retriable: bool = False


class BusUnavailable(BusError):
    """Neither the broker nor the spool can take the records now; retry later (HTTP 503)."""

    retriable = True

    def __init__(self, message: str, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class SpoolFull(BusUnavailable):
    """The on-disk spool has reached its byte limit."""


class Bus(Protocol):
    """What the API needs from a bus.

    ``publish`` returns only once every record is durable: acknowledged by
    the broker (acks=all) or fsynced to the spool. ``publish_nowait`` never
    blocks the caller; records are flushed in the background and follow the
    same broker-or-spool path, so they can be lost only if the process dies
    within one linger interval or the spool is full (both counted).
    """

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def publish(self, records: Sequence[Record]) -> None: ...

    def publish_nowait(self, record: Record) -> None: ...

    def publish_many_nowait(self, records: Sequence[Record]) -> None:
        """``publish_nowait`` for each record in order, in one call (the pixel's batches)."""
        ...

    def ready(self) -> bool:
        """True when the broker is reachable or the spool can still take records."""
        ...

    @property
    def spool_depth(self) -> int:
        """Records waiting in the spool (0 for buses without one)."""
        ...
