"""Tracked links (``/r/{slug}``): from the control-plane database, plus an
optional JSON settings file.

Clicks never wait on the database: ``LinkRefresher`` reloads every link of
every active campaign into an immutable ``LinkRegistry`` every
``tracking.links_cache_ttl_s`` seconds, so an edited destination takes effect
within that time. Links from the file win over database links of the same slug.

File format: ``{"spring-launch": {"campaign": "spring", "destination":
"https://shop.example/launch", "allowed_hosts": ["shop.example"]}}``.
``allowed_hosts`` defaults to the destination's own host. A link is a seed
share: its root token is derived from (campaign, slug), so every replica
and every restart agrees on it without storing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson

from app.events import CAMPAIGN_PATTERN
from app.tokens import ShareToken, TokenSigner

log = logging.getLogger(__name__)
SLUG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_CAMPAIGN_RE = re.compile(CAMPAIGN_PATTERN)


class LinkConfigError(ValueError):
    """The links file names a link that must not be served."""


@dataclass(frozen=True, slots=True)
class TrackedLink:
    slug: str
    campaign: str
    destination: str
    allowed_hosts: frozenset[str]
    root: ShareToken


def check_destination(url: str, allowed_hosts: frozenset[str]) -> str:
    """Returns ``url`` if it is a safe redirect target, else raises ``LinkConfigError``.

    Safe: absolute http(s), no credentials, a host in ``allowed_hosts``
    (case-insensitive), and no IP-literal host unless that literal is listed.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise LinkConfigError(f"destination must be http(s): {url!r}")
    if parts.username is not None or parts.password is not None:
        raise LinkConfigError("destination must not carry credentials")
    host = (parts.hostname or "").lower()
    if not host:
        raise LinkConfigError("destination has no host")
    try:
        ipaddress.ip_address(host)
        is_ip = True
    except ValueError:
        is_ip = False
    if host not in allowed_hosts:
        kind = "IP literal" if is_ip else "host"
        raise LinkConfigError(f"destination {kind} {host!r} is not in the link's allowed hosts")
    return url


def allowed_hosts_for(destination: str, hosts: list[str] | None) -> list[str]:
    """The link's allowed hosts, lower-cased and sorted: ``hosts``, else the
    destination's own host. An IP-literal destination must be listed explicitly
    (``LinkConfigError`` otherwise), as ``check_destination`` requires."""
    if hosts:
        return sorted({h.lower() for h in hosts})
    host = (urlsplit(destination).hostname or "").lower()
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return [host]
    raise LinkConfigError(f"destination IP literal {host!r} must be listed in allowed hosts")


def with_query_param(url: str, name: str, value: str) -> str:
    """``url`` with ``name=value`` set in its query, keeping other parameters and the fragment."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != name]
    query.append((name, value))
    return urlunsplit(parts._replace(query=urlencode(query)))


class LinkRegistry:
    """Slug -> link lookups. Immutable after load; safe to share."""

    def __init__(self, links: dict[str, TrackedLink]) -> None:
        self._links = links
        self._by_campaign: dict[str, TrackedLink] = {}
        for link in sorted(links.values(), key=lambda item: item.slug):
            self._by_campaign.setdefault(link.campaign, link)

    @classmethod
    def load(cls, path: Path | None, signer: TokenSigner) -> LinkRegistry:
        if path is None:
            return cls({})
        raw = orjson.loads(path.read_bytes())
        if not isinstance(raw, dict):
            raise LinkConfigError(f"{path}: expected an object of slug -> link")
        links: dict[str, TrackedLink] = {}
        for slug, spec in raw.items():
            if not SLUG_RE.match(slug):
                raise LinkConfigError(f"{path}: bad slug {slug!r}")
            campaign = spec.get("campaign", "")
            if not _CAMPAIGN_RE.match(campaign):
                raise LinkConfigError(f"{path}: link {slug!r} has a bad campaign {campaign!r}")
            destination = spec.get("destination", "")
            default_host = (urlsplit(destination).hostname or "").lower()
            hosts = frozenset(h.lower() for h in spec.get("allowed_hosts", [default_host]))
            check_destination(destination, hosts)
            links[slug] = TrackedLink(
                slug, campaign, destination, hosts, signer.link_root(campaign, slug)
            )
        return cls(links)

    def merged(self, other: dict[str, TrackedLink]) -> LinkRegistry:
        """A registry with ``other``'s links, then this one's on top."""
        return LinkRegistry({**other, **self._links})

    def get(self, slug: str) -> TrackedLink | None:
        return self._links.get(slug)

    def for_campaign(self, campaign: str) -> TrackedLink | None:
        """The campaign's first link by slug, used to build share URLs."""
        return self._by_campaign.get(campaign)


async def load_db_links(sessions: Any, signer: TokenSigner) -> dict[str, TrackedLink]:
    """Every link of every active campaign; an unsafe stored destination is skipped."""
    from sqlalchemy import select

    from app.db.models import Campaign
    from app.db.models import TrackedLink as LinkRow

    async with sessions() as session:
        rows = await session.execute(
            select(LinkRow, Campaign.slug).join(Campaign).where(Campaign.active.is_(True))
        )
        links: dict[str, TrackedLink] = {}
        for row, campaign in rows:
            hosts = frozenset(row.allowed_hosts)
            try:
                check_destination(row.destination, hosts)
            except LinkConfigError as exc:
                log.error("link %r not served: %s", row.slug, exc)
                continue
            root = signer.link_root(campaign, row.slug)
            links[row.slug] = TrackedLink(row.slug, campaign, row.destination, hosts, root)
        return links


@dataclass(frozen=True, slots=True)
class CampaignPolicy:
    """What the ingestion edge needs to know of a campaign, cached like the links."""

    allowed_origins: frozenset[str]
    require_write_key: bool


async def load_campaign_policies(sessions: Any) -> dict[str, CampaignPolicy]:
    from sqlalchemy import select

    from app.db.models import Campaign

    async with sessions() as session:
        rows = await session.scalars(select(Campaign))
        return {
            c.slug: CampaignPolicy(frozenset(c.allowed_origins), c.require_write_key) for c in rows
        }


class LinkRefresher:
    """Keeps ``state.links`` and ``state.campaign_policies`` current from the database
    (see the module docstring)."""

    def __init__(self, state: Any, file_links: LinkRegistry, ttl_s: float) -> None:
        self.state = state
        self.file_links = file_links
        self.ttl_s = ttl_s
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> bool:
        """One reload; False (and the old links kept) when the database fails."""
        sessions = self.state.require_db()
        try:
            db_links = await load_db_links(sessions, self.state.signer)
            policies = await load_campaign_policies(sessions)
        except Exception as exc:  # the database may be down or not migrated yet
            log.warning("control-plane cache not reloaded (keeping the last one): %s", exc)
            return False
        self.state.links = self.file_links.merged(db_links)
        self.state.campaign_policies = policies
        self.state.cors_origins = frozenset().union(
            *(policy.allowed_origins for policy in policies.values())
        )
        self.state.write_key_campaigns = frozenset(
            slug for slug, policy in policies.items() if policy.require_write_key
        )
        self.state.key_cache.clear()  # revocations take effect within one refresh
        return True

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_s)
            await self.refresh()

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._loop(), name="link-refresher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
