"""The fields of a ``share-events`` record that the cascades consumer reads.

``decode_fields`` parses a record's JSON into a ``WireEvent`` with msgspec,
building objects only for these 13 fields and skipping the others (an event
has about 27). It raises ``msgspec.DecodeError`` (``ValidationError`` is a
subclass) for what is not JSON, not an object, or has one of these fields
of another type; ``consumers/cascades/decode.py`` then takes its general
path, which decides with the whole event.

Kept out of the mypyc-compiled modules (setup.py): a ``msgspec.Struct`` is
a C type of msgspec's own, not a class mypyc compiles.
"""

from __future__ import annotations

import msgspec

from app.events import EventType


class WireEvent(msgspec.Struct, gc=False):
    """An event as the cascades consumer sees it; a missing field is None."""

    # A Literal, so msgspec hands back the one interned string per type: the
    # decode step's comparisons and set lookups then hit on identity. A type
    # outside the schema fails here and takes the general path.
    type: EventType | None = None
    event_id: str | None = None
    campaign: str | None = None
    ts: int | None = None
    received_at: int | None = None
    root: str | None = None
    node: str | None = None
    parent: str | None = None
    depth: int | None = None
    net: str | None = None
    channel: str | None = None
    visitor: str | None = None
    bot: bool | None = None


decode_fields = msgspec.json.Decoder(WireEvent).decode
