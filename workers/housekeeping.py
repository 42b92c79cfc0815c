"""The housekeeping loop: leases, claims of pending entries, trimming, consumer groups.

Every lease-ttl/3: heartbeat and rebalance (``cdp.pipeline.leases``); a gained
partition starts with an empty buffer and claims every entry still pending in the
group for it (a dead owner's, or this worker's own from before); a lost one has its
buffer forgotten. Then every entry pending for an owned partition that this worker
does not hold in memory is claimed once idle for lease-ttl (``reclaim_pending``).
Every 10 s the owned streams are trimmed below what the group still needs.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from redis.exceptions import RedisError, ResponseError

from cdp import keys
from cdp.clock import wall_ms
from cdp.connect import Client
from cdp.pipeline.buffer import PartitionBuffer
from cdp.pipeline.leases import LeaseManager
from cdp.settings import Settings
from cdp.streams import text
from workers.reading import Reader
from workers.state import WorkerState

TRIM_EVERY_S = 10


async def ensure_groups(redis: Client, partitions: int) -> None:
    """Create the consumer group on every partition stream (idempotent)."""
    for p in range(partitions):
        try:
            await redis.xgroup_create(keys.stream(p), keys.GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):  # Redis's error code: the group exists
                raise


class Housekeeper:
    def __init__(
        self,
        redis: Client,
        settings: Settings,
        state: WorkerState,
        leases: LeaseManager,
        reader: Reader,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.state = state
        self.leases = leases
        self.reader = reader

    async def run(self) -> None:
        interval = self.settings.lease_ttl_ms / 3000
        last_trim = 0.0
        while not self.state.stopping.is_set():
            try:
                await self.rebalance()
                await self.reclaim_pending()
                if time.monotonic() - last_trim > TRIM_EVERY_S:
                    last_trim = time.monotonic()
                    await self.trim()
            except RedisError as exc:
                self.state.log.warning("lease loop: redis error", error=str(exc))
            await asyncio.sleep(interval)

    async def rebalance(self) -> None:
        state = self.state
        gained, lost = await self.leases.rebalance(state.owned)
        for p in lost:
            state.forget(p)
        for p in sorted(gained):
            state.buffers[p] = PartitionBuffer()
            state.unsettled.pop(p, None)
            claimed = await self._claim_pending(p)
            state.log.info("partition acquired", partition=p, claimed=claimed)
        if gained or lost:
            state.owned_changed.set()

    async def _claim_pending(self, partition: int) -> int:
        """Take over the entries still pending for ``partition``, whoever read them.

        As many as there is room for; the rest wait in the group, for
        ``reclaim_pending`` once there is room again.
        """
        state = self.state
        stream = keys.stream(partition)
        cursor: Any = "0-0"
        claimed = 0
        while state.room > 0 and partition in state.buffers:
            reply = await self.redis.xautoclaim(
                stream,
                keys.GROUP,
                state.worker_id,
                min_idle_time=0,
                start_id=cursor,
                count=min(1000, state.entry_room(state.room)),
            )
            cursor, entries = reply[0], reply[1]
            claimed += await self.reader.ingest(partition, entries, claimed=True)
            if cursor in (b"0-0", "0-0"):
                break
        return claimed

    async def reclaim_pending(self) -> int:
        """Claim every entry pending for an owned partition that this worker does not hold.

        An entry can be pending in the group and in nobody's memory: read by a worker
        whose lease had expired (it reads a few more before its next rebalance
        notices), or read by this worker when the reply was lost with the connection,
        or when recording dropped entries failed, or when a tick failed halfway. Once
        idle for lease-ttl such an entry is claimed and buffered again (dedup makes a
        second apply harmless), so it is applied, parked or dropped within about twice
        lease-ttl, without a restart. Entries this worker holds are skipped; its own
        pending list is only read when it is longer than what it holds.
        """
        state = self.state
        owned = sorted(state.owned)
        if not owned:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for p in owned:
                pipe.xpending(keys.stream(p), keys.GROUP)
            summaries = await pipe.execute()
        claimed = 0
        for p, summary in zip(owned, summaries, strict=True):
            held = state.held_of(p)
            for consumer in summary["consumers"]:
                name = text(consumer["name"])
                if name == state.worker_id and int(consumer["pending"]) <= held:
                    continue
                claimed += await self._reclaim_from(p, name)
        if claimed:
            state.log.info("pending entries claimed", claimed=claimed)
        return claimed

    async def _reclaim_from(self, partition: int, consumer: str) -> int:
        """Claim ``consumer``'s entries of ``partition`` idle for lease-ttl and not held;
        returns how many were claimed (buffered, or dropped at once)."""
        state = self.state
        stream = keys.stream(partition)
        idle = self.settings.lease_ttl_ms
        start = "-"
        claimed = 0
        while state.room > 0 and partition in state.buffers:
            rows = await self.redis.xpending_range(
                stream, keys.GROUP, start, "+", 500, consumername=consumer, idle=idle
            )
            ids: list[Any] = [
                text(row["message_id"])
                for row in rows
                if not state.holds(partition, text(row["message_id"]))
            ][: state.entry_room(state.room)]
            if ids:
                entries = await self.redis.xclaim(stream, keys.GROUP, state.worker_id, idle, ids)
                await self.reader.ingest(partition, entries, claimed=True)
                claimed += len(entries)
            if len(rows) < 500:
                break
            start = "(" + text(rows[-1]["message_id"])  # exclusive (Redis >= 6.2)
        return claimed

    async def trim(self) -> None:
        """Trim owned streams below the oldest entry the group still needs.

        Nothing at or after the group's oldest pending entry, nor after its last
        delivered entry, is removed: an entry leaves the stream only once acknowledged.
        """
        now = wall_ms()
        for p in sorted(self.state.owned):
            stream = keys.stream(p)
            groups = await self.redis.xinfo_groups(stream)
            group = next((g for g in groups if text(g["name"]) == keys.GROUP), None)
            if group is None:
                continue
            ms, seq = (int(x) for x in text(group["last-delivered-id"]).split("-"))
            threshold = (ms, seq + 1)
            pending = await self.redis.xpending(stream, keys.GROUP)
            if pending["pending"]:
                pm, ps = (int(x) for x in text(pending["min"]).split("-"))
                threshold = min(threshold, (pm, ps))
            if self.settings.stream_retention_ms:
                threshold = min(threshold, (now - self.settings.stream_retention_ms, 0))
            await self.redis.xtrim(stream, minid=f"{threshold[0]}-{threshold[1]}", approximate=True)
