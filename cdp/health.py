"""The console's pipeline health: the counters, the workers and partitions, the streams
that hold what went wrong, and the last hour of metrics samples.

``read_health(redis, partitions, now_ms)`` is ``cdp.metrics.read_snapshot`` (the
counters summed over the partitions, each partition's consumer lag and pending
entries, each live worker's buffered events, the live worker holding each partition's
lease ``cdp:lease:{pN}``) plus the lengths of ``cdp:events:dropped``,
``cdp:events:dead``, ``cdp:webhooks:dead`` and ``cdp:rejections``, and the samples of
``cdp:metrics:history`` since an hour ago, oldest first (``cdp.metrics.read_history``).
"""

from __future__ import annotations

from typing import Any

from cdp import keys
from cdp.connect import Client
from cdp.metrics import COUNTERS, read_history, read_snapshot

HISTORY_MS = 3_600_000  # the history shown: the last hour


async def read_health(redis: Client, partitions: int, now_ms: int) -> dict[str, Any]:
    snap = await read_snapshot(redis, partitions)
    streams = {
        "dropped": keys.DROPPED,
        "dead": keys.DEAD,
        "webhooksDead": keys.WEBHOOKS_DEAD,
        "rejections": keys.REJECTIONS,
    }
    async with redis.pipeline(transaction=False) as pipe:
        for stream in streams.values():
            pipe.xlen(stream)
        lengths = await pipe.execute()
    alive = set(snap.buffered) | set(snap.partitions)
    holders = [snap.holders.get(p) for p in range(partitions)]
    held: dict[str, list[int]] = {worker: [] for worker in sorted(alive)}
    for p, holder in enumerate(holders):
        if holder is not None:
            held[holder].append(p)
    return {
        "now": now_ms,
        "counters": {name: snap.values[name] for name in COUNTERS},
        "buffered": snap.values["buffered"],
        "workers": [
            {"id": worker, "buffered": snap.buffered.get(worker, 0), "partitions": parts}
            for worker, parts in held.items()
        ],
        "partitions": [
            {
                "partition": p,
                "lag": snap.lag.get(p, 0),
                "pending": snap.pending.get(p, 0),
                "holder": holders[p],
            }
            for p in range(partitions)
        ],
        "streams": dict(zip(streams, (int(n) for n in lengths), strict=True)),
        "history": await read_history(redis, now_ms - HISTORY_MS),
    }
