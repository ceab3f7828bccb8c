"""The Grafana provisioning and dashboards in deploy/grafana.

- The files are valid: JSON dashboards with unique uids, panel ids and refIds,
  every data source referenced by a uid that datasources.yaml provisions, a
  dashboard provider pointing where the dashboards are mounted.
- Every ClickHouse query (each panel target and the ``campaign`` variable) runs
  on the real migrated schema in chdb, holding rows written by the real sink,
  cascades and alerts pipelines, and returns the columns declared below per
  panel, with rows. A few panels are also checked against the seeded numbers.
- Every PromQL expression parses (promql-parser) and names only metrics that
  the app registers (``ApiMetrics``, ``ConsumerMetrics``, ``WebhookMetrics``),
  with labels those metrics have.

How a ClickHouse query is substituted before it runs, as Grafana and the
grafana-clickhouse-datasource plugin (4.x) do it:

1. Template variables (Grafana's frontend, the plugin's
   ``applyTemplateVariables``): ``${campaign:singlequote}`` becomes the value in
   single quotes with each ``'`` escaped as ``\\'`` (Grafana's "singlequote"
   format); a bare ``$campaign`` becomes the raw value (the plugin's ``format``).
2. Macros (the plugin's backend, ``pkg/macros/macros.go``), from the query's
   time range [from, to] and interval (seconds, at least 1):
   ``$__timeFilter(c)`` -> ``c >= toDateTime(from) AND c <= toDateTime(to)``;
   ``$__timeFilter_ms(c)`` -> the same with ``fromUnixTimestamp64Milli(ms)``;
   ``$__fromTime`` / ``$__toTime`` -> ``toDateTime(from)`` / ``toDateTime(to)``;
   ``$__fromTime_ms`` / ``$__toTime_ms`` -> ``fromUnixTimestamp64Milli(ms)``;
   ``$__timeInterval(c)`` -> ``toStartOfInterval(toDateTime(c), INTERVAL <s> second)``;
   ``$__interval_s`` -> ``<s>``.
   Anything else starting with ``$`` left after that fails the test: it would
   reach ClickHouse as it is.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import promql_parser
import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from app.bus.memory import MemoryRecord
from app.metrics import ApiMetrics, WebhookMetrics
from app.settings import AlertSettings, CascadeSettings
from app.storage.clickhouse import ClickHouse
from app.storage.migrate import MIGRATIONS_DIR, migrate
from consumers.alerts.pipeline import AlertsPipeline
from consumers.base import ConsumerMetrics
from consumers.cascades.pipeline import CascadesPipeline
from consumers.sink.pipeline import EventsPipeline
from tests.cascadehelpers import clicks_for, random_tree, tree_shares, wire_event
from tests.test_alerts_detect import series
from tests.test_alerts_pipeline import Outbox
from tests.test_alerts_pipeline import records as buzz_records
from tests.test_storage import make_event

GRAFANA = Path(__file__).resolve().parents[1] / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
CLICKHOUSE_PLUGIN = "grafana-clickhouse-datasource"
CAMPAIGN = "spring"
OTHER_CAMPAIGN = "autumn"
MINUTE_MS = 60_000
NOW_MS = time.time_ns() // 1_000_000
# Seeded event times start two hours ago (recent: inside the tables' TTL).
BASE_MS = NOW_MS // MINUTE_MS * MINUTE_MS - 120 * MINUTE_MS
RANGE_S = ((BASE_MS - 3_600_000) // 1000, NOW_MS // 1000 + 300)
INTERVAL_S = 60

# What each ClickHouse panel answers, declared by hand (the queries must match it).
EXPECTED_COLUMNS: dict[str, list[str]] = {
    "Events by type": ["time", "type", "event_count"],
    "Events in range by type": ["type", "event_count"],
    "Unique visitors": ["time", "unique_visitors"],
    "Shares by channel": ["channel_name", "shares"],
    "Cascades": ["cascades", "largest", "k_factor", "total_conversions"],
    "Top cascades": [
        "root",
        "size",
        "reach",
        "depth",
        "virality",
        "growth_per_min",
        "forecast_size",
        "clicks",
        "conversions",
        "last_activity",
    ],  # fmt: skip
    "Top spreaders": ["root", "node", "descendants"],
    "Channel mix by generation": ["generation", "channel_name", "shares"],
    "Open alerts": ["open_alerts"],
    "Top negative terms": ["negative_term", "mentions"],
    "Buzz volume": ["time", "items", "negative_items", "positive_items"],
    "Negative share of buzz": ["time", "negative_ratio"],
    "Alerts": [
        "opened_at",
        "kind",
        "state",
        "value",
        "baseline",
        "threshold",
        "resolved_at",
        "id",
    ],  # fmt: skip
}
# Grafana's own variables in PromQL, replaced as a Grafana with these settings would.
PROMQL_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


# ---- the files ----------------------------------------------------------------


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in DASHBOARDS}


def provisioned() -> dict[str, dict[str, Any]]:
    """The provisioned data sources by uid."""
    config = yaml.safe_load((GRAFANA / "provisioning/datasources/datasources.yaml").read_text())
    assert config["apiVersion"] == 1
    return {source["uid"]: source for source in config["datasources"]}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # panels inside collapsed rows


def targets_of(plugin_type: str) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(dashboard file, panel, target) for every target on a data source of ``plugin_type``."""
    return [
        (name, panel, target)
        for name, dashboard in load_dashboards().items()
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
        if target["datasource"]["type"] == plugin_type
    ]


def test_the_layout_is_what_the_deploy_files_mount() -> None:
    assert [p.name for p in DASHBOARDS] == ["campaign-spread.json", "ops-health.json"]
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/dashboards.yaml").read_text())
    assert providers["apiVersion"] == 1
    [provider] = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_the_data_sources_are_clickhouse_and_prometheus_with_credentials_from_the_env() -> None:
    sources = provisioned()
    assert set(sources) == {"clickhouse", "prometheus"}
    clickhouse, prometheus = sources["clickhouse"], sources["prometheus"]
    assert clickhouse["type"] == CLICKHOUSE_PLUGIN
    assert (clickhouse["jsonData"]["host"], clickhouse["jsonData"]["port"]) == ("clickhouse", 8123)
    assert clickhouse["jsonData"]["protocol"] == "http"
    # No secret in the file: Grafana expands ${VAR} from its environment.
    assert clickhouse["jsonData"]["username"] == "${CLICKHOUSE_USER}"
    assert clickhouse["secureJsonData"] == {"password": "${CLICKHOUSE_PASSWORD}"}
    assert (prometheus["type"], prometheus["url"]) == ("prometheus", "http://prometheus:9090")


def test_dashboards_are_valid_with_unique_uids_and_provisioned_data_sources() -> None:
    sources = provisioned()
    dashboards = load_dashboards()
    uids = [d["uid"] for d in dashboards.values()]
    assert len(set(uids)) == len(uids)
    for name, dashboard in dashboards.items():
        assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", dashboard["uid"]), name
        assert dashboard["title"] and dashboard["id"] is None, name
        assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
        ids = [panel["id"] for panel in panels(dashboard)]
        assert len(set(ids)) == len(ids), f"{name}: panel ids repeat"
        occupied: set[tuple[int, int]] = set()
        for panel in panels(dashboard):
            where = f"{name} / {panel['title']}"
            ds = panel["datasource"]
            assert ds["uid"] in sources and ds["type"] == sources[ds["uid"]]["type"], where
            refs = [t["refId"] for t in panel["targets"]]
            assert refs and len(set(refs)) == len(refs), where
            assert all(t["datasource"] == ds for t in panel["targets"]), where
            pos = panel["gridPos"]
            assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, where
            cells = {
                (x, y)
                for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])
            }
            assert not cells & occupied, f"{where} overlaps another panel"
            occupied |= cells
        for variable in dashboard["templating"]["list"]:
            if "datasource" in variable:
                assert variable["datasource"]["uid"] in sources, variable["name"]


def test_clickhouse_targets_are_sql_with_the_format_their_query_type_needs() -> None:
    for name, panel, target in targets_of(CLICKHOUSE_PLUGIN):
        where = f"{name} / {panel['title']}"
        assert target["editorType"] == "sql" and target["rawSql"].strip(), where
        # The plugin maps query types to sqlds formats: timeseries 0, table 1.
        expected_format = {"timeseries": 0, "table": 1}[target["queryType"]]
        assert target["format"] == expected_format, where
        assert (target["queryType"] == "timeseries") == (panel["type"] == "timeseries"), where
    spread = load_dashboards()["campaign-spread.json"]
    [variable] = spread["templating"]["list"]
    assert (variable["name"], variable["type"]) == ("campaign", "query")
    assert variable["datasource"]["uid"] == "clickhouse"
    titles = {panel["title"] for _, panel, _ in targets_of(CLICKHOUSE_PLUGIN)}
    assert titles == set(EXPECTED_COLUMNS), "declare the columns of every ClickHouse panel"


# ---- ClickHouse queries on the real schema -------------------------------------


def singlequote(value: str) -> str:
    """Grafana's "singlequote" variable format."""
    return "'" + value.replace("'", "\\'") + "'"


def substitute(sql: str, variables: dict[str, str]) -> str:
    """``sql`` as the plugin sends it to ClickHouse (see the module docstring)."""
    for name, value in variables.items():
        sql = sql.replace(f"${{{name}:singlequote}}", singlequote(value))
        sql = re.sub(rf"\$\{{{name}\}}|\${name}\b", lambda _, raw=value: raw, sql)
    start, end = RANGE_S
    start_ms, end_ms = start * 1000, end * 1000

    def time_filter(match: re.Match[str]) -> str:
        column, unit = match.group(2).strip(), match.group(1)
        low, high = (
            (f"fromUnixTimestamp64Milli({start_ms})", f"fromUnixTimestamp64Milli({end_ms})")
            if unit == "_ms"
            else (f"toDateTime({start})", f"toDateTime({end})")
        )
        return f"{column} >= {low} AND {column} <= {high}"

    sql = re.sub(r"\$__timeFilter(_ms)?\(([^)]*)\)", time_filter, sql)
    sql = re.sub(
        r"\$__timeInterval\(([^)]*)\)",
        lambda m: (
            f"toStartOfInterval(toDateTime({m.group(1).strip()}), INTERVAL {INTERVAL_S} second)"
        ),
        sql,
    )
    sql = sql.replace("$__fromTime_ms", f"fromUnixTimestamp64Milli({start_ms})")
    sql = sql.replace("$__toTime_ms", f"fromUnixTimestamp64Milli({end_ms})")
    sql = sql.replace("$__fromTime", f"toDateTime({start})")
    sql = sql.replace("$__toTime", f"toDateTime({end})")
    sql = sql.replace("$__interval_s", str(INTERVAL_S))
    assert "$" not in sql, f"a macro or variable the plugin would not replace:\n{sql}"
    return sql


def test_the_substitution_matches_the_plugins_documented_output() -> None:
    start, end = RANGE_S
    assert substitute("WHERE $__timeFilter(ts)", {}) == (
        f"WHERE ts >= toDateTime({start}) AND ts <= toDateTime({end})"
    )
    assert substitute("$__timeInterval(ts)", {}) == (
        f"toStartOfInterval(toDateTime(ts), INTERVAL {INTERVAL_S} second)"
    )
    assert substitute("c = ${campaign:singlequote} OR c = '$campaign'", {"campaign": "o'k"}) == (
        "c = 'o\\'k' OR c = 'o'k'"
    )
    with pytest.raises(AssertionError, match="would not replace"):
        substitute("WHERE $__unknown(ts)", {})


@pytest.fixture(scope="module")
def seeded(engine: str) -> Iterator[tuple[ClickHouse, dict[str, Any]]]:
    """A migrated database holding what the real pipelines write for two campaigns,
    and the numbers the seeding knows (see ``seed``)."""
    with ClickHouse(engine, database="grafana", create_database=True) as ch:
        migrate(ch, MIGRATIONS_DIR, settings_ttl_days=400)
        facts = asyncio.run(seed(ch))
        yield ch, facts


async def seed(ch: ClickHouse) -> dict[str, Any]:
    """Events through the sink pipeline (events and rollups), share trees through the
    cascades pipeline (cascade_stats, spread signals), buzz items and those signals
    through the alerts pipeline (buzz_items, buzz_windows, alerts)."""
    rng = random.Random(7)
    wire: list[dict[str, Any]] = []
    trees: dict[str, list[str]] = {CAMPAIGN: [], OTHER_CAMPAIGN: []}
    for i, (kind, size, campaign) in enumerate(
        [
            ("uniform", 30, CAMPAIGN),
            ("chain", 12, CAMPAIGN),
            ("star", 20, CAMPAIGN),
            ("preferential", 15, OTHER_CAMPAIGN),
        ]  # fmt: skip
    ):
        shares = tree_shares(
            random_tree(kind, size, rng), rng, campaign=campaign, start_ms=BASE_MS + i * 60_000
        )
        trees[campaign].append(f"{shares[0].root:016x}")
        wire += [wire_event(item) for item in [*shares, *clicks_for(shares, rng, per_node=0.5)]]
    for _ in range(300):  # page views with channels and visitors, outside any cascade
        ts = BASE_MS + rng.randrange(0, 100 * MINUTE_MS)
        campaign = rng.choice([CAMPAIGN, OTHER_CAMPAIGN])
        wire.append(make_event(rng, campaign=campaign, type="view", ts=ts, received_at=ts + 20))
    records = [  # keyed by cascade root, as the API keys them; other events by nothing here
        MemoryRecord("share-events", 0, i, 0, str(e["root"] or "").encode(), orjson.dumps(e))
        for i, e in enumerate(wire)
    ]

    sink = EventsPipeline(ch)
    await sink.write([row for r in records for row in sink.process(r)], "grafana-sink")

    signals: list[bytes] = []

    async def publish(topic: str, key: bytes, value: bytes) -> None:
        signals.append(value)

    cascades = CascadesPipeline(
        CascadeSettings(virality_threshold=3.0, virality_min_size=5), ch, publish=publish
    )
    cascade_records = [r for r in records if r.key]
    await cascades.prepare(cascade_records)
    for r in cascade_records:
        cascades.process(r)
    await cascades.write([], "grafana-cascades")

    alerts = AlertsPipeline(AlertSettings(), ch, notify=Outbox())
    buzz = series(30, 40, 0.1, start=BASE_MS) + series(
        2, 40, 0.75, start=BASE_MS + 30 * MINUTE_MS, seed=9
    )  # a calm half hour, then a negative spike
    signal_records = buzz_records(buzz) + [
        MemoryRecord("signals", 0, len(buzz) + i, 0, CAMPAIGN.encode(), value)
        for i, value in enumerate(signals)
    ]
    await alerts.prepare(signal_records)
    for r in signal_records:
        alerts.process(r)
    await alerts.write([], "grafana-alerts")
    return {
        "events_by_type": Counter(e["type"] for e in wire if e["campaign"] == CAMPAIGN),
        "roots": trees[CAMPAIGN],
        "signals": len(signals),
    }


def describe(ch: ClickHouse, sql: str) -> list[tuple[str, str]]:
    """(name, type) of each column ``sql`` returns, from ClickHouse itself."""
    return [(row[0], row[1]) for row in ch.query_rows(f"DESCRIBE ({sql})")]


@pytest.mark.clickhouse
def test_the_campaign_variable_lists_the_campaigns(
    seeded: tuple[ClickHouse, dict[str, Any]],
) -> None:
    ch, _ = seeded
    [variable] = load_dashboards()["campaign-spread.json"]["templating"]["list"]
    rows = ch.query_rows(substitute(variable["query"], {}))
    assert rows == [(OTHER_CAMPAIGN,), (CAMPAIGN,)]


@pytest.mark.clickhouse
@pytest.mark.parametrize(
    ("title", "target", "panel_type"),
    [
        pytest.param(panel["title"], target, panel["type"], id=panel["title"])
        for _, panel, target in targets_of(CLICKHOUSE_PLUGIN)
    ],
)
def test_each_clickhouse_panel_runs_on_the_real_schema(
    seeded: tuple[ClickHouse, dict[str, Any]], title: str, target: dict[str, Any], panel_type: str
) -> None:
    ch, _ = seeded
    sql = substitute(target["rawSql"], {"campaign": CAMPAIGN})
    columns = describe(ch, sql)
    assert [name for name, _ in columns] == EXPECTED_COLUMNS[title]
    rows = ch.query_rows(sql)
    assert rows, f"{title}: no rows, although the seeded campaign has data for it"
    if target["queryType"] == "timeseries":
        # The plugin needs a DateTime column named time, rows in time order.
        assert columns[0][0] == "time" and columns[0][1].startswith("DateTime"), columns
        assert [r[0] for r in rows] == sorted(r[0] for r in rows)


def rows_of(ch: ClickHouse, title: str, campaign: str = CAMPAIGN) -> list[tuple[Any, ...]]:
    [target] = [t for _, p, t in targets_of(CLICKHOUSE_PLUGIN) if p["title"] == title]
    return ch.query_rows(substitute(target["rawSql"], {"campaign": campaign}))


@pytest.mark.clickhouse
def test_panels_count_what_was_seeded_for_the_chosen_campaign_only(
    seeded: tuple[ClickHouse, dict[str, Any]],
) -> None:
    ch, facts = seeded
    assert dict(rows_of(ch, "Events in range by type")) == dict(facts["events_by_type"])
    by_interval = Counter[str]()
    for _, event_type, count in rows_of(ch, "Events by type"):
        by_interval[event_type] += count
    assert by_interval == facts["events_by_type"]
    [(cascades, largest, k_factor, _)] = rows_of(ch, "Cascades")
    assert (cascades, largest) == (3, 30)
    assert 0 < k_factor < 1  # finished trees: every recruit is a sharer too
    top = rows_of(ch, "Top cascades")
    assert sorted(r[0] for r in top) == sorted(facts["roots"])
    assert [r[1] for r in top] == [30, 20, 12]
    assert sum(shares for _, shares in rows_of(ch, "Shares by channel")) == 30 + 12 + 20
    [(open_alerts,)] = rows_of(ch, "Open alerts")
    assert open_alerts >= 1
    assert "buzz.negative_spike" in {r[1] for r in rows_of(ch, "Alerts")}
    # The other campaign has its own cascade and no buzz.
    [(other_cascades, *_)] = rows_of(ch, "Cascades", OTHER_CAMPAIGN)
    assert other_cascades == 1
    assert rows_of(ch, "Buzz volume", OTHER_CAMPAIGN) == []


# ---- PromQL against the app's metric catalogue ---------------------------------


def metric_catalogue() -> dict[str, tuple[str, ...]]:
    """Every sample name the app's registries can export, with its metric's labels.

    Names come from ``collect()``; a counter exports ``<name>_total``, a histogram
    ``<name>_bucket`` (plus the ``le`` label), ``<name>_count`` and ``<name>_sum``.
    """
    registry = CollectorRegistry()
    owners: list[object] = [
        ApiMetrics(registry),
        ConsumerMetrics(registry),
        WebhookMetrics(registry),
    ]
    labels = {
        metric._name: tuple(metric._labelnames)
        for owner in owners
        for metric in vars(owner).values()
        if isinstance(metric, MetricWrapperBase)
    }
    catalogue: dict[str, tuple[str, ...]] = {}
    for family in registry.collect():
        own = labels[family.name]
        if family.type == "counter":
            catalogue[f"{family.name}_total"] = own
        elif family.type == "histogram":
            catalogue[f"{family.name}_bucket"] = (*own, "le")
            catalogue[f"{family.name}_count"] = own
            catalogue[f"{family.name}_sum"] = own
        else:
            catalogue[family.name] = own
    return catalogue


def test_the_catalogue_holds_what_the_issue_asks_for() -> None:
    catalogue = metric_catalogue()
    for name, wanted in {
        "viraltrace_ingest_events_total": ("type", "outcome"),
        "viraltrace_dlq_events_total": ("reason",),
        "viraltrace_spool_depth_records": (),
        "viraltrace_producer_send_seconds_bucket": ("le",),
        "viraltrace_consumer_lag_records": ("consumer", "topic", "partition"),
        "viraltrace_consumer_batch_records_bucket": ("consumer", "le"),
        "viraltrace_consumer_write_seconds_bucket": ("consumer", "le"),
        "viraltrace_consumer_end_to_end_seconds_bucket": ("consumer", "le"),
        "viraltrace_webhook_attempts_total": ("outcome",),
    }.items():
        assert set(wanted) <= set(catalogue[name]), name


def promql(expr: str) -> promql_parser.Expr:
    for variable, value in PROMQL_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a Grafana variable this test does not know: {expr}"
    return promql_parser.parse(expr)


@pytest.mark.parametrize(
    ("title", "target"),
    [
        pytest.param(panel["title"], target, id=f"{panel['title']}-{target['refId']}")
        for _, panel, target in targets_of("prometheus")
    ],
)
def test_each_prometheus_target_uses_metrics_and_labels_the_app_exports(
    title: str, target: dict[str, Any]
) -> None:
    catalogue = metric_catalogue()
    selectors: list[promql_parser.VectorSelector] = []
    grouping: set[str] = set()

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            selectors.append(node)
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            grouping.update(node.modifier.labels)

    promql_parser.walk(promql(target["expr"]), visit)
    assert selectors, f"{title}: no metric in {target['expr']}"
    available: set[str] = set()
    for selector in selectors:
        assert selector.name in catalogue, f"{title}: {selector.name} is not exported"
        own = set(catalogue[selector.name])
        matched = {m.name for m in selector.matchers.matchers}
        assert matched <= own, f"{title}: {selector.name} has no label {matched - own}"
        available |= own
    assert grouping <= available, f"{title}: grouped by labels {grouping - available}"
    legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
    assert legend <= grouping, f"{title}: the legend names labels the result lacks"
