"""The read API: what a dashboard asks of ClickHouse.

Every route needs ``Authorization: Bearer <read key>`` (``settings.query``)
and runs parameterized queries only. ClickHouse is the app's own client
when one is given (``viraltrace up``: the embedded engine), else a client
opened on first use for an ``http(s)://`` DSN. An embedded (chdb) DSN
outside ``up`` has no reader: the sink process owns that engine, so the
routes answer 503 saying so.
"""

from __future__ import annotations

import asyncio
import hmac
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Path, Query
from pydantic import BaseModel, Field

from app.db.keys import hash_key
from app.errors import ApiError, bearer_token, missing_key
from app.events import CAMPAIGN_PATTERN, EVENT_TYPES
from app.state import AppState, StateDep
from app.storage.alerts import StoredAlert, alert_document, read_alerts, read_buzz
from app.storage.clickhouse import ClickHouse, StorageError

router = APIRouter(prefix="/v1", tags=["query"])


async def require_read_key(
    state: StateDep,
    authorization: Annotated[str | None, Header()] = None,
) -> None:
    """401 unless the bearer key is one of ``settings.query.read_keys`` (constant time)."""
    keys = state.settings.query.read_keys
    given = bearer_token(authorization)
    if given is None:
        raise missing_key("read")
    digest = hash_key(given)
    # compare_digest against every key: the time does not depend on which matched.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(digest, hash_key(key.get_secret_value()))
    if not matched:
        raise ApiError(
            401,
            "bad_key",
            "this key is not a read key",
            "authorization",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )


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


class Summary(BaseModel):
    """Totals of one campaign over its whole retention, from the hourly rollup."""

    campaign: str
    events: dict[str, int] = Field(description="events by type (every type, zeros included)")
    views: int
    clicks: int
    shares: int
    conversions: int
    unique_visitors: int = Field(
        description="approximate (uniq); visitors under DNT/GPC are not counted"
    )
    as_of: datetime


SUMMARY_SQL = """
SELECT type, uniqExactMerge(events) AS n
FROM events_per_hour
WHERE campaign = {campaign:String}
GROUP BY type
"""
VISITORS_SQL = """
SELECT uniqMerge(visitors) FROM events_per_hour WHERE campaign = {campaign:String}
"""

Campaign = Annotated[str, Path(pattern=CAMPAIGN_PATTERN, description="campaign slug")]


@router.get(
    "/campaigns/{campaign}/summary",
    dependencies=[Depends(require_read_key)],
    responses={401: {}, 503: {}},
)
async def campaign_summary(campaign: Campaign, state: StateDep) -> Summary:
    """Event counts by type and unique visitors. Duplicated event ids count once."""
    clickhouse = await reader(state)
    parameters = {"campaign": campaign}
    try:
        by_type = await clickhouse.aquery_rows(SUMMARY_SQL, parameters)
        [(visitors,)] = await clickhouse.aquery_rows(VISITORS_SQL, parameters)
    except StorageError as exc:
        raise _unavailable(exc) from exc
    events = dict.fromkeys(sorted(EVENT_TYPES), 0)
    events.update({str(kind): int(n) for kind, n in by_type})
    return Summary(
        campaign=campaign,
        events=events,
        views=events["view"],
        clicks=events["click"],
        shares=events["share"],
        conversions=events["convert"],
        unique_visitors=int(visitors),
        as_of=datetime.now(UTC),
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


@router.get(
    "/campaigns/{campaign}/alerts",
    dependencies=[Depends(require_read_key)],
    responses={401: {}, 503: {}},
)
async def campaign_alerts(
    campaign: Campaign,
    state: StateDep,
    status: Annotated[Literal["open", "resolved"] | None, Query(alias="state")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AlertOut]:
    """The campaign's alerts, newest first; ``state`` filters open or resolved ones."""
    clickhouse = await reader(state)
    try:
        alerts = await read_alerts(clickhouse, campaign, state=status or "", limit=limit)
    except StorageError as exc:
        raise _unavailable(exc) from exc
    return [_alert_out(a, state) for a in alerts]


@router.get(
    "/campaigns/{campaign}/alerts/{alert_id}",
    dependencies=[Depends(require_read_key)],
    responses={401: {}, 404: {}, 503: {}},
)
async def campaign_alert(
    campaign: Campaign,
    alert_id: Annotated[str, Path(max_length=200)],
    state: StateDep,
) -> AlertOut:
    """One alert, in its latest state."""
    clickhouse = await reader(state)
    try:
        alerts = await read_alerts(clickhouse, campaign, alert_id=alert_id, limit=1)
    except StorageError as exc:
        raise _unavailable(exc) from exc
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


@router.get(
    "/campaigns/{campaign}/buzz",
    dependencies=[Depends(require_read_key)],
    responses={400: {}, 401: {}, 503: {}},
)
async def campaign_buzz(
    campaign: Campaign,
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
    try:
        windows = await read_buzz(clickhouse, campaign, start_at, end_at, branch or "")
    except StorageError as exc:
        raise _unavailable(exc) from exc
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
