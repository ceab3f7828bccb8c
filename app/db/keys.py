"""API keys and webhook secrets: how they are made, stored and checked.

A key is ``vt_<8 id chars>_<32 secret chars>`` (URL-safe). It is shown to
its owner once; only its SHA-256 is stored, with ``prefix`` (``vt_<id>``)
to tell keys apart in listings. A lookup is by hash, so checking a key
costs one indexed query and reveals nothing through timing about other keys.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import string
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from app.db.models import SCOPES, ApiKey, Campaign

KEY_PREFIX = "vt_"
_ALPHABET = string.ascii_letters + string.digits


def _random(n: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(n))


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """(the key to show once, its prefix)."""
    prefix = f"{KEY_PREFIX}{_random(8)}"
    return f"{prefix}_{_random(32)}", prefix


def new_webhook_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class KeyRequestError(ValueError):
    """A key request that cannot be honoured (bad scope, unknown campaign)."""


async def create_key(
    session: AsyncSession, scopes: list[str], campaigns: list[str], name: str = ""
) -> tuple[str, ApiKey]:
    """Store a new key; returns (the key, shown once, and its row). Not committed."""
    unknown_scopes = sorted(set(scopes) - set(SCOPES))
    if not scopes or unknown_scopes:
        raise KeyRequestError(f"scopes must be among {', '.join(SCOPES)}; got {scopes}")
    rows: list[Campaign] = []
    if campaigns:
        found = (await session.scalars(select(Campaign).where(Campaign.slug.in_(campaigns)))).all()
        missing = sorted(set(campaigns) - {c.slug for c in found})
        if missing:
            raise KeyRequestError(f"unknown campaigns: {', '.join(missing)}")
        rows = list(found)
    key, prefix = new_key()
    row = ApiKey(
        name=name,
        prefix=prefix,
        key_hash=hash_key(key),
        scopes=sorted(set(scopes)),
        campaigns=rows,
        all_campaigns=not campaigns,
    )
    session.add(row)
    await session.flush()
    return key, row


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a valid key belongs to: its id, scopes, and campaigns (``None``: every campaign)."""

    key_id: int
    prefix: str
    scopes: frozenset[str]
    campaigns: frozenset[str] | None

    @property
    def bound(self) -> bool:
        """Limited to listed campaigns (possibly none left)."""
        return self.campaigns is not None

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    def can(self, scope: str, campaign: str | None = None) -> bool:
        """``admin`` implies every scope. A bound key acts only on its campaigns, and
        on nothing campaign-wide (``campaign=None``)."""
        if not self.has_scope(scope):
            return False
        if self.campaigns is None:
            return True
        return campaign is not None and campaign in self.campaigns


async def authenticate(session: AsyncSession, key: str) -> Principal | None:
    """The principal of an unrevoked key, else None. Records ``last_used_at`` (not committed)."""
    if not key.startswith(KEY_PREFIX):
        return None
    row = await session.scalar(
        select(ApiKey)
        .where(ApiKey.key_hash == hash_key(key))
        .options(selectinload(ApiKey.campaigns))
    )
    if row is None or row.revoked_at is not None:
        return None
    row.last_used_at = datetime.now(UTC)
    campaigns = None if row.all_campaigns else frozenset(c.slug for c in row.campaigns)
    return Principal(row.id, row.prefix, frozenset(row.scopes), campaigns)
