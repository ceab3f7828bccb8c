"""The buzz consumer's steps: ``share-events`` -> scored items on the signals topic.

Texts and explicit signals are scored where the events are (partitioned by
cascade root, so scoring scales with partitions) and re-keyed by campaign for
the alerts consumer, which needs a whole campaign in one place:

1. ``decode`` keeps what buzz is made of: comments, reactions, reports,
   unsubscribes and shares with a caption; previews and bots are left out.
2. ``process`` scores it (``app.sentiment``; reports, unsubscribes and
   negative reactions are negative whatever the text) within the campaign's
   languages, and returns the item as a ``(campaign, json)`` row. Pure: the
   campaign languages come from the control plane in ``prepare``.
3. ``write`` publishes the batch's items (all acknowledged) and returns; the
   runner commits after it. At least once: the alerts consumer drops repeats
   by ``event_id``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from aiokafka.errors import KafkaError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.bus.base import BusError, right_sized
from app.sentiment import Scorer, TextScore, explicit_negative, reaction_score, redact
from app.settings import AlertSettings
from app.storage.clickhouse import StorageError
from consumers.alerts.rules import RuleCache
from consumers.base import InvalidMessage, Record, Row, json_object

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes, bytes], Awaitable[None]]  # topic, key, value

BUZZ_TYPES = frozenset({"comment", "reaction", "report", "unsubscribe"})
SAMPLE_CHARS = 160
NEUTRAL = TextScore("neutral", 0.0, "und", (), ())


def buzz_event(value: dict[str, Any]) -> bool:
    """Whether an event is buzz: a comment, reaction, report, unsubscribe or captioned share."""
    kind = value.get("type")
    if value.get("bot") or kind == "preview":
        return False
    return kind in BUZZ_TYPES or (kind == "share" and bool(value.get("text")))


def score_event(value: dict[str, Any], scorer: Scorer, languages: Sequence[str]) -> TextScore:
    """The event's label: its text's, else its reaction's; explicit negatives override."""
    text = value.get("text")
    reaction = value.get("reaction")
    if isinstance(text, str) and text.strip():
        scored = scorer.score(text, None, languages or None)
    elif isinstance(reaction, str):
        scored = reaction_score(reaction) or NEUTRAL
    else:
        scored = NEUTRAL
    if explicit_negative(str(value.get("type")), reaction if isinstance(reaction, str) else None):
        return TextScore("negative", min(scored.score, -0.5), scored.lang,
                         scored.negative_terms or (f"[{value.get('type')}]",), ())  # fmt: skip
    return scored


def buzz_item(value: dict[str, Any], scored: TextScore) -> dict[str, Any]:
    """The item the alerts consumer reads (``kind = buzz.item``)."""
    text = value.get("text")
    negative = scored.label == "negative"
    return {
        "kind": "buzz.item",
        "event_id": value["event_id"],
        "campaign": value["campaign"],
        "type": value["type"],
        "root": value.get("root"),
        "node": value.get("node"),
        "channel": value.get("channel"),
        "ts": value["ts"],
        "received_at": value["received_at"],
        "label": scored.label,
        "score": round(scored.score, 4),
        "lang": scored.lang,
        "terms": list(scored.negative_terms),
        "sample": redact(text, SAMPLE_CHARS) if negative and isinstance(text, str) else "",
    }


class BuzzPipeline:
    """``share-events`` -> scored buzz items, keyed by campaign, on the signals topic."""

    name = "buzz"

    def __init__(
        self,
        settings: AlertSettings,
        scorer: Scorer,
        *,
        sessions: async_sessionmaker[AsyncSession] | None = None,
        publish: Publish | None = None,
        signals_topic: str = "signals",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.scorer = scorer
        self.sessions = sessions
        self.publish = publish
        self.signals_topic = signals_topic
        self.clock = clock
        self.rules = RuleCache(settings, sessions)

    async def prepare(self, records: Sequence[Record]) -> None:
        """Refresh campaign languages from the control plane every ``rules_refresh_s``.

        A failed refresh keeps the languages it had (detection then considers
        every supported language for an unknown campaign); it never blocks.
        """
        await self.rules.refresh(self.clock())

    def revoked(self, partitions: Any) -> None:
        """Stateless per partition: nothing to forget."""

    def process(self, record: Record) -> Sequence[Row]:
        """One scored item as ``(campaign, json, received_at)``, or nothing. Pure."""
        value = json_object(record)
        if not buzz_event(value):
            return ()
        campaign = value.get("campaign")
        if not isinstance(campaign, str) or not isinstance(value.get("event_id"), str):
            raise InvalidMessage(record.partition, record.offset, "bad_schema: no campaign")
        if not isinstance(value.get("ts"), int) or not isinstance(value.get("received_at"), int):
            raise InvalidMessage(record.partition, record.offset, "bad_schema: no ts")
        scored = score_event(value, self.scorer, self.rules.book.languages.get(campaign, ()))
        # Right-sized: a batch holds up to consumer.batch_max_records of these (see
        # app.bus.base.right_sized).
        item = right_sized(orjson.dumps(buzz_item(value, scored)))
        return ((campaign, item, value["received_at"]),)

    def received_ms(self, row: Row) -> int | None:
        received: int = row[2]
        return received

    async def write(self, rows: Sequence[Row], dedup_token: str) -> None:
        """Publish every item and wait for all acks; raises ``StorageError`` (retried)."""
        if self.publish is None or not rows:
            return
        publish = self.publish
        try:
            await asyncio.gather(
                *(publish(self.signals_topic, row[0].encode(), row[1]) for row in rows)
            )
        except (KafkaError, BusError) as exc:
            raise StorageError(f"buzz publish failed: {exc!r}", retriable=True) from exc
