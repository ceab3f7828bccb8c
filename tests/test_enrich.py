"""Unit tests for app.enrich: visitor ids, privacy signals, UA classification."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from app import enrich
from app.enrich import (
    ClientInfo,
    Enricher,
    _net_prefix,
    _new_client_info,
    classify_user_agent,
    normalize_country,
)
from app.settings import TrackingSettings

IP = "203.0.113.77"
IP2 = "198.51.100.23"
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)
FIREFOX = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"
IPHONE_SAFARI = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
PREVIEW_UAS = [
    "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
    "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
    "Twitterbot/1.0",
    "WhatsApp/2.23.20.0 A",
    "LinkedInBot/1.0 (compatible; Mozilla/5.0; Apache-HttpClient +http://www.linkedin.com)",
    "TelegramBot (like TwitterBot)",
    "Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)",
    "Mozilla/5.0 (Windows NT 6.1; WOW64) SkypeUriPreview Preview/0.5 "
    "skype-url-preview@microsoft.com",
    "Mozilla/5.0 (compatible; redditbot/1.0; +http://www.reddit.com/feedback)",
    "Pinterestbot/1.0 (+http://www.pinterest.com/bot.html)",
    "Mozilla/5.0 (compatible; vkShare; +http://vk.com/dev/Share)",
    "Iframely/1.3.1 (+https://iframely.com/docs/about)",
    "Mozilla/5.0 (compatible; Embedly/0.2; +http://support.embed.ly/)",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/49.0.2623.75 Safari/537.36 Google-PageRenderer Google "
    "(+https://developers.google.com/+/web/snippet/)",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_5) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/13.1.1 Safari/605.1.15 (Applebot/0.1; +http://www.apple.com/go/applebot)",
    "http.rb/5.1.1 (Mastodon/4.2.0; +https://mastodon.social/)",
    "Mozilla/5.0 (compatible; Bluesky Cardyb/1.1; +mailto:support@bsky.app)",
]
# In-app browsers and desktop clients of the same apps are people, not previews.
IN_APP_UAS = [
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Mobile/15E148 [FBAN/FBIOS;FBAV/460.0.0.38.108;]",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Mobile Safari/537.36 Telegram-Android/10.12.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "discord/1.0.9034 Chrome/108.0.5359.215 Electron/22.3.26 Safari/537.36",
]


class Clock:
    """A controllable UTC clock."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


def make(
    clock: Clock | None = None,
    *,
    secret: str = "test-salt-secret-0123456789abcdef0123",
    continuity: int = 1000,
    country_header: str | None = None,
    client_ip_header: str | None = None,
) -> Enricher:
    tracking = TrackingSettings(
        salt_secret=SecretStr(secret),
        visitor_continuity_size=continuity,
        country_header=country_header,
        client_ip_header=client_ip_header,
    )
    return Enricher(tracking, clock=clock or Clock(datetime(2024, 5, 1, 12, tzinfo=UTC)))


def scope(
    headers: Iterable[tuple[str, str]] = (),
    client: tuple[str, int] | None = (IP, 51234),
) -> dict[str, Any]:
    return {
        "type": "http",
        "method": "GET",
        "path": "/t/pixel.gif",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        "client": client,
    }


def info(enricher: Enricher, **overrides: Any) -> ClientInfo:
    kwargs: dict[str, Any] = {
        "ip": IP,
        "user_agent": CHROME,
        "campaign": "spring",
        "dnt": False,
        "gpc": False,
        "country": "de",
    }
    kwargs.update(overrides)
    return enricher.client_info(**kwargs)


# -- visitor ids ---------------------------------------------------------------


def test_same_inputs_same_id() -> None:
    enricher = make()
    first = enricher.visitor_id(IP, CHROME, "spring")
    assert len(first) == 16
    int(first, 16)
    assert enricher.visitor_id(IP, CHROME, "spring") == first
    # A second process with the same secret agrees without coordination.
    assert make(continuity=0).visitor_id(IP, CHROME, "spring") == first


def test_different_inputs_different_ids() -> None:
    enricher = make()
    ids = {
        enricher.visitor_id(IP, CHROME, "spring"),
        enricher.visitor_id(IP, CHROME, "summer"),
        enricher.visitor_id(IP2, CHROME, "spring"),
        enricher.visitor_id(IP, FIREFOX, "spring"),
        enricher.visitor_id("", CHROME, "spring"),
    }
    assert len(ids) == 5


def test_ids_differ_across_salt_secrets() -> None:
    one = make(secret="a" * 40).visitor_id(IP, CHROME, "spring")
    two = make(secret="b" * 40).visitor_id(IP, CHROME, "spring")
    assert one != two


def test_long_secret_is_derived_not_truncated() -> None:
    base = "s" * 64
    one = make(secret=base + "one").visitor_id(IP, CHROME, "spring")
    two = make(secret=base + "two").visitor_id(IP, CHROME, "spring")
    assert one != two


def test_new_day_new_id_without_continuity() -> None:
    clock = Clock(datetime(2024, 5, 1, 23, 59, tzinfo=UTC))
    enricher = make(clock, continuity=0)
    before = enricher.visitor_id(IP, CHROME, "spring")
    clock.advance(minutes=2)
    after = enricher.visitor_id(IP, CHROME, "spring")
    assert before != after
    clock.advance(hours=3)
    assert enricher.visitor_id(IP, CHROME, "spring") == after


def test_continuity_keeps_id_across_midnight() -> None:
    clock = Clock(datetime(2024, 5, 1, 23, 59, tzinfo=UTC))
    enricher = make(clock)
    before = enricher.visitor_id(IP, CHROME, "spring")
    clock.advance(minutes=2)  # 00:01 the next day
    assert enricher.visitor_id(IP, CHROME, "spring") == before
    clock.advance(hours=20)
    assert enricher.visitor_id(IP, CHROME, "spring") == before
    # The id lives at most about two days: on the third day it changes.
    clock.advance(hours=4)  # 2024-05-03 00:01
    third_day = enricher.visitor_id(IP, CHROME, "spring")
    assert third_day != before
    assert third_day == make(clock, continuity=0).visitor_id(IP, CHROME, "spring")


def test_visitor_first_seen_after_midnight_gets_todays_id() -> None:
    clock = Clock(datetime(2024, 5, 1, 23, 59, tzinfo=UTC))
    enricher = make(clock)
    enricher.visitor_id(IP2, CHROME, "spring")  # someone else, before midnight
    clock.advance(minutes=2)
    fresh = make(clock, continuity=0).visitor_id(IP, CHROME, "spring")
    assert enricher.visitor_id(IP, CHROME, "spring") == fresh
    assert enricher.visitor_id(IP, CHROME, "spring") == fresh


def test_continuity_lru_is_bounded() -> None:
    clock = Clock(datetime(2024, 5, 1, 23, 0, tzinfo=UTC))
    enricher = make(clock, continuity=2)
    first = enricher.visitor_id("192.0.2.1", CHROME, "spring")
    enricher.visitor_id("192.0.2.2", CHROME, "spring")
    enricher.visitor_id("192.0.2.3", CHROME, "spring")  # evicts the first
    assert len(enricher._recent) == 2
    clock.advance(hours=2)
    assert enricher.visitor_id("192.0.2.1", CHROME, "spring") != first


def test_clock_in_another_zone_uses_utc_date() -> None:
    from zoneinfo import ZoneInfo

    # 2024-05-02 01:30 in Berlin is 2024-05-01 23:30 UTC.
    berlin = Clock(datetime(2024, 5, 2, 1, 30, tzinfo=ZoneInfo("Europe/Berlin")))
    utc = Clock(datetime(2024, 5, 1, 23, 30, tzinfo=UTC))
    assert make(berlin, continuity=0).visitor_id(IP, CHROME, "c") == make(
        utc, continuity=0
    ).visitor_id(IP, CHROME, "c")


def test_default_clock_is_the_utc_wall_clock() -> None:
    tracking = TrackingSettings(salt_secret=SecretStr("d" * 40), visitor_continuity_size=0)
    before = Enricher(tracking, clock=lambda: datetime.now(UTC)).visitor_id(IP, CHROME, "c")
    during = Enricher(tracking).visitor_id(IP, CHROME, "c")
    after = Enricher(tracking, clock=lambda: datetime.now(UTC)).visitor_id(IP, CHROME, "c")
    assert during in {before, after}  # equal unless midnight passed in between


def test_unencodable_text_still_hashes() -> None:
    enricher = make()
    lone_surrogate = "spring\udcff"
    assert len(enricher.visitor_id(IP, CHROME, lone_surrogate)) == 16
    assert len(enricher.external_visitor_id(lone_surrogate, "\ud800")) == 16


def test_naive_clock_is_refused() -> None:
    enricher = make(Clock(datetime(2024, 5, 1, 12)))  # noqa: DTZ001
    with pytest.raises(ValueError, match="aware"):
        enricher.visitor_id(IP, CHROME, "spring")


def test_external_visitor_id_is_stable_keyed_and_per_campaign() -> None:
    clock = Clock(datetime(2024, 5, 1, 12, tzinfo=UTC))
    enricher = make(clock)
    first = enricher.external_visitor_id("spring", "user-42")
    assert len(first) == 16
    int(first, 16)
    assert "user-42" not in first
    clock.advance(days=10)
    assert enricher.external_visitor_id("spring", "user-42") == first
    assert enricher.external_visitor_id("summer", "user-42") != first
    assert enricher.external_visitor_id("spring", "user-43") != first
    assert make(secret="c" * 40).external_visitor_id("spring", "user-42") != first


# -- privacy -------------------------------------------------------------------


@pytest.mark.parametrize(("dnt", "gpc", "expected"), [(True, False, "dnt"), (False, True, "gpc")])
def test_dnt_and_gpc_drop_visitor_and_country(dnt: bool, gpc: bool, expected: str) -> None:
    enricher = make()
    result = info(enricher, dnt=dnt, gpc=gpc, user_agent=GOOGLEBOT)
    assert result.visitor is None
    assert result.net is None
    assert result.country is None
    assert result.privacy == expected
    assert result.bot is True
    assert result.browser == "Googlebot"
    assert not enricher._recent  # nothing remembered about this visitor
    assert not enricher._day.nets


def test_both_signals_report_gpc() -> None:
    assert info(make(), dnt=True, gpc=True).privacy == "gpc"


def test_dnt_and_gpc_from_headers() -> None:
    enricher = make(country_header="cf-ipcountry")
    base = [("User-Agent", IPHONE_SAFARI), ("CF-IPCountry", "FR")]
    tracked = enricher.from_scope(scope(base), "spring")
    assert tracked.visitor is not None
    assert tracked.country == "FR"
    assert tracked.privacy is None

    assert tracked.net is not None

    dnt = enricher.from_scope(scope([*base, ("DNT", "1")]), "spring")
    assert (dnt.visitor, dnt.net, dnt.country, dnt.privacy) == (None, None, None, "dnt")
    assert (dnt.browser, dnt.os, dnt.device) == ("Mobile Safari", "iOS", "iPhone")

    gpc = enricher.from_scope(scope([*base, ("Sec-GPC", "1")]), "spring")
    assert (gpc.visitor, gpc.net, gpc.country, gpc.privacy) == (None, None, None, "gpc")
    assert gpc.bot is False

    not_set = enricher.from_scope(scope([*base, ("DNT", "0"), ("Sec-GPC", "0")]), "spring")
    assert not_set.privacy is None
    assert not_set.visitor == tracked.visitor
    assert not_set.net == tracked.net


def test_ip_is_never_kept() -> None:
    enricher = make(client_ip_header="x-forwarded-for", country_header="cf-ipcountry")
    results = [
        info(enricher),
        info(enricher, ip=IP2, user_agent=FIREFOX),
        enricher.from_scope(
            scope([("X-Forwarded-For", f"10.0.0.1, {IP}"), ("User-Agent", CHROME)]), "spring"
        ),
    ]
    for result in results:
        assert IP not in repr(result)
        assert IP2 not in repr(result)
    assert IP not in repr(enricher)
    state = repr(vars(enricher)) + repr(list(enricher._recent))
    for ip in (IP, IP2, "10.0.0.1"):
        assert ip not in state
        assert ip.encode() not in state.encode()
        prefix = ip.rpartition(".")[0]  # the /24 the network bucket is made of
        assert prefix not in state
        assert bytes(int(octet) for octet in prefix.split(".")) not in state.encode()
    # Only hashes live in the continuity memory and the network-bucket cache.
    assert all(len(key) == 16 and int(key, 16) >= 0 for key in enricher._recent)
    assert enricher._day.nets
    for visitor, net in enricher._day.nets.items():
        assert len(visitor) == 16 and int(visitor, 16) >= 0
        assert net is not None and len(net) == 16 and int(net, 16) >= 0


# -- from_scope ----------------------------------------------------------------


def test_socket_peer_is_the_client_without_ip_header() -> None:
    enricher = make(continuity=0)
    result = enricher.from_scope(scope([("User-Agent", CHROME)], client=(IP, 1)), "spring")
    assert result.visitor == enricher.visitor_id(IP, CHROME, "spring")


def test_client_ip_header_takes_last_entry() -> None:
    enricher = make(client_ip_header="X-Forwarded-For", continuity=0)
    headers = [("X-Forwarded-For", f"1.1.1.1, 10.0.0.9,  {IP} "), ("User-Agent", CHROME)]
    result = enricher.from_scope(scope(headers, client=("10.0.0.2", 1)), "spring")
    assert result.visitor == enricher.visitor_id(IP, CHROME, "spring")
    # Spoofing earlier entries does not change the id.
    spoofed = [("X-Forwarded-For", f"6.6.6.6, {IP}"), ("User-Agent", CHROME)]
    assert enricher.from_scope(scope(spoofed), "spring").visitor == result.visitor
    # With several header lines, the last line is the proxy's.
    lines = [
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Forwarded-For", IP),
        ("User-Agent", CHROME),
    ]
    assert enricher.from_scope(scope(lines), "spring").visitor == result.visitor


def test_ip_normalisation() -> None:
    enricher = make(client_ip_header="x-forwarded-for", continuity=0)

    def visitor(xff: str) -> str | None:
        return enricher.from_scope(scope([("X-Forwarded-For", xff)]), "c").visitor

    assert visitor(f"{IP}:4431") == visitor(IP)
    assert visitor("[2001:DB8::1]:443") == visitor("2001:db8::1")
    assert visitor("unknown") == visitor("") == enricher.visitor_id("", "", "c")


def test_missing_ip_still_hashes() -> None:
    enricher = make(continuity=0)
    result = enricher.from_scope(scope([("User-Agent", CHROME)], client=None), "spring")
    assert result.visitor == enricher.visitor_id("", CHROME, "spring")
    header_enricher = make(client_ip_header="x-forwarded-for", continuity=0)
    # Header configured but absent: the socket peer (a proxy) is not trusted.
    result = header_enricher.from_scope(scope([("User-Agent", CHROME)]), "spring")
    assert result.visitor == header_enricher.visitor_id("", CHROME, "spring")


def test_user_agent_is_truncated() -> None:
    enricher = make(continuity=0)
    long_ua = CHROME + " x" * 1000
    result = enricher.from_scope(scope([("User-Agent", long_ua)]), "spring")
    assert result.visitor == enricher.visitor_id(IP, long_ua[:512], "spring")
    assert result.browser == "Chrome"


def test_country_header_ignored_when_not_configured() -> None:
    result = make().from_scope(scope([("CF-IPCountry", "FR")]), "spring")
    assert result.country is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("FR", "FR"),
        ("fr", "FR"),
        (" us ", "US"),
        ("XX", "XX"),
        ("T1", None),
        ("USA", None),
        ("F", None),
        ("", None),
        ("F1", None),
        ("ß", None),  # "ß".upper() == "SS"
        ("É1", None),
    ],
)
def test_country_validation(raw: str, expected: str | None) -> None:
    enricher = make(country_header="cf-ipcountry")
    assert normalize_country(raw) == expected
    assert enricher.from_scope(scope([("CF-IPCountry", raw)]), "spring").country == expected
    assert info(enricher, country=raw).country == expected


def test_country_none() -> None:
    assert info(make(), country=None).country is None


# -- user-agent classification -------------------------------------------------


@pytest.mark.parametrize("ua", PREVIEW_UAS)
def test_link_preview_fetchers(ua: str) -> None:
    result = info(make(), user_agent=ua)
    assert result.preview is True
    assert result.bot is True


def test_googlebot_is_bot_not_preview() -> None:
    result = info(make(), user_agent=GOOGLEBOT)
    assert result.bot is True
    assert result.preview is False


@pytest.mark.parametrize("ua", IN_APP_UAS)
def test_in_app_browsers_are_people(ua: str) -> None:
    result = info(make(), user_agent=ua)
    assert result.preview is False
    assert result.bot is False


@pytest.mark.parametrize(
    ("ua", "browser", "os", "device"),
    [
        (CHROME, "Chrome", "Windows", None),
        (FIREFOX, "Firefox", "Ubuntu", None),
        (IPHONE_SAFARI, "Mobile Safari", "iOS", "iPhone"),
    ],
)
def test_normal_browsers(ua: str, browser: str, os: str, device: str | None) -> None:
    result = info(make(), user_agent=ua)
    assert result.bot is False
    assert result.preview is False
    assert result.browser == browser
    assert result.os == os
    assert result.device == device
    assert result.visitor is not None
    assert result.country == "DE"


def test_user_agent_cache_is_bounded() -> None:
    classify_user_agent(CHROME)
    info = classify_user_agent.cache_info()
    assert info.maxsize is not None
    assert 1000 <= info.maxsize <= 100_000
    assert classify_user_agent(CHROME) is classify_user_agent(CHROME)


def test_fast_constructor_matches_the_dataclass() -> None:
    values: tuple[Any, ...] = (
        "0123456789abcdef",
        "fedcba9876543210",
        "DE",
        True,
        False,
        "Chrome",
        "Windows",
        None,
        None,
    )
    fast = _new_client_info(*values)
    slow = ClientInfo(*values)
    assert fast == slow
    assert repr(fast) == repr(slow)
    assert hash(fast) == hash(slow)
    assert dataclasses.astuple(fast) == values
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.visitor = "x"  # type: ignore[misc]


def test_empty_user_agent() -> None:
    enricher = make()
    result = enricher.from_scope(scope([]), "spring")
    assert result == ClientInfo(
        visitor=enricher.visitor_id(IP, "", "spring"),
        net=enricher.net_id(IP, "spring"),
        country=None,
        bot=False,
        preview=False,
        browser=None,
        os=None,
        device=None,
        privacy=None,
    )
    assert info(enricher, user_agent="   ").bot is False


# -- network buckets -----------------------------------------------------------

IP_SAME_24 = "203.0.113.5"  # IP's /24
IP_NEXT_24 = "203.0.112.77"  # IP with a neighbouring /24


def test_net_same_for_one_slash24_across_hosts_and_user_agents() -> None:
    enricher = make()
    phone = info(enricher, ip=IP, user_agent=IPHONE_SAFARI)
    laptop = info(enricher, ip=IP_SAME_24, user_agent=FIREFOX)
    assert phone.visitor != laptop.visitor
    assert phone.net == laptop.net
    assert phone.net is not None and len(phone.net) == 16
    int(phone.net, 16)
    # A second process with the same secret agrees without coordination.
    assert make(continuity=0).net_id(IP_SAME_24, "spring") == phone.net
    # Through the request path too (socket peer and trusted header).
    peer = scope([("User-Agent", CHROME)], client=(IP_SAME_24, 1))
    from_peer = enricher.from_scope(peer, "spring")
    assert from_peer.net == phone.net
    header = make(client_ip_header="x-forwarded-for")
    xff = scope([("X-Forwarded-For", f"6.6.6.6, {IP_SAME_24}:443")], client=("10.0.0.2", 1))
    assert header.from_scope(xff, "spring").net == phone.net


def test_net_differs_for_another_slash24() -> None:
    enricher = make()
    assert info(enricher, ip=IP).net != info(enricher, ip=IP_NEXT_24).net
    assert info(enricher, ip=IP).net != info(enricher, ip=IP2).net


def test_net_ipv6_is_the_slash48() -> None:
    enricher = make()
    home = enricher.net_id("2001:db8:1234:1::1", "spring")
    assert home is not None
    same_48 = [
        "2001:db8:1234:ffff:aaaa:bbbb:cccc:dddd",  # another /64 of the same site
        "2001:0DB8:1234:0000:0000:0000:0000:0002",  # zero-padded, upper-case
        "2001:db8:1234::",
    ]
    for address in same_48:
        assert enricher.net_id(address, "spring") == home, address
    for address in ("2001:db8:1235::1", "2001:db9:1234::1", "2001:db8::1"):
        assert enricher.net_id(address, "spring") != home, address
    # Spellings from a header: brackets, port and zone id are stripped.
    header = make(client_ip_header="x-forwarded-for")
    xff = scope([("X-Forwarded-For", "[2001:DB8:1234:5::9%eth0]:443")])
    assert header.from_scope(xff, "spring").net == home


def test_net_of_an_ipv4_mapped_address_is_the_ipv4_network() -> None:
    # What a dual-stack socket reports for an IPv4 client.
    enricher = make()
    v4 = enricher.net_id(IP, "spring")
    assert enricher.net_id(f"::ffff:{IP_SAME_24}", "spring") == v4
    assert enricher.net_id("::ffff:cb00:7105", "spring") == v4  # 203.0.113.5 in hex
    assert enricher.net_id(f"::{IP}", "spring") != v4  # deprecated IPv4-compatible: IPv6


@pytest.mark.parametrize(("dnt", "gpc"), [(True, False), (False, True), (True, True)])
def test_net_is_none_exactly_when_visitor_is_none_for_privacy(dnt: bool, gpc: bool) -> None:
    enricher = make()
    result = info(enricher, dnt=dnt, gpc=gpc)
    assert result.visitor is None and result.net is None
    tracked = info(enricher)
    assert tracked.visitor is not None and tracked.net is not None


@pytest.mark.parametrize("address", ["", "unknown", "1.2.3", "999.1.1.1", "01.2.3.4", "1::2::3"])
def test_net_is_none_without_an_address(address: str) -> None:
    enricher = make()
    assert enricher.net_id(address, "spring") is None
    result = info(enricher, ip=address)
    assert result.net is None
    assert result.visitor is not None  # the visitor id still hashes user agent and campaign
    no_peer = enricher.from_scope(scope([("User-Agent", CHROME)], client=None), "spring")
    assert no_peer.net is None
    header = make(client_ip_header="x-forwarded-for")
    assert header.from_scope(scope([("X-Forwarded-For", "unknown")]), "spring").net is None
    # Header configured but absent: the socket peer (a proxy) is not trusted.
    assert header.from_scope(scope([]), "spring").net is None


def test_net_rotates_with_the_utc_day() -> None:
    clock = Clock(datetime(2024, 5, 1, 23, 59, tzinfo=UTC))
    enricher = make(clock)
    before = info(enricher)
    clock.advance(minutes=2)  # 00:01 the next day
    after = info(enricher)
    # The visitor keeps yesterday's id (continuity); the bucket does not: it is a
    # function of (day, network, campaign), so every visitor of the network
    # agrees on it, whether they were seen before midnight or not.
    assert after.visitor == before.visitor
    assert after.net != before.net
    assert after.net == make(clock, continuity=0).net_id(IP_SAME_24, "spring")
    clock.advance(hours=23)
    assert info(enricher).net == after.net
    clock.advance(hours=1)
    assert info(enricher).net not in {before.net, after.net}


def test_net_differs_across_campaigns_and_secrets() -> None:
    enricher = make()
    spring = enricher.net_id(IP, "spring")
    assert enricher.net_id(IP, "summer") != spring
    assert enricher.net_id("2001:db8::1", "spring") != enricher.net_id("2001:db8::1", "summer")
    assert make(secret="c" * 40).net_id(IP, "spring") != spring


def test_net_is_unrelated_to_visitor_ids() -> None:
    enricher = make(continuity=0)
    for ip in (IP, IP2, "2001:db8::1"):
        for ua in (CHROME, ""):
            result = info(enricher, ip=ip, user_agent=ua)
            assert result.net is not None and result.visitor is not None
            assert result.net != result.visitor
            # Not the visitor hash of the prefix either, however it is spelled.
            prefix = ip.rpartition(".")[0] if "." in ip else "2001:db8:0"
            hashes = {
                enricher.visitor_id(prefix, "", "spring"),
                enricher.visitor_id(ip, "", "spring"),
                enricher.visitor_id("", prefix, "spring"),
                enricher.external_visitor_id("spring", prefix),
            }
            assert result.net not in hashes


def test_net_cache_is_bounded_and_changes_no_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(enrich, "_NET_CACHE_SIZE", 2)
    enricher = make()
    addresses = [IP, IP_SAME_24, IP2, "2001:db8::1", IP]
    first = [info(enricher, ip=ip) for ip in addresses]
    assert len(enricher._day.nets) <= 2
    again = [info(enricher, ip=ip) for ip in addresses]
    assert again == first
    for ip, result in zip(addresses, first, strict=True):
        assert result.net == enricher.net_id(ip, "spring")


def _expected_prefix(text: str) -> bytes:
    """What _net_prefix must answer, by way of the ipaddress module."""
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(text)
    except ValueError:
        return b""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.version == 4:
        return b"\x04" + address.packed[:3]
    return b"\x06" + address.packed[:6]


@settings(max_examples=500)
@given(st.ip_addresses(), st.sampled_from(["compressed", "exploded", "upper"]))
def test_net_prefix_matches_ipaddress(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, spelling: str
) -> None:
    text = {
        "compressed": address.compressed,
        "exploded": address.exploded,
        "upper": address.compressed.upper(),
    }[spelling]
    assert _net_prefix(text) == _expected_prefix(address.compressed)


@settings(max_examples=500)
@given(
    st.lists(
        st.sampled_from(
            ["", "0", "00", "0000", "00000", "ffff", "db8", "2001"]
            + ["1.2.3.4", "01.2.3.4", "256.0.0.1"]
        ),
        max_size=10,
    ).map(":".join)
    | st.text(alphabet="0123456789abcdef:.", max_size=45)
)
def test_net_prefix_refuses_what_ipaddress_refuses(text: str) -> None:
    assert _net_prefix(text) == _expected_prefix(text)
