"""Comment texts for the simulator, in English, Malay, Indonesian, Arabic and Norwegian.

Each language is a TOML file under ``comments/`` (package data): word lists
(``things`` a comment is about, ``good`` and ``bad`` words the language's
sentiment lexicon scores) and templates per intended label (``positive``,
``negative``, ``neutral``) with ``{thing}``, ``{good}`` and ``{bad}`` slots.
A test checks that the project's own scorer (``app.sentiment``) gives most
texts of each label that label and detects their language.
"""

from __future__ import annotations

import random
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Final, Literal

Label = Literal["positive", "negative", "neutral"]
LANGUAGES: Final = ("en", "ms", "id", "ar", "no")
LABELS: Final[tuple[Label, ...]] = ("positive", "negative", "neutral")


@dataclass(frozen=True, slots=True)
class Templates:
    """One language's word lists and templates (see the module docstring)."""

    lang: str
    things: tuple[str, ...]
    good: tuple[str, ...]
    bad: tuple[str, ...]
    by_label: dict[str, tuple[str, ...]]

    def make(self, rng: random.Random, label: Label) -> str:
        """A comment meant to read as ``label``, drawn with ``rng``."""
        text = rng.choice(self.by_label[label]).format(
            thing=rng.choice(self.things), good=rng.choice(self.good), bad=rng.choice(self.bad)
        )
        return text[:1].upper() + text[1:]


@cache
def templates(lang: str) -> Templates:
    """The templates of ``lang`` (one of ``LANGUAGES``), loaded once."""
    if lang not in LANGUAGES:
        raise ValueError(f"no comment templates for {lang!r}; supported: {', '.join(LANGUAGES)}")
    raw = tomllib.loads(
        resources.files("app.simulate").joinpath("comments", f"{lang}.toml").read_text("utf-8")
    )
    return Templates(
        lang=raw["lang"],
        things=tuple(raw["things"]),
        good=tuple(raw["good"]),
        bad=tuple(raw["bad"]),
        by_label={label: tuple(raw[label]) for label in LABELS},
    )
