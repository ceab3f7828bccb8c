"""``viraltrace score-text``: JSON lines in, one JSON line out per input line.

Input lines are ``{"text": "...", "lang"?: "..."}``; output lines are
``{"label", "score", "lang", "negative_terms", "positive_terms"}`` or, for a
bad line, ``{"error": {"line": N, "reason": "...", "field": "text"|"lang"|null}}``.
Lines are read and answered one at a time (a pipe gets each answer as soon
as its line is scored), in order; a bad line never stops the stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import IO, Any, Final

import orjson

from app.sentiment.scorer import Scorer

__all__ = ["MAX_LINE_BYTES", "MAX_TEXT_CHARS", "score_line", "score_stream"]

MAX_TEXT_CHARS: Final = 4000  # the event schema's limit on `text`
# A line that could hold a 4,000-character text: every character escaped as a
# surrogate pair ("\ud83d\ude00", 12 bytes) plus room for the keys.
MAX_LINE_BYTES: Final = MAX_TEXT_CHARS * 12 + 1024


def _error(line: int, reason: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"line": line, "reason": reason, "field": field}}


def score_line(
    raw: bytes, line: int, scorer: Scorer, languages: Sequence[str] | None = None
) -> dict[str, Any]:
    """The output object for one input line (without its newline). Never raises."""
    try:
        row = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return _error(line, f"not JSON: {exc}")
    if not isinstance(row, dict):
        return _error(line, "not a JSON object")
    text = row.get("text")
    if "text" not in row:
        return _error(line, "missing", "text")
    if not isinstance(text, str):
        return _error(line, "must be a string", "text")
    if len(text) > MAX_TEXT_CHARS:
        return _error(line, f"longer than {MAX_TEXT_CHARS} characters", "text")
    lang = row.get("lang")
    if lang is not None and not isinstance(lang, str):
        return _error(line, "must be a string", "lang")
    result = scorer.score(text, lang=lang or None, languages=languages)
    return {
        "label": result.label,
        "score": round(result.score, 4),
        "lang": result.lang,
        "negative_terms": list(result.negative_terms),
        "positive_terms": list(result.positive_terms),
    }


def score_stream(
    source: IO[bytes],
    sink: IO[bytes],
    scorer: Scorer,
    languages: Sequence[str] | None = None,
) -> int:
    """Answer every line of ``source`` on ``sink``, flushing each; returns the bad lines' count."""
    bad = 0
    line = 0
    while True:
        raw = source.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return bad
        line += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while True:  # skip the rest of the over-long line
                rest = source.readline(MAX_LINE_BYTES)
                if not rest or rest.endswith(b"\n"):
                    break
            out = _error(line, f"line longer than {MAX_LINE_BYTES} bytes", "text")
        else:
            out = score_line(raw.rstrip(b"\r\n"), line, scorer, languages)
        if "error" in out:
            bad += 1
        sink.write(orjson.dumps(out) + b"\n")
        sink.flush()
