"""The Redis cost of a merge: across slots (``cdp.merge``, a 3-master cluster) against the
merge inside ``apply_batch`` on one Redis, for the same profiles.

Run: ``python benchmarks/merge_cost.py [--pairs 200] [--events 20]``. It starts its own
redis-server and 3-master cluster (temporary directories), builds ``pairs`` pairs of
typical profiles with ``apply_batch`` (``events`` events each: IDENTIFYs with 4
traits, TRACKs of 3 names, a PAGE; the younger one in a segment), then measures
Redis's own time (INFO commandstats, µs summed over every command and every master)
of:

- one Redis: the ALIAS of each pair through ``apply_batch`` (it merges them), less
  the same apply without a merge (an IDENTIFY of the pair's survivor): the merge's
  share of the script;
- the cluster (the built keys copied there): ``cdp.merge.merge`` of each pair (every
  step: freeze, absorb, repoints, finish, record, the journal's plain commands).

Figures are per merge; Redis's time only (not the round trips, not the client).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import redis as redis_sync

from cdp import keys
from cdp.connect import connect, sync_client
from cdp.embedded import RedisServer
from cdp.embedded_cluster import EmbeddedCluster
from cdp.events import StreamEvent, iso_ms
from cdp.pipeline.apply import ApplyContext, queue_apply
from cdp.scripts import Scripts, load_scripts
from cdp.settings import load_settings

T0 = 1_759_572_000_000
NOW = T0 + 3_600_000


def ev(eid: str, ts: int, kind: str, **kw: Any) -> StreamEvent:
    return StreamEvent(eventId=eid, ts=ts, receivedAt=ts, type=kind, **kw)


def profile_events(pair: int, who: dict[str, str], events: int) -> list[StreamEvent]:
    out = []
    for i in range(events):
        ts = T0 + i * 61_000 + pair
        eid = f"{pair}-{next(iter(who.values()))}-{i}"
        if i % 5 == 0:
            traits = {"plan": f"p{i}", "country": "FR", "age": i, "ltv": i * 10}
            out.append(ev(eid, ts, "IDENTIFY", traits=traits, **who))
        elif i % 5 == 4:
            out.append(ev(eid, ts, "PAGE", **who))
        else:
            out.append(ev(eid, ts, "TRACK", name=f"Event {i % 3}", **who))
    return out


async def apply(url: str, batches: list[list[StreamEvent]], now_ms: int) -> None:
    settings = load_settings(env={}, redis_url=url)
    redis = await connect(settings)
    scripts = Scripts(redis)
    ctx = ApplyContext(now_ms=now_ms, worker_id="")
    for n, batch in enumerate(batches):
        async with redis.pipeline(transaction=False) as pipe:
            entries = [(f"0-{n * 1000 + i + 1}", e) for i, e in enumerate(batch)]
            await queue_apply(pipe, scripts, settings, ctx, 0, entries)
            await pipe.execute()
    await redis.aclose()


def redis_usec(nodes: list[redis_sync.Redis]) -> tuple[int, int]:
    """Redis's own time (µs) and calls, every command, summed over ``nodes``."""
    usec = calls = 0
    for node in nodes:
        for name, stats in node.info("commandstats").items():
            if name.startswith("cmdstat_") and name not in ("cmdstat_info", "cmdstat_config"):
                usec += int(stats["usec"])
                calls += int(stats["calls"])
    return usec, calls


def reset(nodes: list[redis_sync.Redis]) -> None:
    for node in nodes:
        node.config_resetstat()


def build(url: str, pairs: int, events: int) -> None:
    for p in range(pairs):
        survivor = profile_events(p, {"userId": f"u{p}"}, events)
        loser = profile_events(p, {"anonymousId": f"a{p}"}, events)
        asyncio.run(apply(url, [survivor, loser], T0 + events * 61_000))
    r = redis_sync.Redis.from_url(url)
    for p in range(pairs):
        loser = f"p{2 * p + 2}"
        r.hset(keys.profile_segments(loser), "vip", json.dumps({"in": True, "n": 1}))
        r.zadd(keys.segment_members("vip"), {loser: 2 * p + 2})
    r.close()


def one_redis(url: str, pairs: int) -> float:
    r = redis_sync.Redis.from_url(url)
    plain = [[ev(f"plain-{p}", NOW - 1000, "IDENTIFY", userId=f"u{p}")] for p in range(pairs)]
    reset([r])
    asyncio.run(apply(url, plain, NOW))
    base, _ = redis_usec([r])
    aliases = [
        [ev(f"alias-{p}", NOW - 500, "ALIAS", userId=f"u{p}", anonymousId=f"a{p}")]
        for p in range(pairs)
    ]
    reset([r])
    asyncio.run(apply(url, aliases, NOW))
    merged, _ = redis_usec([r])
    assert r.xlen(keys.MERGES) == pairs
    r.close()
    return (merged - base) / pairs


async def cluster_merges(url: str, pairs: int, masters: list[redis_sync.Redis]) -> float:
    settings = load_settings(env={}, redis_url=url)
    redis = await connect(settings)
    await load_scripts(redis)
    scripts = Scripts(redis)
    await redis.ping()
    reset(masters)  # what the merges cost, not the loading
    from cdp import merge  # not before the cross-slot merge (--one-redis runs without it)

    start = time.perf_counter()
    for p in range(pairs):
        outcome = await merge.merge(
            redis,
            scripts,
            settings,
            f"p{2 * p + 2}",
            f"p{2 * p + 1}",
            f"alias-{p}",
            iso_ms(NOW - 500),
            NOW,
        )
        assert outcome.status == "merged", outcome
    elapsed = time.perf_counter() - start
    await redis.aclose()
    return elapsed / pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--one-redis", action="store_true", help="only the one-Redis figure")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        single = RedisServer(Path(tmp) / "one", appendonly=False)
        cluster = EmbeddedCluster(Path(tmp) / "cluster", 3, 0)
        single.start()
        try:
            cluster.start()
            build_url = single.url.rsplit("/", 1)[0] + "/1"
            build(build_url, args.pairs, args.events)
            source = redis_sync.Redis.from_url(build_url)
            target = sync_client(cluster.url)
            for key in source.scan_iter(count=1000):
                target.restore(key, max(source.pttl(key), 0), source.dump(key), replace=True)
            for key in source.scan_iter(count=1000):
                source.copy(key, key, destination_db=0, replace=True)
            source.close()
            in_script = one_redis(single.url, args.pairs)
            print(f"profiles: {args.events} events each, {args.pairs} merges")
            print(f"one Redis, merge inside apply_batch: {in_script:.0f} µs of Redis per merge")
            if args.one_redis:
                return
            masters = [redis_sync.Redis(port=n.port) for n in cluster.nodes]
            wall = asyncio.run(cluster_merges(cluster.url, args.pairs, masters))
            across, calls = redis_usec(masters)
            print(
                f"cluster, cdp.merge: {across / args.pairs:.0f} µs of Redis per merge "
                f"({calls / args.pairs:.1f} commands; {wall * 1e3:.2f} ms wall per merge)"
            )
        finally:
            cluster.stop()
            single.stop()


if __name__ == "__main__":
    main()
