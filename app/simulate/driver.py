"""The simulator's HTTP driver: plays a ``Plan`` against a running instance.

Only the public API is used: ``POST /v1/shares`` (a share's token comes
back and its children and touches use it), ``GET /p.gif`` (views, and
clicks unless the campaign has a tracked link), ``GET /r/{slug}`` (clicks
through a tracked link) and ``POST /v1/events`` (comments, reactions and
conversions, batched, with the write key when one is given).

Timing: an action planned at virtual time ``v`` is sent ``v / speed``
seconds after the start, with event time ``ts = start - span * (1 - 1/speed)
+ v``: with ``speed`` 1 that is now; faster, the plan's span is compressed
and its events are dated in the recent past, the last ones about now (the
start rounded down to a whole minute). An
event time is never later than the moment it is sent, so the server's
clock-skew check passes while the two clocks agree. Link clicks carry the
server's time (``/r/`` takes no ``ts``).

Every event ends up in exactly one bucket of ``Stats``: sent (accepted),
rejected (in a 202 answer, by reason), errored (the request failed, by
reason), skipped (its share failed, so there is no token) or not sent
(time up or interrupted). 429 and 503 answers are retried after their
``Retry-After`` (all sending pauses meanwhile) and counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Final, TypeVar

import httpx

from app.simulate.plan import Action, Event, Plan, Share, Touch

log = logging.getLogger(__name__)

MAX_TRIES: Final = 6
MAX_RETRY_AFTER_S: Final = 30.0
BATCH_MAX: Final = 200
BATCH_MAX_AGE_S: Final = 0.5
STOP_GRACE_S: Final = 3.0  # in-flight requests get this long after a stop
TIMEOUT_S: Final = 10.0
_T = TypeVar("_T")


@dataclass
class Stats:
    """What happened to every planned event (see the module docstring)."""

    planned: int
    planned_by_type: Counter[str]
    sent: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    not_sent: int = 0
    dispatched: int = 0
    requests: int = 0
    throttled: Counter[int] = field(default_factory=Counter)  # 429 / 503 answers, retried
    cascades: int = 0  # seeds whose share was accepted
    max_depth: int = 0
    comments_by_lang: Counter[str] = field(default_factory=Counter)
    negative_sent: int = 0  # comments and reactions meant to be negative, sent
    buzz_sent: int = 0
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None

    @property
    def elapsed_s(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    @property
    def sent_total(self) -> int:
        return sum(self.sent.values())

    @property
    def accounted(self) -> int:
        """Events in a final bucket; equals ``planned`` once the run is over."""
        return (
            self.sent_total + sum(self.rejected.values()) + sum(self.errors.values())
            + sum(self.skipped.values()) + self.not_sent
        )  # fmt: skip


class _Tally:
    """The events one task still has to count: each goes to exactly one bucket."""

    def __init__(self, stats: Stats, events: int) -> None:
        self.stats = stats
        self.left = events

    def count(self, bucket: Counter[str], key: str, events: int = 1) -> None:
        if events > 0:
            bucket[key] += events
            self.left -= events


def user_agent(recipient: int) -> str:
    """A plausible browser user agent, distinct per recipient: the server derives
    visitor ids from the address and the user agent, and all simulated recipients
    share the simulator's address. (An HTTP library's own agent would make every
    event a bot's.)"""
    family, n = recipient % 4, recipient // 4
    major, build, patch = 120 + n % 8, 6000 + n // 8 % 1000, n // 8000 % 200
    if family == 0:
        return (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            f"Chrome/{major}.0.{build}.{patch} Safari/537.36"
        )
    if family == 1:
        return (
            f"Mozilla/5.0 (Linux; Android {10 + n % 5}; K) AppleWebKit/537.36 (KHTML, like Gecko) "
            f"Chrome/{major}.0.{build}.{patch} Mobile Safari/537.36"
        )
    if family == 2:
        return (
            f"Mozilla/5.0 (iPhone; CPU iPhone OS 17_{n % 6} like Mac OS X) AppleWebKit/605.1.15 "
            f"(KHTML, like Gecko) Version/17.{n % 6} Mobile/15E{148 + n // 6} Safari/604.1"
        )
    return (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
        f"Chrome/{major}.0.{build}.{patch} Safari/537.36 Edg/{major}.0.{2000 + n % 900}.{n % 97}"
    )


def _retry_after(response: httpx.Response) -> float:
    value = response.headers.get("retry-after", "1").strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            seconds = 1.0
    return min(max(seconds, 0.1), MAX_RETRY_AFTER_S)


def _error_reason(response: httpx.Response) -> str:
    """``"<status> <reason>"`` from the API's error shape, or the bare status."""
    try:
        reason = response.json()["error"]["reason"]
    except (ValueError, KeyError, TypeError):
        return str(response.status_code)
    return f"{response.status_code} {reason}"


class Driver:
    """One run of ``plan`` against ``client`` (an ``httpx.AsyncClient`` with the base URL)."""

    def __init__(
        self,
        plan: Plan,
        client: httpx.AsyncClient,
        *,
        speed: float = 1.0,
        rate: float = 50.0,
        concurrency: int = 8,
        write_key: str | None = None,
        links: dict[str, str] | None = None,
        deadline_s: float | None = None,
    ) -> None:
        if speed < 1:
            raise ValueError("speed must be >= 1 (event times are never in the future)")
        self.plan = plan
        self.client = client
        self.speed = speed
        self.rate = rate
        self.write_key = write_key
        self.links = links or {}
        self.deadline_s = deadline_s
        self.stats = Stats(len(plan.actions), plan.count_by_type())
        self._slots = asyncio.Semaphore(concurrency)
        # Requests queued beyond this make the plan wait instead: a long queue would
        # send events late and out of order when the server is slower than the plan.
        self._max_tasks = concurrency * 4
        self._last_batch: asyncio.Task[None] | None = None
        self._tokens: dict[int, asyncio.Future[str | None]] = {}
        self._seeds = {seed.node for seed in plan.seeds}
        self._tasks: set[asyncio.Task[None]] = set()
        self._batch: list[tuple[Event, str]] = []
        self._batch_since = 0.0
        self._pause_until = 0.0
        self._next_slot = 0.0
        self._t0 = 0.0
        self._ts0_ms = 0

    # -- the run -----------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> Stats:
        """Send the plan; returns when it is done, past the deadline, or ``stop`` is set.

        After a stop or the deadline, requests in flight get ``STOP_GRACE_S``;
        cancelling the task that awaits ``run`` abandons them at once. Either
        way every planned event is counted in one bucket of ``stats``.
        """
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        self._t0 = self._next_slot = loop.time()
        self.stats.started = time.monotonic()
        span_ms = self.plan.config.span_ms
        self._ts0_ms = int(time.time() * 1000) - round(span_ms * (1 - 1 / self.speed))
        if self.speed > 1:
            # Dated in the past anyway: start on a whole minute, so that the first
            # per-minute buzz window is not a partial one (baselines start from it).
            self._ts0_ms -= self._ts0_ms % 60_000
        flusher = asyncio.create_task(self._flush_periodically())
        stopped = asyncio.ensure_future(stop.wait())
        try:
            finished = await self._dispatch(stopped)
            self._flush()
            if self._tasks:
                await self._settle(stopped, finished)
        finally:
            flusher.cancel()
            stopped.cancel()
            await self._abandon()
            self.stats.ended = time.monotonic()
        return self.stats

    def _time_left(self) -> float | None:
        if self.deadline_s is None:
            return None
        return max(0.0, self._t0 + self.deadline_s - asyncio.get_running_loop().time())

    async def _settle(self, stopped: asyncio.Future[Any], finished: bool) -> None:
        """Let the requests in flight finish: until the deadline (plus a grace) after a
        complete dispatch, a grace after an early stop or a stop that comes meanwhile."""
        if not finished:
            await asyncio.wait(set(self._tasks), timeout=STOP_GRACE_S)
            return
        left = self._time_left()
        waiter = asyncio.ensure_future(
            asyncio.wait(set(self._tasks), timeout=None if left is None else left + STOP_GRACE_S)
        )
        try:
            await asyncio.wait({waiter, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not waiter.done():
                await asyncio.wait({waiter}, timeout=STOP_GRACE_S)
        finally:
            waiter.cancel()

    async def _dispatch(self, stopped: asyncio.Future[Any]) -> bool:
        """Launch every action at its time; False when stopped early (stop or deadline)."""
        loop = asyncio.get_running_loop()
        actions = self.plan.actions
        deadline = None if self.deadline_s is None else self._t0 + self.deadline_s

        def over() -> bool:
            return stopped.done() or (deadline is not None and loop.time() >= deadline)

        for index, action in enumerate(actions):
            due = self._t0 + action.at_ms / 1000 / self.speed
            ready = max(due, self._pause_until, self._rate_slot(loop.time()))
            if deadline is not None:
                ready = min(ready, deadline)
            if ready > loop.time():
                await asyncio.wait({stopped}, timeout=ready - loop.time())
            while not over() and len(self._tasks) >= self._max_tasks:
                await asyncio.wait(
                    {*self._tasks, stopped}, timeout=self._time_left(),
                    return_when=asyncio.FIRST_COMPLETED,
                )  # fmt: skip
            if over():
                self.stats.not_sent += len(actions) - index
                return False
            self.stats.dispatched += 1
            self._launch(action)
        return True

    def _rate_slot(self, now: float) -> float:
        """When the next event may go: ``rate`` per second, bursts of half a second."""
        burst = max(1.0, self.rate / 2)
        self._next_slot = max(self._next_slot, now - burst / self.rate) + 1 / self.rate
        return self._next_slot - burst / self.rate

    def _launch(self, action: Action) -> None:
        if isinstance(action, Share):
            self._tokens[action.node] = asyncio.get_running_loop().create_future()
            self._spawn(self._share, action, 1)
        elif isinstance(action, Touch):
            self._spawn(self._touch, action, 1)
        else:
            if not self._batch:
                self._batch_since = asyncio.get_running_loop().time()
            self._batch.append((action, str(uuid.uuid4())))
            if len(self._batch) >= BATCH_MAX:
                self._flush()

    def _spawn(
        self, send: Callable[[_Tally, _T], Awaitable[None]], what: _T, events: int
    ) -> asyncio.Task[None]:
        """Run ``send(tally, what)``; events it leaves uncounted when cancelled are errors."""

        async def guarded() -> None:
            tally = _Tally(self.stats, events)
            try:
                await send(tally, what)
            except asyncio.CancelledError:
                tally.count(self.stats.errors, "interrupted (may have arrived)", tally.left)
                raise
            except (ValueError, KeyError, TypeError) as exc:
                # An answer without the documented shape (a proxy's page, another
                # service on the port): counted, never a traceback.
                log.debug("unexpected answer", exc_info=True)
                tally.count(self.stats.errors, f"unexpected answer ({exc!r:.60})", tally.left)

        task = asyncio.create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _abandon(self) -> None:
        """Cancel what is still in flight (its events count as errors)."""
        if self._batch:
            self.stats.not_sent += len(self._batch)
            self._batch = []
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _flush_periodically(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(0.1)
            if self._batch and loop.time() - self._batch_since >= BATCH_MAX_AGE_S:
                self._flush()

    def _flush(self) -> None:
        if self._batch:
            batch, self._batch = self._batch, []
            after = self._last_batch
            self._last_batch = self._spawn(self._events, (after, batch), len(batch))

    @property
    def event_time_start_ms(self) -> int:
        """The event time (ms since the epoch) of the plan's virtual time 0."""
        return self._ts0_ms

    def _ts(self, action: Action) -> int:
        return self._ts0_ms + action.at_ms

    # -- requests ----------------------------------------------------------------

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response | str:
        """The answer, retried after 429/503 and transport errors; else why it failed."""
        loop = asyncio.get_running_loop()
        reason = "no answer"
        for attempt in range(MAX_TRIES):
            wait = self._pause_until - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            async with self._slots:
                try:
                    response = await self.client.request(method, path, **kwargs)
                except httpx.HTTPError as exc:
                    reason = type(exc).__name__
                    response = None
            if response is None:
                await asyncio.sleep(min(0.25 * 2**attempt, 8.0))
                continue
            self.stats.requests += 1
            if response.status_code not in (429, 503):
                return response
            self.stats.throttled[response.status_code] += 1
            reason = f"{_error_reason(response)} (gave up after {MAX_TRIES} tries)"
            self._pause_until = max(self._pause_until, loop.time() + _retry_after(response))
        return reason

    async def _token(self, node: int | None) -> str | None:
        """The share token of ``node`` once its share is answered; None if it failed."""
        if node is None:
            return None
        # Shielded: a waiter cancelled at a stop must not cancel the share's own future.
        return await asyncio.shield(self._tokens[node])

    async def _share(self, tally: _Tally, share: Share) -> None:
        stats = self.stats
        future = self._tokens[share.node]
        token: str | None = None
        try:
            body: dict[str, Any] = {
                "campaign": share.campaign, "channel": share.channel,
                "visitor": share.sharer, "ts": self._ts(share),
            }  # fmt: skip
            if share.parent is not None:
                body["parent"] = await self._token(share.parent)
                if body["parent"] is None:
                    tally.count(stats.skipped, "its parent share failed")
                    return
            headers = {"user-agent": user_agent(share.recipient)}
            answer = await self._request("POST", "/v1/shares", json=body, headers=headers)
            if isinstance(answer, str):
                tally.count(stats.errors, f"share: {answer}")
            elif answer.status_code != 201:
                tally.count(stats.errors, f"share: {_error_reason(answer)}")
            else:
                created = answer.json()
                token, depth = str(created["token"]), int(created["depth"])
                tally.count(stats.sent, "share")
                stats.max_depth = max(stats.max_depth, depth)
                if share.node in self._seeds:
                    stats.cascades += 1
        finally:
            if not future.done():
                future.set_result(token)

    async def _touch(self, tally: _Tally, touch: Touch) -> None:
        stats = self.stats
        token = await self._token(touch.node)
        if token is None:
            tally.count(stats.skipped, "its share failed")
            return
        headers = {"user-agent": user_agent(touch.recipient)}
        slug = self.links.get(touch.campaign) if touch.type == "click" else None
        if slug is not None:
            params = {"t": token, "ch": touch.channel}
            answer = await self._request("GET", f"/r/{slug}", params=params, headers=headers)
            ok = 302
        else:
            params = {
                "c": touch.campaign, "e": touch.type, "t": token, "ch": touch.channel,
                "ts": str(self._ts(touch)), "eid": str(uuid.uuid4()),
            }  # fmt: skip
            answer = await self._request("GET", "/p.gif", params=params, headers=headers)
            ok = 200
        if isinstance(answer, str):
            tally.count(stats.errors, f"{touch.type}: {answer}")
        elif answer.status_code != ok:
            tally.count(stats.errors, f"{touch.type}: {_error_reason(answer)}")
        else:
            tally.count(stats.sent, touch.type)

    async def _events(
        self, tally: _Tally, chained: tuple[asyncio.Task[None] | None, list[tuple[Event, str]]]
    ) -> None:
        """One batch, sent after the previous one: the alerts consumer's windows follow
        each campaign's newest event time, so comments must not overtake each other."""
        after, batch = chained
        if after is not None:
            await asyncio.wait({after})
        stats = self.stats
        items: list[tuple[Event, dict[str, Any]]] = []
        for event, event_id in batch:
            token = await self._token(event.node)
            if event.node is not None and token is None:
                tally.count(stats.skipped, "its share failed")
                continue
            fields = {
                "type": event.type, "campaign": event.campaign, "token": token,
                "channel": event.channel, "event_id": event_id, "ts": self._ts(event),
                "text": event.text, "reaction": event.reaction, "value": event.value,
            }  # fmt: skip
            items.append((event, {k: v for k, v in fields.items() if v is not None}))
        if not items:
            return
        # A browser's agent: the server flags an HTTP library's as a bot, and bots'
        # comments are not buzz. One agent per batch: batched events share a visitor.
        headers = {"user-agent": user_agent(0)}
        if self.write_key:
            headers["authorization"] = f"Bearer {self.write_key}"
        answer = await self._request(
            "POST", "/v1/events", json=[wire for _, wire in items], headers=headers
        )
        if isinstance(answer, str) or answer.status_code != 202:
            reason = answer if isinstance(answer, str) else _error_reason(answer)
            for event, _ in items:
                tally.count(stats.errors, f"{event.type}: {reason}")
            return
        refused = {r["index"]: r["reason"] for r in answer.json()["rejected"]}
        for index, (event, _) in enumerate(items):
            if index in refused:
                tally.count(stats.rejected, f"{event.type}: {refused[index]}")
                continue
            tally.count(stats.sent, event.type)
            if event.label is not None:
                stats.buzz_sent += 1
                stats.negative_sent += event.label == "negative"
            if event.lang is not None:
                stats.comments_by_lang[event.lang] += 1


DLQ_METRIC: Final = "viraltrace_dlq_events_total"


async def dead_letters(client: httpx.AsyncClient) -> Counter[str] | None:
    """The server's dead-lettered events so far by reason (``GET /metrics``), or None
    when it cannot be read. The pixel and tracked links answer 200/302 whatever
    happens to the event, so this is how a run learns what the server refused."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        response = await client.get("/metrics")
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    out: Counter[str] = Counter()
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == DLQ_METRIC:
                out[sample.labels.get("reason", "")] += int(sample.value)
    return out
