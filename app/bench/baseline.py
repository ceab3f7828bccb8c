"""The idiomatic FastAPI baseline that ``viraltrace bench ingest`` compares against.

The same business work as viraltrace's ingest edge (the same ``AppState``:
signer, enricher, rate-limit buckets, metrics, bus), written the way a
FastAPI tutorial would write it: typed ``Query`` parameters, a pydantic
request body, a pydantic response model, an ``async`` dependency for the
state, CORS middleware, plain ``Response`` objects, and no ASGI fast path.
Only the style differs, so the benchmark measures what the style costs.

Its batch route publishes in one of two styles, picked by the benchmark
through ``VIRALTRACE_BENCH_PUBLISH``: ``per_event`` awaits each event's
acknowledgement in turn (what most FastAPI-and-Kafka tutorials show, and
the idiomatic baseline of the issue's target), ``batch`` publishes the
request's events at once (a hand-optimized FastAPI route, shown for
transparency).

Serve it like any FastAPI factory app, e.g.
``python -m uvicorn app.bench.baseline:baseline_app_from_env --factory`` or
``python -m granian --interface asgi --factory app.bench.baseline:baseline_app_from_env``.
It is a benchmark fixture, not a product: never deploy it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated
from uuid import UUID

import orjson
from fastapi import APIRouter, Body, Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.bus.base import BusUnavailable, Record
from app.enrich import ClientInfo
from app.events import (
    CAMPAIGN_PATTERN,
    CHANNEL_PATTERN,
    MAX_URL_CHARS,
    ClientEventType,
    EventIn,
    InvalidEvent,
    build_event,
    check_time,
    clean_url,
    partition_key,
)
from app.main import build_bus, create_app
from app.pixel import PIXEL_GIF, PIXEL_HEADER_MAP
from app.routes.tracking import EventsAccepted, Rejection
from app.settings import Settings
from app.state import AppState, now_ms
from app.tokens import ShareToken, TokenError

# Starlette sets content-type (media_type) and content-length itself.
_GIF_HEADERS = {
    k: v for k, v in PIXEL_HEADER_MAP.items() if k not in ("content-type", "content-length")
}


async def get_state(request: Request) -> AppState:
    # async on purpose: FastAPI runs a plain ``def`` dependency in the thread pool,
    # a thread hop per request that a competently written app does not pay.
    state: AppState = request.app.state.vt
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def _gif() -> Response:
    return Response(PIXEL_GIF, media_type="image/gif", headers=_GIF_HEADERS)


def _verify(state: AppState, raw: str | None, campaign: str) -> ShareToken | None:
    if raw is None:
        return None
    try:
        return state.signer.verify(raw, campaign)
    except TokenError as exc:
        raise InvalidEvent("bad_token", "token", f"{exc.reason}: {exc}") from None


router = APIRouter()
# Chosen by the benchmark per variant (see app.bench.ingest.PublishStyle).
PUBLISH_PER_EVENT = os.environ.get("VIRALTRACE_BENCH_PUBLISH") == "per_event"


@router.get("/p.gif", response_class=Response)
async def pixel(
    request: Request,
    state: StateDep,
    c: Annotated[str, Query(pattern=CAMPAIGN_PATTERN)],
    e: Annotated[ClientEventType, Query()] = "view",
    t: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    ch: Annotated[str | None, Query(pattern=CHANNEL_PATTERN)] = None,
    eid: Annotated[UUID | None, Query()] = None,
    ts: Annotated[int | None, Query(ge=0)] = None,
    u: Annotated[str | None, Query(max_length=MAX_URL_CHARS)] = None,
) -> Response:
    received = now_ms()
    tracking = state.settings.tracking
    event = EventIn(
        type=e,
        campaign=c,
        token=t,
        channel=ch,
        event_id=None if eid is None else str(eid),
        ts=ts,
        url=u,
    )
    try:
        if state.ip_buckets.take(state.enricher.client_ip(request.scope)) or (
            state.campaign_buckets.take(c)
        ):
            raise InvalidEvent("rate_limited", None, "too many events")
        event_ts = check_time(
            event.ts, received, tracking.max_event_age_s, tracking.max_event_skew_s
        )
        url = clean_url(event.url)
        token = _verify(state, event.token, event.campaign)
    except InvalidEvent as error:
        state.dead_letter(error, "pixel", dict(request.query_params), received, c)
        return _gif()
    client = state.enricher.from_scope(request.scope, c)
    event_type = "preview" if client.preview else event.type
    parent = None
    if event_type == "share":
        parent = token
        token = state.signer.mint_child(token) if token else state.signer.mint_root(c)
    wire = build_event(
        event,
        event_type=event_type,
        token=token,
        client=client,
        source="pixel",
        ts=event_ts,
        received_ms=received,
        url=url,
        parent=parent,
    )
    state.require_bus().publish_nowait(Record(state.topic, partition_key(wire), orjson.dumps(wire)))
    state.metrics.count_ingest(event_type, "accepted")
    return _gif()


@router.post("/v1/events", status_code=202, response_model=EventsAccepted)
async def post_events(
    events: Annotated[list[EventIn], Body()], request: Request, state: StateDep
) -> EventsAccepted:
    received = now_ms()
    tracking = state.settings.tracking
    if len(events) > tracking.max_events_per_request:
        raise HTTPException(413, f"at most {tracking.max_events_per_request} events per request")
    if state.ip_buckets.take(state.enricher.client_ip(request.scope)):
        raise HTTPException(429, "too many requests from this client")
    records: list[Record] = []
    rejected: list[Rejection] = []
    per_campaign: dict[str, int] = {}
    per_type: dict[str, int] = {}
    clients: dict[str, ClientInfo] = {}
    for index, event in enumerate(events):
        try:
            ts = check_time(event.ts, received, tracking.max_event_age_s, tracking.max_event_skew_s)
            url = clean_url(event.url)
            token = _verify(state, event.token, event.campaign)
        except InvalidEvent as error:
            rejected.append(Rejection(index=index, **error.as_dict()))
            continue
        client = clients.get(event.campaign)
        if client is None:
            client = clients[event.campaign] = state.enricher.from_scope(
                request.scope, event.campaign
            )
        parent = None
        if event.type == "share":
            parent = token
            token = (
                state.signer.mint_child(token) if token else state.signer.mint_root(event.campaign)
            )
        wire = build_event(
            event,
            event_type=event.type,
            token=token,
            client=client,
            source="api",
            ts=ts,
            received_ms=received,
            url=url,
            parent=parent,
        )
        records.append(Record(state.topic, partition_key(wire), orjson.dumps(wire)))
        per_campaign[event.campaign] = per_campaign.get(event.campaign, 0) + 1
        per_type[event.type] = per_type.get(event.type, 0) + 1
    for campaign, count in per_campaign.items():
        if state.campaign_buckets.take(campaign, count):
            raise HTTPException(429, f"campaign {campaign!r} is over its event rate")
    try:
        if PUBLISH_PER_EVENT:
            # The tutorial way: await each event's acknowledgement in turn.
            for record in records:
                await state.require_bus().publish([record])
        else:
            await state.require_bus().publish(records)
    except BusUnavailable as exc:
        raise HTTPException(503, str(exc)) from exc
    for event_type, count in per_type.items():
        state.metrics.count_ingest(event_type, "accepted", count)
    return EventsAccepted(accepted=len(records), rejected=rejected)


# Not part of the comparison: lets the benchmark check that the events were accepted.
@router.get("/metrics", response_class=Response)
async def metrics(state: StateDep) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def baseline_app_from_env() -> FastAPI:
    """Factory for the servers: the idiomatic app over viraltrace's own building blocks."""
    settings = Settings()
    # create_app builds the AppState (signer, enricher, buckets, metrics); its own
    # app (and lifespan) is discarded, the baseline starts and stops the bus itself.
    state: AppState = create_app(settings).state.vt
    tracking = settings.tracking

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.bus = build_bus(settings, state.metrics)
        await state.bus.start()
        try:
            yield
        finally:
            await state.bus.stop()

    app = FastAPI(title="viraltrace idiomatic baseline", lifespan=lifespan)
    app.state.vt = state
    app.add_middleware(
        CORSMiddleware,
        allow_origins=tracking.cors_origins,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["content-type", "authorization"],
        max_age=tracking.cors_max_age_s,
    )
    app.include_router(router)
    return app
