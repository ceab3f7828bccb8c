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
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import unquote_plus

import orjson

from app.bus.base import Record
from app.enrich import ClientInfo
from app.events import (
    CAMPAIGN_PATTERN,
    CHANNEL_PATTERN,
    CLIENT_EVENT_TYPES,
    MAX_URL_CHARS,
    PIXEL_PARAMS,
    UUID_PATTERN,
    EventIn,
    InvalidEvent,
    build_event,
    cascade_key,
    check_time,
    clean_url,
    new_event_id,
    parse_event,
    partition_key,
    resolve_token,
    wire_event,
)
from app.state import AppState
from app.tokens import ShareToken, TokenError, TokenSigner

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

    A split rather than ``parse_qsl``: most values need no decoding. (A regex
    scan of the whole query was tried: slower.)
    """
    fields: dict[str, str] = {"type": "view"}
    for part in query.decode("latin-1").split("&"):
        name, _, value = part.partition("=")
        field = PIXEL_PARAMS.get(name)
        if field is not None and value:
            fields[field] = _decode(value) if "%" in value or "+" in value else value
    return fields


# -- the pixel's fast path ------------------------------------------------------
#
# The pixel's fields are already strings, so pydantic's model (``parse_event``)
# is mostly overhead for them. ``_fast_fields`` makes the same checks by hand
# for the inputs it can vouch for, and hands everything else to ``parse_event``,
# which then gives the same answer, or the same refusal (reason, field and
# message), as before. It must never accept what the model refuses, nor change
# a value: tests/test_pixel_fastpath.py compares both on random input.

# fullmatch, not match: Python's ``$`` also matches before a final newline, pydantic's does not.
_campaign_ok = re.compile(CAMPAIGN_PATTERN.removeprefix("^").removesuffix("$")).fullmatch
_channel_ok = re.compile(CHANNEL_PATTERN.removeprefix("^").removesuffix("$")).fullmatch
_uuid_ok = re.compile(UUID_PATTERN.removeprefix("^").removesuffix("$")).fullmatch
_MAX_TOKEN_CHARS = 64
_MAX_FAST_TS_DIGITS = 18  # longer (or zero-padded) numbers go to pydantic


@lru_cache(maxsize=1_024)
def _valid_campaign(campaign: str) -> bool:
    return _campaign_ok(campaign) is not None


@lru_cache(maxsize=1_024)
def _normal_channel(channel: str) -> str | None:
    lowered = channel.lower()
    return lowered if _channel_ok(lowered) is not None else None


# Page URLs repeat (a campaign's landing pages), and ``urlsplit`` is slow; both the
# pixel's fast path and the generic stages (``/v1/events``) clean through this cache.
_cached_clean_url = lru_cache(maxsize=8_192)(clean_url)

# The validated pixel event: type, campaign, token, channel, event id, ts, url.
PixelEvent = tuple[str, str, str | None, str | None, str | None, int | None, str | None]


def _fast_fields(fields: Mapping[str, str]) -> PixelEvent | None:
    """``fields`` checked as ``EventIn`` checks them, or None when unsure (then ask pydantic)."""
    event_type = fields["type"]
    campaign = fields.get("campaign")
    if event_type not in CLIENT_EVENT_TYPES or campaign is None or not _valid_campaign(campaign):
        return None
    token = fields.get("token")
    if token is not None and not 0 < len(token) <= _MAX_TOKEN_CHARS:
        return None
    channel = fields.get("channel")
    if channel is not None:
        channel = _normal_channel(channel)
        if channel is None:
            return None
    event_id = fields.get("event_id")
    if event_id is not None:
        event_id = event_id.lower()
        if _uuid_ok(event_id) is None:
            return None
    raw_ts = fields.get("ts")
    ts: int | None = None
    if raw_ts is not None:
        # Plain decimal only: pydantic also takes "0012", " 12", "1_2", "12.0", ...
        if not (
            raw_ts.isascii()
            and raw_ts.isdigit()
            and len(raw_ts) <= _MAX_FAST_TS_DIGITS
            and (raw_ts[0] != "0" or len(raw_ts) == 1)
        ):
            return None
        ts = int(raw_ts)
    url = fields.get("url")
    if url is not None and len(url) > MAX_URL_CHARS:
        return None
    return event_type, campaign, token, channel, event_id, ts, url


def pixel_event(fields: Mapping[str, str]) -> PixelEvent:
    """The pixel's event from its fields, validated as ``parse_event`` does it.

    Raises ``InvalidEvent`` (from ``parse_event``) for what the model refuses."""
    fast = _fast_fields(fields)
    if fast is not None:
        return fast
    return event_values(parse_event(fields))


def event_values(event: EventIn) -> PixelEvent:
    """The pixel's fields of a validated ``EventIn`` (the pixel sends no text, value
    or reaction)."""
    return (
        event.type,
        event.campaign,
        event.token,
        event.channel,
        event.event_id,
        event.ts,
        event.url,
    )


def recorded_type(scope: Mapping[str, Any], client: ClientInfo, requested: str) -> str:
    """The type an event is recorded as: ``preview`` for HEAD requests and link-preview
    fetches, else the type the client sent."""
    return "preview" if scope.get("method") == "HEAD" or client.preview else requested


def mint_share(signer: TokenSigner, through: ShareToken | None, campaign: str) -> ShareToken:
    """A new share's token: a child of the share it came ``through``, else a new root.

    Raises ``InvalidEvent`` (``bad_token``) when ``through`` is too deep to extend."""
    try:
        return signer.mint_child(through) if through else signer.mint_root(campaign)
    except TokenError as exc:
        raise InvalidEvent("bad_token", "token", f"{exc.reason}: {exc}") from None


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
        hit.url = _cached_clean_url(event.url)
        hit.token = resolve_token(self._state.signer, event.token, event.campaign)

    def _enrich(self, hit: Hit) -> None:
        state = self._state
        assert hit.event is not None
        key = (id(hit.scope), hit.event.campaign)
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = state.enricher.from_scope(hit.scope, hit.event.campaign)
        hit.client = client
        hit.event_type = recorded_type(hit.scope, client, hit.event.type)
        if hit.event_type == "share":
            hit.parent = hit.token
            hit.token = mint_share(state.signer, hit.parent, hit.event.campaign)

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


# A captured pixel request: ASGI scope, receive time (ms), query fields.
Pending = tuple[Mapping[str, Any], int, dict[str, str]]


class PixelIngest:
    """Owns the pending pixel hits of one app and drains them through the stages.

    The stages are the generic ones' (rate limit, validate, enrich,
    serialize) with the pixel's fast path: no pydantic model, no per-hit
    objects but the wire dict and the record. ``reference=True`` runs the
    generic ``EventStages`` instead; the tests and ``bench pixel`` compare
    the two, which must publish the same events and refuse the same hits.
    """

    def __init__(self, state: AppState, reference: bool = False) -> None:
        self._state = state
        self._reference = reference
        self._pending: list[Pending] = []
        self._max_query = state.settings.tracking.max_query_bytes
        self._stages = EventStages(state, "pixel")

    def submit(self, scope: Mapping[str, Any]) -> None:
        """Captures one pixel request; processing follows on the next loop turn."""
        received = time.time_ns() // 1_000_000  # now_ms(), inlined on the hottest path
        query: bytes = scope.get("query_string", b"")
        if len(query) > self._max_query:
            error = InvalidEvent("oversized", "query", "query string is too long")
            self._dead_letter((scope, received, {"query": query[:256].decode("latin-1")}), error)
            return
        pending = self._pending
        pending.append((scope, received, pixel_fields(query)))
        if len(pending) == 1:
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
                for pending in batch:
                    try:
                        self._process([pending])
                    except Exception:
                        log.exception("pixel hit dropped")
                        self._state.metrics.count_ingest("invalid", "dropped")

    def _process(self, batch: list[Pending]) -> None:
        if self._reference:
            self._process_reference(batch)
            return
        state = self._state
        dead_letter = self._dead_letter

        # Stage 1, rate limits, as ``_limit``.
        over_limit = self._over_limit
        allowed: list[Pending] = []
        for pending in batch:
            if over_limit(pending[0], pending[2].get("campaign")):
                dead_letter(pending, _rate_limited())
            else:
                allowed.append(pending)

        # Stage 2, validate: as ``EventStages._validate``, checks in the same order.
        tracking = state.settings.tracking
        max_age, max_skew = tracking.max_event_age_s, tracking.max_event_skew_s
        signer = state.signer
        valid = []
        for pending in allowed:
            received = pending[1]
            try:
                event = pixel_event(pending[2])
                ts = check_time(event[5], received, max_age, max_skew)
                url = _cached_clean_url(event[6])
                token = resolve_token(signer, event[2], event[1])
            except InvalidEvent as error:
                dead_letter(pending, error)
            else:
                valid.append((pending, event, ts, url, token))

        # Stage 3, enrich and serialize: as ``EventStages._enrich`` and ``_serialize``.
        from_scope = state.enricher.from_scope
        topic, dumps = state.topic, orjson.dumps
        records: list[Record] = []
        per_type: dict[str, int] = {}
        for pending, event, ts, url, token in valid:
            scope = pending[0]
            requested, campaign = event[0], event[1]
            client = from_scope(scope, campaign)
            event_type = recorded_type(scope, client, requested)
            parent = None
            if event_type == "share":
                parent = token
                try:
                    token = mint_share(signer, parent, campaign)
                except InvalidEvent as too_deep:
                    dead_letter(pending, too_deep)
                    continue
            wire = wire_event(
                event[4] or new_event_id(),
                event_type,
                requested,
                campaign,
                ts,
                pending[1],
                "pixel",
                token,
                parent,
                event[3],
                url,
                None,
                None,
                None,
                client,
            )
            key = cascade_key(token.root_hex if token else None, campaign)
            records.append(Record(topic, key, dumps(wire)))
            per_type[event_type] = per_type.get(event_type, 0) + 1

        state.require_bus().publish_many_nowait(records)
        count = state.metrics.count_ingest
        for event_type, amount in per_type.items():
            count(event_type, "accepted", amount)

    def _process_reference(self, batch: list[Pending]) -> None:
        """The generic stages over the batch (what the pixel ran before its fast path)."""
        state = self._state
        hits = run_stage(self._limit, [Hit(*pending) for pending in batch], self._reject)
        records, per_type, _ = self._stages.run(hits, self._reject)
        publish = state.require_bus().publish_nowait
        for record in records:
            publish(record)
        for event_type, count in per_type.items():
            state.metrics.count_ingest(event_type, "accepted", count)

    def _reject(self, hit: Hit, error: InvalidEvent) -> None:
        self._dead_letter((hit.scope, hit.received, hit.fields), error)

    def _dead_letter(self, pending: Pending, error: InvalidEvent) -> None:
        state = self._state
        _, received, fields = pending
        state.dead_letter(error, "pixel", fields, received, fields.get("campaign"))
        outcome = "rate_limited" if error.reason == "rate_limited" else "rejected"
        state.metrics.count_ingest(fields.get("type", "invalid"), outcome)

    def _over_limit(self, scope: Mapping[str, Any], campaign: str | None) -> bool:
        """Takes from the client's and the campaign's rate buckets; True when either is empty."""
        state = self._state
        return bool(
            state.ip_buckets.take(state.enricher.client_ip(scope))
            or (campaign is not None and state.campaign_buckets.take(campaign))
        )

    def _limit(self, hit: Hit) -> None:
        if self._over_limit(hit.scope, hit.fields.get("campaign")):
            raise _rate_limited()


def _rate_limited() -> InvalidEvent:
    return InvalidEvent("rate_limited", None, "too many events from this client or campaign")
