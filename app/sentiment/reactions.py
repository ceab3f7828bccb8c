"""Explicit negative signals: report/unsubscribe events and reaction tokens.

A reaction is a lowercase token (``^[a-z0-9_+-]{1,32}$``, the event schema's
``REACTION_PATTERN``) naming a platform reaction or an emoji shortcode:
"like", "angry", "thumbs_down", "thumbsdown", "-1", "face_vomiting". Tokens
are compared without "_" and "-" (except "+1" and "-1") and without a
skin-tone suffix, so the spellings of different platforms meet.
"""

from __future__ import annotations

import re
from typing import Final

from app.sentiment.scorer import TextScore, label_for, squash

__all__ = ["NEGATIVE_EVENT_TYPES", "explicit_negative", "reaction_score"]

NEGATIVE_EVENT_TYPES: Final = frozenset({"report", "unsubscribe"})

_SKIN_TONE_RE: Final = re.compile(r"(?:::|[_-])?(?:skin[_-]?tone[_-]?[1-6]|tone[1-5])$")

# Valence on VADER's scale, like the lexicons. Zero: known, neutral.
_REACTIONS: Final[dict[str, float]] = {
    # positive
    "like": 1.8, "likes": 1.8, "love": 3.0, "heart": 3.0, "hearts": 3.0, "redheart": 3.0,
    "care": 2.0, "haha": 1.5, "lol": 1.5, "laugh": 1.5, "laughing": 1.5, "joy": 1.5,
    "rofl": 1.5, "wow": 1.5, "+1": 1.8, "thumbsup": 1.8, "thumbup": 1.8, "upvote": 1.5,
    "yes": 1.2, "fire": 2.0, "clap": 2.0, "applause": 2.0, "celebrate": 2.2, "tada": 2.2,
    "party": 2.0, "partyingface": 2.2, "star": 1.5, "starstruck": 3.0, "hearteyes": 3.0,
    "smilinghearteyes": 3.0, "smile": 2.0, "smiley": 2.0, "grin": 2.0, "happy": 2.0,
    "100": 2.5, "okhand": 1.5, "ok": 1.0, "muscle": 1.5, "pray": 1.2, "thanks": 1.5,
    "support": 1.8, "insightful": 1.5, "funny": 1.5, "rocket": 1.5, "sparkles": 1.2,
    "kiss": 2.0, "hug": 2.0, "hugs": 2.0, "cool": 1.5, "trophy": 2.0, "raisedhands": 2.0,
    "blush": 2.0, "yum": 2.0, "perfect": 2.5, "check": 1.0, "whitecheckmark": 1.0,
    "heavycheckmark": 1.0, "star2": 1.8, "sunglasses": 1.5, "relaxed": 1.5,
    # negative
    "angry": -3.0, "rage": -3.0, "mad": -2.5, "pout": -2.5, "pouting": -2.5,
    "angryface": -3.0, "cursing": -3.5, "swearing": -3.5, "triumph": -2.0, "sad": -2.0,
    "cry": -2.0, "crying": -2.0, "sob": -2.0, "disappointed": -2.2, "thumbsdown": -2.5,
    "thumbdown": -2.5, "-1": -2.5, "dislike": -2.5, "downvote": -2.0, "hate": -3.0,
    "poop": -2.5, "poo": -2.5, "pileofpoo": -2.5, "shit": -2.5, "hankey": -2.5,
    "vomit": -3.0, "puke": -3.0, "vomiting": -3.0, "facevomiting": -3.0, "nauseated": -2.5,
    "nauseatedface": -2.5, "sick": -1.5, "rollingeyes": -1.8, "eyeroll": -1.8,
    "facewithrollingeyes": -1.8, "unamused": -1.8, "facepalm": -1.8, "brokenheart": -2.5,
    "middlefinger": -3.5, "fu": -3.5, "clown": -2.0, "clownface": -2.0, "confused": -1.2,
    "worried": -1.5, "weary": -2.0, "tiredface": -2.0, "meh": -0.8, "x": -1.5, "no": -1.2,
    "noentry": -1.5, "scream": -1.5, "fearful": -1.5, "frown": -1.5, "frowning": -1.5,
    "slightlyfrowningface": -1.5, "expressionless": -1.0, "boring": -1.5, "fake": -2.0,
    "spam": -1.5, "scam": -2.7, "yawn": -1.0, "sleepy": -0.8,
    # known, neutral
    "curious": 0.0, "eyes": 0.0, "thinking": 0.0, "shrug": 0.0, "skull": 0.0, "hmm": 0.0,
    "neutralface": 0.0, "surprised": 0.0, "openmouth": 0.0, "astonished": 0.0,
}  # fmt: skip


def _key(reaction: str) -> str:
    token = reaction.strip().lower()
    if token in ("+1", "-1"):
        return token
    token = _SKIN_TONE_RE.sub("", token)
    return token.replace("_", "").replace("-", "")


_TABLE: Final = {_key(k): v for k, v in _REACTIONS.items()}


def reaction_score(reaction: str) -> TextScore | None:
    """The reaction's own sentiment (lang "und"), or None for an unknown reaction."""
    valence = _TABLE.get(_key(reaction))
    if valence is None:
        return None
    score = squash(valence)
    term = (reaction.strip().lower(),)
    return TextScore(
        label_for(score),
        score,
        "und",
        term if valence < 0 else (),
        term if valence > 0 else (),
    )


def explicit_negative(event_type: str, reaction: str | None) -> bool:
    """True for a report or unsubscribe event, and for any event with a negative reaction."""
    if event_type.strip().lower() in NEGATIVE_EVENT_TYPES:
        return True
    if not reaction:
        return False
    result = reaction_score(reaction)
    return result is not None and result.label == "negative"
