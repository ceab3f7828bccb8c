"""Alerts and buzz windows as the API and the webhooks show them.

The alerts consumer (consumers/alerts) writes ``alerts`` and
``buzz_windows``; this module shapes an alert into the one JSON document
that is stored, listed by the query API and delivered as a webhook's
``data``, and reads both tables back (``FINAL``: the latest row wins).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol
from urllib.parse import quote, urlencode

import orjson

from app.storage.clickhouse import ClickHouse


class AlertFields(Protocol):
    """What an alert document is made from (read-only)."""

    @property
    def id(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def campaign(self) -> str: ...

    @property
    def state(self) -> str: ...

    @property
    def opened_at(self) -> int: ...

    @property
    def resolved_at(self) -> int | None: ...

    @property
    def value(self) -> float: ...

    @property
    def baseline(self) -> float: ...

    @property
    def threshold(self) -> float: ...

    @property
    def window_start(self) -> int: ...

    @property
    def window_end(self) -> int: ...

    @property
    def numbers(self) -> dict[str, Any]: ...


class StoredAlert(NamedTuple):
    id: str
    kind: str
    campaign: str
    state: str
    opened_at: int
    resolved_at: int | None
    value: float
    baseline: float
    threshold: float
    window_start: int
    window_end: int
    numbers: dict[str, Any]
    explanation: dict[str, Any]


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def links(base_url: str, alert: AlertFields) -> dict[str, str]:
    """Query-API URLs for the alert and its window (a read key is needed)."""
    root = f"{base_url.rstrip('/')}/v1/campaigns/{quote(alert.campaign, safe='')}"
    window = urlencode({"from": iso(alert.window_start), "to": iso(alert.window_end)})
    return {
        "alert": f"{root}/alerts/{quote(alert.id, safe='')}",
        "alerts": f"{root}/alerts",
        "buzz": f"{root}/buzz?{window}",
        "summary": f"{root}/summary",
    }


def alert_document(
    alert: AlertFields, explanation: dict[str, Any], base_url: str
) -> dict[str, Any]:
    """The alert as listed by the API and delivered as a webhook's ``data``."""
    return {
        "id": alert.id,
        "kind": alert.kind,
        "campaign": alert.campaign,
        "state": alert.state,
        "opened_at": iso(alert.opened_at),
        "resolved_at": iso(alert.resolved_at),
        "value": alert.value,
        "baseline": alert.baseline,
        "threshold": alert.threshold,
        "window": {"start": iso(alert.window_start), "end": iso(alert.window_end)},
        "numbers": alert.numbers,
        "explanation": explanation,
        "links": links(base_url, alert),
    }


_ALERTS_SQL = """
SELECT id, kind, campaign, state, toUnixTimestamp64Milli(opened_at),
       toUnixTimestamp64Milli(resolved_at), value, baseline, threshold,
       toUnixTimestamp64Milli(window_start), toUnixTimestamp64Milli(window_end),
       numbers, explanation
FROM alerts FINAL
WHERE campaign = {campaign:String}
  AND (empty({state:String}) OR state = {state:String})
  AND (empty({id:String}) OR id = {id:String})
ORDER BY opened_at DESC, id
LIMIT {limit:UInt32}
"""


async def read_alerts(
    ch: ClickHouse, campaign: str, *, state: str = "", alert_id: str = "", limit: int = 100
) -> list[StoredAlert]:
    """The campaign's alerts, newest first (``state``/``alert_id`` empty: any)."""
    rows = await ch.aquery_rows(
        _ALERTS_SQL, {"campaign": campaign, "state": state, "id": alert_id, "limit": limit}
    )
    return [
        StoredAlert(
            str(r[0]),
            str(r[1]),
            str(r[2]),
            str(r[3]),
            int(r[4]),
            None if r[5] is None else int(r[5]),
            float(r[6]),
            float(r[7]),
            float(r[8]),
            int(r[9]),
            int(r[10]),
            orjson.loads(r[11] or "{}"),
            orjson.loads(r[12] or "{}"),
        )  # fmt: skip
        for r in rows
    ]


class BuzzWindow(NamedTuple):
    minute: datetime
    branch: str
    volume: int
    negative: int
    positive: int
    negative_shares: int
    positive_shares: int
    negative_share: float
    top_negative_terms: list[tuple[str, int]]
    languages: dict[str, int]


_WINDOWS_SQL = """
SELECT minute, branch, volume, negative, positive, negative_shares, positive_shares,
       negative_share, top_negative_terms, languages
FROM buzz_windows FINAL
WHERE campaign = {campaign:String} AND branch = {branch:String}
  AND minute >= {start:DateTime('UTC')} AND minute < {end:DateTime('UTC')}
ORDER BY minute
"""


async def read_buzz(
    ch: ClickHouse, campaign: str, start: datetime, end: datetime, branch: str = ""
) -> list[BuzzWindow]:
    """Per-minute buzz windows in ``[start, end)``; ``branch`` '' is the whole campaign."""
    rows = await ch.aquery_rows(
        _WINDOWS_SQL, {"campaign": campaign, "branch": branch, "start": start, "end": end}
    )
    return [
        BuzzWindow(
            r[0].astimezone(UTC),
            str(r[1]),
            int(r[2]),
            int(r[3]),
            int(r[4]),
            int(r[5]),
            int(r[6]),
            float(r[7]),
            [(str(t), int(n)) for t, n in r[8]],
            {str(k): int(v) for k, v in r[9].items()},
        )  # fmt: skip
        for r in rows
    ]
