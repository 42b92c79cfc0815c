"""Partition ownership: heartbeats, a deterministic share per worker, leases with expiry.

Every worker heartbeats into ``cdp:workers`` (a zset scored by expiry). From the live
set, sorted, partition ``p`` belongs to ``live[p % len(live)]``: every worker computes
the same assignment, so a joining worker gets its share once the others see its
heartbeat, and a dead worker's share moves once its heartbeat expires. Ownership itself
is the lease ``cdp:lease:{pN}`` (SET PX, renewed by its holder); the apply script checks
it, so a worker that lost a lease cannot apply to that partition any more.
"""

from __future__ import annotations

import structlog

from cdp import keys
from cdp.clock import wall_ms
from cdp.connect import Client
from cdp.scripts import Scripts
from cdp.streams import text


def assignment(live: list[str], partitions: int) -> dict[int, str]:
    """partition -> worker id, the same on every worker that sees the same live set."""
    if not live:
        return {}
    ordered = sorted(live)
    return {p: ordered[p % len(ordered)] for p in range(partitions)}


class LeaseManager:
    def __init__(
        self, redis: Client, scripts: Scripts, worker_id: str, partitions: int, ttl_ms: int
    ) -> None:
        self._redis = redis
        self._scripts = scripts
        self.worker_id = worker_id
        self.partitions = partitions
        self.ttl_ms = ttl_ms

    async def heartbeat(self) -> list[str]:
        """Announce this worker and return the live worker ids (wall time, not event time)."""
        now = wall_ms()
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(keys.WORKERS, {self.worker_id: now + self.ttl_ms})
            pipe.zremrangebyscore(keys.WORKERS, "-inf", now)
            pipe.zrange(keys.WORKERS, 0, -1)
            *_, live = await pipe.execute()
        return [text(w) for w in live]

    async def rebalance(self, owned: set[int]) -> tuple[set[int], set[int]]:
        """Renew, take and give back leases; returns (gained, lost) partitions."""
        live = await self.heartbeat()
        wanted = {p for p, w in assignment(live, self.partitions).items() if w == self.worker_id}
        to_release = sorted(owned - wanted)
        to_hold = sorted(wanted)
        async with self._redis.pipeline(transaction=False) as pipe:
            for p in to_release:
                await self._scripts.lease_release.queue(pipe, keys.lease(p), self.worker_id)
            for p in to_hold:
                await self._scripts.lease_acquire.queue(
                    pipe, keys.lease(p), self.worker_id, self.ttl_ms
                )
            replies = await pipe.execute()
        acquired = self._scripts.lease_acquire.decode
        held = {
            p for p, ok in zip(to_hold, replies[len(to_release) :], strict=True) if acquired(ok)
        }
        return held - owned, owned - held

    async def release_all(self, owned: set[int]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for p in sorted(owned):
                await self._scripts.lease_release.queue(pipe, keys.lease(p), self.worker_id)
            pipe.zrem(keys.WORKERS, self.worker_id)
            pipe.hdel(keys.METRICS_BUFFERED, self.worker_id)
            await pipe.execute()


class RoleLease:
    """A lease on a role that exactly one worker plays (the sweeper, the webhook dispatcher).

    ``hold()`` takes or renews it and says whether this worker plays the role now; it
    logs when that changes. A dead holder's lease expires after ``ttl_ms``.
    """

    def __init__(self, scripts: Scripts, key: str, role: str, worker_id: str, ttl_ms: int) -> None:
        self._scripts = scripts
        self._key = key
        self._role = role
        self._worker_id = worker_id
        self._ttl_ms = ttl_ms
        self.holding = False

    async def hold(self) -> bool:
        held = await self._scripts.lease_acquire(self._key, self._worker_id, self._ttl_ms)
        if held != self.holding:
            self.holding = held
            structlog.get_logger("cdp.leases").info(
                "role lease", role=self._role, worker=self._worker_id, holding=held
            )
        return held

    async def release(self) -> None:
        if self.holding:
            await self._scripts.lease_release(self._key, self._worker_id)
            self.holding = False
