"""Event schema v1: parsing, time and URL checks, and the published contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.enrich import ClientInfo
from app.events import (
    EventV1,
    InvalidEvent,
    build_event,
    check_time,
    clean_url,
    parse_event,
    partition_key,
)
from app.tokens import TokenSigner

SCHEMA_FILE = Path(__file__).parents[1] / "app" / "schemas" / "event-v1.json"
CLIENT = ClientInfo(
    "0123456789abcdef", "fedcba9876543210", "NO", False, False, "Chrome", "Windows", "Other", None
)


def test_committed_json_schema_matches_the_model() -> None:
    committed = json.loads(SCHEMA_FILE.read_text())
    assert committed == EventV1.model_json_schema(), (
        "app/schemas/event-v1.json is stale: regenerate it with "
        "`viraltrace schema > app/schemas/event-v1.json`"
    )


def test_built_events_satisfy_the_published_schema() -> None:
    signer = TokenSigner({1: b"k" * 32}, 1)
    parent = signer.mint_root("spring")
    child = signer.mint_child(parent)
    event = parse_event({"type": "share", "campaign": "spring", "channel": "SMS"})
    wire = build_event(
        event,
        event_type="share",
        token=child,
        client=CLIENT,
        source="api",
        ts=1,
        received_ms=2,
        url=None,
        parent=parent,
    )
    EventV1.model_validate(wire)
    assert wire["channel"] == "sms" and wire["parent"] == parent.node_hex
    assert partition_key(wire) == parent.root_hex.encode()
    plain = build_event(
        parse_event({"type": "view", "campaign": "c1"}),
        event_type="view",
        token=None,
        client=CLIENT,
        source="pixel",
        ts=1,
        received_ms=1,
        url=None,
    )
    assert partition_key(plain) == b"campaign:c1"


@pytest.mark.parametrize(
    ("data", "reason", "field"),
    [
        ({"campaign": "x"}, "missing_type", "type"),
        ({"type": "view"}, "missing_campaign", "campaign"),
        ({"type": "view", "campaign": "x", "ts": -5}, "bad_ts", "ts"),
        ({"type": "view", "campaign": "x", "ts": True}, "bad_ts", "ts"),
        ({"type": "view", "campaign": "x", "value": float("nan")}, "bad_value", "value"),
        ({"type": "view", "campaign": "x", "text": "x" * 4001}, "bad_text", "text"),
        ({"type": "reaction", "campaign": "x", "reaction": "<script>"}, "bad_reaction", "reaction"),
        ({"type": "view", "campaign": "x", "token": ""}, "bad_token", "token"),
        ([1, 2], "not_an_object", None),
    ],
)
def test_parse_event_reasons(data: object, reason: str, field: str | None) -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_event(data)
    assert (caught.value.reason, caught.value.field) == (reason, field)


def test_check_time_bounds() -> None:
    now = 1_800_000_000_000
    assert check_time(None, now, 86_400, 60) == now
    assert check_time(now - 1000, now, 86_400, 60) == now - 1000
    for bad in (now - 86_401_000, now + 61_000):
        with pytest.raises(InvalidEvent):
            check_time(bad, now, 86_400, 60)


@pytest.mark.parametrize(
    ("url", "cleaned"),
    [
        ("https://shop.example/a/b?email=x@y#frag", "https://shop.example/a/b"),
        ("http://user:pw@shop.example:8080/p", "http://shop.example:8080/p"),
        (None, None),
    ],
)
def test_clean_url_keeps_no_query_or_credentials(url: str | None, cleaned: str | None) -> None:
    assert clean_url(url) == cleaned


@pytest.mark.parametrize("url", ["javascript:alert(1)", "ftp://x/y", "/relative", "https://"])
def test_clean_url_refuses_non_http(url: str) -> None:
    with pytest.raises(InvalidEvent):
        clean_url(url)


@given(
    st.dictionaries(
        st.text(max_size=12),
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=50)),
        max_size=12,
    )
)
def test_parse_event_never_raises_anything_but_invalid_event(data: dict[str, object]) -> None:
    try:
        parse_event(data)
    except InvalidEvent as exc:
        assert exc.reason and isinstance(exc.message, str)


@given(st.text(max_size=300))
def test_clean_url_never_crashes(url: str) -> None:
    try:
        assert clean_url(url) is not None
    except InvalidEvent as exc:
        assert exc.reason == "bad_url"


def test_settings_keep_the_environment_names_deploy_files_rely_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app.settings import Settings

    monkeypatch.setenv("VIRALTRACE_KAFKA_BOOTSTRAP", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("VIRALTRACE_CLICKHOUSE_DSN", "https://ch.example:8443/viraltrace")
    monkeypatch.setenv("VIRALTRACE_DATABASE_URL", "postgresql+asyncpg://vt@db/vt")
    monkeypatch.setenv("VIRALTRACE_DATA_DIR", "/var/lib/viraltrace")
    monkeypatch.setenv("VIRALTRACE_TRACKING_CORS_ORIGINS", "https://a.example, https://b.example")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.kafka.bootstrap == "kafka-1:9092,kafka-2:9092"
    assert settings.clickhouse.dsn == "https://ch.example:8443/viraltrace"
    assert settings.database.url == "postgresql+asyncpg://vt@db/vt"
    assert str(settings.data_dir) == "/var/lib/viraltrace"
    assert settings.tracking.cors_origins == ["https://a.example", "https://b.example"]


def test_placeholder_secrets_are_refused_outside_development() -> None:
    from pydantic import ValidationError

    from app.settings import Settings

    with pytest.raises(ValidationError, match="placeholder"):
        Settings(environment="production", _env_file=None)  # type: ignore[call-arg]
