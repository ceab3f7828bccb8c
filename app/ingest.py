"""The ingest pipeline: events through small stages, a batch at a time.

    validate (schema, time, url, token) -> enrich (visitor, UA, preview,
    share minting) -> serialize (wire dict, JSON, partition key)

``EventStages`` runs them for the batch API (one request's events are a
batch) and for the pixel. The pixel's request path only captures the hit
(``PixelIngest.submit``) and answers the GIF; the work runs a moment later
on the same event loop, over every hit that arrived meanwhile, after a
rate-limit stage of its own.

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
from app.tokens import ShareToken, TokenError

log = logging.getLogger(__name__)

# Bounds one drain so a burst never holds the event loop for long.
MAX_BATCH = 512


@dataclass(slots=True)
class Hit:
    """One event on its way through the stages: a pixel request or a batch item."""

    scope: Mapping[str, Any]
    received: int
    fields: Any  # pixel query fields, or the client's JSON value (for the DLQ)
    index: int = 0
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


class EventStages:
    """validate -> enrich -> serialize over a batch of hits. Pure CPU, never blocks.

    ``reject`` is called for each hit a stage refuses; the others become
    records for ``source`` (``pixel`` or ``api``).
    """

    def __init__(
        self, state: AppState, source: str, authorize: Callable[[Hit], None] | None = None
    ) -> None:
        self._state = state
        self._source = source
        # Runs after validation (it needs the campaign); raises InvalidEvent to refuse.
        self._authorize = authorize
        # One enrichment per (request, campaign): a batch request shares its client.
        self._clients: dict[tuple[int, str], ClientInfo] = {}

    def run(
        self, hits: list[Hit], reject: Callable[[Hit, InvalidEvent], None]
    ) -> tuple[list[Record], dict[str, int], dict[str, int]]:
        """Returns the records, and the accepted counts per event type and per campaign."""
        self._clients.clear()
        hits = run_stage(self._validate, hits, reject)
        if self._authorize is not None:
            hits = run_stage(self._authorize, hits, reject)
        hits = run_stage(self._enrich, hits, reject)
        return self._serialize(hits)

    def _validate(self, hit: Hit) -> None:
        tracking = self._state.settings.tracking
        event = hit.event = hit.event or parse_event(hit.fields)
        hit.ts = check_time(
            event.ts, hit.received, tracking.max_event_age_s, tracking.max_event_skew_s
        )
        hit.url = clean_url(event.url)
        hit.token = resolve_token(self._state.signer, event.token, event.campaign)

    def _enrich(self, hit: Hit) -> None:
        state = self._state
        assert hit.event is not None
        key = (id(hit.scope), hit.event.campaign)
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = state.enricher.from_scope(hit.scope, hit.event.campaign)
        hit.client = client
        if hit.scope.get("method") == "HEAD" or client.preview:
            hit.event_type = "preview"
        else:
            hit.event_type = hit.event.type
        if hit.event_type == "share":
            parent = hit.parent = hit.token
            signer = state.signer
            try:
                hit.token = (
                    signer.mint_child(parent) if parent else signer.mint_root(hit.event.campaign)
                )
            except TokenError as exc:  # too deep to extend
                raise InvalidEvent("bad_token", "token", f"{exc.reason}: {exc}") from None

    def _serialize(self, hits: list[Hit]) -> tuple[list[Record], dict[str, int], dict[str, int]]:
        topic, dumps, source = self._state.topic, orjson.dumps, self._source
        records: list[Record] = []
        per_type: dict[str, int] = {}
        per_campaign: dict[str, int] = {}
        for hit in hits:
            event = hit.event
            assert event is not None and hit.client is not None
            wire = build_event(
                event,
                event_type=hit.event_type,
                token=hit.token,
                client=hit.client,
                source=source,
                ts=hit.ts,
                received_ms=hit.received,
                url=hit.url,
                parent=hit.parent,
            )
            records.append(Record(topic, partition_key(wire), dumps(wire)))
            per_type[hit.event_type] = per_type.get(hit.event_type, 0) + 1
            per_campaign[event.campaign] = per_campaign.get(event.campaign, 0) + 1
        return records, per_type, per_campaign


def run_stage(
    stage: Callable[[Hit], None], hits: list[Hit], reject: Callable[[Hit, InvalidEvent], None]
) -> list[Hit]:
    """Applies ``stage`` to every hit; those it refuses go to ``reject``, the rest on."""
    survivors = []
    for hit in hits:
        try:
            stage(hit)
        except InvalidEvent as error:
            reject(hit, error)
        else:
            survivors.append(hit)
    return survivors


class PixelIngest:
    """Owns the pending pixel hits of one app and drains them through the stages."""

    def __init__(self, state: AppState) -> None:
        self._state = state
        self._pending: list[Hit] = []
        self._max_query = state.settings.tracking.max_query_bytes
        self._stages = EventStages(state, "pixel")

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
            except Exception:
                # A bug must not wedge the pixel, nor cost every hit of the batch:
                # retry hit by hit, so only the hit that triggers it is lost (and counted).
                log.exception("pixel batch of %s hits failed; retrying one by one", len(batch))
                for hit in batch:
                    try:
                        self._process([hit])
                    except Exception:
                        log.exception("pixel hit dropped")
                        self._state.metrics.count_ingest("invalid", "dropped")

    def _process(self, batch: list[Hit]) -> None:
        state = self._state
        batch = run_stage(self._limit, batch, self._reject)
        records, per_type, _ = self._stages.run(batch, self._reject)
        publish = state.require_bus().publish_nowait
        for record in records:
            publish(record)
        for event_type, count in per_type.items():
            state.metrics.count_ingest(event_type, "accepted", count)

    def _reject(self, hit: Hit, error: InvalidEvent) -> None:
        state = self._state
        state.dead_letter(error, "pixel", hit.fields, hit.received, hit.fields.get("campaign"))
        outcome = "rate_limited" if error.reason == "rate_limited" else "rejected"
        state.metrics.count_ingest(hit.fields.get("type", "invalid"), outcome)

    def _limit(self, hit: Hit) -> None:
        state = self._state
        campaign = hit.fields.get("campaign")
        if state.ip_buckets.take(state.enricher.client_ip(hit.scope)) or (
            campaign is not None and state.campaign_buckets.take(campaign)
        ):
            raise InvalidEvent("rate_limited", None, "too many events from this client or campaign")
