"""Segment evaluation cost: profiles evaluated per second with 20 custom segments.

    python benchmarks/segments.py [--profiles 5000] [--segments 20]

Starts a scratch redis-server (the embedded one), fills it with profiles through the
real apply script (traits, TRACK counters over a day, returns), defines ``--segments``
custom segments next to the three built-ins (traits, counters, recency, combinations),
then times ``SegmentEngine.evaluate`` over every profile twice: the first pass enters
the segments (transitions written), the second finds nothing to change (the steady
state after each tick). Prints profiles/s and the share of time spent in Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time

from redis.asyncio import Redis

from cdp import keys
from cdp.embedded import RedisServer
from cdp.events import StreamEvent
from cdp.pipeline.apply import ApplyContext, queue_apply
from cdp.scripts import Scripts
from cdp.segments.engine import SegmentEngine
from cdp.settings import Settings

NOW = 1_759_572_000_000 + 86_400_000
PLANS = ["free", "pro", "team", "enterprise"]
COUNTRIES = ["US", "FR", "DE", "JP", "BR"]


def custom_rules(n: int) -> list[dict[str, object]]:
    shapes: list[dict[str, object]] = [
        {"trait": "plan", "op": "in", "value": ["team", "enterprise"]},
        {"trait": "country", "op": "eq", "value": "FR"},
        {"trait": "ltv", "op": "gte", "value": 500},
        {"count": {"event": "Purchase", "within": "7d", "gte": 2}},
        {"count": {"event": "Viewed", "within": "1h", "gte": 3}},
        {"inactive": "6h"},
        {"returned": {"after": "2h", "within": "1d"}},
        {
            "all": [
                {"trait": "plan", "op": "eq", "value": "pro"},
                {"count": {"within": "1d", "gte": 10}},
            ]
        },
        {
            "any": [
                {"trait": "ltv", "op": "lt", "value": 10},
                {"not": {"trait": "email", "op": "exists"}},
            ]
        },
        {"all": [{"trait": "country", "op": "ne", "value": "US"}, {"inactive": "30m"}]},
    ]
    return [shapes[i % len(shapes)] for i in range(n)]


async def fill(redis: Redis, scripts: Scripts, settings: Settings, profiles: int) -> list[str]:
    rng = random.Random(7)
    ctx = ApplyContext(now_ms=NOW, worker_id="")
    n = 0
    for start in range(0, profiles, 100):
        batch = []
        for u in range(start, min(start + 100, profiles)):
            t0 = NOW - rng.randrange(86_400_000)
            batch.append(
                StreamEvent(
                    eventId=f"i{u}",
                    ts=t0,
                    receivedAt=t0,
                    type="IDENTIFY",
                    userId=f"u{u}",
                    traits={
                        "plan": rng.choice(PLANS),
                        "country": rng.choice(COUNTRIES),
                        "ltv": rng.randrange(1000),
                    },
                )
            )
            for k in range(rng.randrange(1, 12)):
                ts = t0 + k * rng.randrange(60_000, 3_600_000)
                batch.append(
                    StreamEvent(
                        eventId=f"t{u}-{k}",
                        ts=min(ts, NOW),
                        receivedAt=NOW,
                        type="TRACK",
                        userId=f"u{u}",
                        name=rng.choice(["Viewed", "Purchase", "Clicked"]),
                    )
                )
        batch.sort(key=lambda e: (e.ts, e.eventId))
        async with redis.pipeline(transaction=False) as pipe:
            for i in range(0, len(batch), 200):
                chunk = [(f"0-{n + j + 1}", ev) for j, ev in enumerate(batch[i : i + 200])]
                await queue_apply(pipe, scripts, settings, ctx, 0, chunk)
                n += len(chunk)
            await pipe.execute()
    return [cid.decode() for cid in await redis.zrange(keys.PROFILES, 0, -1)]


async def main(profiles: int, segments: int) -> None:
    settings = Settings()
    with tempfile.TemporaryDirectory() as data, RedisServer(data, appendonly=False) as server:
        redis = Redis.from_url(server.url)
        scripts = Scripts(redis)
        cids = await fill(redis, scripts, settings, profiles)
        for i, rule in enumerate(custom_rules(segments)):
            await redis.hset(keys.SEGMENTS, f"custom{i}", json.dumps({"rule": rule}))
        await redis.incr(keys.SEGMENTS_VERSION)
        engine = SegmentEngine(redis, scripts, settings)
        total = len(await engine.cache.refresh())
        print(
            f"{len(cids)} profiles, {total} segments ({segments} custom + 3 built-in), "
            f"Redis {(await redis.info('server'))['redis_version']}"
        )
        for label in ("first pass (ENTERs written)", "steady state (no change)"):
            before = await redis.info("commandstats")
            started = time.perf_counter()
            emitted = await engine.evaluate(cids, NOW)
            seconds = time.perf_counter() - started
            after = await redis.info("commandstats")
            redis_us = sum(
                after.get(k, {}).get("usec", 0) - before.get(k, {}).get("usec", 0)
                for k in ("cmdstat_evalsha", "cmdstat_eval")
            )
            print(
                f"  {label:30} {len(cids) / seconds:10,.0f} profiles/s  "
                f"{len(emitted):7,} transitions  Redis {redis_us / len(cids):6.1f} µs/profile "
                f"of {seconds / len(cids) * 1e6:6.1f} µs"
            )
        await redis.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", type=int, default=5000)
    parser.add_argument("--segments", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(main(args.profiles, args.segments))
