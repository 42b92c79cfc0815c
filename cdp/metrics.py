"""The seed's five metrics, shared by every process through Redis.

Counters live in the hash ``cdp:metrics`` (HINCRBY by the workers and the apply
script), the ``buffered`` gauge in ``cdp:metrics:buffered`` (one field per worker,
summed over the live ones). ``GET /metrics`` renders them in Prometheus text format:
``cdp.events.processed`` becomes ``cdp_events_processed_total``.
"""

from __future__ import annotations

from cdp import keys
from cdp.clock import wall_ms
from cdp.connect import Client

COUNTERS = {
    "processed": "Events applied to profiles.",
    "late": "Events that arrived at or behind the watermark (applied on the next tick).",
    "dropped": "Events older than watermark - grace-period at arrival (see cdp:events:dropped).",
    "dedup_hits": "Events skipped because their eventId was already applied.",
    "accepted": "Events accepted by the ingest API.",
    "suppressed": "Events discarded because they name an erased (suppressed) identifier.",
    "replayed": "Dropped or parked events published again by cdp replay / POST /cdp/replay.",
}


async def read_metrics(redis: Client) -> dict[str, int]:
    now = wall_ms()
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.METRICS)
        pipe.hgetall(keys.METRICS_BUFFERED)
        pipe.zrangebyscore(keys.WORKERS, now, "+inf")
        counters, buffered, live = await pipe.execute()
    values = {name: int(counters.get(name.encode(), 0)) for name in COUNTERS}
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
