"""Evaluation of a scorer on labelled texts: per-language precision, recall, accuracy.

Pure: :func:`evaluate` takes examples and a scorer and returns numbers;
:func:`load_examples` is the only part that reads files (the labelled sets
under ``tests/data/sentiment/``, one JSON object a line:
``{"text": ..., "label": "negative"|"neutral"|"positive", "lang": ...}``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, get_args

from app.sentiment.scorer import Label, Scorer

__all__ = ["LABELS", "Example", "LabelStats", "Report", "evaluate", "load_examples"]

LABELS: Final[tuple[Label, ...]] = get_args(Label)


@dataclass(frozen=True, slots=True)
class Example:
    text: str
    label: Label
    lang: str


@dataclass(frozen=True, slots=True)
class LabelStats:
    precision: float  # of the texts predicted with this label, the share that has it (1.0 if none)
    recall: float  # of the texts that have this label, the share predicted with it (1.0 if none)
    support: int  # texts that have this label


@dataclass(frozen=True, slots=True)
class Report:
    lang: str
    n: int
    accuracy: float
    labels: dict[str, LabelStats]
    lang_accuracy: float  # share of texts with letters whose detected language is right
    errors: tuple[tuple[str, str, str], ...]  # (text, expected, predicted)


def _ratio(num: int, den: int) -> float:
    return num / den if den else 1.0


def evaluate(
    examples: Iterable[Example], scorer: Scorer, *, hint_languages: Sequence[str] | None = None
) -> dict[str, Report]:
    """Score every example with no language given (detection included), per language.

    ``hint_languages`` is passed as the campaign's ``languages``.
    """
    by_lang: dict[str, list[tuple[Example, str, str]]] = {}
    for example in examples:
        result = scorer.score(example.text, languages=hint_languages)
        by_lang.setdefault(example.lang, []).append((example, result.label, result.lang))
    reports: dict[str, Report] = {}
    for lang, rows in sorted(by_lang.items()):
        labels: dict[str, LabelStats] = {}
        for label in LABELS:
            predicted = sum(1 for _e, p, _l in rows if p == label)
            actual = sum(1 for e, _p, _l in rows if e.label == label)
            hits = sum(1 for e, p, _l in rows if p == label and e.label == label)
            labels[label] = LabelStats(_ratio(hits, predicted), _ratio(hits, actual), actual)
        lettered = [(e, d) for e, _p, d in rows if any(c.isalpha() for c in e.text)]
        reports[lang] = Report(
            lang=lang,
            n=len(rows),
            accuracy=_ratio(sum(1 for e, p, _l in rows if p == e.label), len(rows)),
            labels=labels,
            lang_accuracy=_ratio(sum(1 for e, d in lettered if d == e.lang), len(lettered)),
            errors=tuple((e.text, e.label, p) for e, p, _l in rows if p != e.label),
        )
    return reports


def load_examples(directory: Path) -> list[Example]:
    """Every ``*.jsonl`` file's examples, files in name order. Raises ValueError on a bad line."""
    examples: list[Example] = []
    for path in sorted(directory.glob("*.jsonl")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            label, text, lang = row.get("label"), row.get("text"), row.get("lang")
            if label not in LABELS or not isinstance(text, str) or not isinstance(lang, str):
                raise ValueError(f"{path.name}:{number}: need text, lang and a label in {LABELS}")
            examples.append(Example(text, label, lang))
    return examples
