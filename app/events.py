"""Event schema v1: what clients send, what goes on the bus, and why input is refused.

One validation path serves the pixel (query-string values, lax) and the JSON
API (typed values): ``parse_event`` turns a mapping into an ``EventIn`` or
raises ``InvalidEvent(reason, field)``; ``build_event`` adds the server's
view (token lineage, enrichment, times) and returns the v1 wire dict. The
published wire format is described by ``EventV1``, whose JSON Schema
(``app/schemas/event-v1.json``) is the contract for snippets, SDKs and
consumers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)

from app.enrich import ClientInfo
from app.tokens import ShareToken, TokenError, TokenSigner

SCHEMA_VERSION = 1

ClientEventType = Literal[
    "view", "click", "share", "signup", "convert", "reaction", "comment", "report", "unsubscribe"
]
CLIENT_EVENT_TYPES: frozenset[str] = frozenset(ClientEventType.__args__)  # type: ignore[attr-defined]
# `preview` is only ever set by the server (HEAD requests, link-preview bots).
EventType = Literal[
    "view",
    "click",
    "share",
    "signup",
    "convert",
    "reaction",
    "comment",
    "report",
    "unsubscribe",
    "preview",
]
EVENT_TYPES: frozenset[str] = frozenset(EventType.__args__)  # type: ignore[attr-defined]
Source = Literal["pixel", "link", "api", "shares"]

CAMPAIGN_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
CHANNEL_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,31}$"
REACTION_PATTERN = r"^[a-z0-9_+-]{1,32}$"
# Canonical 8-4-4-4-12 form; kept a string end to end (no UUID object on the hot path).
UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
MAX_URL_CHARS = 2048


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def _not_bool(value: object) -> object:
    # Lax mode turns query-string digits into numbers, but JSON true is not a time.
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number here")
    return value


Campaign = Annotated[str, StringConstraints(pattern=CAMPAIGN_PATTERN)]
Channel = Annotated[str, BeforeValidator(_lower), StringConstraints(pattern=CHANNEL_PATTERN)]


class EventIn(BaseModel):
    """One event as a client sends it (``POST /v1/events`` item, or pixel parameters)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: ClientEventType
    campaign: Campaign
    token: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    channel: Channel | None = None
    event_id: (
        Annotated[str, BeforeValidator(_lower), StringConstraints(pattern=UUID_PATTERN)] | None
    ) = None
    ts: (
        Annotated[int, BeforeValidator(_not_bool), Field(ge=0, description="client ms since epoch")]
        | None
    ) = None
    url: Annotated[str, StringConstraints(max_length=MAX_URL_CHARS)] | None = None
    text: Annotated[str, StringConstraints(max_length=4000)] | None = None
    value: (
        Annotated[float, BeforeValidator(_not_bool), Field(ge=0, le=1e12, allow_inf_nan=False)]
        | None
    ) = None
    reaction: Annotated[str, StringConstraints(pattern=REACTION_PATTERN)] | None = None


class EventV1(BaseModel):
    """The v1 event on the ``share-events`` topic.

    ``root``/``node``/``parent`` are 16-hex-digit node ids. For a ``share``
    event ``node`` is the new share and ``parent`` the share it came through
    (None for a cascade root); for every other type ``node`` is the share the
    visitor arrived through. ``event_id`` is unique per event: consumers
    deduplicate on it, because spool replay may deliver an event twice.
    """

    model_config = ConfigDict(extra="forbid")

    v: Literal[1]
    event_id: str
    type: EventType
    campaign: str
    ts: int = Field(description="event time, ms since the epoch (client time when plausible)")
    received_at: int = Field(description="server receive time, ms since the epoch")
    source: Source
    token: str | None
    root: str | None
    node: str | None
    parent: str | None
    depth: int | None
    channel: str | None
    url: str | None
    text: str | None
    value: float | None
    reaction: str | None
    preview_of: str | None = Field(description="the requested type when recorded as a preview")
    visitor: str | None = Field(description="keyed daily hash; None under DNT/GPC")
    # Added after v1 shipped, so optional: events published before it (still in the
    # topic, or from an older replica during a rolling deploy) are read as None.
    net: str | None = Field(
        None,
        description="keyed daily hash of the client's network (IPv4 /24, IPv6 /48) and the "
        "campaign; None under DNT/GPC, when the address is unknown, for /v1/shares given the "
        "sharer's visitor id, and in events from before the field existed",
    )
    country: str | None
    bot: bool
    browser: str | None
    os: str | None
    device: str | None
    privacy: Literal["dnt", "gpc"] | None


class InvalidEvent(Exception):
    """An event that is refused. ``reason`` is machine-readable, ``field`` names the culprit."""

    def __init__(self, reason: str, field: str | None, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.field = field
        self.message = message

    def as_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "field": self.field, "message": self.message}


# Pixel query parameter -> EventIn field.
PIXEL_PARAMS: Mapping[str, str] = {
    "c": "campaign",
    "e": "type",
    "t": "token",
    "ch": "channel",
    "eid": "event_id",
    "ts": "ts",
    "u": "url",
}

_MISSING_REASONS = {"campaign": "missing_campaign", "type": "missing_type"}
_FIELD_REASONS = {
    "type": "bad_type",
    "campaign": "bad_campaign",
    "token": "bad_token",
    "channel": "bad_channel",
    "event_id": "bad_event_id",
    "ts": "bad_ts",
    "url": "bad_url",
    "text": "bad_text",
    "value": "bad_value",
    "reaction": "bad_reaction",
}


def parse_event(data: object) -> EventIn:
    """Validate one client event; raises ``InvalidEvent`` with the first problem found."""
    if not isinstance(data, Mapping):
        raise InvalidEvent("not_an_object", None, "each event must be a JSON object")
    try:
        return EventIn.model_validate(data)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        field = ".".join(str(part) for part in error["loc"]) or None
        if error["type"] == "missing":
            reason = _MISSING_REASONS.get(field or "", "missing_field")
        elif error["type"] == "extra_forbidden":
            reason = "unknown_field"
        else:
            reason = _FIELD_REASONS.get(field or "", "invalid")
        raise InvalidEvent(reason, field, error["msg"]) from None


class _RandomPool:
    """os.urandom in 64 KiB draws instead of one syscall per event id.

    Emptied in a forked child, so server workers never share ids."""

    size = 65_536

    def __init__(self) -> None:
        self.data = b""
        self.pos = 0

    def take16(self) -> bytes:
        if self.pos + 16 > len(self.data):
            self.data, self.pos = os.urandom(self.size), 0
        self.pos += 16
        return self.data[self.pos - 16 : self.pos]

    def reset(self) -> None:
        self.data, self.pos = b"", 0


_POOL = _RandomPool()
os.register_at_fork(after_in_child=_POOL.reset)


def new_event_id() -> str:
    """A random (version 4) UUID string, without building a ``uuid.UUID`` (hot path)."""
    h = _POOL.take16().hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:32]}"


def check_time(ts: int | None, received_ms: int, max_age_s: int, max_skew_s: int) -> int:
    """The event time to record: the client's if plausible, else ``InvalidEvent(bad_ts)``."""
    if ts is None:
        return received_ms
    if ts < received_ms - max_age_s * 1000 or ts > received_ms + max_skew_s * 1000:
        raise InvalidEvent("bad_ts", "ts", "client time is too far from server time")
    return ts


def clean_url(url: str | None) -> str | None:
    """Scheme, host and path only: query strings and fragments often carry personal data."""
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidEvent("bad_url", "url", "url must be an absolute http(s) URL")
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def resolve_token(signer: TokenSigner, raw: str | None, campaign: str) -> ShareToken | None:
    """The verified token, or ``InvalidEvent(bad_token)`` naming why it failed."""
    if raw is None:
        return None
    try:
        return signer.verify(raw, campaign)
    except TokenError as exc:
        raise InvalidEvent("bad_token", "token", f"{exc.reason}: {exc}") from None


def build_event(
    event: EventIn,
    *,
    event_type: str,
    token: ShareToken | None,
    client: ClientInfo,
    source: str,
    ts: int,
    received_ms: int,
    url: str | None,
    parent: ShareToken | None = None,
) -> dict[str, Any]:
    """The v1 wire dict (see ``EventV1``). ``token`` is the share the event belongs to:
    for a share it is the newly minted one, with ``parent`` the share it came through."""
    return wire_event(
        event.event_id or new_event_id(),
        event_type,
        event.type,
        event.campaign,
        ts,
        received_ms,
        source,
        token,
        parent,
        event.channel,
        url,
        event.text,
        event.value,
        event.reaction,
        client,
    )


def wire_event(
    event_id: str,
    event_type: str,
    requested_type: str,
    campaign: str,
    ts: int,
    received_ms: int,
    source: str,
    token: ShareToken | None,
    parent: ShareToken | None,
    channel: str | None,
    url: str | None,
    text: str | None,
    value: float | None,
    reaction: str | None,
    client: ClientInfo,
) -> dict[str, Any]:
    """``build_event`` from validated values, positional (the pixel's fast path has
    no ``EventIn``). ``requested_type`` is the client's type, kept when recorded as
    a preview."""
    return {
        "v": SCHEMA_VERSION,
        "event_id": event_id,
        "type": event_type,
        "campaign": campaign,
        "ts": ts,
        "received_at": received_ms,
        "source": source,
        "token": token.raw if token else None,
        "root": token.root_hex if token else None,
        "node": token.node_hex if token else None,
        "parent": parent.node_hex if parent else None,
        "depth": token.depth if token else None,
        "channel": channel,
        "url": url,
        "text": text,
        "value": value,
        "reaction": reaction,
        "preview_of": requested_type if event_type == "preview" else None,
        "visitor": client.visitor,
        "net": client.net,
        "country": client.country,
        "bot": client.bot,
        "browser": client.browser,
        "os": client.os,
        "device": client.device,
        "privacy": client.privacy,
    }


def partition_key(event: Mapping[str, Any]) -> bytes:
    """Kafka key: the cascade root, so a cascade stays on one partition; else the campaign."""
    return cascade_key(event.get("root"), event["campaign"])


def cascade_key(root_hex: str | None, campaign: str) -> bytes:
    """``partition_key`` from its two inputs (the pixel's fast path has them at hand)."""
    return (root_hex or f"campaign:{campaign}").encode()
