"""`viraltrace migrate` against the real embedded ClickHouse engine."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import cli

pytestmark = pytest.mark.clickhouse
REPO = Path(__file__).resolve().parents[1]


def test_migrate_applies_once_then_reports_up_to_date(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIRALTRACE_DATA_DIR", str(tmp_path))
    runner = CliRunner()
    first = runner.invoke(cli, ["migrate"])
    assert first.exit_code == 0, first.output
    lines = first.output.strip().splitlines()
    assert lines[0] == (
        "ClickHouse applied: 0001_events, 0002_events_dlq, 0003_rollups, 0004_cascades, "
        "0005_events_net, 0006_buzz_alerts, 0007_rollup_reads"
    )
    assert lines[1] == (
        f"database sqlite+aiosqlite:///{tmp_path / 'control.db'} applied: 0001, 0002, 0003, 0004"
    )
    second = runner.invoke(cli, ["migrate"])
    assert second.exit_code == 0, second.output
    assert second.output.strip().splitlines() == [
        "ClickHouse schema is up to date",
        f"database sqlite+aiosqlite:///{tmp_path / 'control.db'} is up to date",
    ]
    assert (tmp_path / "clickhouse").is_dir()
    assert (tmp_path / "control.db").is_file()


def test_migrate_refuses_an_edited_applied_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrations = tmp_path / "migrations"
    shutil.copytree(REPO / "migrations", migrations)
    monkeypatch.setenv("VIRALTRACE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("VIRALTRACE_CLICKHOUSE_MIGRATIONS_DIR", str(migrations / "clickhouse"))
    runner = CliRunner()
    assert runner.invoke(cli, ["migrate"]).exit_code == 0
    events = migrations / "clickhouse" / "0001_events.sql"
    events.write_text(events.read_text() + "\n-- edited after it was applied\n")
    refused = runner.invoke(cli, ["migrate"])
    assert refused.exit_code == 1
    assert "0001_events" in refused.output and "changed" in refused.output.lower()
