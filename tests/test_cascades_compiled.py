"""The cascades consumer's mypyc build (setup.py): the tests run the compiled
modules, and the pure-Python fallback gives the same results.

Every other cascades test (oracle, properties, pipeline) runs whatever
``consumers.cascades`` loads; the first test here makes sure that is the
compiled build that scripts/venv.sh installs, so CI tests the code that ships.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import random
import subprocess
import sys
import zipfile
from dataclasses import asdict
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest

import consumers.cascades
from app.bus.memory import MemoryRecord
from app.settings import CascadeSettings
from consumers.base import InvalidMessage
from consumers.cascades import COMPILED_MODULES, implementation, is_compiled
from tests.cascadehelpers import BASE_TS, cascade_workload, wire_event

REPO = Path(__file__).resolve().parent.parent


def test_the_tests_run_the_compiled_modules() -> None:
    loaded = {name: is_compiled(importlib.import_module(name)) for name in COMPILED_MODULES}
    assert implementation() == "compiled", (
        f"scripts/venv.sh's install did not compile the cascades modules ({loaded}): "
        "the install log says why (setup.py: no C compiler or Python headers, or "
        "VIRALTRACE_NO_MYPYC=1); the other cascades tests ran pure Python"
    )


def test_compiled_modules_are_not_older_than_their_source() -> None:
    """An editable install's extension shadows its .py: after an edit, reinstall
    (`bash -c '. scripts/venv.sh; ensure_venv test'`) or the tests run the old code."""
    for name in COMPILED_MODULES:
        source = REPO / (name.replace(".", "/") + ".py")
        built = source.with_name(source.stem + EXTENSION_SUFFIXES[0])
        assert built.stat().st_mtime >= source.stat().st_mtime, (
            f"{built.name} is older than {source.name}: reinstall to recompile"
        )


def _records(seed: int) -> list[MemoryRecord]:
    """Wire records of shuffled cascades (duplicates, clicks, parents late) and poison."""
    streams, _ = cascade_workload(seed, cascades=12, max_size=300, start_ms=BASE_TS)
    records = []
    for stream in streams:
        for item in stream:
            key = f"{item.root:016x}".encode()
            value = orjson.dumps(wire_event(item))
            records.append(MemoryRecord("t", 0, len(records), 0, key, value))
    rng = random.Random(seed)
    rng.shuffle(records)  # cascades interleaved, and more of their events out of order
    poison = [b"{nope", b"[1]", b'{"type": "share", "root": "00000000000000aa", "node": "zz"}',
              b'{"type": "click", "root": "00000000000000aa", "node": "00000000000000ab",'
              b' "event_id": "e", "campaign": "c", "ts": -1, "received_at": 1}',
              b'{"type": "view", "bot": "yes", "root": null}']  # fmt: skip
    for value in poison:
        records.insert(rng.randrange(len(records)), MemoryRecord("t", 0, 0, 0, b"x" * 16, value))
    return records


def run_pipeline(seed: int) -> bytes:
    """The pipeline over ``_records(seed)``: every outcome and each cascade's stats, as JSON."""
    from consumers.cascades.pipeline import CascadesPipeline

    pipeline = CascadesPipeline(CascadeSettings())
    outcomes: list[Any] = []
    for record in _records(seed):
        try:
            outcomes.append(len(pipeline.process(record)))
        except InvalidMessage as exc:
            outcomes.append(exc.reason)
    stats = {f"{root:016x}": asdict(c.stats()) for root, c in sorted(pipeline.cascades.items())}
    return orjson.dumps({"implementation": implementation(), "outcomes": outcomes,
                         "stats": stats})  # fmt: skip


def test_pure_python_fallback_gives_the_compiled_results() -> None:
    """The same source run as Python (what a machine without a C compiler installs)."""
    code = (
        "import sys, consumers.cascades as c; c.use_pure_python();"
        " from tests.test_cascades_compiled import run_pipeline;"
        " sys.stdout.buffer.write(run_pipeline(7))"
    )
    pure = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, check=True, timeout=300
    ).stdout
    compiled = orjson.loads(run_pipeline(7))
    expected = orjson.loads(pure)
    assert (expected.pop("implementation"), compiled.pop("implementation")) == (
        "pure", "compiled"
    )  # fmt: skip
    assert expected["outcomes"].count("bad_json") == 1
    assert compiled == expected


def _setup_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("viraltrace_setup", REPO / "setup.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_setup_builds_pure_python_without_a_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    setup = _setup_module()
    assert [Path(p).stem for p in setup.COMPILED] == [n.rpartition(".")[2] for n in
                                                      COMPILED_MODULES]  # fmt: skip
    assert setup._can_compile() is None, "this machine compiles: the test below means something"
    monkeypatch.setenv("CC", str(REPO / "no-such-compiler"))
    assert "no working C compiler" in setup._can_compile()
    assert setup.ext_modules() == []
    monkeypatch.delenv("CC")
    monkeypatch.setenv("VIRALTRACE_NO_MYPYC", "1")
    assert setup.ext_modules() == []


@pytest.mark.slow
def test_install_without_a_compiler_runs_pure_python(tmp_path: Path) -> None:
    """`pip install .` where the C compiler fails: a wheel without extensions, that works."""
    env = {**os.environ, "CC": "/bin/false"}
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(REPO)],
        env=env, check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("viraltrace-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "consumers/cascades/state.py" in names
    assert not [n for n in names if n.endswith(tuple(EXTENSION_SUFFIXES))], names
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    code = (
        "import consumers, consumers.cascades as c;"
        " from tests.test_cascades_compiled import run_pipeline;"
        " print(consumers.__file__); print(c.implementation());"
        " import orjson; print(len(orjson.loads(run_pipeline(3))['stats']))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, check=True, timeout=300,
        env={**os.environ, "PYTHONPATH": f"{target}{os.pathsep}{REPO}"},
    ).stdout.decode().split()  # fmt: skip
    assert out[0].startswith(str(target)) and out[1:] == ["pure", "12"], out
    assert consumers.cascades.implementation() == "compiled"
