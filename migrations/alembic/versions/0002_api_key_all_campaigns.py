"""API keys say explicitly whether they cover every campaign

A key bound to campaigns whose last campaign was deleted had no campaign
rows left, which read as "every campaign". Existing keys without campaign
rows were created unbound, so they get all_campaigns = true.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("all_campaigns", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    op.execute(
        "UPDATE api_keys SET all_campaigns = true WHERE id NOT IN "
        "(SELECT api_key_id FROM api_key_campaigns)"
    )


def downgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("all_campaigns")
