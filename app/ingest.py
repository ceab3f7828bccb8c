"""The pixel's ingest pipeline: accept now, process in micro-batches.

The request path only captures the hit (``PixelIngest.submit``) and answers
the GIF; the work runs a moment later on the same event loop, over every
hit that arrived meanwhile, one stage at a time:

    decode (query fields, rate limits) -> validate (schema, time, url, token)
    -> enrich (visitor, UA, preview, share minting) -> serialize -> bus

Running each stage over the whole batch keeps its code and data hot in the
CPU caches, which roughly halves the cost per event under load (see
docs/benchmarks.md); with no load, a batch is one hit. A hit that fails a
stage goes to the DLQ with the stage's reason, and the rest carry on.

Contract: ``submit`` never blocks and never raises for bad input. Hits are
held in memory until the next loop iteration, so a process crash can lose
the hits of that one iteration (plus the bus's linger); the README says so.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import unquote_plus

import orjson

from app.bus.base import Record
from app.enrich import ClientInfo
from app.events import (
    PIXEL_PARAMS,
    EventIn,
    InvalidEvent,
    build_event,
    check_time,
    clean_url,
    parse_event,
    partition_key,
    resolve_token,
)
from app.state import AppState, now_ms
from app.tokens import ShareToken

log = logging.getLogger(__name__)

# Bounds one drain so a burst never holds the event loop for long.
MAX_BATCH = 512


@dataclass(slots=True)
class Hit:
    """One pixel request on its way through the stages."""

    scope: Mapping[str, Any]
    received: int
    fields: dict[str, str]
    event: EventIn | None = None
    ts: int = 0
    url: str | None = None
    token: ShareToken | None = None
    parent: ShareToken | None = None
    client: ClientInfo | None = None
    event_type: str = "view"


# Percent-decoding is slow in CPython; the encoded values that recur are a
# campaign's page URLs, so a bounded cache pays (like the user-agent cache).
_decode = lru_cache(maxsize=8_192)(unquote_plus)


def pixel_fields(query: bytes) -> dict[str, str]:
    """The pixel's known parameters, percent-decoded; unknown ones (cache busters) ignored.

    A split rather than ``parse_qsl``: most values need no decoding.
    """
    fields: dict[str, str] = {"type": "view"}
    for part in query.decode("latin-1").split("&"):
        name, _, value = part.partition("=")
        field = PIXEL_PARAMS.get(name)
        if field is not None and value:
            fields[field] = _decode(value) if "%" in value or "+" in value else value
    return fields


class PixelIngest:
    """Owns the pending hits of one app and drains them through the stages."""

    def __init__(self, state: AppState) -> None:
        self._state = state
        self._pending: list[Hit] = []
        tracking = state.settings.tracking
        self._max_query = tracking.max_query_bytes
        self._stages: list[Callable[[Hit], None]] = [
            self._limit,
            self._validate,
            self._enrich,
        ]

    def submit(self, scope: Mapping[str, Any]) -> None:
        """Captures one pixel request; processing follows on the next loop turn."""
        received = now_ms()
        query: bytes = scope.get("query_string", b"")
        if len(query) > self._max_query:
            error = InvalidEvent("oversized", "query", "query string is too long")
            self._reject(Hit(scope, received, {"query": query[:256].decode("latin-1")}), error)
            return
        self._pending.append(Hit(scope, received, pixel_fields(query)))
        if len(self._pending) == 1:
            asyncio.get_running_loop().call_soon(self.drain)

    def drain(self) -> None:
        """Runs every pending hit through the stages. Never raises."""
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            try:
                self._process(batch)
            except Exception:  # a bug must not wedge the pixel: log, count, go on
                log.exception("pixel batch of %s hits failed", len(batch))
                self._state.metrics.count_ingest("invalid", "dropped", len(batch))

    def _process(self, batch: list[Hit]) -> None:
        for stage in self._stages:
            survivors = []
            for hit in batch:
                try:
                    stage(hit)
                except InvalidEvent as error:
                    self._reject(hit, error)
                else:
                    survivors.append(hit)
            batch = survivors
        state = self._state
        topic, publish, dumps = state.topic, state.require_bus().publish_nowait, orjson.dumps
        counts: dict[str, int] = {}
        for hit in batch:
            assert hit.event is not None and hit.client is not None
            wire = build_event(
                hit.event,
                event_type=hit.event_type,
                token=hit.token,
                client=hit.client,
                source="pixel",
                ts=hit.ts,
                received_ms=hit.received,
                url=hit.url,
                parent=hit.parent,
            )
            publish(Record(topic, partition_key(wire), dumps(wire)))
            counts[hit.event_type] = counts.get(hit.event_type, 0) + 1
        for event_type, count in counts.items():
            state.metrics.count_ingest(event_type, "accepted", count)

    def _reject(self, hit: Hit, error: InvalidEvent) -> None:
        state = self._state
        state.dead_letter(error, "pixel", hit.fields, hit.received, hit.fields.get("campaign"))
        outcome = "rate_limited" if error.reason == "rate_limited" else "rejected"
        state.metrics.count_ingest(hit.fields.get("type", "invalid"), outcome)

    # -- stages: each fills in the hit or raises InvalidEvent -------------------

    def _limit(self, hit: Hit) -> None:
        state = self._state
        campaign = hit.fields.get("campaign")
        if state.ip_buckets.take(state.enricher.client_ip(hit.scope)) or (
            campaign is not None and state.campaign_buckets.take(campaign)
        ):
            raise InvalidEvent("rate_limited", None, "too many events from this client or campaign")

    def _validate(self, hit: Hit) -> None:
        tracking = self._state.settings.tracking
        event = hit.event = parse_event(hit.fields)
        hit.ts = check_time(
            event.ts, hit.received, tracking.max_event_age_s, tracking.max_event_skew_s
        )
        hit.url = clean_url(event.url)
        hit.token = resolve_token(self._state.signer, event.token, event.campaign)

    def _enrich(self, hit: Hit) -> None:
        state = self._state
        assert hit.event is not None
        client = hit.client = state.enricher.from_scope(hit.scope, hit.event.campaign)
        if hit.scope.get("method") == "HEAD" or client.preview:
            hit.event_type = "preview"
        else:
            hit.event_type = hit.event.type
        if hit.event_type == "share":
            parent = hit.parent = hit.token
            signer = state.signer
            hit.token = (
                signer.mint_child(parent) if parent else signer.mint_root(hit.event.campaign)
            )
