"""What ``viraltrace simulate`` prints: the plan before the run, the summary after it."""

from __future__ import annotations

import statistics
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from app.simulate.driver import Driver
from app.simulate.plan import Plan

EVENT_TYPES = ("share", "view", "click", "convert", "comment", "reaction")


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{key} {value}" for key, value in counter.most_common()) or "none"


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def describe_plan(plan: Plan, url: str, duration_s: float, speed: float, out: Console) -> None:
    config = plan.config
    followers = [seed.followers for seed in plan.seeds]
    compression = f", {config.span_s / 60:.0f} min of event time (speed {speed:g})"
    out.print(
        f"viraltrace simulate: {len(plan.actions)} events to {url} over about "
        f"{duration_s:.0f} s{compression if speed > 1 else ''}; seed {config.seed}"
    )
    out.print(
        f"  campaigns {', '.join(config.campaigns)}: {len(plan.seeds)} seeds (followers median "
        f"{statistics.median(followers):,.0f}, max {max(followers):,}), R {config.r:g}, "
        f"negative share {config.negative_share:g}"
    )
    if plan.buzz_window_ms is not None:
        start, end = plan.buzz_window_ms
        out.print(
            f"  buzz episode: negative share {config.buzz_negative_share:g} from "
            f"{start / 60_000:.1f} to {end / 60_000:.1f} min of event time"
        )


def render_summary(
    driver: Driver, url: str, refused: Counter[str] | None, interrupted: bool, out: Console
) -> None:
    """The summary table, then where to look at the data."""
    stats, plan = driver.stats, driver.plan
    title = "interrupted: partial summary" if interrupted else "simulation summary"
    events = Table(title=title, title_justify="left")
    events.add_column("event")
    events.add_column("planned", justify="right")
    events.add_column("sent", justify="right")
    for kind in EVENT_TYPES:
        events.add_row(kind, str(stats.planned_by_type[kind]), str(stats.sent[kind]))
    events.add_row("[bold]total", f"[bold]{stats.planned}", f"[bold]{stats.sent_total}")
    out.print(events)

    facts = Table(show_header=False, box=None, padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    elapsed = max(stats.elapsed_s, 1e-9)
    start = driver.event_time_start_ms
    facts.add_row("cascades", f"{stats.cascades} of {len(plan.seeds)} seeds started")
    facts.add_row("max depth", str(stats.max_depth))
    buzz = stats.buzz_sent
    negative = f"{stats.negative_sent / buzz:.0%} negative" if buzz else "none sent"
    facts.add_row("comments + reactions", f"{buzz} ({negative})")
    facts.add_row("comments by language", _counts(stats.comments_by_lang))
    if plan.buzz_window_ms is not None:
        begin, end = plan.buzz_window_ms
        facts.add_row("buzz episode", f"{_utc(start + begin)} to {_utc(start + end)}")
    facts.add_row("event times", f"{_utc(start)} to {_utc(start + plan.config.span_ms)}")
    facts.add_row("requests", str(stats.requests))
    throttled = ", ".join(f"{code} x{n}" for code, n in sorted(stats.throttled.items()))
    facts.add_row("throttled (retried)", throttled or "none")
    facts.add_row("rejected events", _counts(stats.rejected))
    facts.add_row("failed events", _counts(stats.errors))
    facts.add_row("skipped events", _counts(stats.skipped))
    facts.add_row("not sent (stopped)", str(stats.not_sent))
    facts.add_row(
        "dead-lettered by the server",
        "unknown (no /metrics)" if refused is None else _counts(+refused),
    )
    facts.add_row("elapsed", f"{elapsed:.1f} s")
    facts.add_row("throughput", f"{stats.sent_total / elapsed:.1f} events/s sent")
    facts.add_row("seed", f"{plan.config.seed} (--seed {plan.config.seed} plans the same run)")
    out.print(facts)
    first = plan.config.campaigns[0]
    out.print(
        f"\nSee it (Bearer <read key>, `viraltrace up` prints it):\n"
        f"  {url}/v1/campaigns/{first}/summary\n"
        f"  {url}/v1/campaigns/{first}/buzz?from={_iso(start)}\n"
        f"  {url}/v1/campaigns/{first}/alerts"
    )


def report_json(driver: Driver, refused: Counter[str] | None, interrupted: bool) -> dict[str, Any]:
    """The summary as JSON (``--report``), for scripts and CI smoke runs."""
    stats, plan = driver.stats, driver.plan
    start = driver.event_time_start_ms
    window = plan.buzz_window_ms
    return {
        "interrupted": interrupted,
        "seed": plan.config.seed,
        "campaigns": list(plan.config.campaigns),
        "seeds": [{"campaign": s.campaign, "followers": s.followers} for s in plan.seeds],
        "planned": dict(stats.planned_by_type),
        "sent": dict(stats.sent),
        "rejected": dict(stats.rejected),
        "failed": dict(stats.errors),
        "skipped": dict(stats.skipped),
        "not_sent": stats.not_sent,
        "throttled": {str(code): n for code, n in stats.throttled.items()},
        "dead_lettered": None if refused is None else dict(+refused),
        "requests": stats.requests,
        "cascades": stats.cascades,
        "max_depth": stats.max_depth,
        "comments_by_language": dict(stats.comments_by_lang),
        "buzz_sent": stats.buzz_sent,
        "negative_sent": stats.negative_sent,
        "event_time_ms": [start, start + plan.config.span_ms],
        "buzz_episode_ms": None if window is None else [start + window[0], start + window[1]],
        "elapsed_s": round(stats.elapsed_s, 3),
    }


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms // 60_000 * 60, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
