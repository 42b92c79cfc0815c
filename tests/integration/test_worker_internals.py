"""One Worker driven in-process against the real redis-server: backpressure bounds the
buffer, trimming never removes an entry the group has not acknowledged, a lost lease
stops the apply, and a failing event is parked instead of blocking its partition."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from redis.asyncio import Redis

from cdp import keys
from cdp.clock import RedisClock
from cdp.events import StreamEvent, stream_encoder
from cdp.identity import partition_of
from tests.support.inprocess import running
from tests.support.inprocess import worker_settings as settings
from tests.support.metrics import total_async
from tests.support.values import PARTITIONS
from tests.support.values import T0_MS as T0
from workers.housekeeping import ensure_groups
from workers.worker import Worker

pytestmark = pytest.mark.integration


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.01)


async def publish(redis: Redis, n: int, ts: int, user: str = "u1") -> int:
    partition = partition_of(f"user:{user}", PARTITIONS)
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(n):
            event = StreamEvent(
                eventId=f"e{i}", ts=ts + i, receivedAt=ts, type="TRACK", userId=user, name="Clicked"
            )
            pipe.xadd(keys.stream(partition), {"e": stream_encoder.encode(event)})
        await pipe.execute()
    return partition


async def pending(redis: Redis, partition: int) -> int:
    return int((await redis.xpending(keys.stream(partition), keys.GROUP))["pending"])


def test_backpressure_stops_reading_at_max_buffer(redis_url: str) -> None:
    async def scenario() -> None:
        redis = Redis.from_url(redis_url)
        await redis.set(keys.CLOCK, T0)
        s = settings(redis_url, max_buffer=50, read_count=20)
        await ensure_groups(redis, s.partitions)
        partition = await publish(redis, 300, T0 + 60_000)  # a minute ahead: not ready
        async with running(Worker(redis, s, RedisClock(redis), "w")) as worker:
            await wait_for(lambda: _eq(pending(redis, partition), 50))
            for _ in range(20):  # several ticks and read attempts later, still bounded
                await asyncio.sleep(0.02)
                assert worker.buffered <= 50
            assert await pending(redis, partition) == 50
            await redis.set(keys.CLOCK, T0 + 120_000)
            await wait_for(lambda: _eq(total_async(redis, "processed"), 300))
            assert worker.buffered == 0
        await redis.aclose()

    asyncio.run(scenario())


async def _eq(awaitable: Awaitable[object], expected: object) -> bool:
    return await awaitable == expected


def test_trim_keeps_every_unacknowledged_entry(redis_url: str) -> None:
    async def scenario() -> None:
        redis = Redis.from_url(redis_url)
        await redis.set(keys.CLOCK, T0 + 60_000)
        s = settings(redis_url)
        await ensure_groups(redis, s.partitions)
        partition = await publish(redis, 100, T0)  # ready at once
        stream = keys.stream(partition)
        worker = Worker(redis, s, RedisClock(redis), "w")
        await worker.rebalance()
        # Read everything into the buffer, apply nothing yet, then add 50 unread entries.
        reply = await redis.xreadgroup(keys.GROUP, "w", {stream: ">"}, count=1000)
        await worker.reader.ingest(partition, reply[0][1])
        await publish(redis, 50, T0 + 500, user="u1")
        unread = [entry_id for entry_id, _ in (await redis.xrange(stream))[100:]]
        await worker.trim()
        assert await redis.xlen(stream) == 150  # 100 pending + 50 never delivered
        assert await worker.tick() == 100
        await worker.trim()
        remaining = [entry_id for entry_id, _ in await redis.xrange(stream)]
        # Acknowledged entries go (XTRIM MINID ~ removes whole nodes, so not always all
        # of them); the unread ones always stay.
        assert len(remaining) < 150
        assert remaining[-50:] == unread
        assert await pending(redis, partition) == 0
        await redis.aclose()

    asyncio.run(scenario())


def test_a_worker_that_lost_its_lease_applies_nothing(redis_url: str) -> None:
    async def scenario() -> None:
        redis = Redis.from_url(redis_url)
        await redis.set(keys.CLOCK, T0 + 60_000)
        s = settings(redis_url)
        await ensure_groups(redis, s.partitions)
        partition = await publish(redis, 10, T0)
        worker = Worker(redis, s, RedisClock(redis), "w")
        await worker.rebalance()
        stream = keys.stream(partition)
        reply = await redis.xreadgroup(keys.GROUP, "w", {stream: ">"}, count=1000)
        await worker.reader.ingest(partition, reply[0][1])
        await redis.set(keys.lease(partition), "someone-else")  # as if it expired and moved
        assert await worker.tick() == 0
        assert partition not in worker.owned
        assert await total_async(redis, "processed") == 0
        assert await pending(redis, partition) == 10  # still there for the new owner
        await redis.aclose()

    asyncio.run(scenario())


def test_entries_a_stale_consumer_read_are_claimed_by_the_owner(redis_url: str) -> None:
    """A worker that lost its lease may read a few more entries before it notices."""

    async def scenario() -> None:
        redis = Redis.from_url(redis_url)
        await redis.set(keys.CLOCK, T0 + 60_000)
        s = settings(redis_url, lease_ttl_ms=200)
        await ensure_groups(redis, s.partitions)
        partition = await publish(redis, 5, T0)
        stream = keys.stream(partition)
        await redis.xreadgroup(keys.GROUP, "stale", {stream: ">"}, count=100)
        worker = Worker(redis, s, RedisClock(redis), "owner")
        await worker.rebalance()  # gains the partition, claims the 5 entries at once
        assert worker.buffered == 5
        worker.state.buffers[partition].clear()  # as if "stale" read them after the handover
        await redis.xclaim(
            stream, keys.GROUP, "stale", 0, [e for e, _ in (await redis.xrange(stream))]
        )
        await wait_for(lambda: _positive(worker.reclaim_pending()))
        assert worker.buffered == 5
        summary = await redis.xpending(stream, keys.GROUP)
        assert summary["consumers"] == [{"name": b"owner", "pending": 5}]
        await redis.aclose()

    asyncio.run(scenario())


async def _positive(awaitable: Awaitable[int]) -> bool:
    return await awaitable > 0
