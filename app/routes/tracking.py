"""Tracking endpoints: the tracked link, share minting, the batch event API,
the documented pixel route, health and metrics."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import RedirectResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError
from sqlalchemy.exc import SQLAlchemyError

from app.bus.base import BusUnavailable, Record
from app.db.keys import Principal
from app.errors import ApiError, JsonResponse, bearer_token
from app.events import (
    CHANNEL_PATTERN,
    Campaign,
    Channel,
    EventIn,
    InvalidEvent,
    build_event,
    check_time,
    partition_key,
)
from app.ingest import EventStages, Hit
from app.links import with_query_param
from app.pixel import PIXEL_GIF, PIXEL_HEADER_MAP, track_pixel
from app.state import AppState, StateDep, now_ms
from app.tokens import TokenError

log = logging.getLogger(__name__)
router = APIRouter()
CHANNEL_RE = re.compile(CHANNEL_PATTERN)

JSON_TYPES = ("application/json", "text/plain")


# -- models --------------------------------------------------------------------


class ShareIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    campaign: Campaign
    parent: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    channel: Channel | None = None
    visitor: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = Field(
        None, description="your own id for the sharer; stored only as a keyed hash"
    )
    ts: Annotated[int, Field(ge=0)] | None = Field(
        None,
        description="when the share happened, ms since the epoch (a server recording or "
        "importing shares); refused unless plausible, as for events; default now",
    )


class ShareOut(BaseModel):
    token: str
    root: str
    depth: int
    share_url: str | None


class Rejection(BaseModel):
    index: int
    reason: str
    field: str | None
    message: str


class EventsAccepted(BaseModel):
    accepted: int
    rejected: list[Rejection]


# -- helpers -------------------------------------------------------------------


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def _limit_client(state: AppState, request: Request, cost: float = 1.0) -> None:
    wait = state.ip_buckets.take(state.enricher.client_ip(request.scope), cost)
    if wait:
        raise ApiError(
            429, "rate_limited", "too many requests from this client", None, _retry_after(wait)
        )


def _limit_campaign(state: AppState, campaign: str, cost: float) -> None:
    wait = state.campaign_buckets.take(campaign, cost)
    if wait:
        raise ApiError(
            429,
            "rate_limited",
            f"campaign {campaign!r} is over its event rate",
            "campaign",
            _retry_after(wait),
        )


def _count_refused(state: AppState, per_type: Mapping[str, int], outcome: str) -> None:
    """Counts valid events a 429 or 503 turned away (none of the request's events was taken)."""
    for event_type, count in per_type.items():
        state.metrics.count_ingest(event_type, outcome, count)


async def _publish(state: AppState, records: list[Record], per_type: Mapping[str, int]) -> None:
    """Publishes and waits for durability; 503 (``per_type`` counted ``unavailable``) when
    neither the broker nor the spool can take the records."""
    try:
        await state.require_bus().publish(records)
    except BusUnavailable as exc:
        _count_refused(state, per_type, "unavailable")
        raise ApiError(503, "unavailable", str(exc), None, _retry_after(exc.retry_after_s)) from exc


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "too_large", f"body is larger than {limit} bytes", "body")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too_large", f"body is larger than {limit} bytes", "body")
        chunks.append(chunk)
    return b"".join(chunks)


# -- routes --------------------------------------------------------------------


PIXEL_ROUTE: dict[str, Any] = {
    "response_class": Response,
    "responses": {200: {"content": {"image/gif": {}}, "description": "always the 43-byte GIF"}},
    "summary": "Tracking pixel",
}


@router.get("/p.gif", operation_id="pixel_get", **PIXEL_ROUTE)
@router.head("/p.gif", operation_id="pixel_head", **PIXEL_ROUTE)
async def pixel(
    request: Request,
    state: StateDep,
    c: Annotated[str | None, Query(description="campaign slug (required)")] = None,
    e: Annotated[str | None, Query(description="event type, default view")] = None,
    t: Annotated[str | None, Query(description="share token the visitor arrived through")] = None,
    ch: Annotated[str | None, Query(description="channel")] = None,
    eid: Annotated[str | None, Query(description="client event id (UUID)")] = None,
    ts: Annotated[str | None, Query(description="client time, ms since the epoch")] = None,
    u: Annotated[str | None, Query(description="page URL")] = None,
) -> Response:
    """Always answers the GIF; bad events go to the DLQ. Normally answered by
    ``PixelFastPath`` in front of the app; this route documents it and serves
    it when the app runs without that wrapper."""
    track_pixel(state, request.scope)
    body = b"" if request.method == "HEAD" else PIXEL_GIF
    return Response(body, headers=PIXEL_HEADER_MAP)


LINK_ROUTE: dict[str, Any] = {
    "status_code": 302,
    "response_class": RedirectResponse,
    "responses": {302: {"description": "to the link's registered destination"}, 404: {}},
    "summary": "Tracked link",
}


@router.get("/r/{slug}", operation_id="tracked_link_get", **LINK_ROUTE)
@router.head("/r/{slug}", operation_id="tracked_link_head", **LINK_ROUTE)
async def tracked_link(
    slug: str,
    request: Request,
    state: StateDep,
    t: Annotated[str | None, Query(description="share token the link was shared with")] = None,
    ch: Annotated[str | None, Query(description="channel")] = None,
) -> Response:
    """302 to the registered destination (never to a URL from the request), with
    ``vt=<token>`` added so the landing page knows the parent share. Records a
    click without waiting for the broker; sets no cookie."""
    received = now_ms()
    link = state.links.get(slug)
    if link is None:
        raise ApiError(404, "unknown_link", f"no tracked link {slug!r}", "slug")
    token = link.root
    if t is not None:
        try:
            token = state.signer.verify(t, link.campaign)
        except TokenError as exc:
            state.dead_letter(
                InvalidEvent("bad_token", "t", f"{exc.reason}: {exc}"),
                "link",
                {"slug": slug, "t": t[:64]},
                received,
                link.campaign,
            )
    client = state.enricher.from_scope(request.scope, link.campaign)
    event_type = "preview" if request.method == "HEAD" or client.preview else "click"
    channel = ch.lower() if ch and CHANNEL_RE.fullmatch(ch.lower()) else None
    event = EventIn(type="click", campaign=link.campaign, channel=channel)
    limited = bool(state.ip_buckets.take(state.enricher.client_ip(request.scope)))
    if limited:
        state.dead_letter(
            InvalidEvent("rate_limited", None, "too many clicks from this client"),
            "link",
            {"slug": slug},
            received,
            link.campaign,
        )
    else:
        wire = build_event(
            event,
            event_type=event_type,
            token=token,
            client=client,
            source="link",
            ts=received,
            received_ms=received,
            url=None,
        )
        state.require_bus().publish_nowait(
            Record(state.topic, partition_key(wire), orjson.dumps(wire))
        )
        state.metrics.count_ingest(event_type, "accepted")
    return RedirectResponse(
        with_query_param(link.destination, "vt", token.raw),
        status_code=302,
        headers={"Cache-Control": "no-store", "Referrer-Policy": "strict-origin-when-cross-origin"},
    )


@router.post(
    "/v1/shares",
    status_code=201,
    response_model=ShareOut,
    responses={400: {}, 422: {}, 429: {}, 503: {}},
    summary="Mint a share token",
)
async def create_share(body: ShareIn, request: Request, state: StateDep) -> ShareOut:
    """Mints a child of ``parent`` (or a new root), publishes the ``share`` event and
    answers once the broker acknowledged it (or it is safely spooled)."""
    received = now_ms()
    _limit_client(state, request)
    _limit_campaign(state, body.campaign, 1)
    parent = None
    if body.parent is not None:
        try:
            parent = state.signer.verify(body.parent, body.campaign)
        except TokenError as exc:
            raise ApiError(400, exc.reason, str(exc), "parent") from None
    try:
        token = state.signer.mint_child(parent) if parent else state.signer.mint_root(body.campaign)
    except TokenError as exc:
        raise ApiError(400, exc.reason, str(exc), "parent") from None
    client = state.enricher.from_scope(request.scope, body.campaign)
    if body.visitor is not None and client.privacy is None:
        # The caller names the sharer, typically from its own server: the request's
        # network is then that server's, and one bucket for every share it mints
        # would make each of its chains look same-origin. The id links a sharer's
        # devices better than a network would anyway.
        client = replace(
            client,
            visitor=state.enricher.external_visitor_id(body.campaign, body.visitor),
            net=None,
        )
    tracking = state.settings.tracking
    try:
        ts = check_time(body.ts, received, tracking.max_event_age_s, tracking.max_event_skew_s)
    except InvalidEvent as exc:
        raise ApiError(400, exc.reason, exc.message, "ts") from None
    event = EventIn(type="share", campaign=body.campaign, channel=body.channel)
    wire = build_event(
        event,
        event_type="share",
        token=token,
        client=client,
        source="shares",
        ts=ts,
        received_ms=received,
        url=None,
        parent=parent,
    )
    await _publish(
        state, [Record(state.topic, partition_key(wire), orjson.dumps(wire))], {"share": 1}
    )
    state.metrics.count_ingest("share", "accepted")
    link = state.links.for_campaign(body.campaign)
    share_url = None
    if link is not None:
        base = state.settings.tracking.public_base_url.rstrip("/")
        share_url = f"{base}/r/{link.slug}?t={token.raw}"
    return ShareOut(token=token.raw, root=token.root_hex, depth=token.depth, share_url=share_url)


EVENTS_BODY_SCHEMA: dict[str, Any] = {
    "oneOf": [
        {"type": "array", "items": EventIn.model_json_schema()},
        {
            "type": "object",
            "properties": {"events": {"type": "array", "items": EventIn.model_json_schema()}},
            "required": ["events"],
        },
    ]
}


@router.post(
    "/v1/events",
    status_code=202,
    response_model=EventsAccepted,
    responses={400: {}, 413: {}, 415: {}, 429: {}, 503: {}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": EVENTS_BODY_SCHEMA},
                "text/plain": {"schema": EVENTS_BODY_SCHEMA},
            },
        }
    },
    summary="Send a batch of events",
)
async def post_events(request: Request, state: StateDep) -> JsonResponse:
    """Each event is validated on its own; the valid ones are published and the
    answer (202) is sent only after the broker acknowledged them (acks=all) or
    they were fsynced to the spool. 503 when neither can take them."""
    received = now_ms()
    tracking = state.settings.tracking
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in JSON_TYPES:
        raise ApiError(
            415,
            "unsupported_media_type",
            "send application/json or text/plain (sendBeacon)",
            "content-type",
        )
    _limit_client(state, request)
    body = await _read_body(request, tracking.max_body_bytes)
    hits = _batch_hits(body, request.scope, received, tracking.max_events_per_request)
    rejected: list[dict[str, Any]] = []

    def reject(hit: Hit, error: InvalidEvent) -> None:
        rejected.append({"index": hit.index, **error.as_dict()})
        payload = hit.fields if hit.event is None else hit.event.model_dump(mode="json")
        state.dead_letter(error, "api", payload, received)
        event_type = hit.event.type if hit.event is not None else None
        if event_type is None and isinstance(hit.fields, dict):
            event_type = hit.fields.get("type")
        # count_ingest files an unknown or missing type under "invalid".
        state.metrics.count_ingest(str(event_type), "rejected")

    needs_key = state.write_key_campaigns
    # Keys matter only for campaigns that require one: no lookup otherwise.
    principal = await _principal(state, request.headers.get("authorization")) if needs_key else None

    def authorize(hit: Hit) -> None:
        assert hit.event is not None
        if hit.event.campaign not in needs_key:
            return
        if principal is None or not principal.can("write", hit.event.campaign):
            raise InvalidEvent(
                "unauthorized",
                "authorization",
                f"campaign {hit.event.campaign!r} needs a write key for it",
            )

    stages = EventStages(state, "api", authorize if needs_key else None)
    records, per_type, per_campaign = stages.run(hits, reject)
    try:
        for campaign, count in per_campaign.items():
            _limit_campaign(state, campaign, count)
    except ApiError:
        _count_refused(state, per_type, "rate_limited")
        raise
    await _publish(state, records, per_type)
    for event_type, count in per_type.items():
        state.metrics.count_ingest(event_type, "accepted", count)
    return JsonResponse({"accepted": len(records), "rejected": rejected}, status_code=202)


async def _principal(state: AppState, authorization: str | None) -> Principal | None:
    """The bearer key's principal, cached per key for one control-plane refresh."""
    key = bearer_token(authorization)
    if key is None:
        return None
    try:
        return await state.principal(key)
    except (SQLAlchemyError, OSError) as exc:
        # The control plane is down: the key cannot be checked now (not cached).
        # Events of campaigns that need a key are refused, the others go through.
        log.warning("cannot check an API key: %s", exc)
        return None


class EventsEnvelope(BaseModel):
    events: list[EventIn]


_EVENT_LIST = TypeAdapter(list[EventIn])
_ENVELOPE = TypeAdapter(EventsEnvelope)


def _batch_hits(body: bytes, scope: Mapping[str, Any], received: int, limit: int) -> list[Hit]:
    """The request's events as hits, or the ``ApiError`` for a body that is not a batch.

    Fast path: the whole body validated in one pass (pydantic-core straight
    from JSON). Only when that fails is each event validated on its own, to
    report every bad one by index.
    """
    head = body.lstrip()[:1]
    try:
        if head == b"[":
            events = _EVENT_LIST.validate_json(body)
        elif head == b"{":
            events = _ENVELOPE.validate_json(body).events
        else:
            events = None
    except ValidationError:
        events = None
    if events is not None:
        if len(events) > limit:
            raise _too_many(limit)
        return [Hit(scope, received, None, index, event) for index, event in enumerate(events)]
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "malformed_json", f"body is not valid JSON: {exc}", "body") from None
    items = data.get("events") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ApiError(
            400,
            "bad_shape",
            'send a JSON array of events or {"events": [...]}',
            "events" if isinstance(data, dict) else "body",
        )
    if len(items) > limit:
        raise _too_many(limit)
    return [Hit(scope, received, item, index) for index, item in enumerate(items)]


def _too_many(limit: int) -> ApiError:
    return ApiError(413, "too_many_events", f"at most {limit} events per request", "events")


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Ready to accept events", responses={503: {}})
async def readyz(state: StateDep) -> JsonResponse:
    bus = state.require_bus()
    ready = bus.ready()
    body = {
        "status": "ready" if ready else "unavailable",
        "spool_depth": bus.spool_depth,
        "broker_up": bool(getattr(bus, "broker_up", True)),
    }
    return JsonResponse(
        body, status_code=200 if ready else 503, headers=None if ready else {"Retry-After": "5"}
    )


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(state: StateDep) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
