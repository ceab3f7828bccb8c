"""Alert rules and campaign languages from the control plane, with defaults.

``RuleBook.rules(campaign)`` is a pure lookup; ``load_rulebook`` reads the
SQL tables (one query each). A campaign without rules gets every kind with
the defaults of ``AlertSettings``; a rule overrides its kind's window,
minimum volume, cooldown and ``thresholds`` (``open``, ``resolve``), or
switches the kind off (``enabled = false``). Several rules of one kind: the
newest (highest id) wins.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.models import ALERT_KINDS, AlertRule, Campaign
from app.settings import AlertSettings
from consumers.alerts.detect import SPREAD_KINDS, Rule

log = logging.getLogger(__name__)


def default_rules(cfg: AlertSettings) -> dict[str, Rule]:
    """Every kind's rule when a campaign sets none."""
    window = max(1, round(cfg.window_s / 60))
    cooldown = cfg.cooldown_s * 1000
    spike = Rule(cfg.z_open, cfg.z_resolve, window, cfg.min_volume, cooldown)
    rules = {
        "buzz.negative_spike": spike,
        "buzz.volume_spike": spike,
        # Shares with a caption are rarer than comments: a quarter of the volume floor.
        "buzz.negative_velocity": Rule(
            cfg.velocity_open, cfg.velocity_resolve, window, max(5, cfg.min_volume // 4), cooldown
        ),
    }
    # Spread signals carry their own hysteresis (consumers/cascades/signals.py);
    # a rule's `open` can only raise the bar.
    for kind in SPREAD_KINDS:
        rules[kind] = Rule(0.0, 0.0, window, 0, cooldown)
    return rules


def apply_rule(base: Rule, row: Any) -> Rule:
    """``base`` overridden by an ``alert_rules`` row (``thresholds``: open, resolve)."""
    thresholds = row.thresholds or {}
    opening = float(thresholds.get("open", base.open))
    resolving = float(thresholds.get("resolve", min(base.resolve, opening)))
    return Rule(
        open=opening,
        resolve=min(resolving, opening),
        window_min=max(1, round(row.window_s / 60)),
        min_volume=int(row.min_volume),
        cooldown_ms=int(row.cooldown_s) * 1000,
        enabled=bool(row.enabled),
    )


@dataclass
class RuleBook:
    defaults: dict[str, Rule]
    by_campaign: dict[str, dict[str, Rule]] = field(default_factory=dict)
    languages: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def build(
        cls, cfg: AlertSettings, campaigns: Iterable[tuple[str, list[str] | None]],
        rules: Iterable[tuple[str, Any]],
    ) -> RuleBook:  # fmt: skip
        """From (slug, languages) pairs and (slug, rule row) pairs in id order."""
        book = cls(default_rules(cfg))
        for slug, languages in campaigns:
            book.languages[slug] = tuple(languages or ())
        for slug, row in rules:
            if row.kind not in ALERT_KINDS:
                continue
            own = book.by_campaign.setdefault(slug, dict(book.defaults))
            own[row.kind] = apply_rule(book.defaults[row.kind], row)
        return book

    def rules(self, campaign: str) -> dict[str, Rule]:
        return self.by_campaign.get(campaign, self.defaults)

    def keep_minutes(self) -> int:
        """The longest window any campaign uses, in minutes."""
        windows = [r.window_min for r in self.defaults.values()]
        windows += [r.window_min for own in self.by_campaign.values() for r in own.values()]
        return max(windows)


class RuleCache:
    """The current ``RuleBook``, re-read from the control plane at most every
    ``rules_refresh_s``. A failed read keeps the book it had (logged), so the
    consumers never block on the database."""

    def __init__(
        self, cfg: AlertSettings, sessions: async_sessionmaker[AsyncSession] | None
    ) -> None:
        self.cfg = cfg
        self.sessions = sessions
        self.book = RuleBook.build(cfg, (), ())
        self._read_at: float | None = None

    async def refresh(self, now: float) -> bool:
        """Re-read if due; True when a new book was loaded."""
        if self.sessions is None:
            return False
        if self._read_at is not None and now - self._read_at < self.cfg.rules_refresh_s:
            return False
        self._read_at = now
        try:
            self.book = await load_rulebook(self.sessions, self.cfg)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("alert rules and campaign languages not refreshed: %s", exc)
            return False
        return True


async def load_rulebook(sessions: async_sessionmaker[AsyncSession], cfg: AlertSettings) -> RuleBook:
    """Read campaigns and alert rules; raises SQLAlchemy errors (the caller retries)."""
    async with sessions() as session:
        campaigns = (await session.execute(select(Campaign.slug, Campaign.languages))).all()
        rules = (
            await session.execute(
                select(Campaign.slug, AlertRule).join(Campaign).order_by(AlertRule.id)
            )
        ).all()
    return RuleBook.build(cfg, [(s, langs) for s, langs in campaigns], [(s, r) for s, r in rules])
