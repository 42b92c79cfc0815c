"""The seed's five metrics, shared by every process through Redis.

Counters live in one hash per partition, ``cdp:metrics:{pN}`` (HINCRBY by the publish
and apply scripts and the workers, each in the partition's slot, so on a Redis Cluster
no key is written by every call), summed on read with the legacy ``cdp:metrics`` (the
counts of before per-partition keys); the ``buffered`` gauge is in
``cdp:metrics:buffered`` (one field per worker, summed over the live ones). ``GET
/metrics`` renders them in Prometheus text format with prometheus_client:
``cdp.events.processed`` becomes ``cdp_events_processed_total``.

Read from Redis at scrape time (``read_snapshot``, one pipelined round trip plus one
XRANGE per partition whose lag Redis cannot tell), so a scrape of any API process shows
the Redis-wide values: the counters above, per partition the consumer group's lag
(XINFO GROUPS ``lag``, Redis >= 7; else the entries after its last-delivered-id, counted
up to ``LAG_SCAN_CAP``) and pending entries (XINFO GROUPS ``pending``), per live worker
its buffered events (``cdp:metrics:buffered``) and the partitions it holds
(``cdp:lease:{pN}``), per webhook subscription its delivered, retried and dead counts
(its state hash ``cdp:webhook:{<id>}``, counted by the dispatcher).
``SnapshotCollector`` turns a snapshot into metric families.
Per API process (not summed): the request latency histogram (``cdp.api.app``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric

from cdp import keys
from cdp.clock import wall_ms
from cdp.connect import Client, SyncClient
from cdp.histograms import HISTOGRAMS, Histogram, HistogramSpec, read_histogram
from cdp.segments.definitions import builtins
from cdp.settings import Settings

BUILTIN_SEGMENTS = frozenset(builtins(Settings()))  # their names, whatever the settings

COUNTERS = {
    "processed": "Events applied to profiles.",
    "late": "Events that arrived at or behind the watermark (applied on the next tick).",
    "dropped": "Events older than watermark - grace-period at arrival (see cdp:events:dropped).",
    "dedup_hits": "Events skipped because their eventId was already applied.",
    "accepted": "Events accepted by the ingest API.",
    "suppressed": "Events discarded because they name an erased (suppressed) identifier.",
    "replayed": "Dropped or parked events published again by cdp replay / POST /cdp/replay.",
}


def counter_keys(partitions: int) -> list[str]:
    """Every hash holding a share of the counters: the legacy one, then each partition's."""
    return [keys.METRICS, *(keys.metrics(p) for p in range(partitions))]


def _sum(hashes: Iterable[dict[Any, Any]], names: Iterable[str]) -> dict[str, int]:
    totals = dict.fromkeys(names, 0)
    for counts in hashes:
        for name in totals:  # bytes keys, or str from a client with decode_responses
            totals[name] += int(counts.get(name.encode(), counts.get(name, 0)))
    return totals


async def counters(
    redis: Client, partitions: int, names: Iterable[str] = COUNTERS
) -> dict[str, int]:
    """The counters ``names``, summed over the partitions (one pipelined round trip)."""
    async with redis.pipeline(transaction=False) as pipe:
        for key in counter_keys(partitions):
            pipe.hgetall(key)
        return _sum(await pipe.execute(), names)


def counters_sync(
    redis: SyncClient, partitions: int, names: Iterable[str] = COUNTERS
) -> dict[str, int]:
    """``counters`` with a synchronous client (the fault suite's checker, tests)."""
    with redis.pipeline(transaction=False) as pipe:
        for key in counter_keys(partitions):
            pipe.hgetall(key)
        return _sum(pipe.execute(), names)


# Entries counted at most per partition when XINFO has no lag (Redis < 7): the count
# is an XRANGE read at scrape time, so a long backlog reads as "at least" this many.
LAG_SCAN_CAP = 1_000


@dataclass
class Snapshot:
    """What ``/metrics`` reads from Redis at scrape time."""

    values: dict[str, int]
    lag: dict[int, int] = field(default_factory=dict)  # partition -> undelivered entries
    pending: dict[int, int] = field(default_factory=dict)  # partition -> unacked entries
    buffered: dict[str, int] = field(default_factory=dict)  # live worker -> its buffer
    partitions: dict[str, int] = field(default_factory=dict)  # live worker -> leases held
    holders: dict[int, str] = field(default_factory=dict)  # partition -> its live holder
    # subscription id -> its state hash's delivered, retries, dead (cdp:webhook:{<id>})
    webhooks: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    # HistogramSpec.key -> the workers' observations, summed (cdp:metrics:hist:<key>)
    histograms: dict[str, Histogram] = field(default_factory=dict)
    tail: Tail = field(default_factory=lambda: Tail())  # the tail counter's counts


@dataclass
class Tail:
    """The counts of the tail counter (``cdp.metrics_tail``, hash ``cdp:metrics:tail``):
    of the entries of cdp:segment-events and cdp:merges it has read."""

    transitions: dict[str, dict[str, int]] = field(default_factory=dict)  # segment -> kind -> n
    merges: int = 0
    refusals: dict[str, int] = field(default_factory=dict)  # reason -> n
    cursors: dict[str, str] = field(default_factory=dict)  # stream -> last entry counted

    def defined_only(self, custom: Iterable[Any]) -> Tail:
        """Itself without the transitions of segments deleted since (neither built in
        nor in ``custom``, the names of ``cdp:segments``): their counts stay in the hash,
        so a segment created again under that name goes on counting."""
        defined = BUILTIN_SEGMENTS | {_text(name) for name in custom}
        self.transitions = {s: n for s, n in self.transitions.items() if s in defined}
        return self

    @classmethod
    def parse(cls, raw: Any) -> Tail:
        tail = cls()
        if not isinstance(raw, dict):
            return tail
        for k, v in raw.items():
            kind, _, rest = _text(k).partition(":")
            if kind == "cursor":
                tail.cursors[rest] = _text(v)
            elif kind in ("enter", "exit"):
                tail.transitions.setdefault(rest, {"enter": 0, "exit": 0})[kind] = int(v)
            elif kind == "merged":
                tail.merges = int(v)
            elif kind == "refused":
                tail.refusals[rest] = int(v)
        return tail


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _group(groups: Any) -> dict[str, Any] | None:
    if not isinstance(groups, list):  # an error: the stream does not exist yet
        return None
    return next((g for g in groups if _text(g.get("name")) == keys.GROUP), None)


async def read_snapshot(redis: Client, partitions: int) -> Snapshot:
    """Counters, gauges and per-partition consumer state, summed across processes."""
    now = wall_ms()
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.METRICS_BUFFERED)
        pipe.zrangebyscore(keys.WORKERS, now, "+inf")
        for key in counter_keys(partitions):
            pipe.hgetall(key)
        for p in range(partitions):
            pipe.xinfo_groups(keys.stream(p))
            pipe.get(keys.lease(p))
        for spec in HISTOGRAMS:
            pipe.hgetall(keys.histogram(spec.key))
        pipe.hgetall(keys.METRICS_TAIL)
        pipe.hkeys(keys.SEGMENTS)
        replies = await pipe.execute(raise_on_error=False)
    buffered, live = replies[0], replies[1]
    shares = replies[2 : 3 + partitions]
    per_partition = replies[3 + partitions : 3 + 3 * partitions]
    rest = replies[3 + 3 * partitions :]
    values = _sum(shares, COUNTERS)
    alive = {_text(w) for w in live}
    worker_buffers = {_text(w): int(v) for w, v in buffered.items() if _text(w) in alive}
    values["buffered"] = sum(worker_buffers.values())
    values["workers"] = len(alive)
    custom = rest[-1] if isinstance(rest[-1], list) else []
    tail = Tail.parse(rest[-2]).defined_only(custom)
    snap = Snapshot(values, buffered=worker_buffers, tail=tail)
    snap.histograms = {
        spec.key: read_histogram(spec, raw) for spec, raw in zip(HISTOGRAMS, rest, strict=False)
    }
    holders: Counter[str] = Counter()
    unknown: dict[int, str] = {}
    for p in range(partitions):
        group, holder = _group(per_partition[2 * p]), per_partition[2 * p + 1]
        if isinstance(holder, bytes | str) and _text(holder) in alive:
            holders[_text(holder)] += 1
            snap.holders[p] = _text(holder)
        if group is None:
            snap.lag[p] = snap.pending[p] = 0
            continue
        snap.pending[p] = int(group.get("pending") or 0)
        if group.get("lag") is not None:
            snap.lag[p] = int(group["lag"])
        else:
            unknown[p] = _text(group["last-delivered-id"])
    snap.partitions = {w: holders.get(w, 0) for w in alive}
    if unknown:  # Redis < 7, or a lag it cannot tell (entries deleted mid-stream)
        async with redis.pipeline(transaction=False) as pipe:
            for p, last in unknown.items():
                pipe.xrange(keys.stream(p), f"({last}", "+", count=LAG_SCAN_CAP)
            entries = await pipe.execute(raise_on_error=False)
        for p, rows in zip(unknown, entries, strict=True):
            snap.lag[p] = len(rows) if isinstance(rows, list) else 0
    snap.webhooks = await _read_webhooks(redis)
    return snap


WEBHOOK_COUNTS = ("delivered", "retries", "dead")


async def _read_webhooks(redis: Client) -> dict[str, tuple[int, int, int]]:
    """Each subscription's delivery counts, kept in its state hash by the dispatcher."""
    ids = [_text(i) for i in await redis.hkeys(keys.WEBHOOKS)]
    if not ids:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for sub in ids:
            pipe.hmget(keys.webhook_state(sub), WEBHOOK_COUNTS)
        rows = await pipe.execute()
    return {
        sub: (int(row[0] or 0), int(row[1] or 0), int(row[2] or 0))
        for sub, row in zip(ids, rows, strict=True)
    }


class SnapshotCollector:
    """A prometheus_client collector of one ``Snapshot`` (registered per scrape)."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        yield GaugeMetricFamily(
            "cdp_events_buffered",
            "Events waiting in the workers' window buffers.",
            value=snap.values["buffered"],
        )
        yield GaugeMetricFamily(
            "cdp_workers", "Worker processes with a live heartbeat.", value=snap.values["workers"]
        )
        for name, help_text in COUNTERS.items():
            yield CounterMetricFamily(f"cdp_events_{name}", help_text, value=snap.values[name])
        yield _labelled(
            "cdp_consumer_lag_entries",
            "Entries of the partition's stream not yet delivered to the workers' group.",
            "partition",
            {str(p): v for p, v in snap.lag.items()},
        )
        yield _labelled(
            "cdp_consumer_pending_entries",
            "Entries delivered to a worker and not yet acknowledged (XPENDING).",
            "partition",
            {str(p): v for p, v in snap.pending.items()},
        )
        yield _labelled(
            "cdp_worker_buffered_events",
            "Events waiting in one live worker's window buffer.",
            "worker",
            snap.buffered,
        )
        yield _labelled(
            "cdp_worker_partitions",
            "Partitions whose lease a live worker holds.",
            "worker",
            snap.partitions,
        )
        for n, (name, help_text) in enumerate(WEBHOOK_METRICS):
            family = CounterMetricFamily(name, help_text, labels=["subscription"])
            for sub, counts in sorted(snap.webhooks.items()):
                family.add_metric([sub], counts[n])
            yield family
        for spec in HISTOGRAMS:
            yield _histogram_family(spec, snap.histograms.get(spec.key))
        yield from _tail_families(snap.tail)


def _histogram_family(spec: HistogramSpec, seen: Histogram | None) -> Metric:
    seen = seen or Histogram([0] * len(spec.fields))
    cumulative, buckets = 0, []
    for bound, n in zip(spec.fields, seen.buckets, strict=True):
        cumulative += n
        buckets.append((bound, cumulative))
    # _count is the +Inf bucket: the sum of the buckets (the count field, added by the
    # same flush, is equal to it once every flush is whole).
    return HistogramMetricFamily(spec.name, spec.help, buckets=buckets, sum_value=seen.sum)


def _tail_families(tail: Tail) -> Iterator[Metric]:
    transitions = CounterMetricFamily(
        "cdp_segment_transitions",
        "Segment ENTER / EXIT events written to cdp:segment-events, per segment "
        "(counted from the first entry still in the stream when counting began).",
        labels=["segment", "kind"],
    )
    for segment, kinds in sorted(tail.transitions.items()):
        for kind in ("enter", "exit"):
            transitions.add_metric([segment, kind], kinds.get(kind, 0))
    yield transitions
    yield CounterMetricFamily(
        "cdp_identity_merges",
        "Profiles merged into another (cdp:merges records of status merged).",
        value=tail.merges,
    )
    refusals = CounterMetricFamily(
        "cdp_identity_link_refusals",
        "Links and merges refused by a guard rail, per reason (cdp:merges, status refused).",
        labels=["reason"],
    )
    for reason, n in sorted(tail.refusals.items()):
        refusals.add_metric([reason], n)
    yield refusals


WEBHOOK_METRICS = (
    ("cdp_webhook_deliveries", "Segment events a subscription's endpoint accepted (2xx)."),
    ("cdp_webhook_retries", "Failed deliveries scheduled again with backoff."),
    (
        "cdp_webhook_dead_letters",
        "Deliveries given up after webhook-retry-for (cdp:webhooks:dead).",
    ),
)


def _labelled(name: str, help_text: str, label: str, values: dict[str, int]) -> Metric:
    family = GaugeMetricFamily(name, help_text, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


async def read_history(redis: Client, since_ms: int) -> list[dict[str, Any]]:
    """The samples of ``cdp:metrics:history`` written at or after ``since_ms`` (its entry
    ids' time), oldest first: each ``{"at", "counters", "segments"}`` (cdp.metrics_tail)."""
    rows: Any = await redis.xrange(keys.METRICS_HISTORY, min=max(0, since_ms), max="+")
    samples = []
    for _, fields in rows:
        raw = fields.get(b"s", fields.get("s"))
        if raw is None:
            continue
        try:
            value = json.loads(raw)
        except ValueError:
            continue
        if isinstance(value, dict):
            samples.append(value)
    return samples
