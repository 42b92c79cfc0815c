"""The sweeper: time-driven re-evaluation and definition backfills, one at a time.

Whatever the number of workers, exactly one runs the sweeper: the holder of the lease
``cdp:lease:sweeper``. On each tick it re-evaluates the profiles whose due time has
come in ``cdp:segments:due`` (a power user 24 h after their fifth event, a reengaged
profile whose hour is up, or a profile whose worker died between apply and
evaluation), then advances every running backfill by one chunk of profiles. A backfill
keeps its cursor in Redis, so another sweeper resumes it after a crash.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import structlog
from redis.exceptions import WatchError

from cdp import keys
from cdp.clock import Clock, wall_ms
from cdp.connect import Client
from cdp.pipeline.leases import RoleLease
from cdp.scripts import Scripts
from cdp.segments.engine import SegmentEngine
from cdp.streams import text

log = structlog.get_logger("cdp.sweeper")

DUE_CHUNK = 500
BACKFILL_CHUNK = 500


async def start_backfill(redis: Client, name: str) -> None:
    """Queue an evaluation of segment ``name`` for every live profile."""
    total = await redis.zcard(keys.PROFILES)
    # The backfill's state (one slot, one transaction), then its name in the running
    # set (another slot on a cluster): the sweeper runs it from then on. A crash in
    # between leaves a state nobody runs; the PUT was not answered 2xx, its retry
    # starts the backfill again.
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(keys.segment_backfill(name))
        pipe.hset(
            keys.segment_backfill(name),
            mapping={
                "state": "running",
                "cursor": 0,
                "scanned": 0,
                "total": total,
                "startedAt": time.time_ns(),
            },
        )
        await pipe.execute()
    await redis.sadd(keys.BACKFILLS, name)


class Sweeper:
    def __init__(
        self,
        redis: Client,
        scripts: Scripts,
        engine: SegmentEngine,
        clock: Clock,
        worker_id: str,
        lease_ttl_ms: int,
    ) -> None:
        self.redis = redis
        self.engine = engine
        self.clock = clock
        self.lease = RoleLease(scripts, keys.SWEEPER_LEASE, "sweeper", worker_id, lease_ttl_ms)

    async def run_once(self) -> int:
        """One sweep if this worker holds the lease; returns transitions emitted."""
        if not await self.lease.hold():
            return 0
        now = await self.clock.now_ms()
        due_ids: Any = await self.redis.zrangebyscore(
            keys.SEGMENTS_DUE, "-inf", now, start=0, num=DUE_CHUNK
        )
        due = [text(c) for c in due_ids]
        emitted = len(await self.engine.evaluate(due, now)) if due else 0
        for name in sorted(text(n) for n in await self.redis.smembers(keys.BACKFILLS)):
            emitted += await self._backfill_step(name, now)
        return emitted

    async def _backfill_step(self, name: str, now: int) -> int:
        key = keys.segment_backfill(name)
        cursor_raw, started = await self.redis.hmget(key, "cursor", "startedAt")
        cursor = int(cursor_raw or 0)
        rows: Any = await self.redis.zrangebyscore(
            keys.PROFILES, f"({cursor}", "+inf", start=0, num=BACKFILL_CHUNK, withscores=True
        )
        if not rows:
            # Done, then out of the running set (two slots on a cluster): a crash in
            # between finds it running at the next sweep, and done again.
            await self.redis.hset(key, mapping={"state": "done", "finishedAt": wall_ms()})
            await self.redis.srem(keys.BACKFILLS, name)
            log.info("backfill done", segment=name)
            return 0
        emitted = await self.engine.evaluate([text(cid) for cid, _ in rows], now)
        async with self.redis.pipeline(transaction=True) as pipe:
            # A PUT that restarted this backfill meanwhile wins: its cursor stays.
            await pipe.watch(key)
            if await pipe.hget(key, "startedAt") == started:
                pipe.multi()  # type: ignore[no-untyped-call]
                pipe.hset(key, "cursor", int(rows[-1][1]))
                pipe.hincrby(key, "scanned", len(rows))
                with contextlib.suppress(WatchError):
                    await pipe.execute()
        return len(emitted)

    async def release(self) -> None:
        await self.lease.release()
