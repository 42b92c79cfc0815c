"""The seed's five metrics, shared by every process through Redis.

Counters live in one hash per partition, ``cdp:metrics:{pN}`` (HINCRBY by the publish
and apply scripts and the workers, each in the partition's slot, so on a Redis Cluster
no key is written by every call), summed on read with the legacy ``cdp:metrics`` (the
counts of before per-partition keys); the ``buffered`` gauge is in
``cdp:metrics:buffered`` (one field per worker, summed over the live ones). ``GET
/metrics`` renders them in Prometheus text format: ``cdp.events.processed`` becomes
``cdp_events_processed_total``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cdp import keys
from cdp.clock import wall_ms
from cdp.connect import Client, SyncClient

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


async def read_metrics(redis: Client, partitions: int) -> dict[str, int]:
    now = wall_ms()
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.METRICS_BUFFERED)
        pipe.zrangebyscore(keys.WORKERS, now, "+inf")
        for key in counter_keys(partitions):
            pipe.hgetall(key)
        buffered, live, *shares = await pipe.execute()
    values = _sum(shares, COUNTERS)
    alive = set(live)
    values["buffered"] = sum(int(v) for w, v in buffered.items() if w in alive)
    values["workers"] = len(alive)
    return values


def render_prometheus(values: dict[str, int]) -> str:
    lines = [
        "# HELP cdp_events_buffered Events waiting in the workers' window buffers.",
        "# TYPE cdp_events_buffered gauge",
        f"cdp_events_buffered {values['buffered']}",
        "# HELP cdp_workers Worker processes with a live heartbeat.",
        "# TYPE cdp_workers gauge",
        f"cdp_workers {values['workers']}",
    ]
    for name, help_text in COUNTERS.items():
        metric = f"cdp_events_{name}_total"
        lines += [
            f"# HELP {metric} {help_text}",
            f"# TYPE {metric} counter",
            f"{metric} {values[name]}",
        ]
    return "\n".join(lines) + "\n"
