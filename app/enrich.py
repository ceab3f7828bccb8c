"""Privacy-preserving enrichment of tracking requests.

Every event that reaches the tracking edge is tagged with what the edge knows
about the requester, under strict rules:

* No raw IP address is ever stored, published or logged. The address only
  feeds two keyed hashes (the visitor id and the network bucket) and is
  dropped right after; nothing in this module keeps it or its network prefix,
  not even in a cache.
* Do-Not-Track (``DNT: 1``) and Global Privacy Control (``Sec-GPC: 1``) are
  honoured: such requests get no visitor id, no network bucket and no
  country, only the coarse user-agent classification (bot, browser, OS,
  device family).
* Visitor ids and network buckets are keyed BLAKE2b hashes with salts that
  rotate every UTC day. The salts are derived from ``tracking.salt_secret``,
  so every replica agrees on them without coordination, and yesterday's
  hashes cannot be linked to today's by anyone who lacks the secret.

User-agent classification (``ua-parser`` and ``crawlerdetect``) is slow, so it
is cached per user-agent string in a bounded LRU. The cache is keyed by the
user agent only; it never sees an address.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from socket import AF_INET, AF_INET6, inet_pton
from string import ascii_uppercase
from typing import Any, Final, NamedTuple

from crawlerdetect import CrawlerDetect
from ua_parser import parse as _ua_parse

from app.settings import TrackingSettings

__all__ = [
    "MAX_USER_AGENT_CHARS",
    "ClientInfo",
    "Enricher",
    "UserAgentInfo",
    "classify_user_agent",
    "normalize_country",
]

MAX_USER_AGENT_CHARS: Final = 512
_UA_CACHE_SIZE: Final = 8192
# Network buckets remembered per visitor id for the current day (see Enricher).
_NET_CACHE_SIZE: Final = 16_384
_BLAKE2B_MAX_KEY: Final = 64
_SALT_BYTES: Final = 32
_ID_BYTES: Final = 8
_MAX_IP_CHARS: Final = 64

# Fetchers that load a URL to draw a link preview (an "unfurl") in a chat, social
# or messaging app. They are not people: a preview fetch must never count as a
# visit. Matched case-insensitively anywhere in the user agent. The tokens are
# chosen so that the apps' own in-app browsers and desktop clients (which carry
# e.g. "Slack/4.36", "discord/1.0", "FBAN/FBIOS", "Telegram-Android") do not match.
_PREVIEW_TOKENS: Final = (
    "slackbot",  # Slackbot-LinkExpanding, Slackbot 1.0
    "slack-imgproxy",
    "facebookexternalhit",
    "facebot",
    "twitterbot",
    "whatsapp",  # WhatsApp/2.23.20.0 (the apps themselves open links in a browser)
    "linkedinbot",
    "telegrambot",
    "discordbot",
    "skypeuripreview",  # Skype and Microsoft Teams
    "microsoftpreview",
    "redditbot",
    "pinterestbot",
    "pinterest/0.",
    "vkshare",
    "iframely",
    "embedly",
    "google-pagerenderer",
    "applebot",  # also fetches previews for iMessage / Spotlight
    "mastodon/",  # "http.rb/5.1.1 (Mastodon/4.2.0; +https://...)"
    "pleroma",
    "akkoma",
    "misskey",
    "bluesky cardyb",
    "cardyb/",
    "snap url preview",
    "quora link preview",
    "yahoo link preview",
    "bitlybot",
    "mattermost-bot",
    "kakaotalk-scrap",
    "flipboardproxy",
)
_PREVIEW_RE: Final = re.compile(
    "|".join(re.escape(token) for token in _PREVIEW_TOKENS), re.IGNORECASE
)

_COUNTRY_RE: Final = re.compile(r"[A-Z]{2}")
_COUNTRY_CODES: Final = frozenset(a + b for a in ascii_uppercase for b in ascii_uppercase)
# One pass over an address from a header: "[v6%zone]:port", "v4:port", "v6%zone".
_IP_RE: Final = re.compile(
    r"\s*(?:"
    r"\[([0-9A-Fa-f:.]+)(?:%[^\]]*)?\](?::[0-9]+)?"
    r"|([0-9.]+)(?::[0-9]+)?"
    r"|([0-9A-Fa-f:.]+)(?:%[^\s]*)?"
    r")\s*"
)

_crawler_detect = CrawlerDetect()


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """What the edge may record about one request. Never holds an address."""

    visitor: str | None  # 16 hex chars, None under DNT/GPC
    net: str | None  # 16 hex chars: the network bucket, None under DNT/GPC or with no address
    country: str | None  # upper-case alpha-2 from the trusted header, None under DNT/GPC
    bot: bool  # a crawler (crawlerdetect) or a link-preview fetcher
    preview: bool  # a link-preview fetcher (Slackbot, facebookexternalhit, ...)
    browser: str | None  # ua-parser family, None when unknown
    os: str | None
    device: str | None
    privacy: str | None  # "dnt", "gpc" or None


# The generated __init__ of a frozen dataclass goes through object.__setattr__
# once per field, which is most of the cost of a tracking-pixel request. The hot
# path fills the slots directly instead; the guard keeps this in step with the
# class (a new field must be added here too).
_CLIENT_INFO_FIELDS: Final = (
    "visitor", "net", "country", "bot", "preview", "browser", "os", "device", "privacy",
)  # fmt: skip
if tuple(f.name for f in fields(ClientInfo)) != _CLIENT_INFO_FIELDS:  # pragma: no cover
    raise RuntimeError("app.enrich._new_client_info is out of step with ClientInfo's fields")
(
    _set_visitor, _set_net, _set_country, _set_bot, _set_preview,
    _set_browser, _set_os, _set_device, _set_privacy,
) = (getattr(ClientInfo, name).__set__ for name in _CLIENT_INFO_FIELDS)  # fmt: skip
_object_new = object.__new__


def _new_client_info(
    visitor: str | None,
    net: str | None,
    country: str | None,
    bot: bool,
    preview: bool,
    browser: str | None,
    os: str | None,
    device: str | None,
    privacy: str | None,
) -> ClientInfo:
    """Same as ``ClientInfo(...)`` (positional), about twice as fast."""
    info: ClientInfo = _object_new(ClientInfo)
    _set_visitor(info, visitor)
    _set_net(info, net)
    _set_country(info, country)
    _set_bot(info, bot)
    _set_preview(info, preview)
    _set_browser(info, browser)
    _set_os(info, os)
    _set_device(info, device)
    _set_privacy(info, privacy)
    return info


@dataclass(frozen=True, slots=True)
class UserAgentInfo:
    """What the user agent alone says; cached per user-agent string."""

    bot: bool
    preview: bool
    browser: str | None
    os: str | None
    device: str | None
    # The whole answer for a request that sent DNT or GPC (no visitor, net or country).
    dnt_info: ClientInfo
    gpc_info: ClientInfo


def _family(value: Any) -> str | None:
    family = getattr(value, "family", None)
    if not isinstance(family, str) or not family or family == "Other":
        return None
    return family


@lru_cache(maxsize=_UA_CACHE_SIZE)
def classify_user_agent(user_agent: str) -> UserAgentInfo:
    """Bot/preview flags and ua-parser families for ``user_agent`` (cached, bounded)."""
    preview = _PREVIEW_RE.search(user_agent) is not None
    crawler = bool(user_agent.strip()) and bool(_crawler_detect.is_crawler(user_agent))
    parsed = _ua_parse(user_agent)
    bot = crawler or preview
    browser = _family(parsed.user_agent)
    os = _family(parsed.os)
    device = _family(parsed.device)
    return UserAgentInfo(
        bot=bot,
        preview=preview,
        browser=browser,
        os=os,
        device=device,
        dnt_info=ClientInfo(None, None, None, bot, preview, browser, os, device, "dnt"),
        gpc_info=ClientInfo(None, None, None, bot, preview, browser, os, device, "gpc"),
    )


def normalize_country(value: str | None) -> str | None:
    """An upper-case two-letter code, or None when ``value`` is absent or malformed.

    Pseudo-codes that proxies use (Cloudflare's ``XX`` for unknown) pass as-is
    when they are two letters; anything else (``T1``, ``USA``, non-ASCII) is None.
    """
    if value in _COUNTRY_CODES:
        return value
    if not value:
        return None
    code = value.strip()
    if not code.isascii():  # "ß".upper() == "SS"
        return None
    code = code.upper()
    return code if _COUNTRY_RE.fullmatch(code) else None


def _normalize_ip(value: str) -> str:
    """A cheap canonical form of an address taken from a forwarding header.

    Strips whitespace, ports (``[v6]:port``, ``v4:port``) and zone ids, and
    lower-cases; anything that is not made of address characters becomes
    ``""`` (the visitor id then depends on user agent and campaign only).
    Deliberately avoids :mod:`ipaddress`, which costs several microseconds.
    """
    match = _IP_RE.fullmatch(value)
    if match is None or match.lastindex is None:
        return ""
    ip = match[match.lastindex]
    return ip.lower() if len(ip) <= _MAX_IP_CHARS else ""


_PLAIN_IP_BYTES: Final = b"0123456789abcdef.:"


def _ip_from_header(value: bytes) -> str:
    """The last comma-separated entry of a forwarding header, normalised."""
    last = value.rpartition(b",")[2].strip()
    # Fast path: a bare IPv4 address or lower-case IPv6 address, no port.
    if (
        not last.translate(None, _PLAIN_IP_BYTES)
        and last.count(b":") != 1
        and len(last) <= _MAX_IP_CHARS
    ):
        return last.decode("ascii")
    return _normalize_ip(last.decode("latin-1"))


# Network buckets: which prefix counts as "one network".
#
# IPv4 /24: the usual size of a home or office NAT's public range, and the
# smallest block routed on the internet, so two devices behind one router share
# it even when the ISP hands the router a new address within its pool.
# IPv6 /48: the largest prefix commonly delegated to one site (RFC 6177 and
# RIPE-690 recommend /48 or /56 per customer). A household's devices pick
# addresses in several /64s (one per LAN segment, privacy addresses rotating
# within them) and ISPs that delegate a /56 may move it within a /48, so
# anything longer would split one home; the price is that an ISP that gives
# each customer a /56 or /64 puts up to 256 or 65,536 customers in one bucket,
# as carrier-grade NAT does for IPv4 /24s. A bucket is a hint, not an identity.
_IPV4_PREFIX: Final = 3  # bytes: /24
_IPV6_PREFIX: Final = 6  # bytes: /48
_IPV4_MAPPED: Final = bytes(10) + b"\xff\xff"  # ::ffff:0:0/96


def _net_prefix(ip: str) -> bytes:
    """The network ``ip`` belongs to, or ``b""`` when ``ip`` is not an address.

    A family byte (4 or 6) and the prefix's bytes: the IPv4 /24 (3 bytes) or
    the IPv6 /48 (6 bytes), whatever the address's spelling (compressed,
    zero-padded, upper-case, a trailing dotted quad). An IPv4-mapped address
    (``::ffff:a.b.c.d``, what a dual-stack socket reports for an IPv4 client)
    is the IPv4 address it maps. ``ip`` comes without port or zone
    (``_normalize_ip``). The result holds the address's leading bits: hash
    it, never keep it.

    ``inet_pton`` parses in C (about 0.15 us, against 5 us for ``ipaddress``
    and 0.5 to 2 us for parsing with str methods) and is strict: no leading
    zeros in IPv4, at most one ``::``; tests check it against ``ipaddress``.
    """
    if not ip:
        return b""
    try:
        if ":" not in ip:
            return b"\x04" + inet_pton(AF_INET, ip)[:_IPV4_PREFIX]
        packed = inet_pton(AF_INET6, ip)
    except (OSError, ValueError):  # not an address; ValueError: NUL or non-ASCII text
        return b""
    if packed[:12] == _IPV4_MAPPED:
        return b"\x04" + packed[12 : 12 + _IPV4_PREFIX]
    return b"\x06" + packed[:_IPV6_PREFIX]


def _secret_key(secret: str) -> bytes:
    raw = secret.encode()
    if len(raw) <= _BLAKE2B_MAX_KEY:
        return raw
    # BLAKE2b keys are at most 64 bytes: derive rather than truncate, so every
    # byte of a long secret counts.
    return hashlib.blake2b(raw, digest_size=_BLAKE2B_MAX_KEY, person=b"vt-salt-secret").digest()


def _encode(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:  # lone surrogates
        return text.encode("utf-8", "surrogatepass")


_SECONDS_PER_DAY: Final = 86_400


class _Day(NamedTuple):
    """The current UTC day and the BLAKE2b states keyed with its salts."""

    start: float  # POSIX timestamps: a UTC day is exactly 86 400 of them
    end: float
    today: hashlib.blake2b  # visitor ids, today's salt
    yesterday: hashlib.blake2b  # visitor ids, yesterday's salt (continuity)
    net: hashlib.blake2b  # network buckets, today's salt
    nets: dict[str, str | None]  # visitor id -> network bucket, computed today


_NO_DAY: Final = _Day(0.0, 0.0, hashlib.blake2b(), hashlib.blake2b(), hashlib.blake2b(), {})
_NOT_CACHED: Final = "-"  # never a bucket (those are hex or None)
# BLAKE2b personalisation of the network-bucket hash. Its salts are derived apart
# from the visitor salts too ("net-salt:" vs "visitor-salt:"), so the two hashes
# are unrelated even for the same input.
_NET_PERSON: Final = b"viraltrace-net"


class Enricher:
    """Turns a request into a :class:`ClientInfo`.

    Visitor ids
        ``visitor_id`` is ``BLAKE2b(key=salt(D), data=ip \\0 user_agent \\0
        campaign, digest_size=8)`` in hex, where ``salt(D) = BLAKE2b(key=
        salt_secret, data="visitor-salt:" + D.isoformat(), digest_size=32)``
        for the current UTC date ``D`` (taken from ``clock``). The same person
        therefore gets a new id every UTC day and a different id in every
        campaign. Secrets longer than 64 bytes (BLAKE2b's key limit) are
        first hashed down to 64 bytes.

    Network buckets
        ``net_id`` is ``BLAKE2b(key=net_salt(D), person="viraltrace-net",
        data=prefix campaign, digest_size=8)`` in hex, where ``prefix`` is a
        family byte (4 or 6) and the bytes of the address's IPv4 /24 or IPv6
        /48 (``_net_prefix``; the comment above it says why those sizes), and
        ``net_salt(D)`` is derived like ``salt(D)`` but from ``"net-salt:" +
        D.isoformat()``. Everyone on one network gets the same bucket for a
        campaign and a UTC day, unrelated to any visitor id, to other
        campaigns' buckets and to other days'. Buckets have no continuity
        across midnight on purpose: a bucket is a pure function of (day,
        prefix, campaign), so all of a network's visitors agree on it at any
        moment (continuity would keep yesterday's bucket for some of them).

        The bucket of each visitor id issued today is remembered (at most
        ``_NET_CACHE_SIZE`` of them, all forgotten when full and at midnight),
        keyed by the id: an id stands for one address and campaign, so a
        repeat hit skips the hash without the cache holding an address or a
        prefix.

    Continuity across midnight
        So that a visit that straddles midnight is not split in two, the
        enricher remembers up to ``tracking.visitor_continuity_size`` recently
        issued ids (an LRU of hashes; it never holds an address; 0 disables
        it). If today's id was not issued recently but yesterday's id was, the
        visitor keeps yesterday's id. Yesterday's ids are never re-issued under
        a new date, so one id lives at most about two days (from 00:00 of its
        day to 23:59 of the next day) and then changes.

        Limits: the memory is per process. With several workers or replicas,
        continuity holds only when the load balancer keeps a visitor on the
        same process (sticky sessions); otherwise a visitor may get today's id
        on one process and yesterday's on another after midnight. A restart
        forgets it, and a visitor who changes address or user agent is a new
        visitor anyway. Under a flood of distinct visitors the oldest entries
        are evicted first, which ends continuity for them early.

    Safe to share between threads (the LRU relies on the atomicity of single
    ``OrderedDict`` operations under the GIL and tolerates races between them).
    The clock must return an aware datetime; its UTC date is what counts.
    """

    def __init__(
        self, tracking: TrackingSettings, clock: Callable[[], datetime] | None = None
    ) -> None:
        # None: the wall clock, read with time.time(), which is several times
        # cheaper than datetime.now(UTC) and means the same.
        self._clock = clock
        self._key = _secret_key(tracking.salt_secret.get_secret_value())
        external_key = hashlib.blake2b(
            b"external-visitor-key", key=self._key, digest_size=_SALT_BYTES
        ).digest()
        self._external_base = hashlib.blake2b(key=external_key, digest_size=_ID_BYTES)
        self._continuity_size = tracking.visitor_continuity_size
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._day = _NO_DAY
        self._country_header = (
            tracking.country_header.strip().lower().encode("latin-1")
            if tracking.country_header
            else None
        )
        self._ip_header = (
            tracking.client_ip_header.strip().lower().encode("latin-1")
            if tracking.client_ip_header
            else None
        )
        wanted = {b"user-agent", b"dnt", b"sec-gpc"}
        wanted.update(h for h in (self._country_header, self._ip_header) if h)
        self._wanted_headers = frozenset(wanted)

    def __repr__(self) -> str:
        day = (
            datetime.fromtimestamp(self._day.start, UTC).date().isoformat()
            if self._day is not _NO_DAY
            else None
        )
        return f"Enricher(continuity={len(self._recent)}/{self._continuity_size}, day={day})"

    # -- salts -----------------------------------------------------------------

    def _daily_salt(self, day: date, domain: bytes = b"visitor-salt:") -> bytes:
        data = domain + day.isoformat().encode()
        return hashlib.blake2b(data, key=self._key, digest_size=_SALT_BYTES).digest()

    def _current_day(self) -> _Day:
        clock = self._clock
        if clock is None:
            now = time.time()
        else:
            moment = clock()
            if moment.utcoffset() is None:
                raise ValueError("Enricher clock must return an aware datetime")
            now = moment.timestamp()
        day = self._day
        if day.start <= now < day.end:
            return day
        start = now - now % _SECONDS_PER_DAY
        today = datetime.fromtimestamp(start, UTC).date()
        day = _Day(
            start,
            start + _SECONDS_PER_DAY,
            hashlib.blake2b(key=self._daily_salt(today), digest_size=_ID_BYTES),
            hashlib.blake2b(key=self._daily_salt(today - timedelta(days=1)), digest_size=_ID_BYTES),
            hashlib.blake2b(
                key=self._daily_salt(today, b"net-salt:"), digest_size=_ID_BYTES, person=_NET_PERSON
            ),
            {},
        )
        self._day = day
        return day

    # -- public API ------------------------------------------------------------

    def visitor_id(self, ip: str, user_agent: str, campaign: str) -> str:
        """The visitor's 16-hex-char id for today, or yesterday's if they are continuing."""
        return self._visitor_id(self._current_day(), ip, user_agent, campaign)

    def net_id(self, ip: str, campaign: str) -> str | None:
        """The 16-hex-char bucket of ``ip``'s network for today, None if ``ip`` is no address."""
        return self._net_id(self._current_day(), ip, campaign)

    def _visitor_id(self, day: _Day, ip: str, user_agent: str, campaign: str) -> str:
        data = _encode(f"{ip}\0{user_agent}\0{campaign}")
        hasher = day.today.copy()  # cheaper than keying a fresh BLAKE2b
        hasher.update(data)
        today_id = hasher.hexdigest()
        size = self._continuity_size
        if size <= 0:
            return today_id
        recent = self._recent
        try:
            recent.move_to_end(today_id)  # seen recently: the common case
            return today_id
        except KeyError:
            pass
        hasher = day.yesterday.copy()
        hasher.update(data)
        yesterday_id = hasher.hexdigest()
        try:
            recent.move_to_end(yesterday_id)  # a visit that began before midnight
            return yesterday_id
        except KeyError:
            pass
        recent[today_id] = None
        while len(recent) > size:
            try:
                recent.popitem(last=False)
            except KeyError:  # emptied by another thread meanwhile
                break
        return today_id

    def _net_id(self, day: _Day, ip: str, campaign: str) -> str | None:
        prefix = _net_prefix(ip)
        if not prefix:
            return None
        hasher = day.net.copy()
        hasher.update(prefix + _encode(campaign))
        return hasher.hexdigest()

    def external_visitor_id(self, campaign: str, external_id: str) -> str:
        """Keyed hash (16 hex chars) of a visitor id that a server SDK supplied.

        Stable across days (keyed by a key derived from ``salt_secret``, not by
        the daily salt) and per campaign, so the raw external id is never stored.
        """
        hasher = self._external_base.copy()
        hasher.update(_encode(f"{campaign}\0{external_id}"))
        return hasher.hexdigest()

    def client_info(
        self,
        *,
        ip: str,
        user_agent: str,
        campaign: str,
        dnt: bool,
        gpc: bool,
        country: str | None,
    ) -> ClientInfo:
        """Enrich one request. ``ip`` is used for the hashes only and then dropped."""
        return self._info(ip, user_agent[:MAX_USER_AGENT_CHARS], campaign, dnt, gpc, country)

    def _info(
        self, ip: str, user_agent: str, campaign: str, dnt: bool, gpc: bool, country: str | None
    ) -> ClientInfo:
        ua = classify_user_agent(user_agent)
        # GPC carries legal weight (e.g. CCPA), so it is the one reported when both are sent.
        if gpc:
            return ua.gpc_info
        if dnt:
            return ua.dnt_info
        day = self._current_day()  # once: both hashes of a request are of the same day
        visitor = self._visitor_id(day, ip, user_agent, campaign)
        # A visitor id stands for one (address, user agent, campaign), so within a
        # day it determines the bucket: remembering that saves a BLAKE2b on every
        # repeat hit, and the cache holds nothing but the two published hashes.
        nets = day.nets
        net = nets.get(visitor, _NOT_CACHED)
        if net is _NOT_CACHED:
            net = self._net_id(day, ip, campaign)
            if len(nets) >= _NET_CACHE_SIZE:
                nets.clear()  # bounded; the next hits refill it
            nets[visitor] = net
        return _new_client_info(
            visitor,
            net,
            # None (no country header) is the common case: no call for it.
            country if country is None or country in _COUNTRY_CODES else normalize_country(country),
            ua.bot,
            ua.preview,
            ua.browser,
            ua.os,
            ua.device,
            None,
        )

    def from_scope(self, scope: Mapping[str, Any], campaign: str) -> ClientInfo:
        """Enrich the request described by an ASGI HTTP ``scope``.

        The client address is the last entry of ``tracking.client_ip_header``
        (the one our trusted proxy appended) when that is configured, else the
        socket peer. The header is trusted only because the deployment says so:
        configure it only behind a proxy that overwrites or appends it.
        """
        wanted = self._wanted_headers
        found: dict[bytes, bytes] = {}
        for name, value in scope.get("headers") or ():
            if name in wanted:
                found[name] = value  # a repeated header: the last line wins
        ua_value = found.get(b"user-agent")
        if ua_value is None:
            user_agent = ""
        elif len(ua_value) > MAX_USER_AGENT_CHARS:
            user_agent = ua_value[:MAX_USER_AGENT_CHARS].decode("latin-1")
        else:
            user_agent = ua_value.decode("latin-1")
        dnt_value = found.get(b"dnt")
        gpc_value = found.get(b"sec-gpc")
        dnt = dnt_value is not None and dnt_value.strip() == b"1"
        gpc = gpc_value is not None and gpc_value.strip() == b"1"
        if dnt or gpc:
            return self._info("", user_agent, campaign, dnt, gpc, None)
        country: str | None = None
        if self._country_header is not None:
            country_value = found.get(self._country_header)
            if country_value is not None:
                country = country_value.decode("latin-1")
        if self._ip_header is not None:
            ip_value = found.get(self._ip_header)
            ip = _ip_from_header(ip_value) if ip_value else ""
        else:
            ip = _peer_ip(scope)
        return self._info(ip, user_agent, campaign, False, False, country)

    def client_ip(self, scope: Mapping[str, Any]) -> str:
        """The client address by the same rule as ``from_scope`` ("" if unknown).

        For in-process use only (rate-limit keys): never publish or log it.
        """
        if self._ip_header is None:
            return _peer_ip(scope)
        ip_value = None
        for name, value in scope.get("headers") or ():
            if name == self._ip_header:
                ip_value = value
        return _ip_from_header(ip_value) if ip_value else ""


def _peer_ip(scope: Mapping[str, Any]) -> str:
    client = scope.get("client")
    host = client[0] if client else None
    return host if isinstance(host, str) else ""
