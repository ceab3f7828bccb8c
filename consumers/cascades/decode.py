"""The cascades consumer's decode step: a record to a ``Share`` or ``Touch``.

Compiled with mypyc where a C compiler is there at install (setup.py); the
same source runs as Python otherwise.

Two paths with one outcome. The fast one parses only the fields the
consumer reads (``consumers/cascades/wire.py``, msgspec) and accepts an
event whose fields all check out. Anything else (not JSON, not an object, a
field of an unexpected type or value) takes the general path: the whole
event parsed with orjson, where each field is checked in turn and the
record is either not a cascade event (None) or refused with the precise
reason (``InvalidMessage``). So a poison record costs two parses, and a
valid one a third of one orjson parse less than before.
"""

from __future__ import annotations

from typing import Any

from msgspec import DecodeError

from consumers.base import InvalidMessage, Record, json_object
from consumers.cascades.state import TOUCH_KINDS, Share, Touch
from consumers.cascades.wire import decode_fields


def decode(record: Record) -> tuple[Share | Touch, int] | None:
    """(share or touch, received_at ms) for an event of a cascade; None for any other.

    Pure. Events without a token (keyed ``campaign:...``), bot and preview
    touches, and types that are not cascade metrics are None. Raises
    ``InvalidMessage`` for what cannot be an event.
    """
    key = record.key
    if key is not None and key.startswith(b"campaign:"):
        return None
    try:
        event = decode_fields(record.value or b"")
    except DecodeError:
        return _decode_general(record)
    kind = event.type
    if kind != "share" and (kind not in TOUCH_KINDS or event.bot is True):
        return None
    root = event.root
    if root is None:
        return None
    event_id, campaign, ts, received = event.event_id, event.campaign, event.ts, event.received_at
    node, visitor = event.node, event.visitor
    if (
        event_id is None
        or campaign is None
        or ts is None
        or ts < 0
        or received is None
        or len(root) != 16
        or node is None
        or len(node) != 16
        or (visitor is not None and len(visitor) != 16)
    ):
        return _decode_general(record)
    try:
        root_id, node_id = int(root, 16), int(node, 16)
        visitor_id = 0 if visitor is None else int(visitor, 16)
    except ValueError:
        return _decode_general(record)
    assert kind is not None
    if kind != "share":
        touch = (event_id, campaign, root_id, node_id, kind, ts, visitor_id)
        # tuple.__new__ skips the NamedTuple's Python-level __new__.
        return tuple.__new__(Touch, touch), received
    depth, parent, net = event.depth, event.parent, event.net
    if (
        depth is None
        or not 0 <= depth <= 0xFFFF
        or (parent is not None and len(parent) != 16)
        or (net is not None and len(net) != 16)
    ):
        return _decode_general(record)
    try:
        parent_id = None if parent is None else int(parent, 16)
        net_id = 0 if net is None else int(net, 16)
    except ValueError:
        return _decode_general(record)
    share = (
        event_id, campaign, root_id, node_id, parent_id, depth, ts, visitor_id, net_id,
        event.channel, event.bot is True,
    )  # fmt: skip
    return tuple.__new__(Share, share), received


def _decode_general(record: Record) -> tuple[Share | Touch, int] | None:
    """``decode`` for whatever the fast path did not accept: the whole event, checked."""
    event = json_object(record)
    kind = event.get("type")
    if kind != "share" and (kind not in TOUCH_KINDS or event.get("bot") is True):
        return None
    if event.get("root") is None:
        return None
    try:
        return _decode_event(event, kind)
    except (ValueError, TypeError, KeyError) as exc:
        raise InvalidMessage(record.partition, record.offset, f"bad_schema: {exc}") from None


def _decode_event(event: dict[str, Any], kind: str) -> tuple[Share | Touch, int]:
    get = event.get
    event_id, campaign, ts = get("event_id"), get("campaign"), get("ts")
    received, root, node, visitor = get("received_at"), get("root"), get("node"), get("visitor")
    if not (
        type(event_id) is str
        and type(campaign) is str
        and type(ts) is int
        and type(received) is int
        and ts >= 0
        and type(root) is str
        and len(root) == 16
        and type(node) is str
        and len(node) == 16
        and (visitor is None or (type(visitor) is str and len(visitor) == 16))
    ):
        raise ValueError(_problem(event))
    visitor_id = 0 if visitor is None else int(visitor, 16)
    if kind != "share":
        return Touch(
            event_id, campaign, int(root, 16), int(node, 16), kind, ts, visitor_id
        ), received
    depth, parent, net, channel = get("depth"), get("parent"), get("net"), get("channel")
    if not (
        type(depth) is int
        and 0 <= depth <= 0xFFFF
        and (parent is None or (type(parent) is str and len(parent) == 16))
        and (net is None or (type(net) is str and len(net) == 16))
        and (channel is None or type(channel) is str)
    ):
        raise ValueError(_problem(event))
    share = Share(
        event_id, campaign, int(root, 16), int(node, 16),
        None if parent is None else int(parent, 16), depth, ts, visitor_id,
        0 if net is None else int(net, 16), channel, get("bot") is True,
    )  # fmt: skip
    return share, received


def _problem(event: dict[str, Any]) -> str:
    """What is wrong with an event ``_decode_event`` refused (slow path)."""
    for name in ("event_id", "campaign"):
        if type(event.get(name)) is not str:
            return f"{name}: must be a string"
    for name in ("ts", "received_at"):
        value = event.get(name)
        if type(value) is not int or value < 0:
            return f"{name}: must be epoch milliseconds"
    for name in ("root", "node", "visitor", "parent", "net"):
        value = event.get(name)
        if value is None and name not in ("root", "node"):
            continue
        if type(value) is not str or len(value) != 16:
            return f"{name}: not a 16-hex-digit id"
    depth = event.get("depth")
    if type(depth) is not int or not 0 <= depth <= 0xFFFF:
        return "depth: must be an integer 0-65535"
    return "channel: must be a string"
