"""Configuration: one frozen Settings object, read once at start-up.

Sources, later ones winning: the defaults below, an optional TOML file (``--config``
or ``CDP_CONFIG``; keys as in the seed, e.g. ``window-size = "5s"``, either at top
level or under ``[cdp]``), then environment variables (``CDP_WINDOW_SIZE=5s``,
``CDP_REDIS_URL=redis://...``). Durations are written ``500ms``, ``5s``, ``2m``,
``24h``, ``7d`` (or a bare number of seconds). A bad value raises SettingsError naming
the key, and the CLI stops with that message.
"""

from __future__ import annotations

import functools
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from cdp.errors import SettingsError
from cdp.identity import BLOCKED_VALUES

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, None: 1000}


def parse_duration_ms(text: str | int | float, key: str = "duration") -> int:
    """``"5s"`` -> 5000. A bare number is seconds."""
    if isinstance(text, bool):
        raise SettingsError(f"{key}: expected a duration like '5s', got {text!r}")
    if isinstance(text, int | float):
        return int(text * 1000)
    if not isinstance(text, str):
        raise SettingsError(f"{key}: expected a duration like '5s', got {text!r}")
    match = _DURATION.match(text)
    if not match:
        raise SettingsError(
            f"{key}: {text!r} is not a duration; write it like '500ms', '5s', '2m', '24h' or '7d'"
        )
    return int(float(match.group(1)) * _UNIT_MS[match.group(2)])


def format_duration(ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0 and ms >= size:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of the service. Durations are in milliseconds (``*_ms``)."""

    redis_url: str = "redis://localhost:6379/0"
    # "auto" (ask the server once at connect: INFO cluster), "yes" (redis-url names a
    # node of a Redis Cluster) or "no"; a redis-cluster:// URL means yes (cdp/connect.py).
    redis_cluster: str = "auto"
    # How workers apply events (docs/cluster.md): "batch" (apply_batch, one script per
    # partition batch: one Redis only), "profile" (the profile protocol: one-slot
    # scripts per profile, claims and merges driven by the worker: runs anywhere) or
    # "auto" (batch on one Redis, profile on a cluster).
    apply_protocol: str = "auto"
    # Windowing (DESIGN.md "Windowing").
    window_size_ms: int = 5_000
    grace_period_ms: int = 120_000
    dedup_ttl_ms: int = 600_000
    # Locates the partition dedup hashes of before dedup moved into the profiles (by
    # crc32 of the eventId), read until they expire: README "Configuration".
    dedup_shards: int = 32
    ticker_interval_ms: int = 1_000
    max_future_skew_ms: int = 300_000
    # Partitioning and workers.
    partitions: int = 16
    lease_ttl_ms: int = 5_000
    max_buffer: int = 100_000
    batch_size: int = 200
    read_count: int = 1_000
    stream_retention_ms: int = 0
    dropped_stream_maxlen: int = 100_000
    # Rolling counters.
    counter_bucket_ms: int = 60_000
    counter_retention_ms: int = 86_400_000
    # Segments (seed defaults; used by the segment engine).
    power_user_threshold: int = 5
    power_user_window_ms: int = 86_400_000
    reengage_inactivity_threshold_ms: int = 600_000
    reengage_duration_ms: int = 3_600_000
    # Identity guard rails (README "Identity resolution").
    max_user_ids: int = 1
    max_emails: int = 5
    max_anonymous_ids: int = 100
    max_merges: int = 100
    merge_different_users: bool = False
    # Extra placeholder values never used as identifiers, comma-separated (added to
    # the built-in null, undefined, 0, -1, anonymous, unknown, [object Object]...).
    blocked_identifiers: str = ""
    # Segments: cdp:segment-events is capped near this many entries (MAXLEN ~).
    segment_events_maxlen: int = 1_000_000
    # The console: cdp:rejections (the ingest routes' 4xx answers) is capped near this.
    rejections_maxlen: int = 1_000
    # The console's debugger: cdp:debugger (the events stored while it is open) is
    # capped near this many events; an API process buffers at most as many between
    # flushes (the oldest dropped when Redis is slow).
    debugger_maxlen: int = 10_000
    # Webhooks: first retry after webhook-backoff, doubling up to 10 min; a delivery
    # is given up (cdp:webhooks:dead) once it has failed for webhook-retry-for.
    webhook_backoff_ms: int = 1_000
    webhook_retry_for_ms: int = 3_600_000
    webhook_timeout_ms: int = 10_000
    # The admin token (Authorization: Bearer ...) for segment, webhook and profile
    # routes; empty disables them (every admin route answers 401).
    admin_token: str = ""
    # Write keys of the Segment-compatible /v1 routes: "key1=web,key2=ios" (key=source).
    write_keys: str = ""
    # Ingest.
    max_event_bytes: int = 32 * 1024
    # An ingest request is answered 202 once its events reached this many replicas
    # (Redis WAIT on the connection that wrote them), else 503 after
    # ingest-replica-timeout: README "Guarantees". 0: once the primary holds them.
    ingest_min_replicas: int = 0
    ingest_replica_timeout_ms: int = 1_000
    # Connections (README "Configuration"): a request's headers must arrive within
    # header-timeout of the connection opening or of the previous answer (so it is also
    # the keep-alive idle time), its body within body-timeout; at most max-connections
    # (and never more than the descriptor limit allows) are open at once.
    header_timeout_ms: int = 10_000
    body_timeout_ms: int = 30_000
    max_connections: int = 10_000
    # API processes serving one port (SO_REUSEPORT) under a supervising parent:
    # 0 means one per core this process may run on (the CPU affinity mask).
    api_processes: int = 0
    # The API's event loop: "auto" (uvloop when it is installed, else asyncio's),
    # "uvloop" (refused at start-up when it is not installed) or "asyncio".
    event_loop: str = "auto"
    # Redis: a command not answered within redis-timeout fails (the API answers 503).
    redis_timeout_ms: int = 5_000
    # The live stream sends an SSE comment after this long without an event.
    stream_heartbeat_ms: int = 15_000
    # The sweeper's worker writes one sample of the metrics' totals to
    # cdp:metrics:history this often (the console's health page).
    metrics_sample_interval_ms: int = 10_000
    # AOF fsync of the redis-server ``cdp up`` embeds: "everysec" (a crash of the
    # machine can lose about the last second of acknowledged events; a kill -9 of Redis
    # alone only what a slow disk made it postpone) or "always" (fsync before every
    # reply: an acknowledged event survives both). README "Reliability".
    redis_appendfsync: str = "everysec"
    # "system", or "redis": read the time from the key cdp:clock (tests drive it).
    clock: str = "system"
    log_level: str = "info"
    log_format: str = "auto"

    @property
    def blocked_values(self) -> frozenset[str]:
        return _blocked_values(self.blocked_identifiers)

    @property
    def api_process_count(self) -> int:
        """api-processes, 0 resolved to the cores this process may run on."""
        if self.api_processes:
            return self.api_processes
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except (AttributeError, OSError):  # not Linux
            return max(1, os.cpu_count() or 1)

    @property
    def counter_window_ms(self) -> int:
        """Buckets older than this are pruned: the longest window anything asks for."""
        return max(self.counter_retention_ms, self.power_user_window_ms)


_DURATION_KEYS = {f.name for f in fields(Settings) if f.name.endswith("_ms")}
_INT_KEYS = {
    f.name for f in fields(Settings) if f.type in ("int", int) and f.name not in _DURATION_KEYS
}
_BOOL_KEYS = {f.name for f in fields(Settings) if f.type in ("bool", bool)}
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
_POSITIVE = {
    "window_size_ms",
    "dedup_ttl_ms",
    "dedup_shards",
    "ticker_interval_ms",
    "partitions",
    "lease_ttl_ms",
    "max_buffer",
    "batch_size",
    "read_count",
    "counter_bucket_ms",
    "counter_retention_ms",
    "power_user_threshold",
    "power_user_window_ms",
    "max_event_bytes",
    "max_user_ids",
    "max_emails",
    "max_anonymous_ids",
    "max_merges",
    "segment_events_maxlen",
    "rejections_maxlen",
    "debugger_maxlen",
    "webhook_backoff_ms",
    "webhook_retry_for_ms",
    "webhook_timeout_ms",
    "header_timeout_ms",
    "body_timeout_ms",
    "max_connections",
    "redis_timeout_ms",
    "stream_heartbeat_ms",
    "ingest_replica_timeout_ms",
    "metrics_sample_interval_ms",
}
_CHOICES = {
    "clock": ("system", "redis"),
    "redis_appendfsync": ("everysec", "always"),
    "log_level": ("debug", "info", "warning", "error"),
    "log_format": ("auto", "json", "console"),
    "event_loop": ("auto", "uvloop", "asyncio"),
    "redis_cluster": ("auto", "yes", "no"),
    "apply_protocol": ("auto", "batch", "profile"),
}
_NOT_NEGATIVE = {"api_processes", "ingest_min_replicas"}


@functools.lru_cache(maxsize=8)
def _blocked_values(blocked_identifiers: str) -> frozenset[str]:
    """Built once per distinct setting: the API asks for it for every event."""
    extra = (v.strip().lower() for v in blocked_identifiers.split(","))
    return BLOCKED_VALUES | frozenset(v for v in extra if v)


def _external_name(field: str) -> str:
    """``window_size_ms`` -> ``window-size`` (the seed's spelling)."""
    name = field[:-3] if field.endswith("_ms") else field
    return name.replace("_", "-")


def _env_name(field: str) -> str:
    return "CDP_" + _external_name(field).replace("-", "_").upper()


KEYS: dict[str, str] = {_external_name(f.name): f.name for f in fields(Settings)}


def _coerce(field: str, raw: Any) -> Any:
    key = _external_name(field)
    if field in _DURATION_KEYS:
        value: Any = parse_duration_ms(raw, key)
        if value < 0:
            raise SettingsError(f"{key}: must not be negative, got {raw!r}")
    elif field in _BOOL_KEYS:
        text = str(raw).strip().lower()
        if isinstance(raw, bool):
            value = raw
        elif text in _TRUE or text in _FALSE:
            value = text in _TRUE
        else:
            raise SettingsError(f"{key}: expected true or false, got {raw!r}")
    elif field in _INT_KEYS:
        try:
            value = int(raw)
        except (TypeError, ValueError):
            raise SettingsError(f"{key}: expected a whole number, got {raw!r}") from None
        if isinstance(raw, bool) or (isinstance(raw, float) and raw != value):
            raise SettingsError(f"{key}: expected a whole number, got {raw!r}")
    else:
        if not isinstance(raw, str):
            raise SettingsError(f"{key}: expected a string, got {raw!r}")
        value = raw.strip()
        if field in _CHOICES:
            value = value.lower()
        if field in _CHOICES and value not in _CHOICES[field]:
            allowed = ", ".join(_CHOICES[field])
            raise SettingsError(f"{key}: {raw!r} is not one of {allowed}")
    if field in _POSITIVE and value <= 0:
        raise SettingsError(f"{key}: must be greater than zero, got {raw!r}")
    if field in _NOT_NEGATIVE and value < 0:
        raise SettingsError(f"{key}: must not be negative, got {raw!r}")
    return value


def load_settings(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Defaults, then the TOML file, then the environment, then ``overrides`` (tests)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    path = path or env.get("CDP_CONFIG") or None
    if path is not None:
        try:
            document = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise SettingsError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"config file {path} is not valid TOML: {exc}") from None
        # Keys at top level and under [cdp] both count; other tables are not ours.
        section = {
            k: v
            for k, v in document.items()
            if k != "cdp" and (not isinstance(v, dict) or k in KEYS)
        }
        cdp_table = document.get("cdp", {})
        if not isinstance(cdp_table, dict):
            raise SettingsError(f"cdp: expected a table in {path}")
        section.update(cdp_table)
        for key, raw in section.items():
            field = KEYS.get(key)
            if field is None:
                known = ", ".join(sorted(KEYS))
                raise SettingsError(f"{key}: unknown setting in {path} (known: {known})")
            values[field] = _coerce(field, raw)
    for f in fields(Settings):
        raw = env.get(_env_name(f.name))
        if raw is not None and raw != "":
            values[f.name] = _coerce(f.name, raw)
    values.update(overrides)
    settings = Settings(**values)
    if settings.grace_period_ms + settings.window_size_ms > settings.counter_window_ms:
        raise SettingsError(
            "grace-period: window-size + grace-period must not exceed the longest counter "
            "window, max(counter-retention, power-user-window)"
        )
    if settings.ingest_min_replicas and (
        settings.ingest_replica_timeout_ms >= settings.redis_timeout_ms
    ):
        raise SettingsError(
            "ingest-replica-timeout: must be shorter than redis-timeout (the WAIT for "
            "replicas is one command, answered within ingest-replica-timeout)"
        )
    return settings


def describe() -> list[tuple[str, str, str]]:
    """(key, environment variable, default) rows for the README and ``cdp config``."""
    rows = []
    default = Settings()
    for f in fields(Settings):
        value = getattr(default, f.name)
        if f.name in _DURATION_KEYS:
            shown = format_duration(value)
        else:
            shown = str(value).lower() if isinstance(value, bool) else str(value)
        rows.append((_external_name(f.name), _env_name(f.name), shown))
    return rows


def print_config(settings: Settings) -> None:
    """``cdp config``: key, effective value and environment variable of every setting
    (the admin token and the write keys shown as ``(set)``)."""
    defaults = {row[0]: row for row in describe()}
    print(f"{'key':34} {'value':28} environment variable")
    for f in fields(Settings):
        key = _external_name(f.name)
        value = getattr(settings, f.name)
        shown = format_duration(value) if f.name.endswith("_ms") else value
        if key in ("admin-token", "write-keys") and value:
            shown = "(set)"
        print(f"{key:34} {str(shown):28} {defaults[key][1]}")
