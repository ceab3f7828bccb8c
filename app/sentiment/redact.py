"""Sample text that is safe to put in an alert.

:func:`redact` removes what identifies a person or an account before a
comment is quoted in a webhook or a dashboard: e-mail addresses, URLs,
phone numbers, @handles and long digit runs (order ids, card numbers). It
collapses whitespace (control characters included) and truncates at a word
boundary. Pure and fast; it never raises for any ``str``.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["redact"]

ELLIPSIS: Final = "…"

_SPACE_RE: Final = re.compile(r"[\s\x00-\x1f\x7f-\x9f\u200b\u2028\u2029]+")
_URL_RE: Final = re.compile(r"(?:https?://|www\.)[^\s<>\"']+", re.IGNORECASE)
_EMAIL_RE: Final = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# A bare domain, with or without a path: shop.example.com.my/promo, bit.ly/x.
_DOMAIN_RE: Final = re.compile(
    r"(?<![\w@.-])(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+"
    r"(?:com|net|org|info|biz|io|co|me|ly|app|shop|store|xyz|site|online|link|gg|tv|my|id|no"
    r"|sa|ae|sg|uk|us|eu|de|qa|kw|bh|om|eg)\b(?:/[^\s<>\"']*)?",
    re.IGNORECASE,
)
_HANDLE_RE: Final = re.compile(r"(?<![\w@.])@\w(?:[\w.]*\w)?")
# Digits with single separators: +60 12-345 6789, (03) 1234 5678, 4111 1111 1111 1111.
_DIGITS_RE: Final = re.compile(r"(?<![\w+])\+?\(?\d(?:[ .-]?\(?\d\)?)*(?!\w)")
_DATE_RE: Final = re.compile(r"\d{1,4}[-./]\d{1,2}[-./]\d{1,4}")
_MIN_PHONE_DIGITS: Final = 8
_MAX_PHONE_DIGITS: Final = 15
_MIN_LONG_NUMBER: Final = 6


def _digits(match: re.Match[str]) -> str:
    text = match.group()
    digits = sum(c.isdigit() for c in text)
    if text.startswith("+") and _MIN_PHONE_DIGITS <= digits <= _MAX_PHONE_DIGITS:
        return "[phone]"
    if text[0] in "0(" and 9 <= digits <= 12:
        return "[phone]"  # a local number: 012-345 6789, 0812-3456-7890, (03) 1234 5678
    if digits >= _MIN_LONG_NUMBER and not _DATE_RE.fullmatch(text):
        return "[number]"
    return text


def redact(text: str, max_chars: int = 160) -> str:
    """``text`` with e-mails, URLs, phones, @handles and long numbers replaced by placeholders.

    Placeholders: "[email]", "[url]", "[phone]", "@[user]", "[number]". Whitespace
    runs become one space. A result longer than ``max_chars`` is cut at the last
    word boundary and ends with "…" (the whole result is at most ``max_chars``
    long; a single word longer than that is cut, but never inside a placeholder).
    Raises ValueError if ``max_chars`` < 1.
    """
    if max_chars < 1:
        raise ValueError("max_chars must be at least 1")
    out = _SPACE_RE.sub(" ", text).strip()
    out = _URL_RE.sub("[url]", out)
    out = _EMAIL_RE.sub("[email]", out)
    out = _DOMAIN_RE.sub("[url]", out)
    out = _HANDLE_RE.sub("@[user]", out)
    out = _DIGITS_RE.sub(_digits, out)
    if len(out) <= max_chars:
        return out
    limit = max_chars - len(ELLIPSIS)
    cut = out[:limit]
    if out[limit] != " " and " " in cut:
        cut = cut[: cut.rindex(" ")]  # drop the partial last word
    else:
        opened = cut.rfind("[")
        if opened > cut.rfind("]"):  # never leave half a placeholder
            cut = cut[: opened - 1 if opened and cut[opened - 1] == "@" else opened]
    return cut.rstrip() + ELLIPSIS
