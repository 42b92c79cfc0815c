"""The tail counter (cdp.metrics_tail) and its compare-and-set script on a real Redis:
counts by segment and kind, merges and refusals by reason, each entry once whatever the
number of runners; the history sample and its reader."""

from __future__ import annotations

import asyncio
from collections import Counter

from redis.asyncio import Redis

from cdp import keys
from cdp.metrics import COUNTERS, Tail, read_history
from cdp.metrics_tail import PASS_CAP, MetricsRole, count_all, count_pass, write_sample
from cdp.scripts import Scripts
from cdp.settings import Settings
from tests.support.lua import run_with_scripts

run = run_with_scripts


async def fill(redis: Redis, n: int = 0) -> Counter[str]:
    """Segment events and merge records as the scripts write them; the counts expected."""
    expected: Counter[str] = Counter()
    for i in range(n or 12):
        segment, kind = ("vip", "power_user")[i % 2], ("ENTER", "EXIT")[i % 3 == 2]
        await redis.xadd(
            keys.SEGMENT_EVENTS,
            {"eventId": f"seg:{segment}:p{i}:1", "segment": segment, "transition": kind},
        )
        expected[f"{kind.lower()}:{segment}"] += 1
    for reason in ("userId limit", "merge limit", "userId limit"):
        await redis.xadd(keys.MERGES, {"status": "refused", "reason": reason, "profile": "p1"})
        expected[f"refused:{reason}"] += 1
    await redis.xadd(keys.MERGES, {"status": "merged", "survivor": "p1", "merged": "p2"})
    expected["merged"] += 1
    return expected


def counts(tail: Tail) -> Counter[str]:
    out: Counter[str] = Counter()
    for segment, kinds in tail.transitions.items():
        for kind, n in kinds.items():
            if n:
                out[f"{kind}:{segment}"] = n
    for reason, n in tail.refusals.items():
        out[f"refused:{reason}"] = n
    if tail.merges:
        out["merged"] = tail.merges
    return out


async def read_tail(redis: Redis) -> Tail:
    return Tail.parse(await redis.hgetall(keys.METRICS_TAIL))


def test_a_pass_counts_each_entry_once_and_resumes_at_its_cursor(redis_url: str) -> None:
    async def go(redis: Redis) -> None:
        scripts = Scripts(redis)
        expected = await fill(redis)
        # A cap of 5 entries per pass: the 12 segment events take three passes.
        assert [await count_pass(redis, scripts, "segment-events", cap=5) for _ in range(4)] == [
            5,
            5,
            2,
            0,
        ]
        assert await count_pass(redis, scripts, "merges") == 4
        assert counts(await read_tail(redis)) == expected
        assert await count_all(redis, scripts) == 0  # nothing new: nothing counted again
        more = await fill(redis, 4)
        assert await count_all(redis, scripts) == 8
        assert counts(await read_tail(redis)) == expected + more
        last = await redis.xrevrange(keys.MERGES, count=1)
        assert (await read_tail(redis)).cursors["merges"] == last[0][0].decode()

    run(go, redis_url)


def test_a_pass_from_a_stale_cursor_writes_nothing(redis_url: str) -> None:
    async def go(redis: Redis) -> None:
        scripts = Scripts(redis)
        await fill(redis)
        assert await count_pass(redis, scripts, "segment-events") == 12
        before = await redis.hgetall(keys.METRICS_TAIL)
        # A second runner that read from the start (cursor "") before the first wrote.
        written = await scripts.metrics_tail(
            keys.METRICS_TAIL, "cursor:segment-events", "", "9999999999999-0", {"enter:vip": 6}
        )
        assert written is False
        assert await redis.hgetall(keys.METRICS_TAIL) == before

    run(go, redis_url)


def test_concurrent_runners_never_count_an_entry_twice(redis_url: str) -> None:
    async def go(redis: Redis) -> None:
        expected = await fill(redis, 200)
        others = [Redis.from_url(redis_url) for _ in range(3)]
        try:
            runners = [Scripts(c) for c in others]

            async def runner(client: Redis, scripts: Scripts) -> int:
                counted = 0
                for _ in range(60):
                    counted += await count_all(client, scripts, cap=7)
                return counted

            done = await asyncio.gather(
                *(runner(c, s) for c, s in zip(others, runners, strict=True))
            )
        finally:
            for c in others:
                await c.aclose()
        assert sum(done) == 200 + 4  # every entry counted by exactly one runner
        assert counts(await read_tail(redis)) == expected

    run(go, redis_url)


def test_history_samples_read_back_oldest_first(redis_url: str) -> None:
    async def go(redis: Redis) -> None:
        scripts = Scripts(redis)
        await redis.hset(keys.metrics(0), mapping={"processed": 3, "accepted": 4})
        await redis.hset(keys.metrics(1), "processed", 2)
        await fill(redis)
        await redis.hset(keys.SEGMENTS, "vip", "{}")  # a custom segment (power_user: built in)
        first = await write_sample(redis, 2)  # before counting: no segments yet
        await count_all(redis, scripts)
        second = await write_sample(redis, 2)
        samples = await read_history(redis, 0)
        assert samples == [first, second]
        assert set(second) == {"at", "counters", "segments"}
        assert set(second["counters"]) == set(COUNTERS)
        assert second["counters"]["processed"] == 5 and second["counters"]["accepted"] == 4
        assert first["segments"] == {}
        assert second["segments"] == {
            "vip": {"enter": 4, "exit": 2},
            "power_user": {"enter": 4, "exit": 2},
        }
        assert await read_history(redis, second["at"] + 60_000) == []

    run(go, redis_url)


def test_one_run_catches_up_with_a_backlog_larger_than_a_pass(redis_url: str) -> None:
    async def go(redis: Redis) -> None:
        n = 5 * PASS_CAP
        async with redis.pipeline(transaction=False) as pipe:
            for i in range(n):
                pipe.xadd(keys.SEGMENT_EVENTS, {"segment": "pro_plan", "transition": "ENTER"})
                if i % 10 == 0:
                    pipe.xadd(
                        keys.MERGES, {"status": "merged", "survivor": "p1", "merged": f"m{i}"}
                    )
            await pipe.execute()
        role = MetricsRole(redis, Scripts(redis), Settings(), log=None)
        await role.run()
        tail = await read_tail(redis)
        assert tail.transitions["pro_plan"]["enter"] == n
        assert tail.merges == n // 10

    run(go, redis_url)


def test_deleted_segments_leave_the_samples_and_keep_their_counts(redis_url: str) -> None:
    async def go(redis: Redis) -> None:
        scripts = Scripts(redis)
        await redis.hset(keys.SEGMENTS, "vip", "{}")
        await fill(redis)
        await count_all(redis, scripts)
        assert set((await write_sample(redis, 1))["segments"]) == {"vip", "power_user"}
        await redis.hdel(keys.SEGMENTS, "vip")  # deleted: out of the samples...
        assert set((await write_sample(redis, 1))["segments"]) == {"power_user"}
        assert "vip" in (await read_tail(redis)).transitions  # ...its counts kept
        await redis.hset(keys.SEGMENTS, "vip", "{}")  # created again: goes on counting
        await fill(redis, 2)
        await count_all(redis, scripts)
        assert (await write_sample(redis, 1))["segments"]["vip"] == {"enter": 5, "exit": 2}

    run(go, redis_url)
