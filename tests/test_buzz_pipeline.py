"""The buzz consumer's pure steps: which events are buzz, how they are scored, and
what the alerts consumer receives (keyed by campaign, redacted samples only)."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest

from app.bus.memory import MemoryRecord
from app.sentiment import default_scorer
from app.settings import AlertSettings
from consumers.base import InvalidMessage
from consumers.buzz.pipeline import BuzzPipeline, buzz_event, score_event


def event(**fields: Any) -> dict[str, Any]:
    return {
        "v": 1, "event_id": str(uuid.uuid4()), "type": "comment", "campaign": "spring",
        "ts": 1_790_000_000_000, "received_at": 1_790_000_000_050, "root": "00000000000000aa",
        "node": "00000000000000ab", "channel": "whatsapp", "text": None, "reaction": None,
        "bot": False, **fields,
    }  # fmt: skip


def record(value: dict[str, Any] | bytes, offset: int = 0) -> MemoryRecord:
    raw = value if isinstance(value, bytes) else orjson.dumps(value)
    return MemoryRecord("share-events", 3, offset, 0, b"00000000000000aa", raw)


@pytest.mark.parametrize(
    ("fields", "is_buzz"),
    [
        ({"type": "comment", "text": "hi"}, True),
        ({"type": "reaction", "reaction": "angry"}, True),
        ({"type": "report"}, True),
        ({"type": "unsubscribe"}, True),
        ({"type": "share", "text": "look at this"}, True),
        ({"type": "share"}, False),
        ({"type": "view"}, False),
        ({"type": "preview", "preview_of": "comment", "text": "x"}, False),
        ({"type": "comment", "text": "spam", "bot": True}, False),
    ],
)
def test_what_is_buzz(fields: dict[str, Any], is_buzz: bool) -> None:
    assert buzz_event(event(**fields)) is is_buzz


def test_explicit_signals_are_negative_whatever_the_text() -> None:
    scorer = default_scorer()
    assert score_event(event(type="comment", text="I love it"), scorer, ()).label == "positive"
    report = score_event(event(type="report", text="I love it"), scorer, ())
    assert report.label == "negative" and report.score <= -0.5
    unsubscribe = score_event(event(type="unsubscribe"), scorer, ())
    assert unsubscribe.label == "negative" and unsubscribe.negative_terms == ("[unsubscribe]",)
    assert score_event(event(type="reaction", reaction="thumbs_down"), scorer, ()).label == (
        "negative"
    )
    assert score_event(event(type="reaction", reaction="love"), scorer, ()).label == "positive"


def test_process_scores_within_the_campaign_languages_and_keys_by_campaign() -> None:
    pipeline = BuzzPipeline(AlertSettings(), default_scorer())
    text = "Penipuan! Hubungi saya di ali@example.com atau +60 12-345 6789, jangan beli"
    [(campaign, raw, received)] = pipeline.process(record(event(text=text)))
    item = orjson.loads(raw)
    assert (campaign, received) == ("spring", 1_790_000_000_050)
    assert item["kind"] == "buzz.item" and item["label"] == "negative"
    assert item["lang"] in ("ms", "id")
    assert "ali@example.com" not in item["sample"] and "345" not in item["sample"]
    assert "[email]" in item["sample"]
    assert item["root"] == "00000000000000aa" and item["ts"] == 1_790_000_000_000
    positive = orjson.loads(pipeline.process(record(event(text="Best gila, berbaloi!")))[0][1])
    assert positive["label"] == "positive" and positive["sample"] == "", "samples only if negative"
    assert pipeline.process(record(event(type="view"))) == ()


def test_a_batch_of_items_holds_their_bytes_not_the_serializers_buffers() -> None:
    """A batch keeps up to 50,000 items until its write: each must cost its own size."""
    import tracemalloc

    pipeline = BuzzPipeline(AlertSettings(), default_scorer())
    records = [record(event(text=f"jangan beli, penipuan {i}"), i) for i in range(300)]
    pipeline.process(records[0])  # first-use costs (caches, lazy imports) out of the count
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        rows = [row for r in records for row in pipeline.process(r)]
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    size = sum(len(row[1]) for row in rows) / len(rows)
    # orjson's own buffer would hold 4 KiB or more per item.
    assert held / len(rows) < size + 600, f"{held / len(rows):.0f} bytes per {size:.0f}-byte item"


def test_poison_is_refused_with_a_reason() -> None:
    pipeline = BuzzPipeline(AlertSettings(), default_scorer())
    with pytest.raises(InvalidMessage, match="bad_json"):
        pipeline.process(record(b"{no"))
    with pytest.raises(InvalidMessage, match="bad_schema"):
        pipeline.process(record(event(text="x", ts="yesterday")))
    with pytest.raises(InvalidMessage, match="bad_schema"):
        pipeline.process(record({**event(text="x"), "campaign": None}))


async def test_write_publishes_every_item_keyed_by_campaign() -> None:
    sent: list[tuple[str, bytes, bytes]] = []

    async def publish(topic: str, key: bytes, value: bytes) -> None:
        sent.append((topic, key, value))

    pipeline = BuzzPipeline(AlertSettings(), default_scorer(), publish=publish,
                            signals_topic="sig")  # fmt: skip
    rows = [pipeline.process(record(event(text=t)))[0] for t in ("bad", "good", "ok")]
    await pipeline.write(rows, "token")
    assert [(t, k) for t, k, _ in sent] == [("sig", b"spring")] * 3
