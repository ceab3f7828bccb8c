"""Compiles the cascades consumer's hot modules to C with mypyc, at install.

Everything else about the package is in pyproject.toml; mypy (which ships
mypyc) is a build requirement there. ``pip install .`` and ``pip install -e .``
(scripts/venv.sh, the Dockerfile) both come through here; the editable
install puts the compiled modules next to their sources.

The compiled modules are the same source files, so the package works
without them: when there is no C compiler or no Python headers, or when
``VIRALTRACE_NO_MYPYC=1`` is set, this builds a pure-Python package and
says so. ``consumers.cascades.implementation()`` tells which one runs.
"""

from __future__ import annotations

import os
import sys
import sysconfig
import tempfile
from pathlib import Path

from setuptools import setup

# Kept in step with consumers/cascades/__init__.py (COMPILED_MODULES).
COMPILED = [
    "consumers/cascades/state.py",
    "consumers/cascades/forecast.py",
    "consumers/cascades/decode.py",
    "consumers/cascades/signals.py",
    "consumers/cascades/pipeline.py",
]


def _can_compile() -> str | None:
    """None when a C extension builds here; else why not."""
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.sysconfig import customize_compiler

    compiler = new_compiler()
    customize_compiler(compiler)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp, "probe.c")
        source.write_text("#include <Python.h>\nint probe(void) { return 0; }\n")
        try:
            compiler.compile(
                [str(source)], output_dir=tmp, include_dirs=[sysconfig.get_paths()["include"]]
            )
        except Exception as exc:  # whatever stops the probe stops the real build
            return f"no working C compiler with the Python headers ({exc})"
    return None


def ext_modules() -> list[object]:
    if os.environ.get("VIRALTRACE_NO_MYPYC") == "1":
        reason: str | None = "VIRALTRACE_NO_MYPYC=1"
    else:
        reason = _can_compile()
    if reason is not None:
        sys.stderr.write(f"viraltrace: building pure Python, not compiling with mypyc: {reason}\n")
        return []
    from mypyc.build import mypycify

    # Its own mypy options, not pyproject.toml's (which load plugins of packages
    # the isolated build environment does not have): the compiled modules'
    # imports of other modules are opaque here; `mypy` in scripts/test.sh checks them.
    return mypycify(
        ["--config-file=", "--ignore-missing-imports", "--follow-imports=skip", *COMPILED],
        group_name="consumers.cascades.compiled",
    )


if __name__ == "__main__":  # setuptools runs it so; tests import it
    setup(ext_modules=ext_modules())
