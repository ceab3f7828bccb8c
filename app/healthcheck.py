"""The container image's health check: ``python -m app.healthcheck [URL]``.

One image runs every role, so the check finds out which role this container
runs from the ``viraltrace`` process's own command line (``/proc``) and
probes what that role serves:

- ``serve`` and ``up``: ``GET /healthz`` on the API port (``--port``, else
  ``VIRALTRACE_SERVER_PORT`` for ``serve``, else 8000);
- ``consume <name>``: ``GET /healthz`` on the consumer's metrics port
  (``VIRALTRACE_CONSUMER_METRICS_PORT``, else 9464), which answers 503 when the
  consumer's event loop has stalled; nothing when that port is 0 (turned off);
- anything else (``migrate``, ``schema``, ...) is a one-shot command with
  nothing to probe: healthy while it runs.

With a URL argument it probes that URL instead. Exit status 0 means healthy,
1 unhealthy (Docker's contract). Standard library only, so that a check every
few seconds costs a few milliseconds of CPU, not an import of the app.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

API_PORT = 8000
CONSUMER_METRICS_PORT = 9464
TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Probe:
    """What to probe: None means nothing (a one-shot command)."""

    url: str | None


def _option(argv: Sequence[str], name: str) -> str | None:
    """The value of ``--name V`` or ``--name=V`` in argv, if present."""
    for index, arg in enumerate(argv):
        if arg == name and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def viraltrace_args(cmdline: Sequence[str]) -> list[str] | None:
    """The arguments after the ``viraltrace`` script in a process's argv, or None
    when the process is not viraltrace (``python /opt/venv/bin/viraltrace serve``
    and ``viraltrace serve`` both give ``["serve"]``)."""
    for index, arg in enumerate(cmdline):
        if Path(arg).name == "viraltrace":
            return list(cmdline[index + 1 :])
    return None


def probe_for(args: Sequence[str], env: Mapping[str, str]) -> Probe:
    """The probe for a viraltrace command line (the arguments after ``viraltrace``)."""
    role = next((arg for arg in args if not arg.startswith("-")), None)
    if role in ("serve", "up"):
        port = _option(args, "--port")
        if port is None and role == "serve":
            port = env.get("VIRALTRACE_SERVER_PORT")
        return Probe(f"http://127.0.0.1:{port or API_PORT}/healthz")
    if role == "consume":
        port = env.get("VIRALTRACE_CONSUMER_METRICS_PORT") or str(CONSUMER_METRICS_PORT)
        return Probe(None if port.strip() == "0" else f"http://127.0.0.1:{port}/healthz")
    return Probe(None)


def find_viraltrace(proc: Path = Path("/proc")) -> list[str] | None:
    """The arguments of the lowest-numbered viraltrace process: PID 1, or the
    child of an init such as ``docker run --init``."""
    pids = sorted(int(entry.name) for entry in proc.iterdir() if entry.name.isdigit())
    for pid in pids:
        try:
            raw = (proc / str(pid) / "cmdline").read_bytes()
        except OSError:  # the process ended, or is not ours to read
            continue
        args = viraltrace_args([part.decode(errors="replace") for part in raw.split(b"\0") if part])
        if args is not None:
            return args
    return None


def check(url: str, timeout_s: float = TIMEOUT_S) -> bool:
    """True when ``url`` answers 2xx within the timeout."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def main(argv: Sequence[str] | None = None, proc: Path = Path("/proc")) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv:
        url: str | None = argv[0]
    else:
        args = find_viraltrace(proc)
        if args is None:
            sys.stderr.write("healthcheck: no viraltrace process found\n")
            return 1
        url = probe_for(args, os.environ).url
    if url is None:
        return 0
    if check(url):
        return 0
    sys.stderr.write(f"healthcheck: {url} did not answer 2xx\n")
    return 1


if __name__ == "__main__":
    sys.exit(main())
