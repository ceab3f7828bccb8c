"""Loading the per-language lexicons (package data under ``lexicons/``).

A language file is TOML::

    lang = "ms"
    fallbacks = ["id", "en"]   # consulted, in order, for words this language lacks
    no_fallback = ["..."]      # false friends: never looked up in a fallback
    negators = ["tak", "tidak", "tak de"]
    contrast = ["tapi"]        # "but": what comes before counts half, after 1.5 times
    markers = ["je", "kat"]    # distinctive everyday words (only used to tell ms from id)
    prefixes = { kjempe = 0.293 }   # intensifying prefixes of compounds (no: kjempebra)

    [boosters]        # modify the sentiment word that FOLLOWS them (within 3 words)
    "sangat" = 0.293  # > 0 intensifies, < 0 dampens (VADER's B_INCR / B_DECR)
    [post_boosters]   # modify the sentiment word that PRECEDES them (within 2 words)
    "sekali" = 0.293
    [terms]           # valence -4 .. +4 (VADER's scale); phrases allowed
    "bagus" = 1.9
    "buang masa" = -2.0

Every key, phrase word and list item goes through :func:`normalize_word`, the
same normalisation as the input. Any of negators, contrast words and boosters
may be phrases too ("bukan main", "i det hele tatt"). ``en.toml`` says
``base = "vader"``: VADER's lexicon (shipped in the pinned ``vadersentiment``
package, MIT) is read first and the file's own entries override it.

Loading is the only I/O in the package; everything it builds is immutable
or never mutated after :func:`load_lexicons` returns, so a loaded
:class:`Lexicons` is safe to share between threads.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Final

from app.sentiment.text import normalize_word, strip_emoji_modifiers

__all__ = ["Entry", "Language", "Lexicons", "LexiconError", "load_lexicons"]

LANGUAGE_FILES: Final = ("en", "ms", "id", "ar", "no")
VALENCE_LIMIT: Final = 4.0


class LexiconError(ValueError):
    """A lexicon file is malformed (raised at load, never while scoring)."""


@dataclass(frozen=True, slots=True)
class Entry:
    """What one word or phrase does. A word may have several roles ("no": negator and term)."""

    valence: float | None = None  # a sentiment term
    booster: float | None = None  # modifies the next sentiment word
    post_booster: float | None = None  # modifies the previous sentiment word
    negator: bool = False
    contrast: bool = False

    def merged(self, other: Entry) -> Entry:
        """Roles of both; ``other`` wins where both set the same one."""
        return Entry(
            other.valence if other.valence is not None else self.valence,
            other.booster if other.booster is not None else self.booster,
            other.post_booster if other.post_booster is not None else self.post_booster,
            self.negator or other.negator,
            self.contrast or other.contrast,
        )


# A phrase: its words, its key (the words joined by spaces) and what it does.
Phrase = tuple[tuple[str, ...], str, Entry]


@dataclass(slots=True)
class Language:
    """One language's resources. Built by :func:`load_lexicons`, read-only after."""

    code: str
    words: dict[str, Entry] = field(default_factory=dict)
    phrases: dict[str, tuple[Phrase, ...]] = field(default_factory=dict)  # by first word
    prefixes: dict[str, float] = field(default_factory=dict)
    fallbacks: tuple[Language, ...] = ()
    no_fallback: frozenset[str] = frozenset()
    markers: frozenset[str] = frozenset()
    arabic: bool = False

    def vocabulary(self) -> frozenset[str]:
        """Every word this language's own file knows (terms, function words, markers)."""
        vocab = set(self.words) | set(self.markers)
        for phrases in self.phrases.values():
            for words, _key, _entry in phrases:
                vocab.update(words)
        return frozenset(vocab)


@dataclass(frozen=True, slots=True)
class Lexicons:
    languages: Mapping[str, Language]
    merged: Language  # every language's words, for text whose language is unknown
    emoji: Mapping[str, float]
    emoticons: Mapping[str, float]


def _read(name: str) -> dict[str, Any]:
    path = resources.files("app.sentiment").joinpath("lexicons").joinpath(f"{name}.toml")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise LexiconError(f"lexicon {name}.toml: {exc}") from exc


def _number(name: str, key: str, value: object, limit: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LexiconError(f"lexicon {name}: {key!r} must be a number, not {value!r}")
    if not -limit <= value <= limit:
        raise LexiconError(f"lexicon {name}: {key!r} = {value} is outside [-{limit}, {limit}]")
    return float(value)


def _strings(name: str, data: Mapping[str, Any], key: str) -> list[str]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise LexiconError(f"lexicon {name}: {key} must be a list of strings")
    return value


def _table(name: str, data: Mapping[str, Any], key: str, limit: float) -> dict[str, float]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise LexiconError(f"lexicon {name}: [{key}] must be a table")
    return {k: _number(name, k, v, limit) for k, v in value.items()}


def _vader_words() -> tuple[dict[str, float], dict[str, float]]:
    """VADER's lexicon: (words, emoticons), read as package data (no VADER code runs)."""
    path = resources.files("vaderSentiment").joinpath("vader_lexicon.txt")
    words: dict[str, float] = {}
    emoticons: dict[str, float] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) < 2 or not parts[0]:
            continue
        token, valence = parts[0], float(parts[1])
        if token.replace("'", "").replace("-", "").isalpha():
            if len(token) > 1:  # "l" (2.0) is noise: clothing sizes, initials
                words[normalize_word(token)] = valence
        else:
            emoticons[token.lower()] = valence
    return words, emoticons


def _add(lang: Language, key: str, entry: Entry) -> None:
    words = tuple(normalize_word(key).split())
    if not words:
        return
    if len(words) == 1:
        old = lang.words.get(words[0])
        lang.words[words[0]] = old.merged(entry) if old else entry
        return
    joined = " ".join(words)
    phrases = list(lang.phrases.get(words[0], ()))
    for i, (other, _key, old) in enumerate(phrases):
        if other == words:
            phrases[i] = (words, joined, old.merged(entry))
            break
    else:
        phrases.append((words, joined, entry))
    phrases.sort(key=lambda phrase: -len(phrase[0]))  # longest match first
    lang.phrases[words[0]] = tuple(phrases)


def _build(name: str, data: Mapping[str, Any], base: Mapping[str, float]) -> Language:
    code = data.get("lang")
    if code != name:
        raise LexiconError(f"lexicon {name}.toml: lang = {code!r}, expected {name!r}")
    lang = Language(code=name, arabic=name == "ar")
    for key, valence in base.items():
        _add(lang, key, Entry(valence=valence))
    for key, valence in _table(name, data, "terms", VALENCE_LIMIT).items():
        _add(lang, key, Entry(valence=valence))
    for key, scalar in _table(name, data, "boosters", 1.0).items():
        _add(lang, key, Entry(booster=scalar))
    for key, scalar in _table(name, data, "post_boosters", 1.0).items():
        _add(lang, key, Entry(post_booster=scalar))
    for key in _strings(name, data, "negators"):
        _add(lang, key, Entry(negator=True))
    for key in _strings(name, data, "contrast"):
        _add(lang, key, Entry(contrast=True))
    lang.prefixes = {normalize_word(k): v for k, v in _table(name, data, "prefixes", 1.0).items()}
    lang.markers = frozenset(normalize_word(w) for w in _strings(name, data, "markers"))
    lang.no_fallback = frozenset(normalize_word(w) for w in _strings(name, data, "no_fallback"))
    return lang


def _with_fallback_phrases(lang: Language, fallbacks: Iterable[Language]) -> None:
    """Let a language match its fallbacks' phrases too ("waste of money" in Malay text)."""
    for fallback in fallbacks:
        for first, phrases in fallback.phrases.items():
            own = lang.phrases.get(first, ())
            known = {words for words, _key, _entry in own}
            extra = tuple(p for p in phrases if p[0] not in known)
            if extra:
                lang.phrases[first] = tuple(sorted(own + extra, key=lambda p: -len(p[0])))


def load_lexicons() -> Lexicons:
    """Read and check every lexicon file. Raises :class:`LexiconError` on a bad file."""
    vader_words, vader_emoticons = _vader_words()
    raw = {name: _read(name) for name in LANGUAGE_FILES}
    languages: dict[str, Language] = {}
    for name, data in raw.items():
        base = vader_words if data.get("base") == "vader" else {}
        languages[name] = _build(name, data, base)
    for name, data in raw.items():
        lang = languages[name]
        codes = _strings(name, data, "fallbacks")
        unknown = [c for c in codes if c not in languages or c == name]
        if unknown:
            raise LexiconError(f"lexicon {name}: bad fallbacks {unknown}")
        lang.fallbacks = tuple(languages[c] for c in codes)
        _with_fallback_phrases(lang, lang.fallbacks)
    # Unknown language: every lexicon, English first (the usual code-mixing language).
    order = [languages[c] for c in LANGUAGE_FILES]
    merged = Language(code="und", fallbacks=tuple(order))
    _with_fallback_phrases(merged, order)
    emoji_data = _read("emoji")
    emoji = {
        strip_emoji_modifiers(k): v for k, v in _table("emoji", emoji_data, "emoji", 4.0).items()
    }
    emoticons = dict(vader_emoticons)
    emoticons.update(_table("emoji", emoji_data, "emoticons", 4.0))
    return Lexicons(languages, merged, emoji, emoticons)
