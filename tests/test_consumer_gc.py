"""``consumer.gc_threshold``: the GC setting of the processes that run consumers."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from app.settings import ConsumerSettings, Settings
from consumers.base import tune_gc


@pytest.fixture
def restore_gc() -> Iterator[None]:
    saved = gc.get_threshold()
    yield
    gc.set_threshold(*saved)
    gc.unfreeze()


def test_the_threshold_is_set_and_start_up_objects_are_frozen(restore_gc: None) -> None:
    middle, oldest = gc.get_threshold()[1:]
    gc.unfreeze()
    tune_gc(ConsumerSettings(gc_threshold=12_345))
    assert gc.get_threshold() == (12_345, middle, oldest)
    assert gc.get_freeze_count() > 0


def test_zero_keeps_pythons_own_threshold(restore_gc: None) -> None:
    before = gc.get_threshold()
    tune_gc(ConsumerSettings(gc_threshold=0))
    assert gc.get_threshold() == before


def test_the_environment_sets_it_and_the_default_is_raised() -> None:
    assert ConsumerSettings().gc_threshold == 10_000
    env = {**os.environ, "VIRALTRACE_CONSUMER_GC_THRESHOLD": "2500"}
    probe = (
        "import gc; from app.settings import Settings; from consumers.base import tune_gc; "
        "tune_gc(Settings().consumer); print(gc.get_threshold()[0])"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "2500"
    with pytest.raises(ValueError, match="gc_threshold"):
        Settings(consumer={"gc_threshold": -1})
