"""Offline language identification for the scorer.

Steps, cheapest first:

1. No letters (emoji, digits, punctuation only): ``"und"``.
2. Script: a text whose words are mostly in Arabic script is ``"ar"`` (the
   only supported language in that script). Otherwise only the Latin-script
   candidates remain; with exactly one of them, that is the answer.
3. py3langid (a naive Bayes model over byte n-grams, trained on 97
   languages; its model ships in the wheel) ranks the remaining candidates.
   Norwegian Nynorsk counts as ``"no"``.
4. Malay and Indonesian: on short informal text every detector we tried
   leans to Indonesian (docs/sentiment.md). When both are candidates and the
   model picks either, each lexicon's ``markers`` (everyday words of that
   language that the other lexicon does not know: Malay "je", "kat",
   "berbaloi", "kempen"; Indonesian "nggak", "banget", "udah", "kualitas")
   are counted in the text, and the side with more wins; a tie keeps the
   model's answer.
5. When the model's probability for its pick is below ``min_confidence``
   (one or two short words), the candidate whose own lexicon knows the most
   of the words wins; if none knows any, ``"und"``.

A :class:`Detector` is read-only after construction: safe to share between threads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from app.sentiment.lexicon import Language
from app.sentiment.text import has_arabic

__all__ = ["LATIN_LANGUAGES", "Detector"]

LATIN_LANGUAGES: Final = ("en", "ms", "id", "no")
_MODEL_CODES: Final = {"en": "en", "ms": "ms", "id": "id", "no": "no", "nn": "no"}
_DEFAULT_MIN_CONFIDENCE: Final = 0.6


class Detector:
    """Picks one of the supported languages (or ``"und"``) for a tokenised text."""

    def __init__(
        self, languages: Mapping[str, Language], min_confidence: float = _DEFAULT_MIN_CONFIDENCE
    ) -> None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        # Restricted once, here: set_languages mutates the identifier, so it is
        # never called again (rank() is then read-only and thread-safe).
        identifier.set_languages(sorted(_MODEL_CODES))
        self._identifier = identifier
        self._min_confidence = min_confidence
        self._vocabulary = {code: languages[code].vocabulary() for code in LATIN_LANGUAGES}
        # Only the curated markers count as evidence: a sentiment word missing from
        # one lexicon is a gap in that lexicon, not a sign of the other language.
        ms, id_ = languages["ms"], languages["id"]
        self._only = {
            "ms": ms.markers - self._vocabulary["id"],
            "id": id_.markers - self._vocabulary["ms"],
        }

    def detect(self, words: Sequence[str], candidates: frozenset[str]) -> str:
        """The language of a text given its (lower-cased) word tokens.

        ``candidates`` are supported codes; the answer is one of them or "und".
        """
        if not words or not candidates:
            return "und"
        arabic = sum(1 for w in words if has_arabic(w))
        if arabic * 2 >= len(words):
            return "ar" if "ar" in candidates else "und"
        latin = [c for c in LATIN_LANGUAGES if c in candidates]
        if len(latin) <= 1:
            return latin[0] if latin else "und"
        scores: dict[str, float] = {}
        for code, probability in self._identifier.rank(" ".join(words)):
            lang = _MODEL_CODES[code]
            scores[lang] = scores.get(lang, 0.0) + probability
        best = max(latin, key=lambda c: scores.get(c, 0.0))
        total = sum(scores.get(c, 0.0) for c in latin)
        if best in ("ms", "id") and "ms" in candidates and "id" in candidates:
            ms = sum(1 for w in words if w in self._only["ms"])
            id_ = sum(1 for w in words if w in self._only["id"])
            if ms != id_:
                return "ms" if ms > id_ else "id"
        if total > 0 and scores.get(best, 0.0) / total >= self._min_confidence:
            return best
        known = {c: sum(1 for w in words if w in self._vocabulary[c]) for c in latin}
        top = max(known.values())
        if top == 0:
            return "und"
        winners = [c for c in latin if known[c] == top]
        return best if best in winners else winners[0]
