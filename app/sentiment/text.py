"""Normalisation and tokenisation shared by the lexicons and the scorer.

The lexicon files and the input text go through the same :func:`normalize_word`,
so a lexicon author writes natural spellings (``أسوأ``, ``Kjempebra``) and
they match however the input spells them.

Arabic normalisation (the usual one for Arabic sentiment work): strip the
diacritics (harakat, tanween, shadda, sukun, dagger alef) and the tatweel,
unify the alef forms ``أ إ آ ٱ`` to ``ا``, ``ى`` to ``ي`` and ``ة`` to ``ه``,
and map the Persian letters that Arabic keyboards also produce (``ک ی``) to
their Arabic forms.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Container
from dataclasses import dataclass
from typing import Final

__all__ = [
    "Token",
    "collapse_elongation",
    "has_arabic",
    "normalize_text",
    "normalize_word",
    "strip_emoji_modifiers",
    "tokenize",
]

_NORMALIZE_TABLE: Final = str.maketrans(
    {
        **{chr(c): None for c in range(0x064B, 0x0660)},  # harakat, tanween, shadda, sukun
        "\u0670": None,  # dagger alef
        "\u0640": None,  # tatweel
        **{chr(c): None for c in range(0x06D6, 0x06EE)},  # Quranic annotation marks
        "أ": "ا",
        "إ": "ا",
        "آ": "ا",
        "ٱ": "ا",
        "ى": "ي",
        "ة": "ه",
        "ک": "ك",
        "ی": "ي",
        "’": "'",  # typographic apostrophe: "don’t" is "don't"
        "‘": "'",
    }
)
_ARABIC_RE: Final = re.compile(
    r"[\u0600-\u06FF\u0750-\u077F\u08A0-\u08FF\uFB50-\uFDFF\uFE70-\uFEFF]"
)
_ELONGATION_RE: Final = re.compile(r"(.)\1{2,}")

# Emoji: a pictograph followed by variation selectors / skin tones, joined by ZWJ.
_EMOJI_BASE = (
    "\U0001f000-\U0001faff\u2600-\u27bf\u2300-\u23ff\u2b00-\u2bff\u2190-\u21ff"
    "\u3030\u303d\u3297\u3299\u2764\u2122\u2139\u00a9\u00ae"
)
_EMOJI_MOD = "\ufe0f\ufe0e\U0001f3fb-\U0001f3ff\u20e3"
_EMOJI = f"[{_EMOJI_BASE}][{_EMOJI_MOD}]*(?:\u200d[{_EMOJI_BASE}][{_EMOJI_MOD}]*)*"
_MODIFIERS_RE: Final = re.compile(f"[{_EMOJI_MOD}]")

# One pass over a whitespace-free chunk: words (letters, inner apostrophes and
# hyphens: "don't", "anak-anak", "kjempe-bra"), emoji, and punctuation that
# matters (clause breaks and emphasis).
_CHUNK_RE: Final = re.compile(
    rf"(?P<word>[^\W\d_]+(?:['\-][^\W\d_]+)*)"
    rf"|(?P<emoji>{_EMOJI})"
    r"|(?P<punct>[!?.,;:\u061f\u060c\u061b\u2026]+)"
)
# Skipped before tokenising: they carry no sentiment and would only add noise
# (a handle or a URL can contain any word).
_SKIP_RE: Final = re.compile(
    r"(?:https?://|www\.)\S+|\S+@\S+\.\S+|(?<![\w@])#(?=\w)", re.IGNORECASE
)
_HANDLE_RE: Final = re.compile(r"(?<![\w@])@\w[\w.]*")


@dataclass(frozen=True, slots=True)
class Token:
    """One token of a text: ``kind`` is "word", "emoji", "emoticon" or "punct"."""

    kind: str
    text: str  # normalised (lower-cased word, emoji without modifiers, punctuation as is)
    caps: bool = False  # an all-capitals word of two or more letters


def has_arabic(text: str) -> bool:
    return _ARABIC_RE.search(text) is not None


def normalize_text(text: str) -> str:
    """NFKC, Arabic normalisation, typographic apostrophes. Case is kept."""
    text = unicodedata.normalize("NFKC", text)
    return text.translate(_NORMALIZE_TABLE)


def normalize_word(word: str) -> str:
    """The lexicon key of a word or phrase: normalised text, lower case, single spaces."""
    return " ".join(normalize_text(word).lower().split())


def collapse_elongation(word: str) -> tuple[str, ...]:
    """Spellings to try for an elongated word ("gooood" -> "good", "god"), or ()."""
    if _ELONGATION_RE.search(word) is None:
        return ()
    two = _ELONGATION_RE.sub(r"\1\1", word)
    one = _ELONGATION_RE.sub(r"\1", word)
    single = re.sub(r"(.)\1+", r"\1", two)
    return tuple(dict.fromkeys((two, one, single)))


def strip_emoji_modifiers(emoji: str) -> str:
    return _MODIFIERS_RE.sub("", emoji)


def tokenize(text: str, emoticons: Container[str] = frozenset()) -> list[Token]:
    """Tokens of an already :func:`normalize_text`-ed text, URLs/e-mails/handles dropped.

    ``emoticons`` are whitespace-delimited tokens such as ":)" or "<3" that are
    kept whole when a chunk equals one of them.
    """
    text = _HANDLE_RE.sub(" ", text)
    text = _SKIP_RE.sub(" ", text)
    tokens: list[Token] = []
    append = tokens.append
    for chunk in text.split():
        lowered = chunk.lower()
        if lowered in emoticons:
            append(Token("emoticon", lowered))
            continue
        for match in _CHUNK_RE.finditer(chunk):
            kind = match.lastgroup
            value = match.group()
            if kind == "word":
                lower = value.lower()
                append(Token("word", lower, len(value) > 1 and value.isupper()))
            elif kind == "emoji":
                append(Token("emoji", strip_emoji_modifiers(value)))
            else:
                append(Token("punct", value))
    return tokens
