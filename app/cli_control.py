"""``viraltrace campaigns|links|keys|webhooks``: the control plane from a shell.

Every command works on the database ``viraltrace up --data-dir D`` uses: the
one in ``VIRALTRACE_DATABASE_URL``, else ``<data dir>/control.db`` with the
data dir from ``--data-dir`` or ``VIRALTRACE_DATA_DIR``. The database must be
migrated (``viraltrace migrate``, or ``up`` once). ``keys create --scope
admin`` on a fresh install is how the first admin key is made.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from app.settings import Settings

T = TypeVar("T")
DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="as for `viraltrace up` (default ./.viraltrace)")
]

campaigns_app = typer.Typer(help="Campaigns.", no_args_is_help=True)
links_app = typer.Typer(help="Tracked links (/r/{slug}).", no_args_is_help=True)
keys_app = typer.Typer(help="API keys (shown once, stored hashed).", no_args_is_help=True)
webhooks_app = typer.Typer(help="Webhook endpoints for alerts.", no_args_is_help=True)


def _settings(data_dir: Path | None) -> Settings:
    return Settings() if data_dir is None else Settings(data_dir=data_dir)


def _fail(message: str) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(1)


def _run(data_dir: Path | None, work: Callable[[AsyncSession, Settings], Awaitable[T]]) -> T:
    """Run ``work`` in one committed session on the migrated control-plane database."""
    from app.db import migrate
    from app.db.session import create_engine, database_url, sessionmaker

    settings = _settings(data_dir)
    url = database_url(settings)

    async def main() -> T:
        if await migrate.current(url, settings.database.migrations_dir) != migrate.head(
            settings.database.migrations_dir
        ):
            raise _fail("the control-plane database is not migrated: run `viraltrace migrate`")
        engine = create_engine(url)
        try:
            async with sessionmaker(engine)() as session:
                result = await work(session, settings)
                await session.commit()
                return result
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main())
    except IntegrityError as exc:
        raise _fail(f"already exists: {exc.orig}") from exc
    except (SQLAlchemyError, OSError) as exc:
        shown = make_url(url).render_as_string(hide_password=True)
        raise _fail(
            f"cannot use the control-plane database {shown}: {exc}\n"
            "is it migrated (`viraltrace migrate`) and is --data-dir right?"
        ) from exc


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(v) if v is not None else "" for v in row))
    Console().print(table)


async def _campaign(session: AsyncSession, slug: str) -> Any:
    from app.db.models import Campaign

    campaign = await session.scalar(select(Campaign).where(Campaign.slug == slug))
    if campaign is None:
        raise _fail(f"no campaign {slug!r}: create it with `viraltrace campaigns create {slug}`")
    return campaign


# ---- campaigns -----------------------------------------------------------------


@campaigns_app.command("create")
def campaigns_create(
    slug: str,
    name: Annotated[str | None, typer.Option(help="display name (default: the slug)")] = None,
    language: Annotated[
        list[str] | None, typer.Option("--language", help="language to watch, repeatable")
    ] = None,
    origin: Annotated[
        list[str] | None, typer.Option("--origin", help="allowed browser origin, repeatable")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Create a campaign."""
    from app.db.models import Campaign
    from app.routes.admin import CampaignIn

    try:
        body = CampaignIn(
            slug=slug,
            name=name or slug,
            languages=language or ["en"],
            allowed_origins=origin or [],
        )
    except ValueError as exc:
        raise _fail(f"invalid campaign: {exc}") from exc

    async def work(session: AsyncSession, _: Settings) -> None:
        session.add(
            Campaign(
                slug=body.slug,
                name=body.name,
                languages=body.languages,
                allowed_origins=body.allowed_origins,
            )
        )

    _run(data_dir, work)
    typer.echo(f"campaign {slug} created")


@campaigns_app.command("list")
def campaigns_list(data_dir: DataDir = None) -> None:
    """List campaigns."""
    from app.db.models import Campaign

    async def work(session: AsyncSession, _: Settings) -> list[list[Any]]:
        rows = await session.scalars(select(Campaign).order_by(Campaign.slug))
        return [[c.slug, c.name, ",".join(c.languages), c.active] for c in rows]

    _table("campaigns", ["slug", "name", "languages", "active"], _run(data_dir, work))


# ---- links -----------------------------------------------------------------------


@links_app.command("create")
def links_create(
    campaign: Annotated[str, typer.Option(help="campaign slug")],
    slug: Annotated[str, typer.Option(help="the link is /r/<slug>")],
    destination: Annotated[str, typer.Option(help="where it redirects (http/https)")],
    allowed_host: Annotated[
        list[str] | None, typer.Option("--allowed-host", help="repeatable; default: its host")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Create a tracked link (a seed share: its root token is minted now)."""
    from app.db.rows import new_link
    from app.links import SLUG_RE, LinkConfigError
    from app.tokens import TokenSigner

    if not SLUG_RE.match(slug):
        raise _fail(f"bad slug {slug!r}: letters, digits, '-' and '_', at most 64")

    async def work(session: AsyncSession, settings: Settings) -> None:
        row = await _campaign(session, campaign)
        signer = TokenSigner.from_settings(settings.tracking)
        try:
            session.add(new_link(signer, row, slug, destination, allowed_host))
        except LinkConfigError as exc:
            raise _fail(f"refused: {exc}") from exc

    _run(data_dir, work)
    typer.echo(f"link /r/{slug} -> {destination}")


@links_app.command("list")
def links_list(data_dir: DataDir = None) -> None:
    """List tracked links."""
    from app.db.models import Campaign, TrackedLink

    async def work(session: AsyncSession, _: Settings) -> list[list[Any]]:
        rows = await session.execute(
            select(TrackedLink, Campaign.slug).join(Campaign).order_by(TrackedLink.slug)
        )
        return [[f"/r/{link.slug}", slug, link.destination] for link, slug in rows]

    _table("links", ["path", "campaign", "destination"], _run(data_dir, work))


# ---- keys --------------------------------------------------------------------------


@keys_app.command("create")
def keys_create(
    scope: Annotated[list[str], typer.Option("--scope", help="read, write or admin; repeatable")],
    campaign: Annotated[
        list[str] | None, typer.Option("--campaign", help="limit to campaign, repeatable")
    ] = None,
    name: Annotated[str, typer.Option(help="a note on what the key is for")] = "",
    data_dir: DataDir = None,
) -> None:
    """Create an API key and print it once (it starts with vt_; only its hash is kept)."""
    from app.db.keys import KeyRequestError, create_key

    async def work(session: AsyncSession, _: Settings) -> tuple[str, str]:
        try:
            key, row = await create_key(session, scope, campaign or [], name)
        except KeyRequestError as exc:
            raise _fail(str(exc)) from exc
        return key, f"id {row.id}, prefix {row.prefix}"

    key, about = _run(data_dir, work)
    typer.echo(key)
    typer.echo(f"({about}; store the key now, it is not shown again)", err=True)


@keys_app.command("list")
def keys_list(data_dir: DataDir = None) -> None:
    """List keys (prefixes only)."""
    from app.db.models import ApiKey

    async def work(session: AsyncSession, _: Settings) -> list[list[Any]]:
        rows = await session.scalars(
            select(ApiKey).options(selectinload(ApiKey.campaigns)).order_by(ApiKey.id)
        )
        return [
            [
                k.id,
                k.prefix,
                ",".join(k.scopes),
                "*" if k.all_campaigns else ",".join(c.slug for c in k.campaigns),
                k.last_used_at,
                k.revoked_at,
            ]
            for k in rows
        ]

    _table(
        "API keys",
        ["id", "prefix", "scopes", "campaigns", "last used", "revoked"],
        _run(data_dir, work),
    )


@keys_app.command("revoke")
def keys_revoke(
    key: Annotated[str, typer.Argument(help="the key's id or prefix (vt_xxxxxxxx)")],
    data_dir: DataDir = None,
) -> None:
    """Revoke a key: it stops working at once."""
    from datetime import UTC, datetime

    from app.db.models import ApiKey

    async def work(session: AsyncSession, _: Settings) -> str:
        where = ApiKey.id == int(key) if key.isdigit() else ApiKey.prefix == key
        row = await session.scalar(select(ApiKey).where(where))
        if row is None:
            raise _fail(f"no key {key!r}")
        if row.revoked_at is None:
            row.revoked_at = datetime.now(UTC)
        return row.prefix

    typer.echo(f"key {_run(data_dir, work)} revoked")


# ---- webhooks -------------------------------------------------------------------------


@webhooks_app.command("add")
def webhooks_add(
    url: Annotated[str, typer.Option(help="the receiver's https URL")],
    campaign: Annotated[str, typer.Option(help="campaign slug")],
    types: Annotated[
        list[str] | None, typer.Option("--types", help="event types, repeatable; default all")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Add a webhook endpoint and print its whsec_ signing secret once."""
    from app.db.rows import new_webhook
    from app.routes.admin import WebhookIn

    try:
        body = WebhookIn(campaign=campaign, url=url, event_types=types or [])
    except ValueError as exc:
        raise _fail(f"invalid webhook: {exc}") from exc

    async def work(session: AsyncSession, settings: Settings) -> tuple[int, str]:
        from app.webhooks.ssrf import Guard, UnsafeUrl

        row = await _campaign(session, campaign)
        try:
            await Guard.from_hosts(settings.webhooks.allowed_hosts).check_url(str(body.url))
        except UnsafeUrl as exc:
            raise _fail(f"refused: {exc.reason}") from exc
        endpoint = new_webhook(row, str(body.url), body.event_types)
        session.add(endpoint)
        await session.flush()
        return endpoint.id, endpoint.secret

    endpoint_id, secret = _run(data_dir, work)
    typer.echo(secret)
    typer.echo(f"(webhook {endpoint_id}; store the secret now, it is not shown again)", err=True)


@webhooks_app.command("list")
def webhooks_list(data_dir: DataDir = None) -> None:
    """List webhook endpoints (never their secrets)."""
    from app.db.models import Campaign, WebhookEndpoint

    async def work(session: AsyncSession, _: Settings) -> list[list[Any]]:
        rows = await session.execute(
            select(WebhookEndpoint, Campaign.slug).join(Campaign).order_by(WebhookEndpoint.id)
        )
        return [
            [w.id, slug, w.url, ",".join(w.event_types) or "*", w.enabled, w.disabled_reason]
            for w, slug in rows
        ]

    _table(
        "webhooks",
        ["id", "campaign", "url", "types", "enabled", "disabled because"],
        _run(data_dir, work),
    )


@webhooks_app.command("deliveries")
def webhooks_deliveries(
    endpoint: Annotated[int, typer.Argument(help="the webhook endpoint's id")],
    limit: Annotated[int, typer.Option(help="newest first, at most this many")] = 20,
    data_dir: DataDir = None,
) -> None:
    """List an endpoint's deliveries, newest first (state, attempts, last status)."""
    from app.db.models import WebhookDelivery, WebhookEndpoint

    async def work(session: AsyncSession, _: Settings) -> list[list[Any]]:
        if await session.get(WebhookEndpoint, endpoint) is None:
            raise _fail(f"no webhook {endpoint}")
        rows = await session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.endpoint_id == endpoint)
            .order_by(WebhookDelivery.id.desc())
            .limit(limit)
        )
        return [
            [
                d.id,
                d.message_id,
                d.event_type,
                d.state,
                d.attempts,
                d.last_status,
                d.next_attempt_at if d.state == "pending" else d.delivered_at,
                d.last_error,
            ]
            for d in rows
        ]

    _table(
        f"deliveries of webhook {endpoint}",
        ["id", "webhook-id", "type", "state", "attempts", "last status", "next/done", "error"],
        _run(data_dir, work),
    )


@webhooks_app.command("redeliver")
def webhooks_redeliver(
    delivery: Annotated[int, typer.Argument(help="the delivery's id")],
    data_dir: DataDir = None,
) -> None:
    """Send a delivered, failed or dead delivery again (same webhook-id, schedule restarted)."""
    from datetime import UTC, datetime

    from app.db.models import WebhookDelivery
    from app.webhooks.outbox import NotRedeliverable, redeliver

    async def work(session: AsyncSession, _: Settings) -> str:
        row = await session.get(WebhookDelivery, delivery)
        if row is None:
            raise _fail(f"no delivery {delivery}")
        try:
            redeliver(row, datetime.now(UTC))
        except NotRedeliverable as exc:
            raise _fail(exc.reason) from exc
        return row.message_id

    typer.echo(f"delivery {delivery} ({_run(data_dir, work)}) is pending again")


@webhooks_app.command("rotate-secret")
def webhooks_rotate_secret(
    endpoint: Annotated[int, typer.Argument(help="the webhook endpoint's id")],
    data_dir: DataDir = None,
) -> None:
    """Print a new whsec_ secret once; the old one keeps signing for the grace period."""
    from datetime import UTC, datetime

    from app.db.models import WebhookEndpoint
    from app.webhooks.outbox import rotate_secret

    async def work(session: AsyncSession, settings: Settings) -> tuple[str, Any]:
        row = await session.get(WebhookEndpoint, endpoint)
        if row is None:
            raise _fail(f"no webhook {endpoint}")
        grace = settings.webhooks.rotation_grace_s
        return rotate_secret(row, datetime.now(UTC), grace), row.previous_secret_expires_at

    secret, until = _run(data_dir, work)
    typer.echo(secret)
    typer.echo(
        f"(store the secret now; the previous one also signs until {until})"
        if until
        else "(store the secret now; the previous one no longer signs)",
        err=True,
    )


def mount(cli: typer.Typer) -> None:
    cli.add_typer(campaigns_app, name="campaigns")
    cli.add_typer(links_app, name="links")
    cli.add_typer(keys_app, name="keys")
    cli.add_typer(webhooks_app, name="webhooks")
