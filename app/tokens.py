"""Share-lineage tokens: minted and verified at the edge with no database.

Layout (30 bytes, base64url without padding = exactly 40 characters):

    key_id  u8    which signing key (keys rotate; old ones still verify)
    root    u64   cascade root node id
    node    u64   this share's node id (random)
    depth   u16   0 for a root share
    camp    3 B   first bytes of BLAKE2b(campaign) so a wrong campaign is told
                  apart from a forged token; the MAC covers the full slug
    mac     8 B   HMAC-SHA256(key, b"vt1" + the 22 bytes above + campaign)[:8]

30 bytes is a multiple of 3, so every one of the 40 characters carries six
bits of payload: any single-character edit changes the decoded bytes, and
the MAC then fails.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache

from app.settings import TrackingSettings

TOKEN_LENGTH = 40
MAX_DEPTH = 0xFFFF
_BODY = struct.Struct(">BQQH3s")
_MAC_BYTES = 8
_DOMAIN = b"vt1"
_B64_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


class TokenError(ValueError):
    """A token that must not be trusted. ``reason`` is machine-readable.

    Reasons: ``malformed`` (not a token), ``unknown_key`` (signed by a key we
    no longer hold), ``bad_signature`` (forged or edited), ``wrong_campaign``
    (genuine, but minted for another campaign), ``too_deep``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ShareToken:
    """A verified (or freshly minted) share token."""

    raw: str
    key_id: int
    root: int
    node: int
    depth: int
    campaign: str
    # Derived once: events carry them, and verified tokens are cached.
    root_hex: str = field(init=False, repr=False, compare=False)
    node_hex: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "root_hex", f"{self.root:016x}")
        object.__setattr__(self, "node_hex", f"{self.node:016x}")

    @property
    def is_root(self) -> bool:
        return self.depth == 0


def _campaign_tag(campaign: str) -> bytes:
    return hashlib.blake2b(campaign.encode(), digest_size=3).digest()


def _random_node_id() -> int:
    # Zero is reserved so that "no node" never collides with a real one.
    return secrets.randbits(64) or 1


class TokenSigner:
    """Mints and verifies tokens. Pure CPU, never blocks, thread-safe."""

    def __init__(self, keys: Mapping[int, bytes], current_key_id: int) -> None:
        if current_key_id not in keys:
            raise ValueError(f"current key id {current_key_id} has no key")
        if any(not 0 <= k <= 255 for k in keys):
            raise ValueError("key ids must fit in one byte (0-255)")
        self._keys = dict(keys)
        # Keyed HMAC states, copied per use: saves re-keying on every verify.
        self._hmacs = {k: hmac.new(v, _DOMAIN, hashlib.sha256) for k, v in keys.items()}
        self._current = current_key_id
        # Popular tokens (a viral link) repeat; failures are not cached.
        self._verify_cached = lru_cache(maxsize=65_536)(self._verify)

    @classmethod
    def from_settings(cls, tracking: TrackingSettings) -> TokenSigner:
        keys = {k: v.get_secret_value().encode() for k, v in tracking.token_keys.items()}
        return cls(keys, tracking.token_key_id)

    def _mac(self, key_id: int, body: bytes, campaign: str) -> bytes:
        state = self._hmacs[key_id].copy()
        state.update(body + campaign.encode())
        return state.digest()[:_MAC_BYTES]

    def _encode(self, root: int, node: int, depth: int, campaign: str) -> ShareToken:
        body = _BODY.pack(self._current, root, node, depth, _campaign_tag(campaign))
        raw = base64.urlsafe_b64encode(body + self._mac(self._current, body, campaign))
        return ShareToken(raw.decode("ascii"), self._current, root, node, depth, campaign)

    def mint_root(self, campaign: str, node: int | None = None) -> ShareToken:
        """A new cascade root (a seed share). ``node`` fixes the id, else random."""
        node_id = _random_node_id() if node is None else node
        return self._encode(node_id, node_id, 0, campaign)

    def mint_child(self, parent: ShareToken) -> ShareToken:
        """A share made by someone who arrived through ``parent`` (already verified)."""
        if parent.depth >= MAX_DEPTH:
            raise TokenError("too_deep", f"cascade depth limit {MAX_DEPTH} reached")
        return self._encode(parent.root, _random_node_id(), parent.depth + 1, parent.campaign)

    def link_root(self, campaign: str, slug: str) -> ShareToken:
        """The stable root token of a tracked link, derived so every replica agrees."""
        digest = hmac.new(
            self._keys[self._current],
            b"link:" + campaign.encode() + b"\0" + slug.encode(),
            hashlib.sha256,
        ).digest()
        return self.mint_root(campaign, int.from_bytes(digest[:8], "big") or 1)

    def verify(self, raw: str, campaign: str) -> ShareToken:
        """Decode and check ``raw`` for ``campaign``; raises ``TokenError``."""
        return self._verify_cached(raw, campaign)

    def _verify(self, raw: str, campaign: str) -> ShareToken:
        if len(raw) != TOKEN_LENGTH or not _B64_ALPHABET.issuperset(raw):
            raise TokenError("malformed", "not a share token")
        try:
            data = base64.urlsafe_b64decode(raw)
        except (binascii.Error, ValueError) as exc:  # pragma: no cover - alphabet checked
            raise TokenError("malformed", "not a share token") from exc
        body, mac = data[: _BODY.size], data[_BODY.size :]
        key_id, root, node, depth, tag = _BODY.unpack(body)
        if key_id not in self._hmacs:
            raise TokenError("unknown_key", f"token signed with unknown key {key_id}")
        if hmac.compare_digest(mac, self._mac(key_id, body, campaign)):
            if node == 0 or root == 0 or (depth == 0) != (root == node):
                raise TokenError("malformed", "inconsistent token fields")
            return ShareToken(raw, key_id, root, node, depth, campaign)
        if tag != _campaign_tag(campaign):
            raise TokenError("wrong_campaign", "token belongs to another campaign")
        raise TokenError("bad_signature", "token signature does not verify")
