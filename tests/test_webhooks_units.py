"""The pure parts of webhook delivery: signing, the retry policy, the SSRF address
rules and the settings. No database, no network (the DNS-rebinding case runs the
real httpx client against a fake resolver and a recording network backend)."""

from __future__ import annotations

import ipaddress
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpcore
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from app.db.keys import new_webhook_secret
from app.settings import Settings, WebhookSettings
from app.webhooks.client import VettingBackend, new_client
from app.webhooks.outbox import PayloadTooLarge, body, message_id, subscribed
from app.webhooks.policy import (
    AttemptResult,
    RetryPolicy,
    decide,
    next_delay,
    parse_retry_after,
)
from app.webhooks.signing import BadSecret, active_secrets, sign
from app.webhooks.ssrf import Allowlist, Guard, UnresolvableHost, UnsafeUrl, address_problem

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
BODY = '{"type":"spread.viral","timestamp":"2026-11-23T12:00:00.000000Z","data":{"k":1.4}}'


# ---- signing -------------------------------------------------------------------------


def test_a_signed_request_verifies_with_the_standardwebhooks_library() -> None:
    secret = new_webhook_secret()
    headers = sign("msg_1", datetime.now(UTC), BODY, [secret])
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-id"] == "msg_1"
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(BODY, headers) == {
        "type": "spread.viral",
        "timestamp": "2026-11-23T12:00:00.000000Z",
        "data": {"k": 1.4},
    }


def test_unsigned_tampered_or_foreign_requests_fail_verification() -> None:
    secret = new_webhook_secret()
    headers = sign("msg_1", datetime.now(UTC), BODY, [secret])
    unsigned = {k: v for k, v in headers.items() if k != "webhook-signature"}
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, unsigned)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY.replace("1.4", "9.9"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, {**headers, "webhook-id": "msg_2"})
    with pytest.raises(WebhookVerificationError):
        Webhook(new_webhook_secret()).verify(BODY, headers)
    old = sign("msg_1", datetime.now(UTC) - timedelta(minutes=10), BODY, [secret])
    with pytest.raises(WebhookVerificationError):  # replayed: too old
        Webhook(secret).verify(BODY, old)


def test_during_rotation_both_secrets_sign_and_after_it_only_the_new_one() -> None:
    old, new = new_webhook_secret(), new_webhook_secret()
    expires = NOW + timedelta(days=1)
    during = active_secrets(new, old, expires, NOW)
    assert during == [new, old]
    headers = sign("msg_1", datetime.now(UTC), BODY, during)
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(BODY, headers)
    Webhook(new).verify(BODY, headers)

    after = active_secrets(new, old, expires, expires)
    assert after == [new]
    headers = sign("msg_1", datetime.now(UTC), BODY, after)
    Webhook(new).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(BODY, headers)


def test_a_secret_that_cannot_sign_is_not_retriable() -> None:
    with pytest.raises(BadSecret) as caught:
        sign("msg_1", NOW, BODY, ["whsec_"])
    assert caught.value.retriable is False


# ---- body, ids, subscriptions ------------------------------------------------------------


def test_message_ids_are_stable_per_event_and_endpoint() -> None:
    assert message_id("evt-1", 1) == message_id("evt-1", 1)
    assert message_id("evt-1", 1) != message_id("evt-1", 2)
    assert message_id("evt-1", 1) != message_id("evt-2", 1)
    assert message_id("evt-1", 1).startswith("msg_") and len(message_id("evt-1", 1)) <= 64


def test_body_shape_and_size_limit() -> None:
    text = body("buzz.negative_spike", NOW, {"state": "open"}, 20_000)
    assert text == (
        '{"type":"buzz.negative_spike","timestamp":"2026-11-23T12:00:00.000000Z",'
        '"data":{"state":"open"}}'
    )
    with pytest.raises(PayloadTooLarge) as caught:
        body("buzz.negative_spike", NOW, {"blob": "x" * 20_000}, 20_000)
    assert caught.value.size > 20_000 and caught.value.limit == 20_000
    with pytest.raises(ValueError, match="naive"):
        body("buzz.negative_spike", NOW.replace(tzinfo=None), {}, 20_000)


@pytest.mark.parametrize(
    ("types", "event", "expected"),
    [
        ([], "buzz.negative_spike", True),
        (["buzz"], "buzz.negative_spike", True),
        (["buzz."], "buzz.volume_spike", True),
        (["buzz.negative_spike"], "buzz.negative_spike", True),
        (["buzz.negative"], "buzz.negative_spike", False),
        (["bu"], "buzz.negative_spike", False),
        (["spread"], "buzz.negative_spike", False),
        (["spread.viral", "buzz"], "spread.viral", True),
    ],
)
def test_event_type_subscriptions(types: list[str], event: str, expected: bool) -> None:
    assert subscribed(types, event) is expected


# ---- retry policy ------------------------------------------------------------------------


POLICY = RetryPolicy((0, 5, 300, 1800, 7200, 18000, 36000, 36000), jitter=0.1)


def test_the_schedule_with_jitter_stays_within_bounds_and_never_negative() -> None:
    rng = random.Random(7)
    for attempts_made in range(1, 8):
        base = POLICY.schedule[attempts_made]
        for _ in range(200):
            delay = next_delay(attempts_made, POLICY, rng)
            assert delay is not None
            assert 0.9 * base <= delay <= 1.1 * base
    assert next_delay(8, POLICY, rng) is None  # eight attempts, then failed
    full_jitter = RetryPolicy((0, 5), jitter=1.0)
    assert all(0 <= (next_delay(1, full_jitter, rng) or 0) <= 10 for _ in range(500))
    no_jitter = RetryPolicy((0, 5), jitter=0.0)
    assert next_delay(1, no_jitter, rng) == 5


def test_the_same_seed_gives_the_same_delays() -> None:
    first = [next_delay(n, POLICY, random.Random(3)) for n in range(1, 8)]
    again = [next_delay(n, POLICY, random.Random(3)) for n in range(1, 8)]
    assert first == again


def test_retry_after_in_both_forms() -> None:
    assert parse_retry_after("120", NOW) == 120
    assert parse_retry_after(format_datetime(NOW + timedelta(hours=1), usegmt=True), NOW) == 3600
    assert parse_retry_after(format_datetime(NOW - timedelta(hours=1), usegmt=True), NOW) == 0
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after(None, NOW) is None
    assert parse_retry_after("", NOW) is None


def test_retry_after_wins_when_later_and_is_capped() -> None:
    policy = RetryPolicy((0, 5, 300), jitter=0.0, max_retry_after_s=600)
    rng = random.Random(1)
    assert next_delay(1, policy, rng, retry_after_s=60) == 60  # later than 5 s: honoured
    assert next_delay(2, policy, rng, retry_after_s=60) == 300  # earlier than 300 s: schedule
    assert next_delay(1, policy, rng, retry_after_s=10**9) == 600  # capped
    assert next_delay(3, policy, rng, retry_after_s=60) is None  # used up all the same


def test_decisions() -> None:
    rng = random.Random(1)
    policy = RetryPolicy((0, 5), jitter=0.0)
    assert decide(AttemptResult("delivered", status=204), 1, NOW, policy, rng).state == "delivered"
    retry = decide(AttemptResult("http_error", status=500), 1, NOW, policy, rng)
    assert (retry.state, retry.next_attempt_at) == ("pending", NOW + timedelta(seconds=5))
    assert decide(AttemptResult("timeout"), 2, NOW, policy, rng).state == "failed"
    refused = decide(AttemptResult("refused", error="loopback"), 1, NOW, policy, rng)
    assert refused.state == "pending"
    assert decide(AttemptResult("invalid", retriable=False), 1, NOW, policy, rng).state == "dead"
    gone = decide(AttemptResult("gone", status=410), 1, NOW, policy, rng)
    assert gone.state == "pending"
    assert gone.disable_endpoint == "receiver answered 410 Gone at 2026-11-23T12:00:00Z"
    later = decide(AttemptResult("http_error", status=429, retry_after="30"), 1, NOW, policy, rng)
    assert later.next_attempt_at == NOW + timedelta(seconds=30)


# ---- SSRF: address rules ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "CGNAT"),
        ("169.254.169.254", "metadata"),
        ("169.254.1.1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("0.0.0.0", "unspecified"),
        ("192.0.2.1", "non-public"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fd00::1", "unique local"),
        ("fd00:ec2::254", "metadata"),
        ("fe80::1", "link-local"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:169.254.169.254", "metadata"),
        ("64:ff9b::7f00:1", "loopback"),
        ("64:ff9b::a00:1", "private"),
        ("2002:7f00:1::1", "loopback"),
        ("2002:c0a8:101::1", "private"),
        ("::127.0.0.1", "loopback"),
        ("2001:db8::1", "non-public"),
    ],
)
def test_non_public_addresses_are_refused(address: str, problem: str) -> None:
    found = address_problem(ipaddress.ip_address(address))
    assert found is not None and problem in found


@pytest.mark.parametrize(
    "address", ["93.184.215.14", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]
)
def test_public_addresses_pass(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) is None


def resolver(answers: dict[str, list[str]]) -> Any:
    calls: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        if host not in answers:
            raise UnresolvableHost(f"host {host} does not resolve")
        return answers[host]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1/hook", "loopback"),
        ("http://10.0.0.5/hook", "private"),
        ("http://172.16.3.4/hook", "private"),
        ("http://192.168.0.10/hook", "private"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://[::1]:8080/hook", "loopback"),
        ("http://[fd00::1]/hook", "unique local"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),
        ("http://[fd00:ec2::254]/", "metadata"),
        ("http://localhost:8000/hook", "local machine"),
        ("http://api.localhost/hook", "local machine"),
        ("http://metadata.google.internal/computeMetadata/v1/", "metadata"),
        ("http://intranet.example/hook", "resolves to 10.2.3.4, a private"),
        ("http://mixed.example/hook", "resolves to 192.168.7.7, a private"),
        ("http://2130706433/hook", "loopback"),
        ("ftp://hooks.example/", "scheme"),
        ("https://user:pw@hooks.example/", "user name or password"),
        ("http:///nohost", "no host"),
        ("http://[::1/", "valid URL"),
    ],
)
async def test_unsafe_urls_are_refused_with_a_reason(url: str, why: str) -> None:
    fake = resolver(
        {
            "intranet.example": ["10.2.3.4"],
            "mixed.example": ["93.184.215.14", "192.168.7.7"],
            "2130706433": ["127.0.0.1"],
        }
    )
    guard = Guard(Allowlist(), fake)
    with pytest.raises(UnsafeUrl) as caught:
        await guard.check_url(url)
    assert why in caught.value.reason


async def test_the_allowlist_lifts_the_address_rules_but_never_for_metadata() -> None:
    fake = resolver({"receiver.internal": ["10.9.9.9"], "public.example": ["93.184.215.14"]})
    guard = Guard(Allowlist.parse(["127.0.0.1", "10.0.0.0/8", "::1", "Receiver.Internal."]), fake)
    await guard.check_url("http://127.0.0.1:9000/hook")
    await guard.check_url("http://10.200.0.1/hook")
    await guard.check_url("http://[::1]/hook")
    await guard.check_url("http://[::ffff:127.0.0.1]/hook")
    await guard.check_url("http://receiver.internal/hook")
    await guard.check_url("https://public.example/hook")
    # A name that does not resolve yet is accepted when saved; it is checked at delivery.
    await guard.check_url("https://not-yet.example/hook")
    with pytest.raises(UnresolvableHost):
        await guard.check_url("https://not-yet.example/hook", require_resolution=True)
    with pytest.raises(UnsafeUrl, match="loopback"):
        await guard.check_url("http://127.0.0.2/hook")  # 127.0.0.1 is listed, not 127/8
    everything = Guard(Allowlist.parse(["0.0.0.0/0", "::/0", "metadata.google.internal"]), fake)
    for url in ("http://169.254.169.254/", "http://metadata.google.internal/"):
        with pytest.raises(UnsafeUrl, match="metadata"):
            await everything.check_url(url)


def test_allowlist_entries_must_be_hosts_or_networks() -> None:
    with pytest.raises(ValueError, match="neither"):
        Allowlist.parse(["http://x.example/"])
    parsed = Allowlist.parse(["[::1]", "10.0.0.0/8", "hooks.example"])
    assert parsed.hosts == frozenset({"hooks.example"})
    assert len(parsed.networks) == 2


class RecordingBackend(httpcore.AsyncNetworkBackend):
    """Records where it was asked to connect, and refuses (no socket is ever opened)."""

    def __init__(self) -> None:
        self.connects: list[tuple[str, int]] = []

    async def connect_tcp(self, host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        self.connects.append((host, port))
        raise httpcore.ConnectError("recording backend: no network")


async def test_dns_rebinding_cannot_reach_loopback() -> None:
    """The name resolves to a public address when the URL is saved and to 127.0.0.1
    when the notifier connects: the connection is refused before any socket opens."""
    answers = iter([["93.184.215.14"], ["127.0.0.1"]])

    async def rebinding(host: str, port: int) -> list[str]:
        return next(answers)

    guard = Guard(Allowlist(), rebinding)
    await guard.check_url("http://rebind.example/hook")  # public now: accepted
    recorder = RecordingBackend()
    backend = VettingBackend(guard, recorder)
    with pytest.raises(UnsafeUrl, match="resolves to 127.0.0.1, a loopback"):
        await backend.connect_tcp("rebind.example", 80)
    assert recorder.connects == []


async def test_the_client_connects_only_to_the_vetted_address_not_the_name() -> None:
    async def public(host: str, port: int) -> list[str]:
        return ["93.184.215.14"]

    guard = Guard(Allowlist(), public)
    client = new_client(guard, timeout_s=1, max_connections=1)
    recorder = RecordingBackend()
    # The real client, its transport and pool, with the recording backend under the guard.
    pool = client._transport._pool  # type: ignore[attr-defined]
    assert isinstance(pool._network_backend, VettingBackend)
    pool._network_backend.inner = recorder
    async with client:
        with pytest.raises(Exception, match="recording backend"):
            await client.post("https://hooks.example:8443/in", content=b"{}")
    assert recorder.connects == [("93.184.215.14", 8443)]


async def test_the_client_never_follows_redirects_nor_reads_proxy_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    client = new_client(Guard(Allowlist()), timeout_s=1, max_connections=1)
    async with client:
        assert client.follow_redirects is False
        assert client.trust_env is False


# ---- settings ----------------------------------------------------------------------------------


def test_webhook_settings_defaults() -> None:
    config = WebhookSettings()
    assert config.retry_schedule_s == [0, 5, 300, 1800, 7200, 18000, 36000, 36000]
    assert (config.jitter, config.timeout_s, config.max_body_bytes) == (0.1, 15, 20_000)
    assert config.rotation_grace_s == 86_400
    assert config.allowed_hosts == []


def test_the_allowed_hosts_env_var_is_read_as_the_docs_spell_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VIRALTRACE_WEBHOOK_ALLOWED_HOSTS", "127.0.0.1, 10.0.0.0/8,hooks.internal")
    monkeypatch.setenv("VIRALTRACE_WEBHOOK_RETRY_SCHEDULE_S", "0,1,2")
    settings = Settings()
    assert settings.webhooks.allowed_hosts == ["127.0.0.1", "10.0.0.0/8", "hooks.internal"]
    assert settings.webhooks.retry_schedule_s == [0, 1, 2]


def test_the_plural_group_spelling_works_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIRALTRACE_WEBHOOKS_TIMEOUT_S", "3")
    monkeypatch.setenv("VIRALTRACE_WEBHOOKS_ALLOWED_HOSTS", '["::1"]')
    monkeypatch.setenv("WEBHOOKS_TIMEOUT_S", "7")  # no prefix: not ours
    settings = Settings()
    assert settings.webhooks.timeout_s == 3
    assert settings.webhooks.allowed_hosts == ["::1"]
    assert Settings(webhooks={"timeout_s": 2}).webhooks.timeout_s == 2


@pytest.mark.parametrize(
    "bad",
    [
        {"allowed_hosts": ["not a host!"]},
        {"retry_schedule_s": []},
        {"retry_schedule_s": [0, -1]},
        {"jitter": 1.5},
        {"lease_s": 10, "timeout_s": 15},
    ],
)
def test_bad_webhook_settings_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        WebhookSettings(**bad)
