"""Kafka's default partitioning for keyed records, cached.

aiokafka computes murmur2 in pure Python for every keyed send. The keys
here are cascade roots, which repeat for the whole life of a cascade, so a
bounded cache of (key, partition count) -> partition saves that work on the
hot path. The result is exactly the Java client's (and aiokafka's) choice.
"""

from __future__ import annotations

from functools import lru_cache

from aiokafka.partitioner import murmur2


@lru_cache(maxsize=65_536)
def partition_for(key: bytes, partition_count: int) -> int:
    """The partition Kafka's default partitioner picks for ``key`` among ``partition_count``."""
    hashed: int = murmur2(key)
    return (hashed & 0x7FFFFFFF) % partition_count
