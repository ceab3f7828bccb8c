"""The admin API, ``/v1/admin/...``: campaigns, tracked links, API keys, webhook
endpoints (with their deliveries) and alert rules. Every route needs an
``admin`` key; a key bound to campaigns manages only those campaigns' resources
(and cannot mint keys for other campaigns or unbound keys).

Errors follow ``app.errors``: 401 no or bad key, 403 not allowed, 404 unknown
id, 409 a uniqueness conflict, 422 bad input (with the field).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

import orjson
from fastapi import APIRouter, Depends, Header, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, field_validator
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from app.db.keys import KeyRequestError, Principal, authenticate, create_key
from app.db.models import (
    ALERT_KINDS,
    SCOPES,
    AlertRule,
    ApiKey,
    Campaign,
    TrackedLink,
    WebhookAttempt,
    WebhookDelivery,
)
from app.db.models import WebhookEndpoint as Webhook
from app.db.rows import new_link, new_webhook
from app.errors import ApiError, bearer_token, missing_key
from app.events import CAMPAIGN_PATTERN
from app.links import SLUG_RE, LinkConfigError, allowed_hosts_for, check_destination
from app.state import AppState, StateDep
from app.webhooks.outbox import NotRedeliverable, redeliver, rotate_secret
from app.webhooks.ssrf import UnsafeUrl

OutT = TypeVar("OutT", bound=BaseModel)

router = APIRouter(prefix="/v1/admin", tags=["admin"])

LANGUAGE_PATTERN = r"^[a-z]{2,3}$"
ORIGIN_PATTERN = r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$"


# ---- auth and sessions ----------------------------------------------------


async def db_session(state: StateDep) -> AsyncIterator[AsyncSession]:
    async with state.require_db()() as session:
        yield session


Session = Annotated[AsyncSession, Depends(db_session)]


async def admin_principal(
    session: Session, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    key = bearer_token(authorization)
    if key is None:
        raise missing_key("admin")
    principal = await authenticate(session, key)
    if principal is None:
        raise ApiError(
            401,
            "bad_key",
            "unknown or revoked key",
            "authorization",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    if not principal.has_scope("admin"):
        raise ApiError(403, "forbidden", "this key has no admin scope", "authorization")
    await session.commit()  # last_used_at
    return principal


Admin = Annotated[Principal, Depends(admin_principal)]


def _check_campaign(admin: Principal, slug: str) -> None:
    if not admin.can("admin", slug):
        raise ApiError(403, "forbidden", f"this key cannot manage campaign {slug!r}", "campaign")


async def _campaign(session: AsyncSession, admin: Principal, slug: str) -> Campaign:
    _check_campaign(admin, slug)
    campaign = await session.scalar(select(Campaign).where(Campaign.slug == slug))
    if campaign is None:
        raise ApiError(404, "not_found", f"no campaign {slug!r}", "campaign")
    return campaign


async def _commit(session: AsyncSession, what: str, field: str) -> None:
    try:
        await session.commit()
    except IntegrityError as exc:
        await session.rollback()
        raise ApiError(409, "conflict", f"{what} already exists", field) from exc


def _not_found(what: str, field: str = "id") -> ApiError:
    return ApiError(404, "not_found", f"no such {what}", field)


def _out(model: type[OutT], row: Any, **extra: Any) -> OutT:
    """``model`` filled from ``row``'s attributes of the same names, plus ``extra``."""
    fields = {name: getattr(row, name) for name in model.model_fields if name not in extra}
    return model(**fields, **extra)


async def _deleted(session: AsyncSession, row: Any) -> Response:
    await session.delete(row)
    await session.commit()
    return Response(status_code=204)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- campaigns -------------------------------------------------------------

Slug = Annotated[str, Field(pattern=CAMPAIGN_PATTERN)]


class CampaignPatch(Strict):
    name: str | None = Field(None, min_length=1, max_length=200)
    allowed_origins: list[Annotated[str, Field(pattern=ORIGIN_PATTERN)]] | None = None
    retention_days: int | None = Field(None, ge=1, le=3650)
    languages: list[Annotated[str, Field(pattern=LANGUAGE_PATTERN)]] | None = None
    require_write_key: bool | None = None
    active: bool | None = None


class CampaignIn(CampaignPatch):
    slug: Slug
    name: str = Field(min_length=1, max_length=200)


class CampaignOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    slug: str
    name: str
    allowed_origins: list[str]
    retention_days: int
    languages: list[str]
    require_write_key: bool
    active: bool
    created_at: datetime
    updated_at: datetime


def _apply(row: Any, patch: BaseModel) -> None:
    for name, value in patch.model_dump(exclude_unset=True).items():
        if value is not None:
            setattr(row, name, value)


@router.post("/campaigns", status_code=201)
async def create_campaign(body: CampaignIn, session: Session, admin: Admin) -> CampaignOut:
    if admin.bound:
        raise ApiError(403, "forbidden", "a campaign-bound key cannot create campaigns", None)
    campaign = Campaign(slug=body.slug, name=body.name)
    _apply(campaign, body)
    session.add(campaign)
    await _commit(session, f"campaign {body.slug!r}", "slug")
    return CampaignOut.model_validate(campaign)


@router.get("/campaigns")
async def list_campaigns(session: Session, admin: Admin) -> list[CampaignOut]:
    rows = await session.scalars(select(Campaign).order_by(Campaign.slug))
    return [CampaignOut.model_validate(c) for c in rows if admin.can("admin", c.slug)]


CampaignPath = Annotated[str, Path(pattern=CAMPAIGN_PATTERN)]


@router.get("/campaigns/{slug}")
async def get_campaign(slug: CampaignPath, session: Session, admin: Admin) -> CampaignOut:
    return CampaignOut.model_validate(await _campaign(session, admin, slug))


@router.patch("/campaigns/{slug}")
async def update_campaign(
    slug: CampaignPath, body: CampaignPatch, session: Session, admin: Admin
) -> CampaignOut:
    campaign = await _campaign(session, admin, slug)
    _apply(campaign, body)
    await _commit(session, "campaign", "slug")
    await session.refresh(campaign)
    return CampaignOut.model_validate(campaign)


@router.delete("/campaigns/{slug}", status_code=204)
async def delete_campaign(slug: CampaignPath, session: Session, admin: Admin) -> Response:
    return await _deleted(session, await _campaign(session, admin, slug))


# ---- tracked links -----------------------------------------------------------


class LinkPatch(Strict):
    destination: HttpUrl | None = None
    allowed_hosts: list[Annotated[str, Field(min_length=1, max_length=253)]] | None = None


class LinkIn(LinkPatch):
    slug: Annotated[str, Field(pattern=SLUG_RE.pattern)]
    campaign: Slug
    destination: HttpUrl


class LinkOut(BaseModel):
    slug: str
    campaign: str
    destination: str
    allowed_hosts: list[str]
    url_path: str
    created_at: datetime
    updated_at: datetime


def _link_out(link: TrackedLink, campaign: str) -> LinkOut:
    return _out(LinkOut, link, campaign=campaign, url_path=f"/r/{link.slug}")


def _checked_destination(destination: str, hosts: list[str]) -> tuple[str, list[str]]:
    """The destination and its allowed hosts (default: its own host); 422 if unsafe."""
    try:
        allowed = allowed_hosts_for(destination, hosts)
        check_destination(destination, frozenset(allowed))
    except LinkConfigError as exc:
        raise _bad_destination(exc) from exc
    return destination, allowed


def _bad_destination(exc: LinkConfigError) -> ApiError:
    return ApiError(422, "bad_destination", str(exc), "destination")


async def _link(session: AsyncSession, admin: Principal, slug: str) -> TrackedLink:
    link = await session.scalar(
        select(TrackedLink)
        .where(TrackedLink.slug == slug)
        .options(selectinload(TrackedLink.campaign))
    )
    if link is None or not admin.can("admin", link.campaign.slug):
        raise _not_found("link", "slug")  # another campaign's link: not revealed
    return link


@router.post("/links", status_code=201)
async def create_link(body: LinkIn, session: Session, admin: Admin, state: StateDep) -> LinkOut:
    campaign = await _campaign(session, admin, body.campaign)
    try:
        link = new_link(
            state.signer, campaign, body.slug, str(body.destination), body.allowed_hosts
        )
    except LinkConfigError as exc:
        raise _bad_destination(exc) from exc
    session.add(link)
    await _commit(session, f"link {body.slug!r}", "slug")
    return _link_out(link, campaign.slug)


@router.get("/links")
async def list_links(session: Session, admin: Admin, campaign: Slug | None = None) -> list[LinkOut]:
    query = select(TrackedLink, Campaign.slug).join(Campaign).order_by(TrackedLink.slug)
    if campaign is not None:
        query = query.where(Campaign.slug == campaign)
    rows = await session.execute(query)
    return [_link_out(link, slug) for link, slug in rows if admin.can("admin", slug)]


LinkPath = Annotated[str, Path(pattern=SLUG_RE.pattern)]


@router.get("/links/{slug}")
async def get_link(slug: LinkPath, session: Session, admin: Admin) -> LinkOut:
    link = await _link(session, admin, slug)
    return _link_out(link, link.campaign.slug)


@router.patch("/links/{slug}")
async def update_link(slug: LinkPath, body: LinkPatch, session: Session, admin: Admin) -> LinkOut:
    link = await _link(session, admin, slug)
    destination = str(body.destination) if body.destination else link.destination
    hosts = body.allowed_hosts if body.allowed_hosts is not None else link.allowed_hosts
    link.destination, link.allowed_hosts = _checked_destination(destination, hosts)
    await session.commit()
    await session.refresh(link)
    return _link_out(link, link.campaign.slug)


@router.delete("/links/{slug}", status_code=204)
async def delete_link(slug: LinkPath, session: Session, admin: Admin) -> Response:
    return await _deleted(session, await _link(session, admin, slug))


# ---- API keys ------------------------------------------------------------------


class KeyIn(Strict):
    name: str = Field("", max_length=200)
    scopes: list[str] = Field(min_length=1)
    campaigns: list[Slug] = Field(default_factory=list)

    @field_validator("scopes")
    @classmethod
    def _known_scopes(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(SCOPES))
        if unknown:
            raise ValueError(f"unknown scopes {unknown}; use {', '.join(SCOPES)}")
        return value


class KeyOut(BaseModel):
    id: int
    name: str
    prefix: str
    scopes: list[str]
    all_campaigns: bool
    campaigns: list[str]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class NewKeyOut(KeyOut):
    key: str = Field(description="shown once: store it now")


def _key_out(model: type[OutT], row: ApiKey, **extra: Any) -> OutT:
    return _out(model, row, campaigns=sorted(c.slug for c in row.campaigns), **extra)


def _key_visible(admin: Principal, row: ApiKey) -> bool:
    slugs = {c.slug for c in row.campaigns}
    if admin.campaigns is None:
        return True
    return not row.all_campaigns and bool(slugs) and slugs <= admin.campaigns


async def _key(session: AsyncSession, admin: Principal, key_id: int) -> ApiKey:
    row = await session.scalar(
        select(ApiKey).where(ApiKey.id == key_id).options(selectinload(ApiKey.campaigns))
    )
    if row is None or not _key_visible(admin, row):
        raise _not_found("key")
    return row


@router.post("/keys", status_code=201)
async def create_api_key(body: KeyIn, session: Session, admin: Admin) -> NewKeyOut:
    if admin.campaigns is not None and (
        not body.campaigns or not set(body.campaigns) <= admin.campaigns
    ):
        raise ApiError(
            403,
            "forbidden",
            "a campaign-bound key can only make keys for its campaigns",
            "campaigns",
        )
    try:
        key, row = await create_key(session, body.scopes, body.campaigns, body.name)
    except KeyRequestError as exc:
        raise ApiError(422, "bad_key_request", str(exc), "campaigns") from exc
    await session.commit()
    return _key_out(NewKeyOut, row, key=key)


@router.get("/keys")
async def list_api_keys(session: Session, admin: Admin) -> list[KeyOut]:
    rows = await session.scalars(
        select(ApiKey).options(selectinload(ApiKey.campaigns)).order_by(ApiKey.id)
    )
    return [_key_out(KeyOut, r) for r in rows if _key_visible(admin, r)]


@router.get("/keys/{key_id}")
async def get_api_key(key_id: int, session: Session, admin: Admin) -> KeyOut:
    return _key_out(KeyOut, await _key(session, admin, key_id))


@router.delete("/keys/{key_id}")
async def revoke_api_key(key_id: int, session: Session, admin: Admin, state: StateDep) -> KeyOut:
    """Revokes the key (kept for the audit trail); a revoked key authenticates nothing:
    at once in this process, within one control-plane refresh in others."""
    row = await _key(session, admin, key_id)
    if row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)
        await session.commit()
    state.key_cache.pop(row.key_hash, None)
    return _key_out(KeyOut, row)


# ---- webhook endpoints --------------------------------------------------------------


class WebhookPatch(Strict):
    url: HttpUrl | None = None
    event_types: list[Annotated[str, Field(pattern=r"^[a-z_.]{1,64}$")]] | None = None
    enabled: bool | None = None


class WebhookIn(WebhookPatch):
    campaign: Slug
    url: HttpUrl


class WebhookOut(BaseModel):
    id: int
    campaign: str
    url: str
    event_types: list[str]
    enabled: bool
    disabled_reason: str | None
    # Set after a secret rotation: until then the previous secret signs too.
    previous_secret_expires_at: datetime | None
    created_at: datetime
    updated_at: datetime


class NewWebhookOut(WebhookOut):
    secret: str = Field(description="whsec_… signing secret, shown once")


async def _safe_url(state: AppState, url: str) -> str:
    """``url`` if the SSRF guard lets webhooks call it, else 422 on ``url``."""
    try:
        await state.webhook_guard().check_url(url)
    except UnsafeUrl as exc:
        raise ApiError(422, "unsafe_url", exc.reason, "url") from exc
    return url


async def _owned(session: AsyncSession, admin: Principal, model: Any, row_id: int) -> Any:
    row = await session.get(model, row_id)
    slug = (
        None
        if row is None
        else await session.scalar(select(Campaign.slug).where(Campaign.id == row.campaign_id))
    )
    if row is None or slug is None or not admin.can("admin", slug):
        raise _not_found(model.__tablename__.rstrip("s").replace("_", " "))
    return row, slug


@router.post("/webhooks", status_code=201)
async def create_webhook(
    body: WebhookIn, session: Session, admin: Admin, state: StateDep
) -> NewWebhookOut:
    campaign = await _campaign(session, admin, body.campaign)
    url = await _safe_url(state, str(body.url))
    row = new_webhook(campaign, url, body.event_types, enabled=body.enabled is not False)
    session.add(row)
    await session.commit()
    return _out(NewWebhookOut, row, campaign=campaign.slug)


@router.get("/webhooks")
async def list_webhooks(session: Session, admin: Admin) -> list[WebhookOut]:
    rows = await session.execute(select(Webhook, Campaign.slug).join(Campaign).order_by(Webhook.id))
    return [_out(WebhookOut, w, campaign=s) for w, s in rows if admin.can("admin", s)]


@router.get("/webhooks/{webhook_id}")
async def get_webhook(webhook_id: int, session: Session, admin: Admin) -> WebhookOut:
    row, slug = await _owned(session, admin, Webhook, webhook_id)
    return _out(WebhookOut, row, campaign=slug)


@router.patch("/webhooks/{webhook_id}")
async def update_webhook(
    webhook_id: int, body: WebhookPatch, session: Session, admin: Admin, state: StateDep
) -> WebhookOut:
    """Enabling an endpoint clears ``disabled_reason``; its pending deliveries resume."""
    row, slug = await _owned(session, admin, Webhook, webhook_id)
    if body.url is not None:
        row.url = await _safe_url(state, str(body.url))
    if body.event_types is not None:
        row.event_types = body.event_types
    if body.enabled is not None:
        row.enabled = body.enabled
        if body.enabled:
            row.disabled_reason = None
    await session.commit()
    await session.refresh(row)
    return _out(WebhookOut, row, campaign=slug)


@router.delete("/webhooks/{webhook_id}", status_code=204)
async def delete_webhook(webhook_id: int, session: Session, admin: Admin) -> Response:
    row, _ = await _owned(session, admin, Webhook, webhook_id)
    return await _deleted(session, row)


class RotatedWebhookOut(WebhookOut):
    secret: str = Field(description="the new whsec_… signing secret, shown once")


@router.post("/webhooks/{webhook_id}/rotate-secret")
async def rotate_webhook_secret(
    webhook_id: int, session: Session, admin: Admin, state: StateDep
) -> RotatedWebhookOut:
    """A new signing secret, shown once. The previous one keeps signing next to it
    until ``previous_secret_expires_at`` (``webhooks.rotation_grace_s`` from now)."""
    row, slug = await _owned(session, admin, Webhook, webhook_id)
    secret = rotate_secret(row, datetime.now(UTC), state.settings.webhooks.rotation_grace_s)
    await session.commit()
    await session.refresh(row)
    return _out(RotatedWebhookOut, row, campaign=slug, secret=secret)


# ---- webhook deliveries (the outbox) -------------------------------------------------

DeliveryState = Literal["pending", "delivered", "failed", "dead"]


class DeliveryOut(BaseModel):
    id: int
    endpoint_id: int
    message_id: str = Field(description="the webhook-id header: the same on every attempt")
    event_type: str
    state: DeliveryState
    attempts: int = Field(description="attempts since the delivery was (re)enqueued")
    next_attempt_at: datetime | None = Field(description="when pending: the next attempt")
    last_status: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    next_before: int | None = Field(description="pass as ?before= for the next (older) page")


class AttemptOut(BaseModel):
    attempt: int
    started_at: datetime
    status_code: int | None
    latency_ms: int | None
    error: str | None
    response_excerpt: str | None


class DeliveryDetailOut(DeliveryOut):
    payload: dict[str, Any] = Field(description="the JSON body sent")
    attempt_log: list[AttemptOut]


def _delivery_out(row: WebhookDelivery) -> DeliveryOut:
    next_at = row.next_attempt_at if row.state == "pending" else None
    return _out(DeliveryOut, row, next_attempt_at=next_at)


async def _delivery(session: AsyncSession, admin: Principal, delivery_id: int) -> WebhookDelivery:
    found = (
        await session.execute(
            select(WebhookDelivery, Campaign.slug)
            .join(Webhook, WebhookDelivery.endpoint_id == Webhook.id)
            .join(Campaign, Webhook.campaign_id == Campaign.id)
            .where(WebhookDelivery.id == delivery_id)
        )
    ).first()
    if found is None or not admin.can("admin", found[1]):
        raise _not_found("webhook delivery")
    row: WebhookDelivery = found[0]
    return row


@router.get("/webhooks/{webhook_id}/deliveries")
async def list_webhook_deliveries(
    webhook_id: int,
    session: Session,
    admin: Admin,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    before: Annotated[int | None, Query(ge=1, description="a delivery id: older ones")] = None,
    state: DeliveryState | None = None,
) -> DeliveryPage:
    """The endpoint's deliveries, newest first, ``limit`` per page."""
    await _owned(session, admin, Webhook, webhook_id)
    query = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == webhook_id)
    if before is not None:
        query = query.where(WebhookDelivery.id < before)
    if state is not None:
        query = query.where(WebhookDelivery.state == state)
    rows = (await session.scalars(query.order_by(WebhookDelivery.id.desc()).limit(limit + 1))).all()
    page = rows[:limit]
    return DeliveryPage(
        items=[_delivery_out(r) for r in page],
        next_before=page[-1].id if len(rows) > limit else None,
    )


@router.get("/webhook-deliveries/{delivery_id}")
async def get_webhook_delivery(
    delivery_id: int, session: Session, admin: Admin
) -> DeliveryDetailOut:
    """One delivery with its body and every attempt (status, latency, error)."""
    row = await _delivery(session, admin, delivery_id)
    attempts = await session.scalars(
        select(WebhookAttempt)
        .where(WebhookAttempt.delivery_id == row.id)
        .order_by(WebhookAttempt.id)
    )
    return DeliveryDetailOut(
        **_delivery_out(row).model_dump(),
        payload=orjson.loads(row.payload),
        attempt_log=[_out(AttemptOut, a) for a in attempts],
    )


@router.post("/webhook-deliveries/{delivery_id}/redeliver")
async def redeliver_webhook_delivery(
    delivery_id: int, session: Session, admin: Admin
) -> DeliveryOut:
    """A delivered, failed or dead delivery goes back to pending, due now, with its
    attempt schedule restarted and the same webhook-id. 409 if it is still pending."""
    row = await _delivery(session, admin, delivery_id)
    try:
        redeliver(row, datetime.now(UTC))
    except NotRedeliverable as exc:
        raise ApiError(409, "not_redeliverable", exc.reason, "state") from exc
    await session.commit()
    return _delivery_out(row)


# ---- alert rules ----------------------------------------------------------------------


class RulePatch(Strict):
    thresholds: dict[str, float] | None = Field(
        None,
        description="`open` and `resolve` (resolve below open: hysteresis). Buzz spikes: "
        "z-scores (default 3 and 1.5); buzz.negative_velocity: negative shares per positive "
        "share (2 and 1.2); spread kinds: `open` is the least signal value that alerts.",
    )
    window_s: int | None = Field(None, ge=10, le=7 * 86_400)
    min_volume: int | None = Field(None, ge=0)
    cooldown_s: int | None = Field(None, ge=0, le=30 * 86_400)
    enabled: bool | None = None

    @field_validator("thresholds")
    @classmethod
    def _known_thresholds(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is None:
            return value
        unknown = sorted(set(value) - {"open", "resolve"})
        if unknown:
            raise ValueError(f"unknown thresholds {unknown}: only open and resolve")
        if any(v < 0 or v != v or v == float("inf") for v in value.values()):
            raise ValueError("thresholds are finite and not negative")
        if "open" in value and "resolve" in value and value["resolve"] >= value["open"]:
            raise ValueError("resolve must be below open (hysteresis)")
        return value


class RuleIn(RulePatch):
    campaign: Slug
    kind: str

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        if value not in ALERT_KINDS:
            raise ValueError(f"kind must be one of {', '.join(ALERT_KINDS)}")
        return value


class RuleOut(BaseModel):
    id: int
    campaign: str
    kind: str
    thresholds: dict[str, float]
    window_s: int
    min_volume: int
    cooldown_s: int
    enabled: bool
    created_at: datetime
    updated_at: datetime


@router.post("/alert-rules", status_code=201)
async def create_rule(body: RuleIn, session: Session, admin: Admin) -> RuleOut:
    campaign = await _campaign(session, admin, body.campaign)
    row = AlertRule(campaign_id=campaign.id, kind=body.kind)
    _apply(row, RulePatch.model_validate(body.model_dump(exclude={"campaign", "kind"})))
    session.add(row)
    await session.commit()
    await session.refresh(row)
    return _out(RuleOut, row, campaign=campaign.slug)


@router.get("/alert-rules")
async def list_rules(session: Session, admin: Admin) -> list[RuleOut]:
    rows = await session.execute(
        select(AlertRule, Campaign.slug).join(Campaign).order_by(AlertRule.id)
    )
    return [_out(RuleOut, r, campaign=s) for r, s in rows if admin.can("admin", s)]


@router.get("/alert-rules/{rule_id}")
async def get_rule(rule_id: int, session: Session, admin: Admin) -> RuleOut:
    row, slug = await _owned(session, admin, AlertRule, rule_id)
    return _out(RuleOut, row, campaign=slug)


@router.patch("/alert-rules/{rule_id}")
async def update_rule(rule_id: int, body: RulePatch, session: Session, admin: Admin) -> RuleOut:
    row, slug = await _owned(session, admin, AlertRule, rule_id)
    _apply(row, body)
    await session.commit()
    await session.refresh(row)
    return _out(RuleOut, row, campaign=slug)


@router.delete("/alert-rules/{rule_id}", status_code=204)
async def delete_rule(rule_id: int, session: Session, admin: Admin) -> Response:
    row, _ = await _owned(session, admin, AlertRule, rule_id)
    return await _deleted(session, row)
