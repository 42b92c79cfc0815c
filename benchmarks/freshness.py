"""Freshness: how long after its ts an event is visible in Redis, at a steady rate.

    python benchmarks/freshness.py [--rate 500] [--seconds 20] [--window-size 5s]
                                   [--ticker-interval 1s] [--drain-events N]

A stack of its own (``cdp.chaos.cluster.Cluster``: embedded redis-server, the API, 2
``cdp worker`` processes, default settings unless given) gets ``--rate`` events a
second for ``--seconds``, each an IDENTIFY of a new user stamped with ts = receivedAt
= now (wall clock), published by the API's own publisher (``lua/publish-n.lua``). A
poller asks Redis every ``POLL_S`` whether the user's identifier resolves (the event
was applied) and notes the first time it does. Printed: p50, p99 and max of visible
minus ts, and the same minus window-size (the part the worker adds: the tick's wait,
the apply). Resolution: the poll interval plus one round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from redis.asyncio import Redis

from cdp import keys
from cdp.api.publisher import Publisher
from cdp.chaos.cluster import Cluster
from cdp.clock import wall_ms
from cdp.events import StreamEvent
from cdp.settings import Settings, parse_duration_ms

POLL_S = 0.005
PARTITIONS = Settings().partitions


async def measure(redis_url: str, rate: int, seconds: float, run: str) -> list[float]:
    redis = Redis.from_url(redis_url)
    publisher = Publisher(redis, PARTITIONS)
    sent: dict[str, int] = {}  # user -> ts (wall ms)
    seen: dict[str, float] = {}  # user -> visible - ts, ms
    done = asyncio.Event()

    async def send() -> None:
        n = int(rate * seconds)
        start = time.monotonic()
        for i in range(n):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            now = wall_ms()
            user = f"fresh-{run}-{i}"
            event = StreamEvent(
                eventId=f"{user}-e",
                ts=now,
                receivedAt=now,
                type="IDENTIFY",
                userId=user,
                traits={"plan": "pro"},
            )
            sent[user] = now
            await publisher.publish(event)
        done.set()

    async def poll() -> None:
        while not (done.is_set() and len(seen) == len(sent)):
            waiting = [u for u in sent if u not in seen]
            if waiting:
                async with redis.pipeline(transaction=False) as pipe:
                    for u in waiting:
                        pipe.exists(keys.identifier(f"user:{u}"))
                    found = await pipe.execute()
                now = wall_ms()
                for u, hit in zip(waiting, found, strict=True):
                    if hit:
                        seen[u] = now - sent[u]
            await asyncio.sleep(POLL_S)

    deadline = time.monotonic() + 60
    while await redis.exists(*(keys.lease(p) for p in range(PARTITIONS))) < PARTITIONS:
        if time.monotonic() > deadline:
            raise SystemExit("freshness: the workers took no lease within 60 s")
        await asyncio.sleep(0.1)
    try:
        await asyncio.gather(send(), poll())
    finally:
        await publisher.close()
        await redis.aclose()
    return list(seen.values())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--rate", type=int, default=500, help="events per second")
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--window-size", default="5s")
    p.add_argument("--ticker-interval", default="1s")
    args = p.parse_args(argv)
    env = {
        "CDP_LOG_LEVEL": "warning",
        "CDP_WINDOW_SIZE": args.window_size,
        "CDP_TICKER_INTERVAL": args.ticker_interval,
    }
    window_ms = parse_duration_ms(args.window_size)
    with tempfile.TemporaryDirectory(prefix="cdp-freshness-") as tmp:
        cluster = Cluster(Path(tmp), 2, "everysec", env)
        try:
            cluster.start()
            lags = asyncio.run(
                measure(cluster.redis.url, args.rate, args.seconds, f"{int(time.time())}")
            )
        finally:
            cluster.stop()
    lags.sort()
    q = statistics.quantiles(lags, n=100, method="inclusive")
    p50, p99, top = q[49], q[98], lags[-1]
    print(
        f"freshness: {len(lags)} events at {args.rate}/s, window-size {args.window_size}, "
        f"ticker-interval {args.ticker_interval}: visible - ts p50 {p50:.0f} ms, "
        f"p99 {p99:.0f} ms, max {top:.0f} ms; minus window-size: p50 {p50 - window_ms:.0f} "
        f"ms, p99 {p99 - window_ms:.0f} ms, max {top - window_ms:.0f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
