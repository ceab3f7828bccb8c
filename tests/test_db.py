"""The control-plane schema: Alembic migrations on SQLite and on real PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app.db import migrate
from app.db.models import AlertRule, ApiKey, Base, Campaign, TrackedLink, WebhookEndpoint
from app.db.session import create_engine, sessionmaker


async def test_a_fresh_database_upgrades_to_head_and_matches_the_models(
    database_url: str,
) -> None:
    applied = await migrate.upgrade(database_url)
    assert applied == ["0001", "0002", "0003", "0004"]
    assert await migrate.current(database_url) == migrate.head()
    assert await migrate.upgrade(database_url) == []  # a second run does nothing

    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:

            def diff(sync_connection: Any) -> list[Any]:
                context = MigrationContext.configure(sync_connection, opts={"compare_type": True})
                return list(compare_metadata(context, Base.metadata))

            assert await connection.run_sync(diff) == []
    finally:
        await engine.dispose()


async def test_downgrade_one_step_and_upgrade_again(database_url: str) -> None:
    await migrate.upgrade(database_url)
    await migrate.downgrade(database_url, "-1")
    assert await migrate.current(database_url) == "0003"
    assert await migrate.upgrade(database_url) == ["0004"]
    assert await migrate.current(database_url) == migrate.head()


async def test_constraints_hold_on_both_databases(database_url: str) -> None:
    await migrate.upgrade(database_url)
    engine = create_engine(database_url)
    sessions = sessionmaker(engine)
    try:
        async with sessions() as session:
            campaign = Campaign(slug="spring", name="Spring launch", languages=["en", "ms"])
            session.add(campaign)
            await session.flush()
            session.add_all(
                [
                    TrackedLink(
                        slug="go",
                        campaign_id=campaign.id,
                        destination="https://shop.example/",
                        root_token="t" * 40,
                    ),
                    WebhookEndpoint(
                        campaign_id=campaign.id, url="https://hooks.example/", secret="whsec_x"
                    ),
                    AlertRule(campaign_id=campaign.id, kind="negative_buzz"),
                    ApiKey(
                        prefix="vt_abcd", key_hash="h" * 64, scopes=["read"], campaigns=[campaign]
                    ),
                ]
            )
            await session.commit()
        async with sessions() as session:
            session.add(Campaign(slug="spring", name="again"))
            with pytest.raises(IntegrityError):
                await session.commit()
        async with sessions() as session:
            session.add(AlertRule(campaign_id=campaign.id, kind="negative_buzz", window_s=0))
            with pytest.raises(IntegrityError):
                await session.commit()
        async with sessions() as session:
            # Deleting a campaign removes what hangs off it (ON DELETE CASCADE, FKs on).
            await session.delete(await session.get(Campaign, campaign.id))
            await session.commit()
            assert (await session.scalars(select(TrackedLink))).all() == []
            assert (await session.scalars(select(AlertRule))).all() == []
            key = (await session.scalars(select(ApiKey))).one()
            await session.refresh(key, ["campaigns"])
            assert key.campaigns == []
    finally:
        await engine.dispose()


async def test_0002_marks_keys_without_campaigns_as_all_campaigns(database_url: str) -> None:
    from sqlalchemy import text

    await migrate.upgrade(database_url, "0001")
    engine = create_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO campaigns (slug, name, allowed_origins, retention_days, "
                    "languages, require_write_key, active) VALUES "
                    "('spring', 'Spring', '[]', 400, '[\"en\"]', false, true)"
                )
            )
            for key_id in (1, 2):
                await connection.execute(
                    text(
                        "INSERT INTO api_keys (id, name, prefix, key_hash, scopes) "
                        f"VALUES ({key_id}, '', 'vt_{key_id}', '{key_id}', '[\"read\"]')"
                    )
                )
            await connection.execute(
                text("INSERT INTO api_key_campaigns (api_key_id, campaign_id) VALUES (2, 1)")
            )
        assert await migrate.upgrade(database_url, "0002") == ["0002"]
        async with engine.connect() as connection:
            rows = await connection.execute(
                text("SELECT id, all_campaigns FROM api_keys ORDER BY id")
            )
            assert [(i, bool(a)) for i, a in rows] == [(1, True), (2, False)]
    finally:
        await engine.dispose()


async def test_0004_renames_alert_kinds_to_alert_types_and_keeps_open_resolve(
    database_url: str,
) -> None:
    from sqlalchemy import text

    await migrate.upgrade(database_url, "0003")
    engine = create_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO campaigns (id, slug, name, allowed_origins, retention_days, "
                    "languages, require_write_key, active) VALUES "
                    "(1, 'spring', 'Spring', '[]', 400, '[\"en\"]', false, true)"
                )
            )
            for rule_id, kind, thresholds in [
                (1, "negative_buzz", '{"open": 4, "negative_share": 0.3}'),
                (2, "spread_velocity", "{}"),
            ]:
                await connection.execute(
                    text(
                        "INSERT INTO alert_rules (id, campaign_id, kind, thresholds, window_s, "
                        "min_volume, cooldown_s, enabled) "
                        f"VALUES ({rule_id}, 1, '{kind}', '{thresholds}', 300, 20, 1800, true)"
                    )
                )
        assert await migrate.upgrade(database_url) == ["0004"]
        async with engine.connect() as connection:
            rows = await connection.execute(
                text("SELECT id, kind, thresholds FROM alert_rules ORDER BY id")
            )
            got = [(i, k, t if isinstance(t, dict) else json.loads(t)) for i, k, t in rows]
        assert got == [(1, "buzz.negative_spike", {"open": 4}), (2, "spread.accelerating", {})]
    finally:
        await engine.dispose()
