"""Alert rule kinds are the alert (webhook event) types

The first two kinds named families; the alerts consumer has one kind per
alert: `negative_buzz` becomes `buzz.negative_spike` and `spread_velocity`
becomes `spread.accelerating`. Their thresholds were free-form, and only
`open` and `resolve` mean something now, so others are dropped.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

RENAMED = {"negative_buzz": "buzz.negative_spike", "spread_velocity": "spread.accelerating"}


def _rewrite(mapping: dict[str, str], keep_thresholds: bool) -> None:
    rules = sa.table(
        "alert_rules", sa.column("id", sa.Integer), sa.column("kind", sa.String),
        sa.column("thresholds", sa.JSON),
    )  # fmt: skip
    connection = op.get_bind()
    for rule_id, kind, thresholds in connection.execute(
        sa.select(rules.c.id, rules.c.kind, rules.c.thresholds)
    ):
        if kind not in mapping:
            continue
        values = thresholds if isinstance(thresholds, dict) else json.loads(thresholds or "{}")
        if not keep_thresholds:
            values = {k: v for k, v in values.items() if k in ("open", "resolve")}
        connection.execute(
            rules.update()
            .where(rules.c.id == rule_id)
            .values(kind=mapping[kind], thresholds=values)
        )


def upgrade() -> None:
    _rewrite(RENAMED, keep_thresholds=False)


def downgrade() -> None:
    _rewrite({new: old for old, new in RENAMED.items()}, keep_thresholds=True)
