"""Segment evaluation cost: profiles evaluated per second with 20 custom segments.

    python benchmarks/segments.py [--profiles 5000] [--segments 20] [--cluster]
                                  [--outbox]

Starts a scratch redis-server (the embedded one), fills it with profiles through the
real apply script (traits, TRACK counters over a day, returns), defines ``--segments``
custom segments next to the three built-ins (traits, counters, recency, combinations),
then times ``SegmentEngine.evaluate`` over every profile twice: the first pass enters
the segments (transitions written), the second finds nothing to change (the steady
state after each tick). Prints profiles/s, Redis µs per profile (every command's
usec from INFO commandstats, summed over the masters) and Redis calls per profile
(every command, a script call counting as one).

``--cluster``: the profiles are copied (DUMP/RESTORE) to a scratch 3-master cluster
and evaluated there (one script call per profile, the outbox and its relay).
``--outbox``: on one Redis, the outbox packing (apply-protocol profile).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from pathlib import Path

import redis as redis_sync
from redis.asyncio import Redis

from cdp import keys
from cdp.connect import Client, connect
from cdp.embedded import RedisServer
from cdp.embedded_cluster import EmbeddedCluster
from cdp.events import StreamEvent
from cdp.pipeline.apply import ApplyContext, queue_apply
from cdp.redis_nodes import info_sum
from cdp.scripts import Scripts
from cdp.segments.engine import SegmentEngine
from cdp.settings import Settings, load_settings

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


async def measure(redis: Client, settings: Settings, cids: list[str], outbox: bool | None) -> None:
    # (outbox None: the engine's own choice; also how the code before the choice is run)
    engine = SegmentEngine(
        redis, Scripts(redis), settings, **({} if outbox is None else {"outbox": outbox})
    )
    total = len(await engine.cache.refresh())
    print(f"{len(cids)} profiles, {total} segments, outbox: {getattr(engine, 'outbox', None)}")
    for label in ("first pass (ENTERs written)", "steady state (no change)"):
        before = await info_sum(redis, "commandstats")
        started = time.perf_counter()
        emitted = await engine.evaluate(cids, NOW)
        seconds = time.perf_counter() - started
        after = await info_sum(redis, "commandstats")
        used = [k for k in after if k.startswith("cmdstat_") and k != "cmdstat_info"]
        redis_us = sum(after[k]["usec"] - before.get(k, {}).get("usec", 0) for k in used)
        calls = sum(after[k]["calls"] - before.get(k, {}).get("calls", 0) for k in used)
        evalsha = after.get("cmdstat_evalsha", {}).get("calls", 0) - before.get(
            "cmdstat_evalsha", {}
        ).get("calls", 0)
        print(
            f"  {label:30} {len(cids) / seconds:8,.0f} profiles/s  {len(emitted):7,} "
            f"transitions  Redis {redis_us / len(cids):6.1f} µs/profile, "
            f"{calls / len(cids):5.2f} commands/profile ({evalsha / len(cids):5.3f} script "
            f"calls), of {seconds / len(cids) * 1e6:6.1f} µs"
        )


async def main(profiles: int, segments: int, cluster: bool, outbox: bool) -> None:
    settings = Settings()
    with tempfile.TemporaryDirectory() as data, RedisServer(data, appendonly=False) as server:
        redis = Redis.from_url(server.url)
        scripts = Scripts(redis)
        cids = await fill(redis, scripts, settings, profiles)
        for i, rule in enumerate(custom_rules(segments)):
            await redis.hset(keys.SEGMENTS, f"custom{i}", json.dumps({"rule": rule}))
        await redis.incr(keys.SEGMENTS_VERSION)
        print(f"Redis {(await redis.info('server'))['redis_version']}")
        if not cluster:
            await measure(redis, settings, cids, True if outbox else None)
            await redis.aclose()
            return
        await redis.aclose()
        with EmbeddedCluster(Path(data) / "c", 3, appendfsync="no") as nodes:
            src = redis_sync.Redis.from_url(server.url)
            dst = redis_sync.RedisCluster.from_url(nodes.url)
            for key in src.scan_iter(match="cdp:*", count=1000):
                dst.restore(key, 0, src.dump(key), replace=True)
            src.close()
            dst.close()
            on_cluster = load_settings(env={}, redis_url=nodes.url)
            client = await connect(on_cluster)
            await measure(client, on_cluster, cids, None)
            await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", type=int, default=5000)
    parser.add_argument("--segments", type=int, default=20)
    parser.add_argument("--cluster", action="store_true", help="evaluate on a 3-master cluster")
    parser.add_argument("--outbox", action="store_true", help="one Redis, the outbox packing")
    args = parser.parse_args()
    asyncio.run(main(args.profiles, args.segments, args.cluster, args.outbox))
