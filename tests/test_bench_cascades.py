"""``viraltrace bench cascades`` runs end to end (tiny sizes; the figures are not checked)."""

from __future__ import annotations

import subprocess
import sys

from app.bench.cascades import broad_tree_records, tree_records


def test_the_broad_tree_is_as_large_as_asked_and_parents_come_first() -> None:
    records, depth = broad_tree_records(branches=5, n=20, seed=1)
    assert len(records) == 101
    assert 1 < depth < 1 + 20  # a root over five 20-node random recursive trees
    small, small_depth = tree_records(20, seed=1)
    assert len(small) == 20 and small_depth < depth


def test_the_command_prints_every_measure() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "from app.cli import cli; cli()", "bench", "cascades",
         "--events", "2000", "--big", "2000", "--small", "100", "--small-events", "1000",
         "--rounds", "1", "--variant", "compiled"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    for label in ("campaign mix", "100-node cascades", "interleaved", "2,000-node cascade",
                  "broad cascade", "state per node", "GC threshold 10,000"):  # fmt: skip
        assert label in out, label
