"""Shared fixtures.

Integration tests are marked ``kafka`` (``clickhouse``, ``postgres`` later)
and reach the brokers that ``scripts/test.sh`` starts. A marked test whose
service is missing FAILS, naming what is missing; an unmarked test never
sees the service addresses, so it cannot reach a broker by accident.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from app.settings import Settings

if TYPE_CHECKING:
    from app.storage.clickhouse import ClickHouse

BROKERS = {
    "noida": ("VIRALTRACE_TEST_KAFKA_NOIDA", True),  # (env var, idempotence supported)
    "tansu": ("VIRALTRACE_TEST_KAFKA_TANSU", False),
}
TEST_TOKEN_KEY = "test-token-key-0123456789abcdef0123456789"
TEST_SALT_SECRET = "test-salt-secret-0123456789abcdef01234567"
POSTGRES_ENV = "VIRALTRACE_TEST_POSTGRES_URL"
SERVICE_ENV = [env for env, _ in BROKERS.values()] + ["VIRALTRACE_TEST_NOIDA_BIN", POSTGRES_ENV]


@pytest.fixture(autouse=True)
def _services_only_for_marked_tests(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    if request.node.get_closest_marker("kafka") is None:
        for env in SERVICE_ENV:
            if env != POSTGRES_ENV:
                monkeypatch.delenv(env, raising=False)
    if request.node.get_closest_marker("postgres") is None:
        monkeypatch.delenv(POSTGRES_ENV, raising=False)
    # Settings read the environment: keep a developer's VIRALTRACE_* out of tests.
    for env in list(os.environ):
        if env.startswith("VIRALTRACE_") and env not in SERVICE_ENV:
            monkeypatch.delenv(env, raising=False)


def require_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(
            f"{name} is not set: this test needs the real services; run it through "
            f"./scripts/test.sh, which starts them",
            pytrace=False,
        )
    return value


@pytest.fixture(params=sorted(BROKERS))
def broker(request: pytest.FixtureRequest) -> tuple[str, str, bool]:
    """(name, bootstrap, idempotence) for each real Kafka-protocol broker."""
    env, idempotence = BROKERS[request.param]
    return request.param, require_env(env), idempotence


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Test settings: fresh data dir, generous limits unless a test narrows them."""
    tracking = {
        "rate_ip_per_s": 1e6,
        "rate_ip_burst": 1e6,
        "token_keys": {1: TEST_TOKEN_KEY},
        "salt_secret": TEST_SALT_SECRET,
        **overrides.pop("tracking", {}),
    }
    return Settings(environment="test", data_dir=tmp_path, tracking=tracking, **overrides)


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    yield make_settings(tmp_path)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The module's chdb DSN; this client keeps the engine up between tests.

    chdb hosts one engine path per process at a time, so a module shares one
    data directory and each test gets a database of its own (``ch``).
    """
    from app.storage.clickhouse import ClickHouse

    path = tmp_path_factory.mktemp("chdb") / "not" / "yet" / "there"
    dsn = f"chdb://{path}"
    with ClickHouse(dsn):
        assert path.is_dir()
        yield dsn


@pytest.fixture
def ch(engine: str, unique: str) -> Iterator[ClickHouse]:
    """A client on a fresh database of its own."""
    from app.storage.clickhouse import ClickHouse

    with ClickHouse(engine, database=f"t_{unique}", create_database=True) as client:
        yield client


@pytest.fixture
def migrated(ch: ClickHouse) -> ClickHouse:
    """``ch`` with every migration applied (events TTL 400 days)."""
    from app.storage.migrate import MIGRATIONS_DIR, migrate

    migrate(ch, MIGRATIONS_DIR, settings_ttl_days=400)
    return ch


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path, unique: str) -> Any:
    """A fresh, empty control-plane database: a SQLite file, or a new PostgreSQL database
    (created on the server ``./scripts/test.sh`` makes sure is running, dropped after)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'control.db'}"
        return
    import asyncpg
    from sqlalchemy.engine import make_url

    server = make_url(require_env(POSTGRES_ENV))
    admin = server.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"vt_{unique}"
    connection = await asyncpg.connect(admin)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        connection = await asyncpg.connect(admin)
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await connection.close()
