"""The read API: what a dashboard asks of ClickHouse (docs/query.md).

Every route needs ``Authorization: Bearer <key>``: an operator read key
(``settings.query.read_keys``, every campaign) or a control-plane API key
with the ``read`` (or ``admin``) scope that covers the campaign. Queries are
parameterized only (app/storage/query.py, app/storage/trees.py). ClickHouse
is the app's own client when one is given (``viraltrace up``: the embedded
engine), else a client opened on first use for an ``http(s)://`` DSN. An
embedded (chdb) DSN outside ``up`` has no reader: the sink process owns that
engine, so the routes answer 503 saying so.

Bad input answers 400 with ``reason`` and ``field`` (and ``allowed`` for an
unknown enumeration value); FastAPI's own checks (a limit out of range, a
malformed campaign slug) answer 422.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import math
import re
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, TypeVar

import orjson
from fastapi import APIRouter, Depends, Header, Path, Query
from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError

from app.db.keys import KEY_PREFIX, Principal, hash_key
from app.errors import ApiError, JsonResponse, bearer_token, missing_key
from app.events import CAMPAIGN_PATTERN
from app.state import AppState, StateDep
from app.storage.alerts import StoredAlert, alert_document, read_alerts, read_buzz
from app.storage.cascades import SPREADER_COLUMNS, channel_mix, top_spreaders
from app.storage.clickhouse import ClickHouse, StorageError
from app.storage.query import (
    ALL_TIME,
    INTERVALS,
    METRICS,
    ORDER_COLUMNS,
    RollupCounts,
    campaign_summary,
    cascades,
    channels,
    funnel,
    iso_ms,
    iso_s,
    timeseries,
)
from app.storage.trees import TreeCache, flag_names, read_cascades, read_tree

T = TypeVar("T")

router = APIRouter(prefix="/v1", tags=["query"])

MAX_POINTS = 2880
HEX_ID = re.compile(r"^[0-9a-f]{16}$")
Campaign = Annotated[str, Path(pattern=CAMPAIGN_PATTERN, description="campaign slug")]


# ---- auth ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reader:
    """Who is reading: ``principal`` None for an operator read key (every campaign)."""

    principal: Principal | None

    def can_read(self, campaign: str) -> bool:
        return self.principal is None or self.principal.can("read", campaign)


def _bad_key() -> ApiError:
    return ApiError(
        401,
        "bad_key",
        "unknown or revoked key",
        "authorization",
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )


def _is_operator_key(state: AppState, given: str) -> bool:
    digest = hash_key(given)
    # compare_digest against every key: the time does not depend on which matched.
    matched = False
    for key in state.settings.query.read_keys:
        matched |= hmac.compare_digest(digest, hash_key(key.get_secret_value()))
    return matched


async def read_access(
    state: StateDep, authorization: Annotated[str | None, Header()] = None
) -> Reader:
    """The reader behind the bearer key: 401 none or unknown/revoked, 403 no read
    scope, 503 when a control-plane key cannot be checked (database down)."""
    given = bearer_token(authorization)
    if given is None:
        raise missing_key("read", reason="missing_key")
    if _is_operator_key(state, given):
        return Reader(None)
    if not given.startswith(KEY_PREFIX):
        raise _bad_key()
    try:
        principal = await state.principal(given)
    except (SQLAlchemyError, OSError) as exc:
        raise ApiError(
            503,
            "db_unavailable",
            f"the control-plane database cannot check the key now ({type(exc).__name__})",
            "authorization",
            headers={"Retry-After": "5"},
        ) from exc
    if principal is None:
        raise _bad_key()
    if not principal.has_scope("read"):
        raise ApiError(403, "forbidden", "this key has no read scope", "authorization")
    return Reader(principal)


ReaderDep = Annotated[Reader, Depends(read_access)]


async def campaign_access(campaign: Campaign, access: ReaderDep) -> str:
    """The path's campaign, once the key may read it (else 403)."""
    if not access.can_read(campaign):
        raise ApiError(403, "forbidden", f"this key cannot read campaign {campaign!r}", "campaign")
    return campaign


ReadableCampaign = Annotated[str, Depends(campaign_access)]
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {401: {}, 403: {}, 503: {}}


# ---- storage ---------------------------------------------------------------------------


async def reader(state: AppState) -> ClickHouse:
    """The ClickHouse client for reads; ``ApiError`` 503 when there is none."""
    if state.clickhouse is not None:
        return state.clickhouse
    dsn = state.settings.clickhouse.dsn or ""
    if not dsn.startswith(("http://", "https://")):
        raise ApiError(
            503,
            "no_reader",
            "the query API needs a ClickHouse server DSN (http(s)://) or `viraltrace up`",
            None,
            headers={"Retry-After": "60"},
        )
    try:
        state.clickhouse = await asyncio.to_thread(ClickHouse, dsn)
    except StorageError as exc:
        raise _unavailable(exc) from exc
    return state.clickhouse


def _unavailable(exc: StorageError) -> ApiError:
    return ApiError(
        503, "storage_unavailable", f"ClickHouse: {exc}", None, headers={"Retry-After": "5"}
    )


async def _stored(awaitable: Awaitable[T]) -> T:
    """``awaitable``'s result; a ``StorageError`` becomes 503."""
    try:
        return await awaitable
    except StorageError as exc:
        raise _unavailable(exc) from exc


@dataclass(slots=True)
class QueryCaches:
    counts: RollupCounts
    trees: TreeCache


def _caches(state: AppState) -> QueryCaches:
    if state.query_caches is None:
        settings = state.settings.query
        state.query_caches = QueryCaches(
            RollupCounts(settings.rollup_cache_buckets), TreeCache(settings.tree_cache_size)
        )
    caches: QueryCaches = state.query_caches
    return caches


# ---- input -----------------------------------------------------------------------------


def _choice(value: str, allowed: list[str], field: str) -> str:
    if value not in allowed:
        raise ApiError(
            400,
            "bad_value",
            f"{field} must be one of {', '.join(allowed)}",
            field,
            extra={"allowed": allowed},
        )
    return value


def _time(value: str | None, field: str) -> int | None:
    """Epoch seconds (floored) of an ISO 8601 time with a zone; 400 ``bad_time`` else."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise ApiError(
            400, "bad_time", "an ISO 8601 time with a zone, e.g. 2026-11-23T10:00:00Z", field
        )
    seconds = math.floor(parsed.timestamp())
    if not ALL_TIME[0] <= seconds < ALL_TIME[1]:
        raise ApiError(400, "bad_time", "a time between 1970 and 2106", field)
    return seconds


def _optional_range(start: str | None, end: str | None) -> tuple[int, int]:
    """[from, to) in epoch seconds, open ends meaning all time; 400 when from >= to."""
    low = _time(start, "from")
    high = _time(end, "to")
    low = ALL_TIME[0] if low is None else low
    high = ALL_TIME[1] if high is None else high
    if low >= high:
        raise ApiError(400, "bad_range", "`from` must be before `to`", "from")
    return low, high


def _encode_cursor(payload: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(payload)).rstrip(b"=").decode()


def _decode_cursor(cursor: str) -> dict[str, Any]:
    """The cursor's JSON object; 400 ``bad_cursor`` for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        payload = orjson.loads(raw)
    except (binascii.Error, ValueError):
        payload = None
    if not isinstance(payload, dict):
        raise _bad_cursor()
    return payload


def _bad_cursor() -> ApiError:
    return ApiError(
        400, "bad_cursor", "not a cursor from this listing: use next_cursor as given", "cursor"
    )


def _is_int(value: Any, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


# ---- summary ---------------------------------------------------------------------------


class LargestCascade(BaseModel):
    root: str
    size: int


class Summary(BaseModel):
    """Totals of one campaign over its whole retention."""

    campaign: str
    events: dict[str, int] = Field(description="distinct events by type (every type, zeros too)")
    views: int
    clicks: int
    shares: int
    conversions: int
    unique_visitors: int = Field(
        description="approximate (uniq); visitors under DNT/GPC are not counted"
    )
    k_factor: float | None = Field(description="valid recruits per valid sharer; null: none")
    invitation_conversion_rate: float | None = Field(description="conversions per credited click")
    cascades: int
    largest_cascade: LargestCascade | None
    open_alerts: int
    as_of: datetime


@router.get("/campaigns/{campaign}/summary", response_model=Summary, responses=AUTH_ERRORS)
async def campaign_summary_route(campaign: ReadableCampaign, state: StateDep) -> JsonResponse:
    """Event counts by type, unique visitors, K-factor, cascades and open alerts."""
    clickhouse = await reader(state)
    got = await _stored(campaign_summary(clickhouse, _caches(state).counts, campaign))
    events = got.events
    largest = got.largest_cascade
    return JsonResponse(
        {
            "campaign": campaign,
            "events": events,
            "views": events["view"],
            "clicks": events["click"],
            "shares": events["share"],
            "conversions": events["convert"],
            "unique_visitors": got.unique_visitors,
            "k_factor": got.k_factor,
            "invitation_conversion_rate": got.invitation_conversion_rate,
            "cascades": got.cascades,
            "largest_cascade": None
            if largest is None
            else {"root": largest[0], "size": largest[1]},
            "open_alerts": got.open_alerts,
            "as_of": iso_ms(int(datetime.now(UTC).timestamp() * 1000)),
        }
    )


# ---- timeseries ------------------------------------------------------------------------


class Point(BaseModel):
    t: datetime
    value: int


class Timeseries(BaseModel):
    campaign: str
    metric: str
    interval: str
    start: datetime = Field(alias="from")
    end: datetime = Field(alias="to")
    points: list[Point] = Field(description="every bucket of [from, to), zeros included")


@router.get(
    "/campaigns/{campaign}/timeseries",
    response_model=Timeseries,
    responses={400: {}, **AUTH_ERRORS},
)
async def campaign_timeseries(
    campaign: ReadableCampaign,
    state: StateDep,
    metric: str = "shares",
    interval: str = "1m",
    start: Annotated[str | None, Query(alias="from")] = None,
    end: Annotated[str | None, Query(alias="to")] = None,
) -> JsonResponse:
    """One metric per bucket over ``[from, to)`` (default: the last hour), from the
    rollups: ``from`` floored and ``to`` ceiled to the interval, at most 2,880 buckets."""
    _choice(metric, list(METRICS), "metric")
    _choice(interval, list(INTERVALS), "interval")
    step = INTERVALS[interval][0]
    high = _time(end, "to")
    if high is None:
        high = math.ceil(datetime.now(UTC).timestamp())
    low = _time(start, "from")
    if low is None:
        low = high - 3600
    if low >= high:
        raise ApiError(400, "bad_range", "`from` must be before `to`", "from")
    low -= low % step
    high += -high % step
    if (high - low) // step > MAX_POINTS:
        raise ApiError(
            400,
            "range_too_large",
            f"at most {MAX_POINTS} {interval} buckets per request: narrow the range "
            "or take a longer interval",
            "from",
            extra={"max_points": MAX_POINTS},
        )
    clickhouse = await reader(state)
    counts = _caches(state).counts
    points = await _stored(timeseries(clickhouse, counts, campaign, metric, interval, low, high))
    return JsonResponse(
        {
            "campaign": campaign,
            "metric": metric,
            "interval": interval,
            "from": iso_s(low),
            "to": iso_s(high),
            "points": [{"t": iso_s(b), "value": v} for b, v in points],
        }
    )


# ---- cascades --------------------------------------------------------------------------


class CascadeOut(BaseModel):
    root: str
    size: int
    reach: int
    depth: int
    max_breadth: int
    virality: float
    growth_per_min: float
    clicks: int
    conversions: int
    first_ts: datetime
    last_ts: datetime
    forecast_size: float | None


class CascadeList(BaseModel):
    campaign: str
    order_by: str
    cascades: list[CascadeOut]
    next_cursor: str | None


@router.get(
    "/campaigns/{campaign}/cascades",
    response_model=CascadeList,
    responses={400: {}, **AUTH_ERRORS},
)
async def campaign_cascades_route(
    campaign: ReadableCampaign,
    state: StateDep,
    order_by: str = "size",
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: str | None = None,
) -> JsonResponse:
    """The campaign's cascades (latest snapshots), largest ``order_by`` first (ties:
    root descending), a page at a time: pass ``next_cursor`` back as ``cursor``."""
    _choice(order_by, list(ORDER_COLUMNS), "order_by")
    after = None
    if cursor is not None:
        payload = _decode_cursor(cursor)
        key, root = payload.get("k"), payload.get("r")
        valid = (
            payload.get("c") == campaign
            and payload.get("o") == order_by
            and isinstance(key, int | float)
            and not isinstance(key, bool)
            and math.isfinite(key)
            and isinstance(root, str)
            and HEX_ID.match(root) is not None
        )
        if not valid or not isinstance(key, int | float):
            raise _bad_cursor()
        after = (float(key), str(root))
    clickhouse = await reader(state)
    rows = await _stored(cascades(clickhouse, campaign, order_by, limit + 1, after))
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last, key = rows[-1]
        next_cursor = _encode_cursor({"c": campaign, "o": order_by, "k": key, "r": last["root"]})
    return JsonResponse(
        {
            "campaign": campaign,
            "order_by": order_by,
            "cascades": [row for row, _ in rows],
            "next_cursor": next_cursor,
        }
    )


class Generation(BaseModel):
    generation: int
    channel: str
    shares: int


class CascadeStatsOut(BaseModel):
    size: int
    tree_size: int
    pending: int
    orphans: int
    reach: int
    depth: int
    breadth: list[int]
    max_breadth: int
    branching: float
    reproduction: list[float]
    clicks: int
    conversions: int
    first_ts: datetime
    last_ts: datetime
    growth_per_min: float
    doubling_s: float | None
    wiener: int
    virality: float
    valid_nodes: int
    valid_recruits: int
    self_referrals: int
    same_origin: int
    inflated: int
    channel_mix: list[Generation]


class ForecastOut(BaseModel):
    final_size: float | None
    method: str
    infectiousness: float


class NodeOut(BaseModel):
    id: str
    parent: str | None
    depth: int
    channel: str | None
    ts: datetime
    clicks: int
    conversions: int
    descendants: int = Field(description="exact number of nodes below, in the whole tree")
    state: Literal["attached", "pending", "orphan"]
    flags: list[Literal["same_origin", "bot"]]


class EdgeOut(BaseModel):
    source: str
    target: str


class CascadeTreeOut(BaseModel):
    root: str
    campaign: str
    stats: CascadeStatsOut
    forecast: ForecastOut
    nodes: list[NodeOut] = Field(description="breadth-first: (depth, ts, id)")
    edges: list[EdgeOut] = Field(description="parent -> node, for nodes of this page")
    next_cursor: str | None


@router.get(
    "/cascades/{root}",
    response_model=CascadeTreeOut,
    responses={400: {}, 404: {}, **AUTH_ERRORS},
)
async def cascade_tree(
    root: Annotated[str, Path(pattern=r"^[0-9a-f]{16}$", description="cascade root id")],
    access: ReaderDep,
    state: StateDep,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
    cursor: str | None = None,
) -> JsonResponse:
    """A cascade's latest stats and forecast, and its tree a page of nodes at a time,
    breadth-first; ``descendants`` is exact over the whole tree. 404 for an unknown
    root and for a cascade the key cannot read."""
    after = None
    if cursor is not None:
        payload = _decode_cursor(cursor)
        depth, ts, node = payload.get("d"), payload.get("t"), payload.get("n")
        valid = (
            payload.get("r") == root
            and _is_int(depth, 0, 0xFFFF)
            and _is_int(ts, 0, 2**63 - 1)
            and isinstance(node, str)
            and HEX_ID.match(node) is not None
        )
        if not valid:
            raise _bad_cursor()
        after = (int(depth), int(ts), str(node))  # type: ignore[arg-type]
    clickhouse = await reader(state)
    readable = [
        c for c in await _stored(read_cascades(clickhouse, root)) if access.can_read(c.campaign)
    ]
    if not readable:
        raise ApiError(404, "not_found", "no such cascade", "root")
    cascade = readable[0]
    campaign = cascade.campaign
    trees = _caches(state).trees
    key = (campaign, root, cascade.version)
    tree = trees.get(key)
    if tree is None:
        tree = await _stored(read_tree(clickhouse, campaign, root))
        trees.put(key, tree)
    page, more = tree.nodes(limit, after)
    next_cursor = None
    if more and page:
        last = page[-1]
        next_cursor = _encode_cursor({"r": root, "d": last.depth, "t": last.ts, "n": last.id})
    nodes, edges = [], []
    for node in page:
        nodes.append(
            {
                "id": node.id,
                "parent": node.parent,
                "depth": node.depth,
                "channel": node.channel,
                "ts": iso_ms(node.ts),
                "clicks": node.clicks,
                "conversions": node.conversions,
                "descendants": node.descendants,
                "state": node.state,
                "flags": flag_names(node.flags),
            }
        )
        if node.parent_linked and node.parent is not None:
            edges.append({"source": node.parent, "target": node.id})
    stats = dict(cascade.stats)
    stats["first_ts"] = iso_ms(stats["first_ts"])
    stats["last_ts"] = iso_ms(stats["last_ts"])
    stats["channel_mix"] = [
        {"generation": g, "channel": c, "shares": n} for g, c, n in cascade.channel_mix
    ]
    return JsonResponse(
        {
            "root": root,
            "campaign": campaign,
            "stats": stats,
            "forecast": {
                "final_size": cascade.forecast_size,
                "method": cascade.forecast_method,
                "infectiousness": cascade.infectiousness,
            },
            "nodes": nodes,
            "edges": edges,
            "next_cursor": next_cursor,
        }
    )


# ---- spreaders, channels, funnel -------------------------------------------------------


class SpreaderOut(BaseModel):
    node: str
    root: str
    count: int


class Spreaders(BaseModel):
    campaign: str
    by: str
    spreaders: list[SpreaderOut]


@router.get(
    "/campaigns/{campaign}/spreaders",
    response_model=Spreaders,
    responses={400: {}, **AUTH_ERRORS},
)
async def campaign_spreaders(
    campaign: ReadableCampaign,
    state: StateDep,
    by: str = "descendants",
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> JsonResponse:
    """The top sharers by descendants or direct children, flagged shares excluded.
    Each cascade's snapshot keeps its own top 10, so a cascade brings at most 10."""
    _choice(by, list(SPREADER_COLUMNS), "by")
    clickhouse = await reader(state)
    found = await _stored(top_spreaders(clickhouse, campaign, by, limit))
    return JsonResponse(
        {
            "campaign": campaign,
            "by": by,
            "spreaders": [{"node": s.node, "root": s.root, "count": s.count} for s in found],
        }
    )


class ChannelOut(BaseModel):
    channel: str = Field(description="'' for events without a channel")
    views: int
    clicks: int
    shares: int
    conversions: int


class Channels(BaseModel):
    campaign: str
    channels: list[ChannelOut]
    generations: list[Generation] = Field(description="shares per cascade generation, all time")


@router.get(
    "/campaigns/{campaign}/channels",
    response_model=Channels,
    responses={400: {}, **AUTH_ERRORS},
)
async def campaign_channels(
    campaign: ReadableCampaign,
    state: StateDep,
    start: Annotated[str | None, Query(alias="from")] = None,
    end: Annotated[str | None, Query(alias="to")] = None,
) -> JsonResponse:
    """Distinct views, clicks, shares and conversions per channel in ``[from, to)``
    (default: all time; whole minutes), and the cascades' channel mix per generation."""
    low, high = _optional_range(start, end)
    clickhouse = await reader(state)
    by_channel = await _stored(channels(clickhouse, campaign, low, high))
    generations = await _stored(channel_mix(clickhouse, campaign))
    return JsonResponse(
        {
            "campaign": campaign,
            "channels": by_channel,
            "generations": [
                {"generation": g, "channel": c, "shares": n} for g, c, n in generations
            ],
        }
    )


class FunnelStepOut(BaseModel):
    step: Literal["view", "click", "share", "convert"]
    events: int
    visitors: int = Field(description="approximate unique visitors")
    rate: float | None = Field(description="visitors over the previous step's; null: first or 0")


class Funnel(BaseModel):
    campaign: str
    steps: list[FunnelStepOut]


@router.get(
    "/campaigns/{campaign}/funnel",
    response_model=Funnel,
    responses={400: {}, **AUTH_ERRORS},
)
async def campaign_funnel(
    campaign: ReadableCampaign,
    state: StateDep,
    start: Annotated[str | None, Query(alias="from")] = None,
    end: Annotated[str | None, Query(alias="to")] = None,
) -> JsonResponse:
    """view -> click -> share -> convert in ``[from, to)`` (default: all time)."""
    low, high = _optional_range(start, end)
    clickhouse = await reader(state)
    steps = await _stored(funnel(clickhouse, campaign, low, high))
    return JsonResponse(
        {
            "campaign": campaign,
            "steps": [
                {"step": s.step, "events": s.events, "visitors": s.visitors, "rate": s.rate}
                for s in steps
            ],
        }
    )


# ---- alerts and buzz -------------------------------------------------------------------

MAX_BUZZ_RANGE = timedelta(days=7)


class AlertOut(BaseModel):
    """An alert as delivered by webhooks (``data``), with its explanation and links."""

    id: str
    kind: str
    campaign: str
    state: Literal["open", "resolved"]
    opened_at: datetime
    resolved_at: datetime | None
    value: float
    baseline: float
    threshold: float
    window: dict[str, datetime]
    numbers: dict[str, Any]
    explanation: dict[str, Any]
    links: dict[str, str]


def _alert_out(alert: StoredAlert, state: AppState) -> AlertOut:
    document = alert_document(alert, alert.explanation, state.settings.tracking.public_base_url)
    return AlertOut.model_validate(document)


@router.get("/campaigns/{campaign}/alerts", responses=AUTH_ERRORS)
async def campaign_alerts(
    campaign: ReadableCampaign,
    state: StateDep,
    status: Annotated[Literal["open", "resolved"] | None, Query(alias="state")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AlertOut]:
    """The campaign's alerts, newest first; ``state`` filters open or resolved ones."""
    clickhouse = await reader(state)
    alerts = await _stored(read_alerts(clickhouse, campaign, state=status or "", limit=limit))
    return [_alert_out(a, state) for a in alerts]


@router.get("/campaigns/{campaign}/alerts/{alert_id}", responses={404: {}, **AUTH_ERRORS})
async def campaign_alert(
    campaign: ReadableCampaign,
    alert_id: Annotated[str, Path(max_length=200)],
    state: StateDep,
) -> AlertOut:
    """One alert, in its latest state."""
    clickhouse = await reader(state)
    alerts = await _stored(read_alerts(clickhouse, campaign, alert_id=alert_id, limit=1))
    if not alerts:
        raise ApiError(404, "not_found", "no such alert in this campaign", "alert_id")
    return _alert_out(alerts[0], state)


class BuzzMinute(BaseModel):
    minute: datetime
    volume: int
    negative: int
    positive: int
    negative_shares: int
    positive_shares: int
    negative_share: float
    top_negative_terms: list[tuple[str, int]]
    languages: dict[str, int]


class BuzzOut(BaseModel):
    campaign: str
    branch: str | None = Field(description="cascade root, or None for the whole campaign")
    start: datetime
    end: datetime
    minutes: list[BuzzMinute]


@router.get("/campaigns/{campaign}/buzz", responses={400: {}, **AUTH_ERRORS})
async def campaign_buzz(
    campaign: ReadableCampaign,
    state: StateDep,
    start: Annotated[datetime | None, Query(alias="from")] = None,
    end: Annotated[datetime | None, Query(alias="to")] = None,
    branch: Annotated[str | None, Query(pattern=r"^[0-9a-f]{16}$")] = None,
) -> BuzzOut:
    """Per-minute buzz (volume, negative share, top negative terms, languages) in
    ``[from, to)``, default the last hour; at most 7 days; ``branch`` is a cascade root."""
    end_at = _utc(end, "to") if end is not None else datetime.now(UTC)
    start_at = _utc(start, "from") if start is not None else end_at - timedelta(hours=1)
    if start_at >= end_at:
        raise ApiError(400, "bad_range", "`from` must be before `to`", "from")
    if end_at - start_at > MAX_BUZZ_RANGE:
        raise ApiError(400, "range_too_large", "at most 7 days of minutes per request", "from")
    clickhouse = await reader(state)
    windows = await _stored(read_buzz(clickhouse, campaign, start_at, end_at, branch or ""))
    return BuzzOut(
        campaign=campaign,
        branch=branch,
        start=start_at,
        end=end_at,
        minutes=[BuzzMinute(**w._asdict()) for w in windows],
    )


def _utc(value: datetime, field: str) -> datetime:
    if value.tzinfo is None:
        raise ApiError(400, "bad_time", "give a time zone (e.g. Z or +00:00)", field)
    return value.astimezone(UTC)
