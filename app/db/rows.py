"""New control-plane rows that need more than their fields: one place for the
admin API and the CLI, so both apply the same checks and mint the same secrets."""

from __future__ import annotations

from app.db.keys import new_webhook_secret
from app.db.models import Campaign, TrackedLink, WebhookEndpoint
from app.links import allowed_hosts_for, check_destination
from app.tokens import TokenSigner


def new_link(
    signer: TokenSigner, campaign: Campaign, slug: str, destination: str, hosts: list[str] | None
) -> TrackedLink:
    """A tracked link with its allowed hosts settled and its root share token minted.

    Raises ``LinkConfigError`` for an unsafe destination (see ``check_destination``).
    """
    allowed = allowed_hosts_for(destination, hosts)
    check_destination(destination, frozenset(allowed))
    return TrackedLink(
        slug=slug,
        campaign_id=campaign.id,
        destination=destination,
        allowed_hosts=allowed,
        root_token=signer.link_root(campaign.slug, slug).raw,
    )


def new_webhook(
    campaign: Campaign, url: str, event_types: list[str] | None, enabled: bool = True
) -> WebhookEndpoint:
    """A webhook endpoint with a fresh ``whsec_`` secret (shown to its owner once)."""
    return WebhookEndpoint(
        campaign_id=campaign.id,
        url=url,
        secret=new_webhook_secret(),
        event_types=event_types or [],
        enabled=enabled,
    )
