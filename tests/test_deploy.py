"""The deploy files (Dockerfile, deploy/compose.yaml, deploy/k8s/) against the code.

No container engine runs on these machines, so this checks what can be checked
without one: the files parse and validate against their schemas (the Compose
Specification's, vendored in tests/data/compose-spec, and Kubernetes', shipped
by kubernetes-validate); every command they run resolves in the real ``viraltrace``
CLI, options included; every VIRALTRACE_* variable they set reaches a field of
``Settings`` through pydantic-settings itself (nothing silently ignored); probes
and scrape targets name routes the real app answers and ports the settings use;
the image installs the way scripts/venv.sh does.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import secrets
import shlex
import shutil
import socket
import threading
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import kubernetes_validate
import pydantic
import pytest
import typer
import yaml
from dotenv import dotenv_values
from pydantic import BaseModel

# typer vendors click (typer._click) and builds its commands from that copy.
from typer._click.core import Command
from typer._click.exceptions import UsageError
from typer.core import TyperGroup
from typer.testing import CliRunner

from app import healthcheck
from app.cli import cli
from app.settings import Settings
from tests.apphelpers import running_app
from tests.conftest import make_settings

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / ".env.example"
COMPOSE_SCHEMA = REPO / "tests" / "data" / "compose-spec" / "compose-spec.json"
# The Kubernetes release the manifests are validated against (oldest one supported).
KUBERNETES_VERSION = "1.30"
PLACEHOLDER = "CHANGE-ME"
ENV_PREFIX = "VIRALTRACE_"

ROOT_COMMAND = typer.main.get_command(cli)
assert isinstance(ROOT_COMMAND, TyperGroup)


# ---- the CLI -----------------------------------------------------------------


def resolve_cli(args: list[str]) -> Command:
    """The command ``viraltrace *args`` runs, with its options parsed as the CLI would.

    Raises ``UsageError`` for an unknown command, option or argument count.
    """
    command: Command = ROOT_COMMAND
    parent = typer.Context(command, info_name="viraltrace")
    name, rest = "viraltrace", list(args)
    while isinstance(command, TyperGroup):
        if not rest:
            raise UsageError(f"viraltrace {' '.join(args)}: a group, not a command")
        name, *rest = rest
        sub = command.get_command(parent, name)
        if sub is None:
            raise UsageError(f"no command {name!r} in `viraltrace {' '.join(args)}`")
        command = sub
        if isinstance(command, TyperGroup):
            parent = typer.Context(command, info_name=name, parent=parent)
    command.make_context(name, rest, parent=parent)
    return command


def consumer_names() -> set[str]:
    """The subcommands of ``viraltrace consume``: every consumer a deployment runs."""
    consume = ROOT_COMMAND.get_command(typer.Context(ROOT_COMMAND), "consume")
    assert isinstance(consume, TyperGroup)
    return set(consume.list_commands(typer.Context(consume)))


def test_resolve_cli_refuses_unknown_commands_and_options() -> None:
    assert resolve_cli(["consume", "sink"]).name == "sink"
    assert resolve_cli(["serve", "--workers", "1"]).name == "serve"
    for bad in (["consume", "nope"], ["serve", "--wokers", "1"], ["consume"], ["migrat"]):
        with pytest.raises(UsageError):
            resolve_cli(bad)


# ---- settings ----------------------------------------------------------------


def _env_names(name: str, field: Any) -> list[str]:
    """The environment names pydantic-settings reads a top-level field from."""
    alias = field.validation_alias
    if isinstance(alias, pydantic.AliasChoices):
        return [str(choice).lower() for choice in alias.choices]
    if isinstance(alias, str):
        return [alias.lower()]
    return [(ENV_PREFIX + name).lower()]


def setting_path(variable: str) -> tuple[str, ...] | None:
    """The Settings field a variable sets, resolved as pydantic-settings does with
    ``env_prefix="VIRALTRACE_"``, ``env_nested_delimiter="_"``, ``env_nested_max_split=1``
    and the ``webhooks`` aliases; None when pydantic-settings would ignore it."""
    key = variable.lower()
    for name, field in Settings.model_fields.items():
        model = field.annotation
        nested = isinstance(model, type) and issubclass(model, BaseModel)
        for env_name in _env_names(name, field):
            if key == env_name:
                return (name,)
            if nested and key.startswith(env_name + "_"):
                sub = key[len(env_name) + 1 :]
                return (name, sub) if sub in model.model_fields else None
    return None


def with_real_secrets(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with every placeholder replaced by a random secret long enough to pass."""
    return {k: v.replace(PLACEHOLDER, secrets.token_hex(32)) for k, v in env.items()}


def load_settings(env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings built by pydantic-settings from exactly these environment variables."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        return Settings(_env_file=None)  # type: ignore[call-arg]
    finally:
        for name in env:
            monkeypatch.delenv(name)


def assert_real_settings(
    env: Mapping[str, str], where: str, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """Every VIRALTRACE_* variable in ``env`` resolves to a Settings field, and
    pydantic-settings, given them all, marks each of those fields as set."""
    ours = {k: v for k, v in env.items() if k.upper().startswith(ENV_PREFIX)}
    assert ours, f"{where}: no VIRALTRACE_* variable to check"
    unknown = sorted(k for k in ours if setting_path(k) is None)
    assert not unknown, f"{where}: not settings (pydantic-settings would ignore them): {unknown}"
    settings = load_settings(ours, monkeypatch)
    for name in ours:
        *group, field = setting_path(name) or ()
        model: BaseModel = getattr(settings, group[0]) if group else settings
        assert field in model.model_fields_set, f"{where}: {name} did not reach settings"
    return settings


def test_setting_resolution_follows_pydantic_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert setting_path("VIRALTRACE_KAFKA_BOOTSTRAP") == ("kafka", "bootstrap")
    assert setting_path("VIRALTRACE_KAFKA_SIGNALS_TOPIC") == ("kafka", "signals_topic")
    assert setting_path("VIRALTRACE_DATA_DIR") == ("data_dir",)
    assert setting_path("VIRALTRACE_WEBHOOK_ALLOWED_HOSTS") == ("webhooks", "allowed_hosts")
    assert setting_path("VIRALTRACE_WEBHOOKS_TIMEOUT_S") == ("webhooks", "timeout_s")
    assert setting_path("VIRALTRACE_KAFKA_BOOTSTRAPS") is None
    assert setting_path("VIRALTRACE_NOPE") is None
    # The resolution agrees with pydantic-settings: a typo is silently ignored there.
    settings = load_settings(
        {"VIRALTRACE_KAFKA_BOOTSTRAPS": "kafka:9092", "VIRALTRACE_WEBHOOK_TIMEOUT_S": "7"},
        monkeypatch,
    )
    assert settings.kafka.bootstrap is None and "bootstrap" not in settings.kafka.model_fields_set
    assert settings.webhooks.timeout_s == 7.0
    with pytest.raises(AssertionError, match="VIRALTRACE_KAFKA_BOOTSTRAPS"):
        assert_real_settings({"VIRALTRACE_KAFKA_BOOTSTRAPS": "kafka:9092"}, "typo", monkeypatch)


def consumer_metrics_port() -> int:
    """settings.consumer.metrics_port: the port consumers serve /metrics on."""
    consumer = Settings().consumer
    assert hasattr(consumer, "metrics_port"), (
        "settings.consumer.metrics_port does not exist: the consumers' metrics port "
        "(9464) arrives with the Grafana dashboards work"
    )
    port = consumer.metrics_port
    assert isinstance(port, int)
    return port


# ---- the Dockerfile ----------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    stage: int  # index of the FROM it belongs to
    keyword: str
    args: str


def dockerfile(path: Path = REPO / "Dockerfile") -> list[Instruction]:
    """The instructions, with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    stage, pending = -1, ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            stage += 1
        instructions.append(Instruction(stage, keyword.upper(), args.strip()))
    return instructions


def _args_map(instructions: list[Instruction]) -> dict[str, str]:
    return {
        name: value
        for i in instructions
        if i.keyword == "ARG" and "=" in i.args
        for name, value in [i.args.split("=", 1)]
    }


def image_env(instructions: list[Instruction]) -> dict[str, str]:
    """ENV of the final stage (``ENV A=1 B=2`` form)."""
    last = max(i.stage for i in instructions)
    env: dict[str, str] = {}
    for i in instructions:
        if i.keyword == "ENV" and i.stage == last:
            env.update(pair.split("=", 1) for pair in shlex.split(i.args))
    return env


@dataclass(frozen=True)
class PipInstall:
    options: frozenset[str]  # what changes the result, cosmetic flags left out
    target: str


COSMETIC_PIP_OPTIONS = {"-q", "--quiet", "--disable-pip-version-check", "--no-cache-dir"}


def pip_installs(shell: str) -> list[PipInstall]:
    """The ``pip install`` commands in a shell text, in order."""
    found = []
    for match in re.finditer(r"pip install ([^\n&;|]*)", shell):
        words = shlex.split(match.group(1))
        options = frozenset(w for w in words if w.startswith("-") and w not in COSMETIC_PIP_OPTIONS)
        targets = [w for w in words if not w.startswith("-")]
        assert len(targets) == 1, f"one target per pip install: {match.group(0)!r}"
        found.append(PipInstall(options, targets[0]))
    return found


def test_image_installs_like_the_test_command() -> None:
    """The build stage runs scripts/venv.sh's install steps, minus the test extra and -e."""
    venv_sh = (REPO / "scripts" / "venv.sh").read_text()
    script = pip_installs(venv_sh)
    assert [p.target for p in script] == ["pip", "$target"], script
    extras_of_test_sh = re.findall(
        r"^ensure_venv ?(.*)$", (REPO / "scripts/test.sh").read_text(), re.M
    )
    assert extras_of_test_sh == ["test"], (
        "scripts/test.sh installs the project with `ensure_venv test`"
    )
    assert 'target=".[$(IFS=,; echo "$*")]"' in venv_sh, "venv.sh installs .[extras]"
    image_extras = set(extras_of_test_sh[0].split()) - {"test"}
    expected_target = "." if not image_extras else f".[{','.join(sorted(image_extras))}]"

    steps = dockerfile()
    build = [i for i in steps if i.stage == 0]
    runs = " && ".join(i.args for i in build if i.keyword == "RUN")
    image = pip_installs(runs)
    assert [p.target for p in image] == ["pip", expected_target], image
    # Same options, except -e: the runtime stage has no source tree to point at.
    assert image[0].options == script[0].options == {"--upgrade"}
    assert script[1].options == {"-e"} and image[1].options == frozenset()


def test_image_compiles_in_the_build_stage_only() -> None:
    """setup.py compiles with mypyc: the build stage has gcc and checks the result is
    compiled; the runtime stage installs nothing and copies the built venv; the editable
    install's compiled modules and mypyc's C output stay out of git and the build context."""
    steps = dockerfile()
    build_runs = " && ".join(i.args for i in steps if i.stage == 0 and i.keyword == "RUN")
    assert re.search(r"apt-get install [^&]*\bgcc\b", build_runs), build_runs
    install = build_runs.index("pip install .")
    check = build_runs.index('c.implementation() == "compiled"')
    assert install < check and "python -I -c" in build_runs, "checked after the install"
    runtime = " && ".join(i.args for i in steps if i.stage == 1 and i.keyword == "RUN")
    assert "apt-get" not in runtime and "pip install" not in runtime, runtime
    assert [i.args for i in steps if i.stage == 1 and i.keyword == "COPY"][0] == (
        "--from=build /opt/venv /opt/venv"
    )
    gitignore = (REPO / ".gitignore").read_text().splitlines()
    dockerignore = (REPO / ".dockerignore").read_text().splitlines()
    assert {"*.so", "build/"} <= set(gitignore)
    assert {"**/*.so", "build"} <= set(dockerignore)


def test_image_runs_the_python_the_project_requires() -> None:
    steps = dockerfile()
    args = _args_map(steps)
    bases = [i.args.split()[0] for i in steps if i.keyword == "FROM"]
    resolved = [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base) for base in bases]
    assert len(resolved) == 2 and len(set(resolved)) == 1, f"both stages on one base: {resolved}"
    version = re.fullmatch(r"python:(\d+)\.(\d+)-slim-\w+", resolved[0])
    assert version, resolved[0]
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    floor = tuple(int(part) for part in requires.removeprefix(">=").split("."))
    assert (int(version.group(1)), int(version.group(2))) >= floor
    # scripts/venv.sh prefers python3.11: the image runs the version the tests run.
    assert "python3.11" in (REPO / "scripts" / "venv.sh").read_text()
    assert version.group(0).startswith("python:3.11-")


def test_image_carries_the_packages_and_their_data() -> None:
    """What ``pip install .`` needs is copied, and every data file is declared package data
    (a non-editable install carries only declared data)."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    copies = [i.args.split() for i in dockerfile() if i.keyword == "COPY" and i.stage == 0]
    copied = {src for *sources, _dest in copies for src in sources}
    roots = {
        pattern.rstrip("*")
        for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert {"pyproject.toml", "setup.py", pyproject["project"]["readme"], *roots} <= copied, copied
    package_data: dict[str, list[str]] = pyproject["tool"]["setuptools"]["package-data"]
    for root in roots:
        for path in sorted((REPO / root).rglob("*")):
            if "__pycache__" in path.parts or path.is_dir():
                continue
            if path.name.endswith(tuple(EXTENSION_SUFFIXES)):
                continue  # the editable install's compiled modules: the image builds its own
            if path.suffix == ".py":
                # find_packages only finds folders with __init__.py.
                assert (path.parent / "__init__.py").exists(), f"{path.parent} is not a package"
                continue
            relative = path.relative_to(REPO / root).as_posix()
            patterns = package_data.get(root, [])
            assert any(
                Path(relative).match(p) and relative.count("/") == p.count("/") for p in patterns
            ), f"{root}/{relative} is not package data in pyproject.toml: the image would lack it"


def test_image_settings_and_user(monkeypatch: pytest.MonkeyPatch) -> None:
    steps = dockerfile()
    env = image_env(steps)
    settings = assert_real_settings(env, "Dockerfile ENV", monkeypatch)
    assert settings.server.host == "0.0.0.0"
    user = [i.args for i in steps if i.keyword == "USER"]
    assert len(user) == 1 and re.fullmatch(r"[1-9]\d*:[1-9]\d*", user[0]), (
        f"numeric, non-root: {user}"
    )
    entrypoint = [json.loads(i.args) for i in steps if i.keyword == "ENTRYPOINT"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint == [["viraltrace"]] and scripts["viraltrace"] == "app.cli:main"
    (cmd,) = [json.loads(i.args) for i in steps if i.keyword == "CMD"]
    assert resolve_cli(cmd).name == "serve"
    exposed = {int(p) for i in steps if i.keyword == "EXPOSE" for p in i.args.split()}
    assert exposed == {Settings().server.port, consumer_metrics_port()}
    (check,) = [i.args for i in steps if i.keyword == "HEALTHCHECK"]
    assert check.endswith('CMD ["python", "-m", "app.healthcheck"]')


@pytest.mark.clickhouse
def test_image_migrations_folder_migrates_on_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`viraltrace migrate` with the image's environment and its copy of migrations/
    (laid out under tmp_path as the Dockerfile's COPY and ENV say) migrates the real
    engine and the control-plane database."""
    steps = dockerfile()
    ((source, dest),) = [
        i.args.split() for i in steps if i.keyword == "COPY" and "migrations" in i.args
    ]
    assert source == "migrations" and dest.startswith("/")
    root = tmp_path / "image"
    shutil.copytree(REPO / source, root / dest.lstrip("/"))
    env = image_env(steps)
    for name in ("VIRALTRACE_CLICKHOUSE_MIGRATIONS_DIR", "VIRALTRACE_DATABASE_MIGRATIONS_DIR"):
        assert env[name].startswith(dest + "/"), f"{name} points outside the copied folder"
        monkeypatch.setenv(name, str(root / env[name].lstrip("/")))
    monkeypatch.setenv("VIRALTRACE_DATA_DIR", str(tmp_path / "data"))
    result = CliRunner().invoke(cli, ["migrate"])
    assert result.exit_code == 0, result.output
    newest = (REPO / "migrations" / "max_migration.txt").read_text().strip()
    assert "ClickHouse applied: 0001_events" in result.output and newest in result.output
    assert "applied: 0001" in result.output.splitlines()[1]


# ---- the health check ---------------------------------------------------------


@pytest.mark.parametrize(
    ("cmdline", "env", "url"),
    [
        (
            ["/opt/venv/bin/python", "/opt/venv/bin/viraltrace", "serve"],
            {},
            "http://127.0.0.1:8000/healthz",
        ),
        (["viraltrace", "serve", "--port", "9000"], {}, "http://127.0.0.1:9000/healthz"),
        (
            ["viraltrace", "serve"],
            {"VIRALTRACE_SERVER_PORT": "8081"},
            "http://127.0.0.1:8081/healthz",
        ),
        (
            ["viraltrace", "up", "--host", "0.0.0.0", "--port=8002"],
            {},
            "http://127.0.0.1:8002/healthz",
        ),
        (["viraltrace", "up"], {"VIRALTRACE_SERVER_PORT": "8081"}, "http://127.0.0.1:8000/healthz"),
        (["viraltrace", "consume", "sink"], {}, "http://127.0.0.1:9464/healthz"),
        (
            ["viraltrace", "consume", "alerts"],
            {"VIRALTRACE_CONSUMER_METRICS_PORT": "9500"},
            "http://127.0.0.1:9500/healthz",
        ),
        (["viraltrace", "migrate"], {}, None),
    ],
)
def test_healthcheck_probes_what_the_role_serves(
    cmdline: list[str], env: dict[str, str], url: str | None
) -> None:
    args = healthcheck.viraltrace_args(cmdline)
    assert args is not None
    assert healthcheck.probe_for(args, env).url == url


def test_healthcheck_defaults_match_settings() -> None:
    settings = Settings()
    assert settings.server.port == healthcheck.API_PORT
    assert consumer_metrics_port() == healthcheck.CONSUMER_METRICS_PORT


def fake_proc(root: Path, processes: Mapping[int, list[str]]) -> Path:
    """A /proc with these processes' command lines (what the health check reads)."""
    for pid, argv in processes.items():
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in argv))
    (root / "self").mkdir(exist_ok=True)
    return root


def test_healthcheck_finds_viraltrace_behind_an_init(tmp_path: Path) -> None:
    venv = ["/opt/venv/bin/python", "/opt/venv/bin/viraltrace"]
    proc = fake_proc(
        tmp_path / "proc", {1: ["/sbin/tini", "--", "/entrypoint"], 7: [*venv, "consume", "sink"]}
    )
    assert healthcheck.find_viraltrace(proc) == ["consume", "sink"]
    shutil.rmtree(proc / "7")
    assert healthcheck.find_viraltrace(proc) is None
    assert healthcheck.main([], proc=proc) == 1
    proc = fake_proc(tmp_path / "proc2", {1: [*venv, "migrate"]})
    assert healthcheck.main([], proc=proc) == 0  # a one-shot: nothing to probe


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        self.send_response(200 if self.path == "/healthz" else 503)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_healthcheck_passes_on_2xx_only(http_server: str) -> None:
    assert healthcheck.main([f"{http_server}/healthz"]) == 0
    assert healthcheck.main([f"{http_server}/readyz"]) == 1  # answers 503
    closed = HTTPServer(("127.0.0.1", 0), _Handler)
    port = closed.server_address[1]
    closed.server_close()
    assert healthcheck.main([f"http://127.0.0.1:{port}/healthz"]) == 1


# ---- routes the probes and scrapes use -----------------------------------------


async def answered_paths(tmp_path: Path, paths: set[str]) -> dict[str, int]:
    """Status of GET ``path`` on the real app (in-process bus), for each path."""
    async with running_app(make_settings(tmp_path)) as (_app, client):
        return {path: (await client.get(path)).status_code for path in sorted(paths)}


# ---- Compose -------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def env_example() -> dict[str, str]:
    values = dotenv_values(ENV_EXAMPLE)
    assert all(v is not None for v in values.values())
    return {k: str(v) for k, v in values.items()}


_INTERPOLATION = re.compile(r"\$\$|\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: Any, env: Mapping[str, str]) -> str:
    """A Compose value with ``${NAME}``, ``${NAME:-default}``, ``${NAME:?error}`` and
    ``$$`` substituted as ``docker compose`` does; an unset name without a default fails."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name", "op", "arg")
        present = env.get(name)
        if op in (":-", "-") and (present is None or (op == ":-" and present == "")):
            return str(arg)
        assert present, f"${{{name}}} is not set in deploy/.env.example" + (
            f" ({arg})" if arg else ""
        )
        return present

    return _INTERPOLATION.sub(substitute, str(value))


def viraltrace_services(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the viraltrace image (built from the repository's Dockerfile)."""
    return {
        name: service
        for name, service in data["services"].items()
        if service.get("build", {}).get("dockerfile") == "Dockerfile"
    }


def service_env(service: dict[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    return {k: interpolate(v, env) for k, v in (service.get("environment") or {}).items()}


def test_compose_file_matches_the_compose_schema() -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft201909Validator(schema)
    data = compose()
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(data)]
    assert not errors, errors
    # The validator catches what a reviewer could miss: a misspelt key, a bad condition.
    broken = json.loads(json.dumps(data))  # unshares what YAML anchors share
    broken["services"]["api"]["helthcheck"] = {"test": ["CMD", "true"]}
    broken["services"]["sink"]["depends_on"]["migrate"]["condition"] = "service_done"
    assert len(list(validator.iter_errors(broken))) == 2


def test_compose_runs_every_command_through_the_real_cli() -> None:
    services = viraltrace_services(compose())
    assert {"migrate", "api"} <= set(services)
    consumers_run = set()
    for name, service in services.items():
        args = service["command"]
        assert isinstance(args, list) and "entrypoint" not in service, name
        resolve_cli(args)
        if args[0] == "consume":
            consumers_run.add(args[1])
            assert name == args[1], f"service {name} runs consumer {args[1]}"
    assert consumers_run == consumer_names(), "Compose runs each consumer"
    assert services["migrate"]["command"] == ["migrate"]
    assert resolve_cli(services["api"]["command"]).name == "serve"


def test_compose_passes_only_real_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    env = with_real_secrets(env_example())
    for name, service in viraltrace_services(compose()).items():
        settings = assert_real_settings(service_env(service, env), f"compose {name}", monkeypatch)
        assert settings.environment == "production"
        assert settings.kafka.bootstrap == "kafka:9092"
        assert settings.clickhouse.dsn and settings.clickhouse.dsn.startswith("http://")
        assert settings.database.url and settings.database.url.startswith("postgresql+asyncpg://")


def test_env_example_covers_compose_and_holds_only_placeholders(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = COMPOSE_FILE.read_text()
    required = set(re.findall(r"\$\{(\w+):\?", text))
    used = {m.group("name") for m in _INTERPOLATION.finditer(text) if m.group("name")}
    example = env_example()
    assert required <= set(example), f"missing from .env.example: {required - set(example)}"
    assert set(example) <= used, (
        f".env.example sets what Compose never reads: {set(example) - used}"
    )
    assert_real_settings(with_real_secrets(example), "deploy/.env.example", monkeypatch)
    secrets_ = {k for k, v in example.items() if PLACEHOLDER in v}
    assert {
        "VIRALTRACE_TRACKING_TOKEN_KEYS",
        "VIRALTRACE_TRACKING_SALT_SECRET",
        "CLICKHOUSE_PASSWORD",
        "POSTGRES_PASSWORD",
        "GRAFANA_ADMIN_PASSWORD",
    } <= secrets_


@pytest.mark.parametrize(
    "kept", ["VIRALTRACE_TRACKING_TOKEN_KEYS", "VIRALTRACE_TRACKING_SALT_SECRET"]
)
def test_compose_refuses_to_start_on_a_placeholder(
    kept: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Production settings refuse the example's placeholder secrets, one at a time."""
    example = env_example()
    env = {**with_real_secrets(example), kept: example[kept]}
    api = service_env(compose()["services"]["api"], env)
    with pytest.raises(pydantic.ValidationError, match="placeholder"):
        load_settings(api, monkeypatch)


def test_compose_starts_in_order_with_health_checks_and_volumes() -> None:
    data = compose()
    services: dict[str, dict[str, Any]] = data["services"]
    ours = viraltrace_services(data)
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
    one_shots = {"migrate", "kafka-topics"}
    for name in one_shots:
        assert services[name]["restart"] == "no"
    assert services["migrate"]["depends_on"] == {
        "clickhouse": {"condition": "service_healthy"},
        "postgres": {"condition": "service_healthy"},
    }
    for name in set(ours) - {"migrate"}:
        depends = services[name]["depends_on"]
        for setup in one_shots:
            assert depends[setup] == {"condition": "service_completed_successfully"}, name
    # Servers have a health check of their own; viraltrace's comes from the image.
    for name in set(services) - set(ours) - one_shots:
        assert "test" in services[name]["healthcheck"], f"{name} has no health check"
    declared = set(data["volumes"])
    mounted = set()
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith("."):
                assert source in declared, f"{source} is not a declared named volume"
                mounted.add(source)
            else:
                assert (DEPLOY / source).resolve().is_relative_to(DEPLOY)
    assert mounted == declared
    for stateful in ("kafka", "clickhouse", "postgres", "prometheus", "grafana", "api"):
        assert any(not v.startswith(".") for v in services[stateful]["volumes"]), stateful


def test_compose_topics_match_the_settings() -> None:
    data = compose()
    script = data["services"]["kafka-topics"]["command"][0]
    defaults = Settings().kafka
    topics = re.search(r"for topic in ([\w\s-]+); do", script)
    assert topics and set(topics.group(1).split()) == {
        defaults.topic,
        defaults.dlq_topic,
        defaults.signals_topic,
    }
    assert re.search(r"--partitions (\d+)", script).group(1) == str(defaults.partitions)  # type: ignore[union-attr]
    assert data["services"]["kafka"]["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    for name, service in viraltrace_services(data).items():
        assert service["environment"]["VIRALTRACE_KAFKA_CREATE_TOPICS"] == "false", name


def test_compose_images_are_pinned() -> None:
    data = compose()
    ours = viraltrace_services(data)
    for name, service in data["services"].items():
        image = service["image"]
        if name in ours:
            assert image == "viraltrace:local"
            continue
        repository, _, tag = image.rpartition(":")
        assert repository and re.fullmatch(r"v?\d+(\.\d+)+(-\w+)?", tag), f"{name}: {image}"
    plugins = data["services"]["grafana"]["environment"]["GF_PLUGINS_PREINSTALL_SYNC"]
    assert re.fullmatch(r"grafana-clickhouse-datasource@\d+\.\d+\.\d+", plugins)


async def test_prometheus_scrapes_the_api_and_every_consumer(tmp_path: Path) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    api = jobs["viraltrace-api"]
    (api_sd,) = api["dns_sd_configs"]
    assert api_sd["names"] == ["api"] and api_sd["port"] == Settings().server.port
    consumers = jobs["viraltrace-consumers"]
    (consumer_sd,) = consumers["dns_sd_configs"]
    assert set(consumer_sd["names"]) == consumer_names()
    assert consumer_sd["port"] == consumer_metrics_port()
    assert consumers["metrics_path"] == "/metrics"
    mount = compose()["services"]["prometheus"]["volumes"][0]
    assert mount == "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro"
    assert await answered_paths(tmp_path, {api["metrics_path"]}) == {"/metrics": 200}


# Grafana's provisioning files read the environment as $NAME, ${NAME} or $__env{NAME}.
_GRAFANA_ENV = re.compile(r"\$\$|\$__env\{(\w+)\}|\$\{(\w+)\}|\$(?!__)(\w+)")


def _strings(node: Any) -> Iterator[str]:
    """Every string value in a parsed YAML document."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def _grafana_mounts() -> dict[str, str]:
    """Grafana's bind mounts: container path -> deploy/ folder."""
    mounts = {}
    for volume in compose()["services"]["grafana"]["volumes"]:
        source, target, *_ = volume.split(":")
        if source.startswith("./"):
            mounts[target] = source.removeprefix("./")
    return mounts


def test_grafana_is_provisioned_from_deploy_grafana() -> None:
    """The mounts follow the layout deploy/grafana/{provisioning,dashboards}; the
    provisioning files (the Grafana dashboards work) must match them."""
    mounts = _grafana_mounts()
    assert mounts["/etc/grafana/provisioning"] == "grafana/provisioning"
    (dashboards_target,) = [t for t, s in mounts.items() if s == "grafana/dashboards"]
    grafana = DEPLOY / "grafana"
    providers = sorted((grafana / "provisioning" / "dashboards").glob("*.yaml"))
    datasources = sorted((grafana / "provisioning" / "datasources").glob("*.yaml"))
    dashboards = sorted((grafana / "dashboards").glob("*.json"))
    assert providers and datasources and dashboards, "deploy/grafana/ has no provisioning yet"
    for provider_file in providers:
        for provider in yaml.safe_load(provider_file.read_text())["providers"]:
            path = provider["options"]["path"]
            assert Path(path).is_relative_to(dashboards_target), f"{provider_file.name}: {path}"
    uids = {}
    environment = compose()["services"]["grafana"]["environment"]
    read: set[str] = set()
    for source_file in datasources:
        provisioning = yaml.safe_load(source_file.read_text())
        for value in _strings(provisioning):
            for match in _GRAFANA_ENV.finditer(value):
                name = next((group for group in match.groups() if group), None)
                if name is not None:  # None: $$, a literal $
                    read.add(name)
                    assert name in environment, (
                        f"{source_file.name} reads ${name}, which Compose does not set"
                    )
        for source in provisioning["datasources"]:
            uids[source["uid"]] = source["type"]
    passed = {name for name in environment if not name.startswith("GF_")}
    assert passed <= read, (
        f"Compose passes Grafana what no provisioning file reads: {passed - read}"
    )
    assert uids.get("clickhouse") == "grafana-clickhouse-datasource"
    assert uids.get("prometheus") == "prometheus"
    plugin = environment["GF_PLUGINS_PREINSTALL_SYNC"].split("@")[0]
    assert plugin == uids["clickhouse"]


# ---- Kubernetes -------------------------------------------------------------------


def k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    """(file name, document) for every manifest the kustomization lists."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    documents = []
    for name in kustomization["resources"]:
        for document in yaml.safe_load_all((K8S / name).read_text()):
            if document:
                documents.append((name, document))
    return documents


def k8s(kind: str) -> list[dict[str, Any]]:
    return [d for _, d in k8s_documents() if d["kind"] == kind]


def k8s_env() -> dict[str, str]:
    """The ConfigMap and the Secret, as the pods see them (envFrom)."""
    (config,) = k8s("ConfigMap")
    (secret,) = k8s("Secret")
    return {**config["data"], **secret["stringData"]}


def viraltrace_containers() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, container) for every container running the viraltrace image."""
    found = []
    for kind in ("Deployment", "Job"):
        for workload in k8s(kind):
            for container in workload["spec"]["template"]["spec"]["containers"]:
                if container["image"].split(":")[0].endswith("viraltrace"):
                    found.append((workload, container))
    return found


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    assert kustomization["namespace"] == "viraltrace"


def test_k8s_manifests_match_the_kubernetes_schemas() -> None:
    documents = k8s_documents()
    assert {d["kind"] for _, d in documents} >= {
        "Namespace",
        "ConfigMap",
        "Secret",
        "Job",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }
    for name, document in documents:
        try:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}, {document['kind']}: {exc.message}")
    # Strict: a misspelt field fails.
    deployment = copy.deepcopy(k8s("Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_k8s_runs_every_command_through_the_real_cli() -> None:
    consumers = set()
    roles = set()
    for workload, container in viraltrace_containers():
        assert "command" not in container, "the image's entrypoint is viraltrace"
        command = resolve_cli(container["args"])
        roles.add(command.name)
        if container["args"][0] == "consume":
            consumers.add(container["args"][1])
            assert workload["metadata"]["name"] == f"viraltrace-{container['args'][1]}"
    assert consumers == consumer_names()
    assert {"serve", "migrate"} <= roles
    (migrate,) = [w for w, c in viraltrace_containers() if c["args"] == ["migrate"]]
    assert migrate["kind"] == "Job"


def test_k8s_passes_only_real_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    env = k8s_env()
    assert all(k.startswith(ENV_PREFIX) for k in env), "ConfigMap and Secret hold settings only"
    settings = assert_real_settings(with_real_secrets(env), "ConfigMap + Secret", monkeypatch)
    assert settings.environment == "production" and settings.server.workers == 1
    with pytest.raises(pydantic.ValidationError, match="placeholder"):
        load_settings(
            {
                **with_real_secrets(env),
                "VIRALTRACE_TRACKING_SALT_SECRET": env["VIRALTRACE_TRACKING_SALT_SECRET"],
            },
            monkeypatch,
        )
    for _, container in viraltrace_containers():
        refs = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
        assert refs == {"viraltrace-config", "viraltrace-secrets"}
        assert "env" not in container


def _port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(number)


def k8s_http_paths(role: str) -> tuple[set[str], set[str]]:
    """(probe paths, scrape paths) of the Deployments whose command starts with ``role``,
    after checking that probes and scrapes use the port the settings give that role."""
    settings = Settings()
    port = settings.server.port if role == "serve" else consumer_metrics_port()
    probe_paths, scrape_paths = set(), set()
    for workload, container in viraltrace_containers():
        if workload["kind"] != "Deployment" or container["args"][0] != role:
            continue
        name = workload["metadata"]["name"]
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true", name
        assert int(annotations["prometheus.io/port"]) == port, name
        assert [p["containerPort"] for p in container["ports"]] == [port], name
        probes = [
            container[k]
            for k in ("startupProbe", "livenessProbe", "readinessProbe")
            if k in container
        ]
        assert probes, f"{name} has no probe"
        for probe in probes:
            assert _port(container, probe["httpGet"]["port"]) == port, name
            probe_paths.add(probe["httpGet"]["path"])
        scrape_paths.add(annotations["prometheus.io/path"])
    assert probe_paths, f"no Deployment runs {role}"
    return probe_paths, scrape_paths


async def test_k8s_api_probes_and_scrapes_hit_real_routes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(with_real_secrets(k8s_env()), monkeypatch)
    assert settings.server.port == Settings().server.port
    probes, scrapes = k8s_http_paths("serve")
    (api,) = [c for w, c in viraltrace_containers() if c["args"][0] == "serve"]
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    answered = await answered_paths(tmp_path, probes | scrapes)
    assert answered == {"/healthz": 200, "/metrics": 200, "/readyz": 200}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_consumer_probes_hit_the_real_consumer_endpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The consumers' Kubernetes probes and scrape path, and the image's health check in
    a consumer container, against the endpoint `viraltrace consume` serves."""
    from prometheus_client import CollectorRegistry

    from app.settings import ConsumerSettings
    from consumers.exporter import serve_consumer_metrics

    probes, scrapes = k8s_http_paths("consume")
    port = _free_port()
    config = ConsumerSettings(metrics_port=port, metrics_host="127.0.0.1")
    proc = fake_proc(tmp_path / "proc", {1: ["/opt/venv/bin/viraltrace", "consume", "sink"]})
    monkeypatch.setenv("VIRALTRACE_CONSUMER_METRICS_PORT", str(port))
    async with (
        serve_consumer_metrics(config, CollectorRegistry()),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        answered = {path: (await client.get(path)).status_code for path in probes | scrapes}
        image_check = await asyncio.to_thread(healthcheck.main, [], proc)
    assert answered == {"/healthz": 200, "/metrics": 200}
    assert image_check == 0
    assert await asyncio.to_thread(healthcheck.main, [], proc) == 1  # the endpoint is gone


def test_k8s_consumers_stay_within_the_partitions(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(with_real_secrets(k8s_env()), monkeypatch)
    for workload, container in viraltrace_containers():
        if container["args"][0] == "consume":
            replicas = workload["spec"]["replicas"]
            assert 1 <= replicas <= settings.kafka.partitions, workload["metadata"]["name"]
    (job,) = [j for j in k8s("Job") if j["metadata"]["name"] == "viraltrace-kafka-topics"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    script = container["args"][0]
    topics = re.search(r"for topic in ([\w\s-]+); do", script)
    defaults = Settings().kafka
    assert topics and set(topics.group(1).split()) == {
        defaults.topic,
        defaults.dlq_topic,
        defaults.signals_topic,
    }
    assert '--partitions "$VIRALTRACE_KAFKA_PARTITIONS"' in script
    assert container["envFrom"] == [{"configMapRef": {"name": "viraltrace-config"}}]
    assert settings.kafka.create_topics is False


def test_k8s_services_and_autoscaling_select_real_pods() -> None:
    deployments = {d["metadata"]["name"]: d for d in k8s("Deployment")}
    for deployment in deployments.values():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for service in k8s("Service"):
        selector = service["spec"]["selector"]
        chosen = [
            d
            for d in deployments.values()
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(chosen) == 1, (
            f"Service {service['metadata']['name']} selects {len(chosen)} Deployments"
        )
        (container,) = chosen[0]["spec"]["template"]["spec"]["containers"]
        for port in service["spec"]["ports"]:
            _port(container, port["targetPort"])
    (hpa,) = k8s("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert target["kind"] == "Deployment" and target["name"] in deployments
    assert (
        deployments[target["name"]]["spec"]["template"]["spec"]["containers"][0]["args"][0]
        == "serve"
    )
    assert hpa["spec"]["minReplicas"] >= 2
    (budget,) = k8s("PodDisruptionBudget")
    assert (
        budget["spec"]["selector"]["matchLabels"]
        == deployments[target["name"]]["spec"]["selector"]["matchLabels"]
    )


def test_deploy_readme_commands_exist_in_the_cli() -> None:
    """The viraltrace commands deploy/README.md tells an operator to run."""
    text = (DEPLOY / "README.md").read_text()
    commands = re.findall(r"docker compose run --rm api ([^#\n]+)", text)
    commands += re.findall(r"kubectl [^\n]*? -- viraltrace ([^#\n]+)", text)
    assert len(commands) >= 3, commands
    for command in commands:
        resolve_cli(shlex.split(command))


def test_deploy_docs_name_real_settings() -> None:
    """Every VIRALTRACE_* name the deploy docs mention is a setting."""
    for doc in (REPO / "docs" / "scaling.md", DEPLOY / "README.md"):
        names = set(re.findall(r"VIRALTRACE_[A-Z0-9_]*[A-Z0-9]", doc.read_text()))
        assert names, doc
        unknown = sorted(n for n in names if setting_path(n) is None)
        assert not unknown, f"{doc.name} names settings that do not exist: {unknown}"


def test_scaling_guide_quotes_the_benchmarks() -> None:
    """The measured rates in docs/scaling.md are the ones docs/benchmarks.md reports
    (figures derived from them, written after = or ≈, are left out)."""
    scaling = (REPO / "docs" / "scaling.md").read_text()
    benchmarks = (REPO / "docs" / "benchmarks.md").read_text()
    measured = scaling.split("### Per-process rates (measured)")[1].split("###")[0]
    cells = [
        re.sub(r"[=≈][^|(]*", "", line.split("|")[2])
        for line in measured.splitlines()
        if line.startswith("| ") and "docs/benchmarks.md" not in line and "---" not in line
    ]
    quoted = {n for cell in cells for n in re.findall(r"\d{1,3}(?:,\d{3})+|\d+\.\d+ s", cell)}
    assert len(quoted) >= 10, quoted
    missing = sorted(n for n in quoted if n not in benchmarks)
    assert not missing, f"not in docs/benchmarks.md: {missing}"
