"""``viraltrace simulate``: realistic campaigns against a running instance (docs/simulate.md)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final

import typer

from app.events import CAMPAIGN_PATTERN, CHANNEL_PATTERN

if TYPE_CHECKING:
    import httpx
    from rich.console import Console

    from app.simulate.driver import Driver, Stats
    from app.simulate.plan import Plan

FILL: Final = 0.9  # of rate x duration planned: room for bursts above the mean rate
DEFAULT_DURATION_S: Final = 60.0
# The server refuses event times older than this by default (tracking.max_event_age_s).
MAX_SPAN_S: Final = 30 * 86_400 - 3_600
EXIT_INTERRUPTED: Final = 130
LANGUAGE_CHOICES: Final = "en,ms,id,ar,no"
DEFAULT_CHANNELS: Final = "whatsapp=0.35,facebook=0.2,email=0.15,x=0.1,telegram=0.1,link=0.1"


def _weights(value: str, option: str, pattern: str) -> tuple[tuple[str, float], ...]:
    """``"a=2,b,c=0.5"`` as ((a, 2), (b, 1), (c, 0.5)); names must match ``pattern``."""
    out: dict[str, float] = {}
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        name, _, weight = part.partition("=")
        name = name.strip().lower()
        try:
            number = float(weight) if weight else 1.0
        except ValueError:
            raise typer.BadParameter(
                f"{part!r}: the weight is not a number", param_hint=option
            ) from None
        if not re.fullmatch(pattern, name) or number < 0 or number != number:
            raise typer.BadParameter(f"{part!r} is not name[=weight >= 0]", param_hint=option)
        out[name] = number
    if not out or sum(out.values()) <= 0:
        raise typer.BadParameter("give at least one name with a positive weight", param_hint=option)
    return tuple(out.items())


def _campaigns(values: list[str]) -> tuple[str, ...]:
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    for name in names:
        if not re.fullmatch(CAMPAIGN_PATTERN, name):
            raise typer.BadParameter(f"{name!r} is not a campaign slug", param_hint="--campaign")
    if not names:
        raise typer.BadParameter("give at least one campaign", param_hint="--campaign")
    return tuple(dict.fromkeys(names))


def _links(values: list[str], campaigns: tuple[str, ...]) -> dict[str, str]:
    links: dict[str, str] = {}
    for value in values:
        campaign, _, slug = value.partition("=")
        if campaign not in campaigns or not slug or "/" in slug:
            raise typer.BadParameter(
                f"{value!r}: give <campaign>=<slug> for one of the simulated campaigns",
                param_hint="--link",
            )
        links[campaign] = slug
    return links


def _fraction(help_text: str) -> Any:
    """A 0..1 option."""
    return typer.Option(min=0, max=1, help=help_text)


@dataclass(frozen=True)
class RunShape:
    """How long the run lasts, how many events it plans, the plan's virtual span."""

    budget: int
    duration_s: float
    deadline_s: float | None
    span_s: float


def run_shape(duration: float | None, events: int | None, rate: float, speed: float) -> RunShape:
    """``--duration`` caps the run (with a grace for bursts); ``--events`` sizes the plan."""
    if duration is None and events is None:
        duration = DEFAULT_DURATION_S
    budget = events if events is not None else max(1, int(rate * (duration or 0) * FILL))
    length = duration if duration is not None else budget / (rate * FILL)
    deadline = None if duration is None else duration + max(5.0, duration / 4)
    span = length * speed
    if span > MAX_SPAN_S:
        raise typer.BadParameter(
            f"--speed x the run's length is {span:.0f} s of event time; the server refuses "
            f"events older than 30 days by default",
            param_hint="--speed",
        )
    return RunShape(budget, length, deadline, span)


def simulate(
    url: Annotated[str, typer.Option(help="the running instance")] = "http://127.0.0.1:8000",
    campaign: Annotated[
        list[str], typer.Option(help="campaign slug; repeat or comma-separate for several")
    ] = ["demo"],  # noqa: B006 - typer needs a literal default
    seeds: Annotated[
        int | None,
        typer.Option(min=1, help="seeds (influencers) per campaign; default: as many as fit"),
    ] = None,
    r: Annotated[
        float, typer.Option("--r", min=0.01, max=10, help="mean reshares per share (R)")
    ] = 0.8,
    duration: Annotated[
        float | None,
        typer.Option(min=1, help="seconds to run (default 60 unless --events is given)"),
    ] = None,
    events: Annotated[int | None, typer.Option(min=1, help="events to plan and send")] = None,
    rate: Annotated[
        float, typer.Option(min=0.1, help="events per second at most (all kinds)")
    ] = 50.0,
    speed: Annotated[
        float,
        typer.Option(
            min=1,
            help="event-time compression: 30 plays 30 minutes of campaign in one, "
            "dated in the recent past",
        ),
    ] = 1.0,
    negative_share: Annotated[float, _fraction("negative share of comments and reactions")] = 0.1,
    buzz_episode: Annotated[
        bool, typer.Option(help="a 3-minute (event time) burst of negative buzz at 70% of the run")
    ] = False,
    buzz_negative_share: Annotated[float, _fraction("negative share in the buzz episode")] = 0.75,
    languages: Annotated[
        str, typer.Option(help="comment languages, optionally weighted: en=2,ms,id")
    ] = LANGUAGE_CHOICES,
    channels: Annotated[str, typer.Option(help="channel mix, name=weight,...")] = DEFAULT_CHANNELS,
    comment_fraction: Annotated[
        float,
        typer.Option(min=0, max=0.9, help="fraction of the events that are comments and reactions"),
    ] = 0.25,
    views_per_share: Annotated[
        float, typer.Option(min=0.1, help="recipients who view a share, on average")
    ] = 8.0,
    click_through: Annotated[float, _fraction("share of views that click through")] = 0.1,
    conversion_rate: Annotated[float, _fraction("share of clicks that convert")] = 0.05,
    seed: Annotated[
        int | None, typer.Option(help="random seed: the same seed plans the same run")
    ] = None,
    write_key: Annotated[
        str | None,
        typer.Option(
            envvar="VIRALTRACE_SIMULATE_WRITE_KEY",
            help="write key for campaigns that require one (sent on /v1/events)",
        ),
    ] = None,
    link: Annotated[
        list[str],
        typer.Option(help="<campaign>=<slug>: send that campaign's clicks through /r/<slug>"),
    ] = [],  # noqa: B006 - typer needs a literal default
    concurrency: Annotated[
        int, typer.Option(min=1, max=256, help="requests in flight at most")
    ] = 8,
    report: Annotated[
        Path | None, typer.Option(help="also write the summary as JSON to this file")
    ] = None,
) -> None:
    """Drive a running instance with realistic campaigns through its public HTTP API.

    Seeds with heavy-tailed follower counts start share cascades (mean R reshares
    per share); recipients view, click and convert; comments in five languages
    and reactions come with a set negative share. Prints a summary at the end;
    Ctrl-C stops early, prints what was done and exits 130.
    """
    from rich.console import Console

    from app.simulate.plan import SimConfig, make_plan
    from app.simulate.texts import LANGUAGES

    names = _campaigns(campaign)
    shape = run_shape(duration, events, rate, speed)
    seed = seed if seed is not None else random.SystemRandom().randrange(1_000_000)
    config = SimConfig(
        campaigns=names, span_s=shape.span_s, max_events=shape.budget, seeds=seeds, r=r,
        channels=_weights(channels, "--channels", CHANNEL_PATTERN),
        languages=_weights(languages, "--languages", "|".join(LANGUAGES)),
        views_per_share=views_per_share, click_through=click_through,
        conversion_rate=conversion_rate, negative_share=negative_share,
        buzz_episode=buzz_episode, buzz_negative_share=buzz_negative_share, seed=seed,
        buzz_fraction=comment_fraction,
    )  # fmt: skip
    plan = make_plan(config)
    out = Console(highlight=False, soft_wrap=True)
    code = asyncio.run(
        _run(plan, url.rstrip("/"), shape, speed=speed, rate=rate, concurrency=concurrency,
             write_key=write_key, links=_links(link, names), out=out, report=report)
    )  # fmt: skip
    raise typer.Exit(code)


async def _run(
    plan: Plan, url: str, shape: RunShape, *, speed: float, rate: float, concurrency: int,
    write_key: str | None, links: dict[str, str], out: Console, report: Path | None,
) -> int:  # fmt: skip
    import httpx
    from rich.console import Console

    from app.simulate.driver import TIMEOUT_S, Driver, dead_letters
    from app.simulate.report import describe_plan, render_summary, report_json

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT_S, limits=limits) as client:
        try:
            health = await client.get("/healthz")
        except httpx.HTTPError as exc:
            out.print(f"[red]cannot reach {url}:[/] {exc or type(exc).__name__}")
            return 1
        if not _looks_healthy(health):
            out.print(
                f"[red]{url}/healthz answered {health.status_code} "
                f"{health.text[:80]!r}: is it viraltrace?[/]"
            )
            return 1
        driver = Driver(
            plan, client, speed=speed, rate=rate, concurrency=concurrency, write_key=write_key,
            links=links, deadline_s=shape.deadline_s,
        )  # fmt: skip
        describe_plan(plan, url, shape.duration_s, speed, out)
        before = await dead_letters(client)
        interrupted = await _play(driver, Console(stderr=True))
        await asyncio.sleep(0.5)  # the pixel processes its hits just after answering
        after = await dead_letters(client)
    refused = None if before is None or after is None else after - before
    render_summary(driver, url, refused, interrupted, out)
    if report is not None:
        document = json.dumps(report_json(driver, refused, interrupted), indent=2) + "\n"
        await asyncio.to_thread(report.write_text, document)
    if interrupted:
        return EXIT_INTERRUPTED
    return 0 if driver.stats.sent_total else 1


def _looks_healthy(response: httpx.Response) -> bool:
    """viraltrace's /healthz answers 200 {"status": "ok"}; another service on the port
    would take the pixel's hits without a word, so it is refused up front."""
    try:
        return response.status_code == 200 and response.json().get("status") == "ok"
    except (ValueError, AttributeError):
        return False


async def _play(driver: Driver, console: Console) -> bool:
    """Run ``driver`` with a progress bar; True when Ctrl-C (or SIGTERM) stopped it.

    The first signal stops sending and lets requests in flight finish (3 s);
    a second one abandons them.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    stats = driver.stats
    task = asyncio.create_task(driver.run(stop))
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        stop.set()
        if signals > 1:
            task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    columns = (
        TextColumn("[bold]simulating"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
    )  # fmt: skip
    try:
        with Progress(*columns, console=console, transient=False) as progress:
            bar = progress.add_task("run", total=stats.planned, status="")
            while not task.done():
                progress.update(bar, completed=stats.accounted, status=_status(stats))
                await asyncio.wait({task}, timeout=0.2)
            progress.update(bar, completed=stats.accounted, status=_status(stats))
        with contextlib.suppress(asyncio.CancelledError):
            await task  # cancelled by a second Ctrl-C: the stats are whatever was done
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return signals > 0


def _status(stats: Stats) -> str:
    elapsed = max(stats.elapsed_s, 1e-9)
    problems = sum(stats.errors.values()) + sum(stats.rejected.values())
    throttled = sum(stats.throttled.values())
    return (
        f"{stats.sent_total} sent  {stats.sent_total / elapsed:5.1f}/s  "
        f"{problems} failed  {throttled} throttled"
    )
