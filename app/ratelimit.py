"""Token buckets per key (client address, campaign), bounded in memory.

Per process: with N replicas the effective limit is N times the setting,
which is the usual trade for not putting a shared store on the hot path.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class TokenBuckets:
    """``take(key, cost)`` returns 0.0 when allowed, else seconds until it would be.

    The table keeps at most ``max_keys`` buckets and forgets the least
    recently used, so a flood of distinct keys cannot exhaust memory (a
    forgotten key starts again with a full bucket). Never blocks.
    """

    def __init__(
        self,
        rate_per_s: float,
        burst: float,
        max_keys: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str, cost: float = 1.0) -> float:
        # Twice per pixel hit, so written for speed; the same arithmetic as
        # min(burst, tokens + elapsed * rate), and the same LRU order.
        now = self._clock()
        buckets = self._buckets
        burst = self.burst
        entry = buckets.get(key)
        if entry is None:
            tokens = burst
        else:
            tokens = entry[0] + (now - entry[1]) * self.rate
            if not tokens < burst:
                tokens = burst
        if tokens >= cost:
            wait = 0.0
            tokens -= cost
        else:
            wait = (cost - tokens) / self.rate
        buckets[key] = (tokens, now)
        if entry is None:
            if len(buckets) > self.max_keys:
                buckets.popitem(last=False)
        else:
            buckets.move_to_end(key)
        return wait
