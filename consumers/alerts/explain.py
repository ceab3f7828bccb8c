"""What an alert says: its explanation (read from ClickHouse) and its payload.

Buzz alerts are explained by the items of their window (``buzz_items``):
the cascades (branches) and the shares (spreaders: the share a commenter
arrived through) with the most negative items, up to three redacted sample
texts, the language mix and the top negative terms. Spread alerts are
explained by the cascades whose signals are open (``subjects``) and the top
spreaders of those cascades (``cascade_stats``). Every payload stays well
under the 20 kB webhook body limit: lists are short and samples truncated.
"""

from __future__ import annotations

from typing import Any

from app.storage.clickhouse import ClickHouse
from consumers.alerts.detect import Transition

TOP = 5
SAMPLES = 3

_WINDOW = """
FROM buzz_items FINAL
WHERE campaign = {campaign:String}
  AND ts >= fromUnixTimestamp64Milli({start:Int64}) AND ts <= fromUnixTimestamp64Milli({end:Int64})
"""
_BRANCHES_SQL = f"""
SELECT ifNull(root, '') AS branch, countIf(label = 'negative') AS negative, count() AS volume
{_WINDOW} GROUP BY branch ORDER BY negative DESC, volume DESC, branch LIMIT {TOP}
"""
_SPREADERS_SQL = f"""
SELECT node, any(root), countIf(label = 'negative') AS negative, count() AS volume
{_WINDOW} AND node IS NOT NULL
GROUP BY node ORDER BY negative DESC, volume DESC, node LIMIT {TOP}
"""
_SAMPLES_SQL = f"""
SELECT sample, lang, score {_WINDOW} AND label = 'negative' AND sample != ''
ORDER BY score, event_id LIMIT {SAMPLES}
"""
_LANGUAGES_SQL = f"""
SELECT lang, count() AS n {_WINDOW} GROUP BY lang ORDER BY n DESC, lang
"""
_TERMS_SQL = f"""
SELECT arrayJoin(negative_terms) AS term, count() AS n {_WINDOW} AND label = 'negative'
GROUP BY term ORDER BY n DESC, term LIMIT {TOP}
"""
_CASCADE_SPREADERS_SQL = """
SELECT root, spreader.1 AS node, spreader.2 AS descendants
FROM cascade_stats FINAL ARRAY JOIN top_descendants AS spreader
WHERE campaign = {campaign:String}
  AND (empty({roots:Array(String)}) OR has({roots:Array(String)}, root))
ORDER BY descendants DESC, node LIMIT {limit:UInt32}
"""


async def buzz_explanation(ch: ClickHouse, t: Transition) -> dict[str, Any]:
    """The window's branches, spreaders, samples, languages and terms."""
    params = {"campaign": t.campaign, "start": t.window_start, "end": t.window_end}
    branches = await ch.aquery_rows(_BRANCHES_SQL, params)
    spreaders = await ch.aquery_rows(_SPREADERS_SQL, params)
    samples = await ch.aquery_rows(_SAMPLES_SQL, params)
    languages = await ch.aquery_rows(_LANGUAGES_SQL, params)
    terms = await ch.aquery_rows(_TERMS_SQL, params)
    return {
        "top_branches": [
            {"root": b or None, "negative": int(n), "volume": int(v)} for b, n, v in branches
        ],
        "top_spreaders": [
            {"node": str(node), "root": root, "negative": int(n), "volume": int(v)}
            for node, root, n, v in spreaders
        ],
        "samples": [{"text": str(s), "lang": str(lang)} for s, lang, _ in samples],
        "languages": {str(lang): int(n) for lang, n in languages},
        "top_negative_terms": [{"term": str(term), "count": int(n)} for term, n in terms],
    }


async def spread_explanation(ch: ClickHouse, t: Transition) -> dict[str, Any]:
    """The open cascades (subjects) and the top spreaders among them."""
    roots = sorted({str(s["root"]) for s in t.subjects if s.get("root")})
    rows = await ch.aquery_rows(
        _CASCADE_SPREADERS_SQL, {"campaign": t.campaign, "roots": roots, "limit": TOP}
    )
    return {
        "top_branches": t.subjects,
        "top_spreaders": [
            {"node": str(node), "root": str(root), "descendants": int(n)} for root, node, n in rows
        ],
    }
