"""The cascades consumer: live share-cascade state and its metrics.

``state``, ``forecast``, ``decode``, ``signals`` and ``pipeline`` are
compiled to C with mypyc when the package is installed on a machine with a C
compiler (setup.py); the same source runs as Python otherwise.
``implementation()`` says which one is loaded; ``use_pure_python()`` makes
later imports take the source (to test the fallback) and ``load_pure()``
loads a copy from source next to the compiled modules (for side-by-side
benchmarks).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

# Kept in step with setup.py (COMPILED).
COMPILED_MODULES = (
    "consumers.cascades.state",
    "consumers.cascades.forecast",
    "consumers.cascades.decode",
    "consumers.cascades.signals",
    "consumers.cascades.pipeline",
)


def is_compiled(module: ModuleType) -> bool:
    """Whether ``module`` was loaded from a C extension (mypyc) rather than its source."""
    return isinstance(getattr(module, "__loader__", None), importlib.machinery.ExtensionFileLoader)


def implementation() -> str:
    """``"compiled"`` when every module of ``COMPILED_MODULES`` runs as mypyc-compiled
    C, ``"pure"`` when none does, ``"mixed"`` otherwise (never after a normal install).
    Imports them."""
    flags = {is_compiled(importlib.import_module(name)) for name in COMPILED_MODULES}
    if flags == {True}:
        return "compiled"
    return "pure" if flags == {False} else "mixed"


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Finds ``COMPILED_MODULES`` as their ``.py`` source, ahead of the compiled extension."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in COMPILED_MODULES:
            return None
        source = Path(__file__).with_name(fullname.rpartition(".")[2] + ".py")
        return importlib.util.spec_from_file_location(fullname, source)


def load_pure(name: str) -> ModuleType:
    """A separate copy of module ``name`` whose cascades modules run from Python source,
    whatever is installed; ``sys.modules`` is left as it was. For side-by-side benchmarks."""
    prefix = __name__ + "."
    saved = {n: m for n, m in sys.modules.items() if n.startswith(prefix)}
    for n in saved:
        del sys.modules[n]
    finder = _SourceFinder()
    sys.meta_path.insert(0, finder)
    try:
        return importlib.import_module(name)
    finally:
        sys.meta_path.remove(finder)
        for n in [n for n in sys.modules if n.startswith(prefix)]:
            del sys.modules[n]
        sys.modules.update(saved)


def use_pure_python() -> None:
    """From now on, import ``COMPILED_MODULES`` from their Python source.

    Affects imports made after the call only: call it before anything imports
    them (or remove them from ``sys.modules`` first). For benchmarks and tests."""
    if not any(isinstance(f, _SourceFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _SourceFinder())
