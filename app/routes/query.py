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
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path
from pydantic import BaseModel, Field

from app.db.keys import hash_key
from app.errors import ApiError, bearer_token, missing_key
from app.events import CAMPAIGN_PATTERN, EVENT_TYPES
from app.state import AppState, StateDep
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
