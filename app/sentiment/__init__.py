"""Offline, multilingual negative-buzz scoring of short texts (comments, captions, reviews).

The interface the consumers code against::

    from app.sentiment import default_scorer, explicit_negative, redact

    scorer = default_scorer()          # loads the lexicons once; share it between threads
    result = scorer.score("Tak best langsung 😡", languages=["ms", "en"])
    result.label, result.score, result.lang, result.negative_terms

Importing this package loads nothing; :func:`default_scorer` does, once
(about a second). Scoring is pure: no I/O after that. See docs/sentiment.md.
"""

from __future__ import annotations

from app.sentiment.reactions import explicit_negative, reaction_score
from app.sentiment.redact import redact
from app.sentiment.scorer import (
    SUPPORTED_LANGUAGES,
    Label,
    Scorer,
    TextScore,
    default_scorer,
)

__all__ = [
    "SUPPORTED_LANGUAGES",
    "Label",
    "Scorer",
    "TextScore",
    "default_scorer",
    "explicit_negative",
    "reaction_score",
    "redact",
]
