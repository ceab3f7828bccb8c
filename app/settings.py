"""The one settings object.

Every knob lives in ``Settings``, read from ``VIRALTRACE_*`` environment
variables (and an optional ``.env`` file), built once by the entry point and
passed down. Nested groups use one underscore after the group name, so
``VIRALTRACE_KAFKA_BOOTSTRAP`` sets ``settings.kafka.bootstrap`` and
``VIRALTRACE_TRACKING_TOKEN_KEYS`` sets ``settings.tracking.token_keys``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

if TYPE_CHECKING:
    from app.storage.cluster import ClusterSpec

# Secrets that ship as defaults so that `viraltrace up` works out of the box.
# Outside development they are refused (see Settings._refuse_placeholders).
DEV_TOKEN_KEY = "dev-insecure-token-key-change-me"
DEV_SALT_SECRET = "dev-insecure-salt-secret-change-me"
MIN_SECRET_BYTES = 32


class KafkaSettings(BaseModel):
    """Kafka producer and topic settings. ``bootstrap=None`` selects the in-process bus."""

    bootstrap: str | None = None
    topic: str = "share-events"
    dlq_topic: str = "share-events-dlq"
    # What the alerts consumer reads, keyed by campaign: spread signals from the
    # cascades consumer and scored texts from the buzz consumer.
    signals_topic: str = "signals"
    partitions: int = Field(12, ge=1, le=10_000)
    replication_factor: int = Field(1, ge=1, le=16)
    # Off for brokers without InitProducerId support (e.g. Tansu 0.6).
    idempotence: bool = True
    compression: Literal["zstd", "lz4", "gzip", "snappy", "none"] = "zstd"
    linger_ms: int = Field(5, ge=0, le=1_000)
    # How long a publish waits for acks before the records go to the spool.
    send_timeout_s: float = Field(5.0, gt=0, le=120)
    client_id: str = "viraltrace-api"
    create_topics: bool = True
    max_request_size: int = Field(1_048_576, ge=1024)
    # Per-partition batch size; larger batches mean fewer produce requests under load.
    max_batch_bytes: int = Field(262_144, ge=1024)


class SpoolSettings(BaseModel):
    """Bounded on-disk spool used while the broker is unreachable."""

    # None means `<data_dir>/spool`.
    dir: Path | None = None
    max_bytes: int = Field(512 * 1024 * 1024, ge=1024)
    segment_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    # How often the replayer probes a broker that was down.
    retry_interval_s: float = Field(1.0, gt=0, le=60)


def _comma_list(value: object) -> object:
    """A comma-separated environment value (or a JSON list) as a list of strings."""
    if isinstance(value, str):
        if value.lstrip().startswith("["):
            return json.loads(value)
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class TrackingSettings(BaseModel):
    """Edge behaviour: tokens, limits, privacy, CORS."""

    public_base_url: str = "http://127.0.0.1:8000"
    # Key id -> secret. The current key signs; every listed key verifies.
    token_keys: dict[int, SecretStr] = Field(default_factory=lambda: {1: SecretStr(DEV_TOKEN_KEY)})
    token_key_id: int = Field(1, ge=0, le=255)
    # Secret from which the daily visitor-hash salts are derived.
    salt_secret: SecretStr = SecretStr(DEV_SALT_SECRET)
    # How many recent visitor ids each process remembers so that a visitor
    # keeps yesterday's id across midnight.
    visitor_continuity_size: int = Field(100_000, ge=0)
    max_events_per_request: int = Field(500, ge=1, le=100_000)
    max_body_bytes: int = Field(1_048_576, ge=1024)
    max_query_bytes: int = Field(8192, ge=256)
    max_text_chars: int = Field(4000, ge=1)
    # Token buckets: sustained rate per second and burst size.
    rate_ip_per_s: float = Field(50.0, gt=0)
    rate_ip_burst: float = Field(200.0, ge=1)
    rate_campaign_per_s: float = Field(5_000.0, gt=0)
    rate_campaign_burst: float = Field(20_000.0, ge=1)
    rate_table_size: int = Field(100_000, ge=100)
    # Comma-separated in the environment, or a JSON list.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    cors_max_age_s: int = Field(600, ge=0)
    # Header set by a trusted proxy with the ISO country code (e.g. cf-ipcountry).
    country_header: str | None = None
    # Header set by a trusted proxy with the client address (e.g. x-forwarded-for).
    # Unset means the socket peer address is the client.
    client_ip_header: str | None = None
    # Tracked links until the control plane owns them: a JSON file of
    # {"slug": {"campaign": ..., "destination": ...}}.
    links_file: Path | None = None
    # How stale the tracked-link cache may get (database edits show up within this).
    links_cache_ttl_s: float = Field(5.0, gt=0, le=3600)
    # Events whose client time is further from server time are rejected.
    max_event_age_s: int = Field(30 * 86_400, ge=60)
    max_event_skew_s: int = Field(3_600, ge=0)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        return _comma_list(value)


class ClickHouseSettings(BaseModel):
    """Where events, cascades and rollups are stored (used by the consumers).

    ``http(s)://user:password@host:8123/database`` for a ClickHouse server or
    cluster, ``chdb:///path`` for the embedded engine; None means
    ``chdb://<data_dir>/clickhouse``.
    """

    dsn: str | None = None
    events_ttl_days: int = Field(400, ge=1)
    # None: the repository's migrations/clickhouse (the image sets its own copy).
    migrations_dir: Path | None = None
    # Cluster mode of the migrations (docs/clickhouse-cluster.md): the name of a
    # cluster in the servers' remote_servers, or a macro such as {cluster}.
    # None or empty: one server, the migrations as written.
    cluster: str | None = None
    # Keeper path of each replicated table in cluster mode; {table} becomes the
    # local table's name, the other macros are the servers' own.
    replica_path: str = "/clickhouse/tables/{shard}/{database}/{table}"
    replica_name: str = "{replica}"

    @field_validator("cluster")
    @classmethod
    def _cluster_name(cls, value: str | None) -> str | None:
        from app.storage.cluster import check_cluster_name

        return check_cluster_name(value) if value else None

    @field_validator("replica_path")
    @classmethod
    def _replica_path(cls, value: str) -> str:
        from app.storage.cluster import check_replica_path

        return check_replica_path(value)

    @field_validator("replica_name")
    @classmethod
    def _replica_name(cls, value: str) -> str:
        from app.storage.cluster import check_replica_name

        return check_replica_name(value)

    def cluster_spec(self) -> ClusterSpec | None:
        """What the migration runner needs for cluster mode; None on a single server."""
        from app.storage.cluster import ClusterSpec

        if self.cluster is None:
            return None
        return ClusterSpec(self.cluster, self.replica_path, self.replica_name)


class ConsumerSettings(BaseModel):
    """Shared consumer plumbing: batching, commit and retry (see consumers/)."""

    group_prefix: str = "viraltrace"
    # A batch is written when it holds this many records or is this old, whichever first.
    batch_max_records: int = Field(50_000, ge=1)
    batch_max_seconds: float = Field(1.0, gt=0, le=60)
    max_poll_records: int = Field(5_000, ge=1)
    # Backoff while a write keeps failing (ClickHouse down): partitions stay paused.
    retry_initial_s: float = Field(0.5, gt=0)
    retry_max_s: float = Field(30.0, gt=0)
    # `viraltrace consume ...` serves /metrics and /healthz on this port; 0 turns it off.
    # (`viraltrace up` has no such port: its API's /metrics carries the consumers' metrics.)
    metrics_port: int = Field(9464, ge=0, le=65_535)
    # Every interface by default: Prometheus scrapes a consumer from another container or
    # host, and the endpoint carries only counts and timings (no event data, no secrets).
    # Set 127.0.0.1 on a shared host where only a local agent scrapes.
    metrics_host: str = "0.0.0.0"
    # Python's cyclic garbage collector runs its youngest generation every this many
    # net allocations (Python's default is 700; 0 keeps it). Consumers allocate a few
    # short-lived tuples per event and hold large acyclic state, so at 700 the
    # collections cost the cascades step about a fifth of its time (docs/benchmarks.md).
    gc_threshold: int = Field(10_000, ge=0)


class CascadeSettings(BaseModel):
    """The cascades consumer (consumers/cascades): state, snapshots and spread signals."""

    # Stats snapshots: each changed cascade is written at most once per interval
    # (the consumer's batch age), so a hot cascade costs one row per interval.
    snapshot_interval_s: float = Field(5.0, gt=0, le=300)
    # A batch is also cut at this many records (only reached above
    # batch_max_records / snapshot_interval_s events per second).
    batch_max_records: int = Field(500_000, ge=1)
    # A share whose parent has not arrived this much later (event time) is an orphan.
    orphan_after_s: float = Field(600.0, ge=0)
    # Pending (parent not yet seen) shares per cascade; beyond it the oldest is orphaned.
    max_pending: int = Field(10_000, ge=1)
    # Cascades with no event for this long (processing time) leave memory after a
    # write; their next event restores them from ClickHouse.
    idle_evict_s: float = Field(900.0, ge=0)
    # Forecast: the exponential kernel's time scale (docs/forecast.md).
    forecast_tau_s: float = Field(1800.0, gt=0)
    # spread.accelerating: shares/min over the last accel_window_min minutes at
    # least accel_factor times the mean of the hour before, and at least accel_min_rate.
    accel_window_min: int = Field(5, ge=1, le=30)
    accel_factor: float = Field(3.0, gt=1)
    accel_min_rate: float = Field(2.0, gt=0)
    # spread.viral: windowed K-factor above viral_k for viral_sustain_min minutes in a row.
    k_window_min: int = Field(10, ge=1, le=720)
    viral_k: float = Field(1.0, gt=0)
    viral_sustain_min: int = Field(3, ge=1, le=120)
    viral_min_sharers: int = Field(20, ge=1)
    # spread.forecast_exceeds: forecast final size at or above this.
    forecast_threshold: float = Field(1_000.0, gt=0)
    # spread.structural_virality: structural virality at or above this at this size.
    virality_threshold: float = Field(4.0, gt=1)
    virality_min_size: int = Field(50, ge=3)


class AlertSettings(BaseModel):
    """The buzz scorer and the alerts consumer (consumers/buzz, consumers/alerts).

    Defaults for every alert kind; a campaign's alert rules (control plane)
    override ``window_s``, ``min_volume``, ``cooldown_s`` and the ``open`` /
    ``resolve`` thresholds per kind, or disable a kind.
    """

    # Event time: a campaign's watermark trails its newest event by this much, and a
    # minute closes (baselines update, open alerts may resolve) once the watermark passes it.
    out_of_order_s: float = Field(5.0, ge=0, le=3600)
    # Events older than the watermark by more than this are counted and left out of the windows.
    max_lateness_s: float = Field(86_400.0, ge=0)
    # Baselines: EWMA over closed minutes with this half-life.
    baseline_halflife_min: float = Field(60.0, gt=0)
    # Buzz alerts wait for this many closed minutes with volume in the baseline.
    warmup_min: int = Field(15, ge=1)
    # How much history a restarted consumer rebuilds its baselines from.
    history_min: int = Field(360, ge=1, le=10_080)
    # z 4 over a sliding 2-minute window: about 3 false negative-spike alerts per
    # 100 stream-hours, a 75% spike found in under 50 s (`viraltrace bench alerts`).
    window_s: int = Field(120, ge=60, le=86_400)
    min_volume: int = Field(20, ge=0)
    cooldown_s: int = Field(1800, ge=0)
    # buzz.negative_spike and buzz.volume_spike: z-scores against the baseline.
    z_open: float = Field(4.0, gt=0)
    z_resolve: float = Field(2.0, ge=0)
    # buzz.negative_velocity: negative shares per positive share in the window.
    velocity_open: float = Field(2.0, gt=1)
    velocity_resolve: float = Field(1.2, gt=0)
    # Alert rules and campaign languages are re-read from the control plane this often.
    rules_refresh_s: float = Field(30.0, gt=0)
    # The alerts consumer writes (windows, alerts, webhooks) at most this often.
    flush_interval_s: float = Field(1.0, gt=0, le=60)

    @model_validator(mode="after")
    def _hysteresis(self) -> AlertSettings:
        if self.z_resolve >= self.z_open or self.velocity_resolve >= self.velocity_open:
            raise ValueError("a resolve threshold must be below its open threshold (hysteresis)")
        return self


class DatabaseSettings(BaseModel):
    """The control-plane database (campaigns, links, keys, webhooks).

    A SQLAlchemy async URL, e.g. ``postgresql+asyncpg://user@host/db``; None
    means a SQLite file in the data directory.
    """

    url: str | None = None
    # Where the Alembic scripts are; None means migrations/alembic in the source tree.
    migrations_dir: Path | None = None


class QuerySettings(BaseModel):
    """The read API (``/v1/campaigns/...``, ``/v1/cascades/...``; docs/query.md).

    ``read_keys`` are operator bearer keys allowed to read every campaign
    (control-plane API keys with the ``read`` scope work too). Comma-separated
    in the environment. ``viraltrace up`` makes one under the data directory
    when none is set.

    ``rollup_cache_buckets``: rollup buckets whose exact counts are kept in
    memory, per API process (about 250 bytes each; 0: none, every read merges
    every state in its range). ``tree_cache_size``: cascade trees kept with
    their descendants, per API process (0: none).
    """

    read_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    rollup_cache_buckets: int = Field(50_000, ge=0)
    tree_cache_size: int = Field(8, ge=0)

    @field_validator("read_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("read_keys")
    @classmethod
    def _long_enough(cls, value: list[SecretStr]) -> list[SecretStr]:
        for key in value:
            if len(key.get_secret_value()) < 16:
                raise ValueError("a read key has at least 16 characters")
        return value


class WebhookSettings(BaseModel):
    """Alert webhooks: the outbox, the notifier that delivers it, and the SSRF guard
    (docs/webhooks.md).

    The environment spells the group ``VIRALTRACE_WEBHOOK_`` (as the docs do) or
    ``VIRALTRACE_WEBHOOKS_``: ``VIRALTRACE_WEBHOOK_ALLOWED_HOSTS=127.0.0.1,10.1.0.0/16``.
    """

    # Hosts (exact names) or addresses/CIDRs that webhook URLs may reach even though
    # they are not public (loopback, RFC 1918, ...). Comma-separated in the environment.
    # Cloud metadata endpoints are refused whatever this says.
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # One entry per attempt: seconds from enqueue to attempt 1, then from each failed
    # attempt to the next (at once, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h). After
    # the last one fails the delivery is `failed`. Comma-separated in the environment.
    retry_schedule_s: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0],
        min_length=1,
    )
    # Each delay is scaled by a random factor in [1 - jitter, 1 + jitter].
    jitter: float = Field(0.1, ge=0, le=1)
    # Whole attempt (resolve, connect, send, first 500 characters of the answer).
    timeout_s: float = Field(15.0, gt=0, le=300)
    # Largest body enqueue accepts (the JSON sent, in bytes).
    max_body_bytes: int = Field(20_000, ge=256, le=1_048_576)
    # After a secret rotation the previous secret keeps signing (next to the new one)
    # for this long.
    rotation_grace_s: int = Field(86_400, ge=0)
    # A receiver's Retry-After is honoured up to this many seconds.
    max_retry_after_s: float = Field(86_400.0, ge=0)
    # How often the notifier looks for due deliveries when it found none.
    poll_interval_s: float = Field(1.0, gt=0, le=60)
    # Attempts in flight at once per notifier process.
    concurrency: int = Field(16, ge=1, le=1_000)
    # A claimed delivery whose notifier died mid-attempt is attempted again after this.
    lease_s: float = Field(60.0, gt=0)
    # Finished deliveries (delivered, failed, dead) and their attempt log are deleted
    # this many days after they were enqueued (longer than any retry schedule), so
    # the outbox does not grow forever; pending ones are never deleted.
    retention_days: float = Field(30.0, gt=0)
    # How often a notifier looks for expired deliveries.
    prune_interval_s: float = Field(3600.0, gt=0)

    @field_validator("allowed_hosts", "retry_schedule_s", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return _comma_list(value)

    @field_validator("retry_schedule_s")
    @classmethod
    def _nonnegative(cls, value: list[float]) -> list[float]:
        if any(delay < 0 for delay in value):
            raise ValueError("retry delays are seconds >= 0")
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts_or_networks(cls, value: list[str]) -> list[str]:
        from app.webhooks.ssrf import Allowlist

        Allowlist.parse(value)  # raises ValueError naming the bad entry
        return value

    @model_validator(mode="after")
    def _lease_outlives_an_attempt(self) -> WebhookSettings:
        # A lease shorter than an attempt would let a second notifier send the same
        # attempt while the first one is still waiting for the receiver.
        if self.lease_s <= self.timeout_s:
            raise ValueError(
                f"webhooks.lease_s ({self.lease_s}) must be longer than "
                f"webhooks.timeout_s ({self.timeout_s})"
            )
        return self


class ServerSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65_535)
    workers: int = Field(1, ge=1, le=256)
    server: Literal["granian", "uvicorn"] = "granian"
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class Settings(BaseSettings):
    """All of viraltrace's configuration. Build once, pass down."""

    model_config = SettingsConfigDict(
        env_prefix="VIRALTRACE_",
        env_nested_delimiter="_",
        env_nested_max_split=1,
        env_file=".env",
        extra="ignore",
        # ``webhooks`` is read from the environment under two spellings (aliases
        # below); by name it is ``Settings(webhooks=...)`` as usual.
        validate_by_name=True,
    )

    environment: Literal["development", "test", "production"] = "development"
    data_dir: Path = Path(".viraltrace")
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    spool: SpoolSettings = Field(default_factory=SpoolSettings)
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)
    clickhouse: ClickHouseSettings = Field(default_factory=ClickHouseSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    consumer: ConsumerSettings = Field(default_factory=ConsumerSettings)
    cascades: CascadeSettings = Field(default_factory=CascadeSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    query: QuerySettings = Field(default_factory=QuerySettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    # VIRALTRACE_WEBHOOK_* (the documented spelling) or VIRALTRACE_WEBHOOKS_*.
    webhooks: WebhookSettings = Field(
        default_factory=WebhookSettings,
        validation_alias=AliasChoices("viraltrace_webhooks", "viraltrace_webhook"),
    )

    @model_validator(mode="after")
    def _check_keys(self) -> Settings:
        if self.tracking.token_key_id not in self.tracking.token_keys:
            raise ValueError(
                f"tracking.token_key_id {self.tracking.token_key_id} is not in tracking.token_keys"
            )
        return self

    @model_validator(mode="after")
    def _refuse_placeholders(self) -> Settings:
        if self.environment == "development":
            return self
        secrets = {f"tracking.token_keys[{k}]": v for k, v in self.tracking.token_keys.items()}
        secrets["tracking.salt_secret"] = self.tracking.salt_secret
        for name, secret in secrets.items():
            raw = secret.get_secret_value()
            if raw in (DEV_TOKEN_KEY, DEV_SALT_SECRET) or len(raw.encode()) < MIN_SECRET_BYTES:
                raise ValueError(
                    f"{name} is a placeholder or shorter than {MIN_SECRET_BYTES} bytes; "
                    f"set a real secret outside development"
                )
        return self

    @property
    def spool_dir(self) -> Path:
        return self.spool.dir or self.data_dir / "spool"

    @property
    def clickhouse_dsn(self) -> str:
        """The configured DSN, else the embedded engine under the data directory."""
        return self.clickhouse.dsn or f"chdb://{(self.data_dir / 'clickhouse').resolve()}"
