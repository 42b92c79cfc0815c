"""The counters as tests read them: summed over every partition's metrics hash that
exists (found by SCAN, so a test need not know the partition count)."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from cdp import keys

PATTERN = keys.metrics(0).replace("{p0}", "{p*}")  # cdp:metrics:{p*}


def _add(totals: dict[str, int], counts: dict[Any, Any]) -> None:
    for name, value in counts.items():
        name = name.decode() if isinstance(name, bytes) else name
        totals[name] = totals.get(name, 0) + int(value)


def totals(r: Any) -> dict[str, int]:
    """Every counter, summed (a synchronous redis-py or fakeredis client)."""
    out: dict[str, int] = {}
    for key in [keys.METRICS, *r.scan_iter(match=PATTERN)]:
        _add(out, r.hgetall(key))
    return out


def total(r: Any, name: str) -> int:
    return totals(r).get(name, 0)


async def total_async(redis: Redis, name: str) -> int:
    out: dict[str, int] = {}
    for key in [keys.METRICS, *[k async for k in redis.scan_iter(match=PATTERN)]]:
        _add(out, await redis.hgetall(key))
    return out.get(name, 0)
