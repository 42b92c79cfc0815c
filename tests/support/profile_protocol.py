"""Driving the profile protocol (``cdp.pipeline.profile_apply``) in-process, on a real
Redis or a real Redis Cluster (fakeredis cannot run a cluster), and ``apply_batch``
beside it on the same Redis, for comparisons.

``apply_calls(url, calls)``: each ``(partition, events)`` of ``calls`` (e.g.
``tests.support.lua.plan_calls``) applied by ``apply_partition`` in turn, without the
stream (the entry ids are "": nothing to acknowledge), at ``now_ms``
(``tests.support.lua.AFTER_EVENTS_MS`` by default). ``apply_batches(url, calls)``: the
same through ``apply_batch`` (one Redis only). ``sync_of(url)``: a blocking client of
the Redis or cluster (decoded answers). ``profiles_of(client)``: every live profile's
stored state (meta, trait cells, counters, seen ids), keyed by its identifier set, so
two runs compare with ``==`` whatever canonical ids they issued.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from cdp import keys
from cdp.connect import SyncClient, connect, sync_client
from cdp.events import StreamEvent
from cdp.pipeline.apply import ApplyContext, queue_apply
from cdp.pipeline.profile_apply import apply_partition
from cdp.scripts import BatchResult, Scripts, load_scripts
from cdp.settings import Settings, load_settings
from tests.support.lua import AFTER_EVENTS_MS

Calls = Sequence[tuple[int, Sequence[StreamEvent]]]

META = ("firstSeen", "lastSeen", "lastSeenMs", "user", "users", "emails", "anons", "merges")
SEEN_META = ("version", "seenFrom", "seenTo")


def settings_of(url: str, **overrides: Any) -> Settings:
    return load_settings(env={}, redis_url=url, apply_protocol="profile", **overrides)


def apply_calls(
    url: str, calls: Calls, now_ms: int = AFTER_EVENTS_MS, settings: Settings | None = None
) -> list[BatchResult]:
    """Apply each call's events through the profile protocol; their results."""
    settings = settings or settings_of(url)

    async def run() -> list[BatchResult]:
        redis = await connect(settings)
        try:
            await load_scripts(redis)
            scripts = Scripts(redis)
            ctx = ApplyContext(now_ms=now_ms, worker_id="")
            out = []
            for partition, chunk in calls:
                batch = [("", ev) for ev in chunk]
                out.append(await apply_partition(redis, scripts, settings, ctx, partition, batch))
            return out
        finally:
            await redis.aclose()

    return asyncio.run(run())


def apply_batches(
    url: str, calls: Calls, now_ms: int = AFTER_EVENTS_MS, settings: Settings | None = None
) -> list[BatchResult]:
    """The same calls through ``apply_batch`` (one Redis)."""
    settings = settings or settings_of(url)

    async def run() -> list[BatchResult]:
        redis = await connect(settings)
        try:
            scripts = Scripts(redis)
            ctx = ApplyContext(now_ms=now_ms, worker_id="")
            out = []
            for partition, chunk in calls:
                async with redis.pipeline(transaction=False) as pipe:
                    batch = [("", ev) for ev in chunk]
                    await queue_apply(pipe, scripts, settings, ctx, partition, batch)
                    (reply,) = await pipe.execute()
                out.append(scripts.apply_batch.decode(reply))
            return out
        finally:
            await redis.aclose()

    return asyncio.run(run())


def sync_of(url: str) -> SyncClient:
    return sync_client(url, decode_responses=True)


def profiles_of(client: SyncClient, *, versions: bool = True) -> dict[frozenset[str], Any]:
    """Every live profile's stored state by its identifier set (``versions``: with
    its version and seenFrom / seenTo)."""
    out: dict[frozenset[str], Any] = {}
    for raw in client.scan_iter(match=keys.PROFILE_PREFIX + "{*}", count=1000):
        key = str(raw)
        meta: dict[str, str] = client.hgetall(key)  # type: ignore[assignment]
        if "mergedInto" in meta or "createdAt" not in meta:
            continue
        cid = key[len(keys.PROFILE_PREFIX) + 1 : -1]
        ids = frozenset(client.smembers(keys.identifiers(cid)))  # type: ignore[arg-type]
        counters = {
            name: client.zrange(keys.counter(cid, name), 0, -1, withscores=True)
            for name in client.hkeys(keys.counters(cid))  # type: ignore[union-attr]
        }
        fields = META + (SEEN_META if versions else ())
        out[ids] = {
            "meta": {f: meta.get(f) for f in fields},
            "traits": client.hgetall(keys.traits(cid)),
            "counters": counters,
            "oldest": client.hgetall(keys.counters(cid)),
            "seen": client.hgetall(keys.seen(cid)),
        }
    return out
