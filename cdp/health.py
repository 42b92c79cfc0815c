"""The console's pipeline health: the counters, the workers and partitions, the streams
that hold what went wrong, and the last hour of metrics samples.

``read_health(redis, partitions, now_ms)`` is ``cdp.metrics.read_snapshot`` (the
counters summed over the partitions, each partition's consumer lag and pending
entries, each live worker's buffered events) plus, per partition, the live worker
holding its lease (``cdp:lease:{pN}``), the lengths of ``cdp:events:dropped``,
``cdp:events:dead``, ``cdp:webhooks:dead`` and ``cdp:rejections``, and the samples of
``cdp:metrics:history`` since an hour ago, oldest first (``read_history``: field ``s``
of each entry, the sampler's JSON; entries that are not JSON objects are skipped).
"""

from __future__ import annotations

import json
from typing import Any

from cdp import keys
from cdp.connect import Client
from cdp.metrics import COUNTERS, read_snapshot
from cdp.streams import text

HISTORY_MS = 3_600_000  # the history shown: the last hour
HISTORY_CAP = 1_000  # samples read at most (the sampler keeps about 400)


async def read_history(redis: Client, since_ms: int) -> list[dict[str, Any]]:
    """The samples of ``cdp:metrics:history`` written since ``since_ms``, oldest first."""
    rows: Any = await redis.xrange(keys.METRICS_HISTORY, since_ms, "+", count=HISTORY_CAP)
    samples = []
    for _, fields in rows:
        try:
            sample = json.loads(fields.get(b"s", b""))
        except ValueError:
            continue
        if isinstance(sample, dict):
            samples.append(sample)
    return samples


async def read_health(redis: Client, partitions: int, now_ms: int) -> dict[str, Any]:
    snap = await read_snapshot(redis, partitions)
    streams = {
        "dropped": keys.DROPPED,
        "dead": keys.DEAD,
        "webhooksDead": keys.WEBHOOKS_DEAD,
        "rejections": keys.REJECTIONS,
    }
    async with redis.pipeline(transaction=False) as pipe:
        for p in range(partitions):
            pipe.get(keys.lease(p))
        for stream in streams.values():
            pipe.xlen(stream)
        replies = await pipe.execute()
    alive = set(snap.buffered) | set(snap.partitions)
    holders = [
        text(h) if h is not None and text(h) in alive else None for h in replies[:partitions]
    ]
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
        "streams": dict(zip(streams, (int(n) for n in replies[partitions:]), strict=True)),
        "history": await read_history(redis, now_ms - HISTORY_MS),
    }
