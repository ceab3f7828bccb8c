"""The rule-based scorer: VADER's method, per language.

For each text (Hutto & Gilbert 2014, "VADER: A Parsimonious Rule-based Model
for Sentiment Analysis of Social Media Text", ICWSM; constants from
vaderSentiment 3.3.2):

1. Normalise (NFKC, Arabic letter forms, see :mod:`app.sentiment.text`) and
   tokenise into words, emoji, emoticons and punctuation; URLs, e-mail
   addresses and @handles are dropped.
2. Pick the language (caller's ``lang`` if supported, else
   :class:`~app.sentiment.detect.Detector` over the campaign's ``languages``).
3. Turn tokens into units: the longest lexicon phrase starting at a word
   ("buang masa", "waste of money", "i det hele tatt"), else the word,
   looked up in the language's lexicon, then (for words it lacks) its
   fallbacks (Malay -> Indonesian -> English, ...). Elongated words
   ("bestttt") and Arabic clitics (و, ف, ب, ل, ال) and Norwegian
   intensifying prefixes ("kjempe-", "drit-") are undone on a miss.
4. Each sentiment term's valence is adjusted: ALL CAPS in mixed-case text
   (+0.733), elongation (+0.293), boosters up to three units before it and
   post-boosters up to two after it (scaled 1, 0.95, 0.9 by distance), and
   negation (a negator up to three units before it, or in Norwegian right
   after a verb: times -0.74). Scopes end at clause punctuation and at a
   contrast word. Emoji and emoticons keep their own valence.
5. Contrast: terms before the last contrast word ("but", "tapi", "men",
   "لكن") count half, those after it 1.5 times.
6. The sum gets "!" (up to 4 x 0.292) and "??" emphasis in its own
   direction, and is squashed to ``score = s / sqrt(s^2 + 15)`` in [-1, 1].
   ``score >= 0.05`` is positive, ``<= -0.05`` negative (VADER's thresholds).
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final, Literal, Protocol

from app.sentiment.detect import Detector
from app.sentiment.lexicon import Entry, Language, Lexicons, load_lexicons
from app.sentiment.text import Token, collapse_elongation, normalize_text, tokenize

__all__ = [
    "SUPPORTED_LANGUAGES",
    "Label",
    "RuleScorer",
    "Scorer",
    "TextScore",
    "canonical_language",
    "default_scorer",
    "label_for",
]

Label = Literal["negative", "neutral", "positive"]

SUPPORTED_LANGUAGES: Final = frozenset({"en", "ms", "id", "ar", "no"})

# VADER's constants.
B_INCR: Final = 0.293
C_INCR: Final = 0.733
N_SCALAR: Final = -0.74
ALPHA: Final = 15.0
EXCLAMATION_INCR: Final = 0.292
QUESTION_INCR: Final = 0.18
POSITIVE_THRESHOLD: Final = 0.05
NEGATIVE_THRESHOLD: Final = -0.05
BEFORE_CONTRAST: Final = 0.5
AFTER_CONTRAST: Final = 1.5
_DAMPING: Final = (1.0, 0.95, 0.9)  # a booster's effect by distance 1, 2, 3
_PRE_SCOPE: Final = 3
_POST_SCOPE: Final = 2
MAX_TERMS: Final = 5

# Shorter words are not looked up in another language's lexicon: two-letter chat
# abbreviations in VADER ("po", "gt", "kk") are ordinary words elsewhere.
_MIN_FALLBACK_CHARS: Final = 3
_ARABIC_PREFIXES: Final = ("وال", "فال", "بال", "كال", "لل", "ال", "و", "ف", "ب", "ل")
_CLAUSE_BREAK: Final = frozenset(".,;:!?\u061f\u060c\u061b\u2026")
_ISO_RE: Final = re.compile(r"[a-z]{2,3}")
_ALIASES: Final = {
    "nb": "no", "nn": "no", "nob": "no", "nno": "no", "nor": "no",
    "eng": "en", "msa": "ms", "may": "ms", "zsm": "ms", "zlm": "ms",
    "ind": "id", "in": "id", "ara": "ar", "arb": "ar", "arz": "ar", "apc": "ar",
    "acm": "ar", "afb": "ar", "ajp": "ar", "apd": "ar", "ary": "ar", "ayl": "ar",
}  # fmt: skip
_POST_NEGATION_LANGUAGES: Final = frozenset({"no"})  # "jeg liker ikke": the negator follows


@dataclass(frozen=True, slots=True)
class TextScore:
    """A text's (or a reaction's) sentiment."""

    label: Label
    score: float  # compound valence in [-1, 1]; < 0 negative
    lang: str  # ISO 639-1 code, or "und" when unknown or empty
    negative_terms: tuple[str, ...]  # normalised terms that pushed negative, strongest first, <= 5
    positive_terms: tuple[str, ...]  # same for positive


class Scorer(Protocol):
    def score(
        self, text: str, lang: str | None = None, languages: Sequence[str] | None = None
    ) -> TextScore:
        """Score ``text``. ``lang``: the caller's language, trusted if supported;
        ``languages``: the campaign's languages, narrowing detection when ``lang`` is None."""
        ...


def label_for(score: float) -> Label:
    if score >= POSITIVE_THRESHOLD:
        return "positive"
    if score <= NEGATIVE_THRESHOLD:
        return "negative"
    return "neutral"


def canonical_language(code: str) -> str | None:
    """ "nb-NO" -> "no", "ms_MY" -> "ms", "ara" -> "ar"; None when not a language code."""
    primary = code.strip().lower().replace("_", "-").split("-", 1)[0]
    primary = _ALIASES.get(primary, primary)
    return primary if _ISO_RE.fullmatch(primary) else None


def squash(total: float) -> float:
    """VADER's normalisation of a valence sum into [-1, 1]."""
    return max(-1.0, min(1.0, total / math.sqrt(total * total + ALPHA)))


@dataclass(slots=True)
class _Unit:
    key: str  # the normalised term, phrase or emoji
    entry: Entry | None = None
    caps: bool = False
    emphasis: float = 0.0  # elongation or an intensifying prefix
    glyph: float | None = None  # an emoji's or emoticon's valence
    boundary: bool = False  # clause punctuation


_BOUNDARY: Final = _Unit("", boundary=True)


def _sign(value: float) -> float:
    return 1.0 if value > 0 else -1.0


def _sentiment(unit: _Unit) -> bool:
    return unit.entry is not None and unit.entry.valence is not None


class RuleScorer:
    """:class:`Scorer` over loaded :class:`Lexicons`. Pure and thread-safe after construction."""

    def __init__(self, lexicons: Lexicons, detector: Detector) -> None:
        self._lexicons = lexicons
        self._detector = detector
        self._candidates: dict[tuple[str, ...], frozenset[str]] = {}

    # -- language ----------------------------------------------------------------

    def _candidate_set(self, languages: Sequence[str]) -> frozenset[str]:
        key = tuple(languages)
        found = self._candidates.get(key)
        if found is None:
            codes = (canonical_language(c) for c in key if isinstance(c, str))
            found = frozenset(c for c in codes if c in SUPPORTED_LANGUAGES)
            if len(self._candidates) < 1024:  # campaigns have few language sets
                self._candidates[key] = found
        return found

    def _language(
        self, words: list[str], lang: str | None, languages: Sequence[str] | None
    ) -> tuple[str, Language]:
        if lang is not None:
            code = canonical_language(lang)
            if code in SUPPORTED_LANGUAGES:
                return code, self._lexicons.languages[code]
            if code is not None and len(code) == 2:
                # A language we have no lexicon for: every lexicon and the emoji still apply.
                return code, self._lexicons.merged
        candidates = SUPPORTED_LANGUAGES if languages is None else self._candidate_set(languages)
        code = self._detector.detect(words, candidates)
        language = self._lexicons.languages.get(code)
        return code, language if language is not None else self._lexicons.merged

    # -- lookup ------------------------------------------------------------------

    @staticmethod
    def _own(lang: Language, word: str) -> tuple[str, Entry, float] | None:
        words = lang.words
        entry = words.get(word)
        if entry is not None:
            return word, entry, 0.0
        if lang.code == "en" and word.endswith("n't"):
            return word, Entry(negator=True), 0.0
        for variant in collapse_elongation(word):
            entry = words.get(variant)
            if entry is not None:
                return variant, entry, B_INCR
        if lang.arabic:
            # Tanween fatha is written with a final alef: "جيداً" is "جيد" in the accusative.
            if word.endswith("ا") and len(word) >= 4:
                entry = words.get(word[:-1])
                if entry is not None:
                    return word[:-1], entry, 0.0
            for prefix in _ARABIC_PREFIXES:
                if word.startswith(prefix) and len(word) - len(prefix) >= 2:
                    stem = word[len(prefix) :]
                    entry = words.get(stem)
                    if entry is None:
                        for variant in collapse_elongation(stem):
                            entry = words.get(variant)
                            if entry is not None:
                                break
                    if entry is not None:
                        return stem, entry, 0.0
        for prefix, scalar in lang.prefixes.items():
            if word.startswith(prefix) and len(word) >= len(prefix) + 2:
                rest = word[len(prefix) :].lstrip("-")
                entry = words.get(rest)
                if entry is not None and entry.valence is not None:
                    return word, Entry(valence=entry.valence), scalar
                own = words.get(prefix)
                if own is not None and own.valence is not None and len(rest) >= 3:
                    return word, Entry(valence=own.valence), 0.0
        return None

    def _lookup(self, lang: Language, word: str) -> tuple[str, Entry, float] | None:
        found = self._own(lang, word)
        if found is not None or len(word) < _MIN_FALLBACK_CHARS or word in lang.no_fallback:
            return found
        for fallback in lang.fallbacks:
            found = self._own(fallback, word)
            if found is not None:
                return found
        return None

    def _units(self, tokens: list[Token], lang: Language) -> list[_Unit]:
        emoji, emoticons = self._lexicons.emoji, self._lexicons.emoticons
        phrases = lang.phrases
        units: list[_Unit] = []
        n = len(tokens)
        i = 0
        while i < n:
            token = tokens[i]
            kind = token.kind
            if kind == "word":
                candidates = phrases.get(token.text)
                phrase = _match_phrase(tokens, i, candidates) if candidates else None
                if phrase is not None:
                    key, entry, end = phrase
                    caps = all(tokens[j].caps for j in range(i, end))
                    units.append(_Unit(key, entry, caps))
                    i = end
                    continue
                found = self._lookup(lang, token.text)
                if found is None:
                    units.append(_Unit(token.text, caps=token.caps))
                else:
                    key, entry, emphasis = found
                    units.append(_Unit(key, entry, token.caps, emphasis))
            elif kind == "emoji":
                valence = emoji.get(token.text)
                if valence is None and "\u200d" in token.text:
                    valence = emoji.get(token.text.split("\u200d", 1)[0])
                if valence is not None:
                    units.append(_Unit(token.text, glyph=valence))
            elif kind == "emoticon":
                units.append(_Unit(token.text, glyph=emoticons[token.text]))
            elif any(c in _CLAUSE_BREAK for c in token.text):
                units.append(_BOUNDARY)
            i += 1
        return units

    # -- scoring -----------------------------------------------------------------

    def score(
        self, text: str, lang: str | None = None, languages: Sequence[str] | None = None
    ) -> TextScore:
        normalized = normalize_text(text)
        tokens = tokenize(normalized, self._lexicons.emoticons)
        words = [t.text for t in tokens if t.kind == "word"]
        code, language = self._language(words, lang, languages)
        units = self._units(tokens, language)
        # VADER: capitals emphasise only when the text is not all capitals.
        n_caps = sum(1 for t in tokens if t.caps)
        caps_differ = n_caps > 0 and any(
            t.kind == "word" and not t.caps and t.text.upper() != t.text for t in tokens
        )
        contributions = self._valences(units, caps_differ, code in _POST_NEGATION_LANGUAGES)
        total = sum(v for _key, v in contributions)
        if total:
            total += _sign(total) * _punctuation_emphasis(normalized)
        compound = squash(total)
        return TextScore(
            label_for(compound),
            compound,
            code,
            _top(contributions, negative=True),
            _top(contributions, negative=False),
        )

    @staticmethod
    def _valences(
        units: list[_Unit], caps_differ: bool, post_negation: bool
    ) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        contrast_at: int | None = None
        for i, unit in enumerate(units):
            if unit.glyph is not None:
                out.append((unit.key, unit.glyph))
                continue
            entry = unit.entry
            if entry is None:
                continue
            if entry.contrast:
                contrast_at = len(out)
                continue
            valence = entry.valence
            if valence is None or valence == 0:
                continue
            # A word that is also a booster/negator acts as one when a sentiment word
            # follows it in the clause ("super bad", "no problem"), else as a term.
            if (entry.booster is not None or entry.negator) and _next_sentiment(units, i):
                continue
            if entry.post_booster is not None and _previous_sentiment(units, i):
                continue
            sign = _sign(valence)
            if unit.caps and caps_differ:
                valence += sign * C_INCR
            valence += sign * unit.emphasis
            negator: str | None = None
            negator_after = False
            for distance, _j, before in _scope(units, i, -1, _PRE_SCOPE):
                b = before.entry
                if b is None:
                    continue
                if b.booster is not None:  # a term that is also a booster ("super bad") too
                    scalar = b.booster
                    if before.caps and caps_differ:
                        scalar += _sign(scalar) * C_INCR
                    valence += sign * scalar * _DAMPING[distance - 1]
                if b.negator and negator is None:
                    negator = before.key
            for distance, j, after in _scope(units, i, 1, _POST_SCOPE):
                a = after.entry
                if a is None:
                    continue
                if a.post_booster is not None:
                    valence += sign * a.post_booster * _DAMPING[distance - 1]
                if (
                    post_negation
                    and distance == 1
                    and a.negator
                    and negator is None
                    and not _next_sentiment(units, j)
                ):
                    negator = after.key
                    negator_after = True
            key = unit.key
            if negator is not None:
                valence *= N_SCALAR
                key = f"{key} {negator}" if negator_after else f"{negator} {key}"
            out.append((key, valence))
        if contrast_at is not None:
            out = [
                (key, v * (BEFORE_CONTRAST if k < contrast_at else AFTER_CONTRAST))
                for k, (key, v) in enumerate(out)
            ]
        return out


def _match_phrase(
    tokens: list[Token], i: int, candidates: tuple[tuple[tuple[str, ...], str, Entry], ...]
) -> tuple[str, Entry, int] | None:
    """The longest phrase among ``candidates`` (longest first) starting at token ``i``."""
    n = len(tokens)
    for words, key, entry in candidates:
        end = i + len(words)
        if end <= n and all(
            tokens[i + k].kind == "word" and tokens[i + k].text == words[k]
            for k in range(1, len(words))
        ):
            return key, entry, end
    return None


def _scope(units: list[_Unit], i: int, step: int, limit: int) -> Iterator[tuple[int, int, _Unit]]:
    """(distance, index, unit) of up to ``limit`` units from ``i`` in direction ``step``,
    stopping at clause punctuation and at a contrast word."""
    for distance in range(1, limit + 1):
        j = i + step * distance
        if not 0 <= j < len(units):
            return
        unit = units[j]
        if unit.boundary or (unit.entry is not None and unit.entry.contrast):
            return
        yield distance, j, unit


def _next_sentiment(units: list[_Unit], i: int) -> bool:
    """Whether a sentiment word (not itself a negator) follows unit ``i`` in its scope."""
    return any(
        _sentiment(u) and not (u.entry is not None and u.entry.negator)
        for _d, _j, u in _scope(units, i, 1, _PRE_SCOPE)
    )


def _previous_sentiment(units: list[_Unit], i: int) -> bool:
    return any(_sentiment(u) for _d, _j, u in _scope(units, i, -1, _POST_SCOPE))


def _punctuation_emphasis(text: str) -> float:
    emphasis = min(text.count("!"), 4) * EXCLAMATION_INCR
    questions = text.count("?") + text.count("\u061f")
    if questions > 1:
        emphasis += questions * QUESTION_INCR if questions <= 3 else 0.96
    return emphasis


def _top(contributions: list[tuple[str, float]], *, negative: bool) -> tuple[str, ...]:
    chosen = sorted(
        ((key, v) for key, v in contributions if (v < 0 if negative else v > 0)),
        key=lambda kv: kv[1] if negative else -kv[1],
    )
    terms: dict[str, None] = {}
    for key, _v in chosen:
        terms.setdefault(key, None)
        if len(terms) == MAX_TERMS:
            break
    return tuple(terms)


_default: RuleScorer | None = None
_default_lock = threading.Lock()


def default_scorer() -> Scorer:
    """The shared scorer over the packaged lexicons: loaded once (about a second), then cached.

    Thread-safe: concurrent first calls load once. Raises
    :class:`~app.sentiment.lexicon.LexiconError` if a packaged lexicon is broken.
    """
    global _default
    scorer = _default
    if scorer is None:
        with _default_lock:
            scorer = _default
            if scorer is None:
                lexicons = load_lexicons()
                scorer = _default = RuleScorer(lexicons, Detector(lexicons.languages))
    return scorer
