"""The Redis micro-benchmarks of ``cdp bench``: the bare server under the stack.

Everything here writes under ``bench:<run>:*`` only (``cleanup`` deletes it): XADD and
EVALSHA of a trivial 5-command script, pipelined by 100; the worker's own
``queue_apply`` (``RawApply``: every key renamed under ``bench:<run>``, no lease) on
real stream entries pending in a group of their own, at several batch sizes; memory
per profile and per remembered eventId (in the profiles' seen hashes); and the merge
cost as ``INFO commandstats`` counts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from redis.commands.core import AsyncScript
from redis.exceptions import RedisError, ResponseError

from cdp import keys
from cdp.bench.http import done_count
from cdp.bench.workload import NAMES, small_profiles, stream_event, workload
from cdp.clock import wall_ms
from cdp.connect import Client
from cdp.errors import BenchError
from cdp.events import StreamEvent, stream_encoder
from cdp.pipeline.apply import ApplyContext, queue_apply
from cdp.redis_nodes import dbsize, disconnect, info_sum, scan_all
from cdp.scripts import Bound, Scripts, calls, source
from cdp.settings import Settings

TRIVIAL_LUA = """redis.call('HINCRBY', KEYS[1], 'n', 1)
redis.call('HGET', KEYS[1], 'n')
redis.call('ZINCRBY', KEYS[2], 1, ARGV[1])
redis.call('SET', KEYS[3], ARGV[1], 'PX', 60000)
return redis.call('EXISTS', KEYS[3])"""
CDP = keys.PREFIX
BEYOND = 1_000_000  # partition numbers no worker owns
# eventIds added to each profile of the memory row after its first 3: 8 in all, a
# profile's seen hash over two dedup buckets for a person of moderate activity.
MORE_IDS = 5


async def timed(
    calls: int, queue: Callable[[Any, int], Awaitable[Any] | Any], redis: Client, per_trip: int
) -> tuple[float, list[Any]]:
    """Calls/s of ``queue(pipe, i)`` for i < calls, ``per_trip`` calls per round trip."""
    replies: list[Any] = []
    start = time.perf_counter()
    for first in range(0, calls, per_trip):
        async with redis.pipeline(transaction=False) as pipe:
            for i in range(first, min(first + per_trip, calls)):
                queued = queue(pipe, i)
                if asyncio.iscoroutine(queued):
                    await queued
            replies += await pipe.execute()
    return calls / (time.perf_counter() - start), replies


class _Renamed(AsyncScript):
    """``apply_batch`` with the ``cdp:`` keys and the ``cdp`` prefix argument renamed."""

    def __init__(self, redis: Client, prefix: str) -> None:
        super().__init__(redis, source("apply_batch"))
        self.prefix = prefix

    async def __call__(
        self,
        keys: Sequence[Any] | None = None,
        args: Iterable[Any] | None = None,
        client: Any = None,
    ) -> Any:
        keys = [rename(k, self.prefix) for k in keys or []]
        args = [self.prefix if a == CDP else a for a in args or []]
        return await super().__call__(keys, args, client)


def rename(key: str, prefix: str) -> str:
    return prefix + key[len(CDP) :] if key.startswith(CDP + ":") else key


class RawApply:
    """The worker's ``queue_apply`` on ``partition`` with every key renamed under ``prefix``.

    No lease (worker id ""); the partition number is beyond any real one.
    """

    def __init__(self, redis: Client, settings: Settings, prefix: str, partition: int) -> None:
        self.redis, self.settings, self.partition = redis, settings, partition
        self.scripts = Scripts(redis)
        self.scripts.apply_batch = Bound(calls.apply_batch, _Renamed(redis, prefix))
        self.stream = rename(keys.stream(partition), prefix)

    async def pending(self, events: list[StreamEvent]) -> list[tuple[str, StreamEvent]]:
        """XADD the events to our stream, read them into our group: real XACK work."""
        r = self.redis
        with contextlib.suppress(RedisError):  # BUSYGROUP after the first call
            await r.xgroup_create(self.stream, keys.GROUP, id="0", mkstream=True)
        encoded = [stream_encoder.encode(ev) for ev in events]
        _, ids = await timed(
            len(events), lambda p, i: p.xadd(self.stream, {"e": encoded[i]}), r, 500
        )
        while await r.xreadgroup(keys.GROUP, "bench", {self.stream: ">"}, count=1000):
            pass
        pairs = [(i.decode(), e) for i, e in zip(ids, events, strict=True)]
        return sorted(pairs, key=lambda p: (p[1].ts, p[1].eventId))  # as a tick orders them

    async def run(self, batch: list[tuple[str, StreamEvent]], size: int) -> tuple[float, int]:
        """Apply ``batch`` ``size`` events per call; (events/s, events applied)."""
        ctx = ApplyContext(now_ms=wall_ms(), worker_id="")
        chunks = [batch[i : i + size] for i in range(0, len(batch), size)]

        async def queue(pipe: Any, i: int) -> None:
            await queue_apply(pipe, self.scripts, self.settings, ctx, self.partition, chunks[i])

        try:
            calls_s, replies = await timed(len(chunks), queue, self.redis, max(1, 10_000 // size))
        except ResponseError as exc:
            raise BenchError(f"apply_batch failed: {exc}") from None
        applied = sum(self.scripts.apply_batch.decode(r).applied for r in replies)
        return calls_s * len(batch) / len(chunks), applied


async def used_memory(redis: Client) -> int:
    """``used_memory``, read while no AOF rewrite runs: during one, Redis 6 keeps every
    write in 10 MB blocks that count in used_memory, and the stack's AOF passes
    auto-aof-rewrite-min-size (64 MB) several times in a run like this one."""
    deadline = time.perf_counter() + 30
    while int((await info_sum(redis, "persistence")).get("aof_rewrite_in_progress", 0)):
        if time.perf_counter() > deadline:
            print("cdp bench: warning: an AOF rewrite is running: memory figures overstated")
            break
        await asyncio.sleep(0.05)
    await disconnect(redis)  # our query buffers count in used_memory too
    return int((await info_sum(redis, "memory"))["used_memory"])


async def raw_redis(redis: Client, s: Settings, run: str, n: int, users: int) -> dict[str, float]:
    prefix, rng, out = f"bench:{run}", random.Random(7), dict[str, float]()
    sample = stream_encoder.encode(stream_event(workload(run, "x", 1, users, rng)[0], s))
    xadd = lambda p, i: p.xadd(f"{prefix}:x", {"e": sample})  # noqa: E731
    out["xadd_eps"], _ = await timed(n, xadd, redis, 100)
    trivial = redis.register_script(TRIVIAL_LUA)
    lua_keys = [f"{prefix}:lua:{k}" for k in "hzs"]
    out["evalsha_cps"], _ = await timed(n, lambda p, i: trivial(lua_keys, [i % 100], p), redis, 100)
    apply = RawApply(redis, s, prefix, BEYOND)
    for size in (s.batch_size, 1, 10, 100, s.batch_size):  # the first run warms the profiles up
        specs = workload(run, f"b{size}-{rng.randrange(10**9)}", n, users, rng)
        batch = await apply.pending([stream_event(sp, s) for sp in specs])
        out[f"apply_eps_batch_{size}"], applied = await apply.run(batch, size)
        if applied != n:
            print(f"cdp bench: warning: apply_batch applied {applied} of {n} events")
    out |= await memory(redis, s, prefix, run, n)
    return {k: round(v) for k, v in out.items()} | await merge_cost(
        redis, s, prefix, run, max(1, n // 4)
    )


async def memory(redis: Client, s: Settings, prefix: str, run: str, n: int) -> dict[str, float]:
    """used_memory growth per profile (its remembered eventIds deducted), then per
    remembered eventId: more TRACKs of those profiles, in the buckets their counters
    already hold, so nothing grows but the profiles' seen hashes (cdp:profile:{cid}:seen)."""
    mem = RawApply(redis, s, prefix, BEYOND + 1)  # XACK of ids not pending: a no-op
    m0, keys0 = await used_memory(redis), await dbsize(redis)
    people, events, again = max(1, n // 3), [], []
    for u in range(people):
        uid = f"bench-{run}-m{u}"
        traits = {"plan": "pro", "visits": u, "country": "FR"}
        ident = {"type": "IDENTIFY", "userId": uid, "email": f"{uid}@example.com", "traits": traits}
        events.append(stream_event((str(uuid.uuid4()), ident, 0), s))
        for name in NAMES[:2]:
            track = {"type": "TRACK", "userId": uid, "name": name}
            events.append(stream_event((str(uuid.uuid4()), track, 0), s))
        first = events[-2]  # its TRACK of NAMES[0]: the same name, time, counter buckets
        again += [
            StreamEvent(str(uuid.uuid4()), first.ts, first.receivedAt, "TRACK", uid, name=NAMES[0])
            for _ in range(MORE_IDS)
        ]
    await mem.run([("0-1", ev) for ev in events], 100)
    m1, keys1 = await used_memory(redis), await dbsize(redis)
    if await redis.exists(keys.identifier(f"user:bench-{run}-m0")):
        print("cdp bench: warning: apply_batch wrote keys outside bench:<run>:*")
    await mem.run([("0-1", ev) for ev in again], 100)
    m2 = await used_memory(redis)
    per_id = (m2 - m1) / len(again)
    keys_per_profile = (keys1 - keys0) / people
    # Our key names are longer than cdp's: count each key as if its prefix were "cdp".
    longer = keys_per_profile * (len(prefix) - len(CDP))
    profile = (m1 - m0 - len(events) * per_id) / people - longer
    return {
        "eventid_bytes": per_id,
        "profile_bytes": profile,
        "keys_per_profile": keys_per_profile,
    }


async def lua_time(redis: Client, merges: str, partitions: int) -> tuple[int, int, int]:
    """(usec spent in EVALSHA since the server started, as Redis counts it; records in
    ``merges``; events the workers have done): read before and after a measurement."""
    stats = (await info_sum(redis, "commandstats")).get("cmdstat_evalsha", {})
    done, _ = await done_count(redis, partitions)
    return int(stats.get("usec", 0)), await redis.xlen(merges), done


async def merge_cost(redis: Client, s: Settings, prefix: str, run: str, n: int) -> dict[str, float]:
    """EVALSHA usec per ALIAS that merges two small profiles, and per ALIAS that links."""
    setup, merging, linking = small_profiles(run, n, s.counter_bucket_ms)
    apply = RawApply(redis, s, prefix, BEYOND + 2)
    await apply.run([("0-1", stream_event(spec, s)) for spec in setup], 100)
    out, merges = dict[str, float](), f"{prefix}:merges"
    for kind, specs, records in (("merge", merging, n), ("link", linking, 0)):
        batch = await apply.pending([stream_event(spec, s) for spec in specs])
        usec0, len0, done0 = await lua_time(redis, merges, s.partitions)
        _, applied = await apply.run(batch, s.batch_size)
        usec1, len1, done1 = await lua_time(redis, merges, s.partitions)
        if applied != n or len1 - len0 != records:
            print(
                f"cdp bench: warning: {kind} ALIAS: {applied} of {n} applied,"
                f" {len1 - len0} merge records instead of {records}"
            )
        if done1 != done0:  # idle workers' lease scripts take a few usec: no matter
            print(f"cdp bench: warning: the workers applied events during the {kind} ALIAS")
        out[f"{kind}_alias_us"] = round((usec1 - usec0) / n, 1)
    out["merge_us"] = round(out["merge_alias_us"] - out["link_alias_us"], 1)
    return out


async def cleanup(redis: Client, run: str) -> None:
    """Delete the keys this run created: ``bench:<run>:*``, nothing else."""
    found = [key async for key in scan_all(redis, f"bench:{run}:*")]
    for i in range(0, len(found), 500):
        await redis.unlink(*found[i : i + 500])
