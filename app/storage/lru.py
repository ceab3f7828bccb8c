"""The query API's in-memory caches: bounded, least recently used out first."""

from __future__ import annotations

from collections import OrderedDict
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


def lru_get(cache: OrderedDict[K, V], key: K) -> V | None:
    """The value for ``key`` (now the most recently used), else None."""
    value = cache.get(key)
    if value is not None:
        cache.move_to_end(key)
    return value


def lru_put(cache: OrderedDict[K, V], key: K, value: V, limit: int) -> None:
    """Keep ``value`` as the most recently used; drop the oldest beyond ``limit``
    entries. ``limit`` 0 or less keeps nothing."""
    if limit <= 0:
        return
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > limit:
        cache.popitem(last=False)
