"""``cdp bench``: measure a running stack, and the bare Redis under it, on one screen.

1. ingest: a mixed workload (~70% TRACK, ~20% IDENTIFY, ~10% ALIAS over ``users``
   users, ``ts`` = now minus up to 2 s) POSTed to ``/cdp/ingest`` with ``concurrency``
   requests in flight: accepted events/s, p50/p99 latency, answers other than 202;
2. end to end: from the first request until ``processed + dedup_hits + dropped`` in
   ``cdp:metrics`` has grown by the number accepted; this includes the window
   (window-size) the workers hold every event for, so it is not a pure apply rate;
3. bare Redis, same server, keys ``bench:<run>:*`` only (deleted afterwards): XADD
   pipelined by 100, EVALSHA of a trivial 5-command script pipelined by 100, and the
   real ``apply_batch`` script over real stream entries (pending in a consumer group of
   its own) at batch sizes 1, 10, 100 and batch-size, 100 calls per round trip;
4. memory: growth of ``used_memory`` per dedup entry, and per profile (IDENTIFY with 3
   traits and an email, then 2 TRACKs: 3 traits, 2 identifiers, 3 counters).

Compare with DESIGN.md, "Measured on this kind of machine". A table, then one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any

import aiohttp
import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from cdp import keys
from cdp.events import StreamEvent, decode_ingest, iso_ms, stream_encoder
from cdp.pipeline.apply import bucket_member, parse_result, script_event
from cdp.scripts import Scripts
from cdp.settings import Settings, format_duration

Spec = tuple[str, dict[str, Any], int]  # eventId, payload, ms before "now" of its ts
NAMES = ("Page Viewed", "Product Viewed", "Added to Cart", "Checkout Started", "Order Completed")
TRIVIAL_LUA = """redis.call('HINCRBY', KEYS[1], 'n', 1)
redis.call('HGET', KEYS[1], 'n')
redis.call('ZINCRBY', KEYS[2], 1, ARGV[1])
redis.call('SET', KEYS[3], ARGV[1], 'PX', 60000)
return redis.call('EXISTS', KEYS[3])"""
_encoder = msgspec.json.Encoder()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def workload(run: str, tag: str, n: int, users: int, rng: random.Random) -> list[Spec]:
    out: list[Spec] = []
    for i in range(n):
        u = rng.randrange(users)
        uid, anon, r = f"bench-{run}-u{u}", f"bench-{run}-a{u}", rng.random()
        payload: dict[str, Any]
        if r < 0.7:
            who = {"userId": uid} if rng.random() < 0.7 else {"anonymousId": anon}
            payload = {"type": "TRACK", "name": rng.choice(NAMES), "properties": {"i": i}, **who}
        elif r < 0.9:
            traits: dict[str, Any] = {"plan": rng.choice(("free", "pro")), "visits": i % 97}
            if rng.random() < 0.5:
                traits["country"] = rng.choice(("FR", "DE", "US"))
            payload = {"type": "IDENTIFY", "userId": uid, "traits": traits}
            if rng.random() < 0.3:
                payload["email"] = f"{uid}@example.com"
        else:
            payload = {"type": "ALIAS", "anonymousId": anon, "userId": uid}
        out.append((f"bench-{run}-{tag}-{i}", payload, rng.randrange(2000)))
    return out


def body(spec: Spec, now: int) -> bytes:
    return _encoder.encode({"eventId": spec[0], "ts": iso_ms(now - spec[2]), "payload": spec[1]})


def stream_event(spec: Spec, now: int, settings: Settings) -> StreamEvent:
    """The event exactly as the API would put it on a partition stream."""
    return decode_ingest(
        body(spec, now),
        now_ms=now,
        max_event_bytes=settings.max_event_bytes,
        max_future_skew_ms=settings.max_future_skew_ms,
    )


async def send_all(url: str, specs: Sequence[Spec], concurrency: int) -> dict[str, Any]:
    """POST every event, ``concurrency`` in flight; rates and latencies."""
    latencies: list[float] = []
    answers: Counter[str] = Counter()
    pending = iter(specs)
    last_accept = 0.0
    headers = {"Content-Type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client() -> None:
            nonlocal last_accept
            for spec in pending:  # one iterator shared by all clients
                started = time.perf_counter()
                try:
                    async with session.post(url, data=body(spec, now_ms()), headers=headers) as r:
                        await r.read()
                        answers[str(r.status)] += 1
                        if r.status == 202:
                            last_accept = time.perf_counter()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    answers[type(exc).__name__] += 1
                latencies.append(time.perf_counter() - started)

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    accepted = answers.pop("202", 0)
    return {
        "start": start, "last_accept": last_accept, "accepted": accepted,
        "ingest_eps": round(accepted / elapsed), "ingest_seconds": round(elapsed, 2),
        "p50_ms": round(cuts[49] * 1000, 1), "p99_ms": round(cuts[98] * 1000, 1),
        "not_accepted": dict(answers),
    }  # fmt: skip


async def done_count(redis: Redis) -> int:
    values = await redis.hmget(keys.METRICS, ["processed", "dedup_hits", "dropped"])
    return sum(int(v or 0) for v in values)


async def wait_applied(redis: Redis, target: int, deadline: float) -> tuple[float, int]:
    """Poll cdp:metrics until ``target`` events are done; (perf_counter at the end, count)."""
    while (done := await done_count(redis)) < target and time.perf_counter() < deadline:
        await asyncio.sleep(0.02)
    return time.perf_counter(), done


async def timed(calls: int, queue: Any, redis: Redis, per_trip: int = 100) -> float:
    """Calls per second of ``queue(pipe, i)`` with ``per_trip`` calls per round trip."""
    start = time.perf_counter()
    for first in range(0, calls, per_trip):
        async with redis.pipeline(transaction=False) as pipe:
            for i in range(first, min(first + per_trip, calls)):
                await queue(pipe, i)
            await pipe.execute()
    return calls / (time.perf_counter() - start)


class RawApply:
    """``apply_batch`` as a worker calls it, on keys under ``prefix`` with no lease."""

    def __init__(self, redis: Redis, settings: Settings, prefix: str) -> None:
        self.redis, self.settings, self.prefix = redis, settings, prefix
        self.scripts, self.stream, self.applied = Scripts(redis), f"{prefix}:events", 0

    async def stream_entries(self, events: list[StreamEvent]) -> list[tuple[str, StreamEvent]]:
        """XADD the events to a stream of our own and read them into its group's PEL."""
        r = self.redis
        if not await r.exists(self.stream):
            await r.xgroup_create(self.stream, keys.GROUP, id="0", mkstream=True)
        ids: list[Any] = []
        for i in range(0, len(events), 500):
            async with r.pipeline(transaction=False) as pipe:
                for ev in events[i : i + 500]:
                    pipe.xadd(self.stream, {"e": stream_encoder.encode(ev)})
                ids += await pipe.execute()
        while await r.xreadgroup(keys.GROUP, "bench", {self.stream: ">"}, count=1000):
            pass
        pairs = [(i.decode() if isinstance(i, bytes) else str(i), ev) for i, ev in zip(ids, events)]
        return sorted(pairs, key=lambda p: (p[1].ts, p[1].eventId))

    async def run(self, batch: list[tuple[str, StreamEvent]], size: int) -> float:
        s, now = self.settings, now_ms()
        bucket = now // s.dedup_ttl_ms
        cutoff = bucket_member(max(now - s.counter_window_ms, 0), s.counter_bucket_ms)
        dedup = [f"{self.prefix}:dedup:{bucket}", f"{self.prefix}:dedup:{bucket - 1}"]
        key_list = [self.stream, f"{self.prefix}:lease", *dedup, f"{self.prefix}:metrics"]
        chunks = [batch[i : i + size] for i in range(0, len(batch), size)]

        async def queue(pipe: Any, i: int) -> None:
            payload = _encoder.encode([script_event(e, ev, s.counter_bucket_ms) for e, ev in chunks[i]])
            args = [keys.GROUP, "", (bucket + 2) * s.dedup_ttl_ms, cutoff, iso_ms(now), self.prefix]
            await self.scripts.apply_batch(keys=key_list, args=[*args, payload], client=pipe)

        calls_per_s = await timed(len(chunks), queue, self.redis, per_trip=max(1, 10_000 // size))
        return calls_per_s * len(batch) / len(chunks)


async def used_memory(redis: Redis) -> int:
    await redis.connection_pool.disconnect()  # our query buffers count in used_memory too
    return int((await redis.info("memory"))["used_memory"])


async def raw_redis(redis: Redis, settings: Settings, run: str, n: int, users: int) -> dict[str, Any]:
    prefix, rng, out = f"bench:{run}", random.Random(7), {}
    sample = stream_encoder.encode(stream_event(workload(run, "x", 1, users, rng)[0], now_ms(), settings))
    out["xadd_eps"] = await timed(n, lambda p, i: p.xadd(f"{prefix}:xadd", {"e": sample}), redis)
    trivial = redis.register_script(TRIVIAL_LUA)
    lua_keys = [f"{prefix}:lua:h", f"{prefix}:lua:z", f"{prefix}:lua:s"]
    out["evalsha_cps"] = await timed(n, lambda p, i: trivial(lua_keys, [i % 100], client=p), redis)
    apply = RawApply(redis, settings, prefix)
    for size in (settings.batch_size, 1, 10, 100, settings.batch_size):  # the first warms up
        events = [stream_event(sp, now_ms(), settings) for sp in workload(run, f"b{size}-{rng.random()}", n, users, rng)]
        out[f"apply_eps_batch_{size}"] = await apply.run(await apply.stream_entries(events), size)
    mem = RawApply(redis, settings, f"{prefix}:mem")  # memory: fresh keys, nothing pending
    nobody = [(f"bench-{run}-d{i}", {"type": "TRACK", "name": "x", "userId": "anonymous"}, 0) for i in range(n)]
    m0 = await used_memory(redis)
    await mem.run([("0-1", stream_event(sp, now_ms(), settings)) for sp in nobody], 100)
    m1 = await used_memory(redis)
    people = max(1, n // 3)
    specs: list[Spec] = []
    for u in range(people):
        uid = f"bench-{run}-m{u}"
        traits = {"plan": "pro", "visits": u, "country": "FR"}
        specs.append((f"{uid}-i", {"type": "IDENTIFY", "userId": uid, "email": f"{uid}@x.io", "traits": traits}, 0))
        specs += [(f"{uid}-{n}", {"type": "TRACK", "userId": uid, "name": n}, 0) for n in NAMES[:2]]
    await mem.run([("0-1", stream_event(sp, now_ms(), settings)) for sp in specs], 100)
    m2 = await used_memory(redis)
    out["dedup_bytes_per_entry"] = (m1 - m0) / n
    out["profile_bytes"] = (m2 - m1 - len(specs) * out["dedup_bytes_per_entry"]) / people
    return {k: round(v) for k, v in out.items()}


async def cleanup(redis: Redis, run: str) -> int:
    deleted = 0
    async for batch in _scan_batches(redis, f"bench:{run}:*"):
        deleted += await redis.unlink(*batch)
    return deleted


async def _scan_batches(redis: Redis, pattern: str) -> Any:
    batch: list[Any] = []
    async for key in redis.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) >= 500:
            yield batch
            batch = []
    if batch:
        yield batch
