"""TokenBuckets: the hot-path ``take`` against the plain formula it replaced."""

from __future__ import annotations

from collections import OrderedDict

from hypothesis import given, settings
from hypothesis import strategies as st

from app.ratelimit import TokenBuckets


class PlainBuckets:
    """The straightforward version (what ``take`` was before it was tuned)."""

    def __init__(self, rate: float, burst: float, max_keys: int) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str, now: float, cost: float) -> float:
        tokens, last = self.buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= cost:
            wait = 0.0
            tokens -= cost
        else:
            wait = (cost - tokens) / self.rate
        self.buckets[key] = (tokens, now)
        self.buckets.move_to_end(key)
        if len(self.buckets) > self.max_keys:
            self.buckets.popitem(last=False)
        return wait


@given(
    rate=st.sampled_from([0.5, 1.0, 3.0, 100.0]),
    burst=st.sampled_from([1, 2.5, 5.0]),
    max_keys=st.integers(1, 4),
    steps=st.lists(
        st.tuples(st.sampled_from("abcdef"), st.floats(0, 2), st.sampled_from([1.0, 0.5, 3.0])),
        max_size=60,
    ),
)
@settings(max_examples=300)
def test_take_matches_the_plain_formula(
    rate: float, burst: float, max_keys: int, steps: list[tuple[str, float, float]]
) -> None:
    now = [0.0]
    buckets = TokenBuckets(rate, burst, max_keys, clock=lambda: now[0])
    plain = PlainBuckets(rate, burst, max_keys)
    for key, advance, cost in steps:
        now[0] += advance
        assert buckets.take(key, cost) == plain.take(key, now[0], cost)
        assert list(buckets._buckets.items()) == list(plain.buckets.items())


def test_a_bucket_refuses_then_refills() -> None:
    now = [0.0]
    buckets = TokenBuckets(2.0, 2.0, 10, clock=lambda: now[0])
    assert buckets.take("k") == 0.0
    assert buckets.take("k") == 0.0
    assert buckets.take("k") == 0.5  # empty: one token comes back in 1/rate s
    now[0] += 0.5
    assert buckets.take("k") == 0.0
