"""A/B the pixel's enrichment: ``Enricher.from_scope`` of app/enrich.py at a git
revision against the working tree's, side by side in one process.

    .venv/bin/python scripts/bench_enrich_ab.py REV [KIND ...]

Both versions are loaded at once and measured in alternating rounds, so a
noisy neighbour slows both alike; the paired ratio (new / base, per round) is
the figure to read. Pin it to one core (``taskset -c 0``) on a shared machine.

Kinds: ``hit-v4`` / ``hit-v6``: 2,000 visitors (distinct addresses, one user
agent) seen again and again, as repeat hits of a visit are; ``miss-v4`` /
``miss-v6``: a new address on every call (nothing cached helps; both versions
also insert into the visitor-continuity memory).
"""

from __future__ import annotations

import importlib.util
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import SecretStr

from app.settings import TrackingSettings

REPO = Path(__file__).resolve().parents[1]
UA = (
    b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    b"(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)
VISITORS, REPS, ROUNDS = 2000, 3, 40


def load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def address(rng: random.Random, v6: bool) -> str:
    if v6:  # a /48 and a /64 of its own for every visitor
        site, subnet, host = (rng.randrange(65536) for _ in range(3))
        return f"2001:db8:{site:x}:{subnet:x}::{host:x}"
    a, b, c, d = rng.randrange(1, 224), rng.randrange(256), rng.randrange(256), rng.randrange(256)
    return f"{a}.{b}.{c}.{d}"


def scope(ip: str) -> dict[str, Any]:
    headers = [(b"host", b"t.example"), (b"user-agent", UA), (b"accept", b"*/*")]
    return {"type": "http", "headers": headers, "client": (ip, 50000)}


def batches(kind: str) -> list[list[dict[str, Any]]]:
    rng, v6 = random.Random(1), kind.endswith("v6")
    count = REPS * ROUNDS + 1
    if kind.startswith("hit"):
        return [[scope(address(rng, v6)) for _ in range(VISITORS)]] * count
    return [[scope(address(rng, v6)) for _ in range(VISITORS)] for _ in range(count)]


def run(kind: str, modules: dict[str, ModuleType]) -> None:
    tracking = TrackingSettings(salt_secret=SecretStr("s" * 40))
    calls = {name: module.Enricher(tracking).from_scope for name, module in modules.items()}
    feeds = {name: iter(batches(kind)) for name in calls}
    for name, call in calls.items():  # warm up: caches filled as in a running process
        for hit in next(feeds[name]):
            call(hit, "bench")
    ns: dict[str, list[float]] = {name: [] for name in calls}
    for round_no in range(ROUNDS):
        for name in ("base", "new") if round_no % 2 == 0 else ("new", "base"):
            call, feed = calls[name], feeds[name]
            start = time.perf_counter()
            for _ in range(REPS):
                for hit in next(feed):
                    call(hit, "bench")
            ns[name].append((time.perf_counter() - start) / (REPS * VISITORS) * 1e9)
    base, new = ns["base"], ns["new"]
    ratio = statistics.median(n / b for b, n in zip(base, new, strict=True))
    print(  # noqa: T201
        f"{kind:8s} base {min(base):6.0f} ns (median {statistics.median(base):6.0f}) | "
        f"new {min(new):6.0f} ns (median {statistics.median(new):6.0f}) | "
        f"min +{min(new) - min(base):5.0f} ns | paired ratio {ratio:.3f}"
    )


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    revision, kinds = sys.argv[1], sys.argv[2:] or ["hit-v4", "miss-v4", "hit-v6", "miss-v6"]
    text = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{revision}:app/enrich.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    with tempfile.TemporaryDirectory() as tmp:
        base_file = Path(tmp) / "enrich_base.py"
        base_file.write_text(text)
        modules = {
            "base": load("enrich_base", base_file),
            "new": load("enrich_new", REPO / "app" / "enrich.py"),
        }
        for kind in kinds:
            run(kind, modules)


if __name__ == "__main__":
    main()
