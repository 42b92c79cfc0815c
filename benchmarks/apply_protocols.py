"""The two apply protocols on one Redis: Redis commands, CPU and time per event.

    python benchmarks/apply_protocols.py [--users 500] [--per-user 10] [--merging 0.2]

The same events (``--users`` users, ``--per-user`` events each over an hour, TRACKs
and IDENTIFYs with traits; a ``--merging`` share of the users start anonymous and are
identified later: one merge each), sorted by (ts, eventId), cut into the worker's
slices (200 events of one partition), go through ``apply_batch``
(``cdp.pipeline.apply``) and through the profile protocol
(``cdp.pipeline.profile_apply``), each on a fresh scratch redis-server, twice in
turn. Prints per run: events applied, merges, Redis commands per event (INFO
commandstats: the scripts' own commands included) and EVALSHA calls, Redis CPU per
event (INFO cpu), wall time of the in-process driver. docs/cluster.md quotes it.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import redis as redis_sync

from cdp import keys
from cdp.connect import connect
from cdp.embedded import RedisServer
from cdp.events import StreamEvent
from cdp.identity import partition_of, routing_id
from cdp.pipeline.apply import ApplyContext, queue_apply
from cdp.pipeline.profile_apply import apply_partition
from cdp.scripts import Scripts, load_scripts
from cdp.settings import load_settings

T0 = 1_759_572_000_000
SLICE = 200


def workload(users: int, per_user: int, merging: float) -> list[tuple[int, list[StreamEvent]]]:
    rng = random.Random(7)
    events = []
    for u in range(users):
        anon_first = rng.random() < merging
        for k in range(per_user):
            ts = T0 + rng.randrange(0, 3_600_000)
            ids: dict[str, Any] = {"userId": f"u{u}"}
            kind, traits, name = "TRACK", None, rng.choice(["Clicked", "Viewed", "Bought"])
            if anon_first and k == 0:
                ids, ts = {"anonymousId": f"a{u}"}, T0 - 60_000
            elif anon_first and k == 1:
                ids["anonymousId"] = f"a{u}"
            if k % 4 == 1:
                kind, traits, name = "IDENTIFY", {"plan": rng.choice(["a", "b"]), "n": k}, None
            eid = f"e{u}-{k}"
            events.append(
                StreamEvent(
                    eventId=eid, ts=ts, receivedAt=ts, type=kind, traits=traits, name=name, **ids
                )
            )
    events.sort(key=lambda e: (e.ts, e.eventId))
    parts: dict[int, list[StreamEvent]] = {}
    for e in events:
        parts.setdefault(partition_of(routing_id(e.userId, e.anonymousId, e.email), 16), []).append(
            e
        )
    return [
        (p, lst[i : i + SLICE])
        for p, lst in sorted(parts.items())
        for i in range(0, len(lst), SLICE)
    ]


async def drive(url: str, protocol: str, calls: list[tuple[int, list[StreamEvent]]]) -> int:
    settings = load_settings(env={}, redis_url=url)
    redis = await connect(settings)
    applied = 0
    try:
        await load_scripts(redis)
        scripts = Scripts(redis)
        ctx = ApplyContext(now_ms=T0 + 7_200_000, worker_id="")
        for partition, chunk in calls:
            batch = [("", ev) for ev in chunk]
            if protocol == "profile":
                result = await apply_partition(redis, scripts, settings, ctx, partition, batch)
            else:
                async with redis.pipeline(transaction=False) as pipe:
                    await queue_apply(pipe, scripts, settings, ctx, partition, batch)
                    (reply,) = await pipe.execute()
                result = scripts.apply_batch.decode(reply)
            applied += result.applied
    finally:
        await redis.aclose()
    return applied


def measure(protocol: str, calls: list[tuple[int, list[StreamEvent]]], where: Path) -> None:
    server = RedisServer(where, appendonly=False)
    server.start()
    try:
        r = redis_sync.Redis.from_url(server.url, decode_responses=True)
        r.config_resetstat()
        cpu0 = r.info("cpu")
        started = time.perf_counter()
        applied = asyncio.run(drive(server.url, protocol, calls))
        wall = time.perf_counter() - started
        cpu1 = r.info("cpu")
        stats = r.info("commandstats")
        commands = sum(v["calls"] for v in stats.values())
        evalsha = stats.get("cmdstat_evalsha", {}).get("calls", 0)
        cpu = sum(cpu1[k] - cpu0[k] for k in ("used_cpu_user", "used_cpu_sys"))
        print(
            f"{protocol:8} applied {applied}, merges {r.xlen(keys.MERGES)}: "
            f"{commands / applied:.2f} commands/event, EVALSHA {evalsha}, "
            f"Redis CPU {cpu / applied * 1e6:.1f} us/event, wall {wall:.2f} s"
        )
        r.close()
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--per-user", type=int, default=10)
    parser.add_argument("--merging", type=float, default=0.2)
    args = parser.parse_args()
    calls = workload(args.users, args.per_user, args.merging)
    with tempfile.TemporaryDirectory() as tmp:
        for n, protocol in enumerate(["batch", "profile", "batch", "profile"]):
            measure(protocol, calls, Path(tmp) / str(n))


if __name__ == "__main__":
    main()
