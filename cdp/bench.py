"""``cdp bench``: measure a running stack, and the bare Redis under it, on one screen.

1. ingest: a mixed workload (~70% TRACK, ~20% IDENTIFY, ~10% ALIAS over ``users``
   users, ``ts`` = now minus up to 0.5 s) POSTed to ``/cdp/ingest`` with ``concurrency``
   requests in flight: accepted events/s, p50/p99 latency, answers other than 202.
   With ``merge_ratio`` > 0 that share of the events is ALIAS anonymousId -> userId
   between two profiles that already exist (one merge each): a warm-up phase (one
   TRACK per side of each pair) is sent first and waited for until applied, and only
   the phase after it is measured;
2. end to end: from the first request until ``processed + dedup_hits + dropped`` in
   ``cdp:metrics`` has grown by the number accepted. It includes the window-size the
   workers hold every event for, so it is not a pure apply rate. The merges and
   refusals this run's events recorded in ``cdp:merges`` are counted (and checked: one
   merge per merging ALIAS);
3. bare Redis, same server, keys ``bench:<run>:*`` only (deleted afterwards): XADD and
   EVALSHA of a trivial 5-command script, pipelined by 100; the worker's own
   ``queue_apply`` (every key renamed under ``bench:<run>``, no lease) on real stream
   entries pending in a group of their own, at batch sizes 1, 10, 100 and batch-size,
   ~10,000 events per round trip, encoding included in the timing;
4. memory: ``used_memory`` growth per dedup entry, and per profile (an IDENTIFY with 3
   traits and an email, then 2 TRACKs: 3 traits, 2 identifiers, 3 counters), read
   while no AOF rewrite runs;
5. merge cost, as Redis accounts it (``INFO commandstats``, EVALSHA usec): events/4
   ALIAS that each merge two small profiles (3 traits, 2 counters of 3 buckets, 2 and 3
   identifiers), then as many that each link a new anonymousId to one of the
   survivors, both at batch-size: usec per event of each kind, and their difference.

It prints a table next to DESIGN.md's reference figures, then one JSON line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import aiohttp
import msgspec
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError, ResponseError

from cdp import keys
from cdp.events import StreamEvent, decode_ingest, iso_ms, stream_encoder
from cdp.pipeline.apply import ApplyContext, queue_apply
from cdp.scripts import Bound, Scripts, calls, source
from cdp.settings import Settings, format_duration
from cdp.streams import text

Spec = tuple[str, dict[str, Any], int]  # eventId, payload, ms its ts lies before "now"
NAMES = ("Page Viewed", "Product Viewed", "Added to Cart", "Checkout Started", "Order Completed")
TRIVIAL_LUA = """redis.call('HINCRBY', KEYS[1], 'n', 1)
redis.call('HGET', KEYS[1], 'n')
redis.call('ZINCRBY', KEYS[2], 1, ARGV[1])
redis.call('SET', KEYS[3], ARGV[1], 'PX', 60000)
return redis.call('EXISTS', KEYS[3])"""
ROWS = [  # result key, label, DESIGN.md reference
    ("ingest_eps", "ingest: accepted events/s", "4.7k (1 XADD/request), 15.5k bare aiohttp"),
    ("p50_ms", "ingest: latency p50 ms", ""),
    ("p99_ms", "ingest: latency p99 ms", "41 (1 XADD/request)"),
    ("not_accepted", "ingest: answers other than 202", "none"),
    ("e2e_eps", "end to end: applied events/s", "(includes the window)"),
    ("merges", "end to end: profiles merged", "(cdp:merges, this run's events)"),
    ("refused", "end to end: merges or links refused", "(guard rails)"),
    ("late", "end to end: counted late", "(ts <= receipt - window-size)"),
    ("e2e_seconds", "end to end: first send -> all done, s", ""),
    ("drain_s", "end to end: last 202 -> all done, s", "~window-size + ticker"),
    ("xadd_eps", "redis: XADD by 100, events/s", "64k"),
    ("evalsha_cps", "redis: EVALSHA 5 cmds by 100, calls/s", "35k"),
    ("apply_eps_batch_1", "apply_batch, 1 event/call: events/s", "19k (prototype)"),
    ("apply_eps_batch_10", "apply_batch, 10 events/call: events/s", "46k"),
    ("apply_eps_batch_100", "apply_batch, 100 events/call: events/s", "65k"),
    ("dedup_bytes_per_entry", "memory: bytes per dedup entry", "133 (one SET NX PX key)"),
    ("profile_bytes", "memory: bytes per profile", "870"),
    ("keys_per_profile", "memory: keys per profile", "(counted by DBSIZE)"),
    ("merge_alias_us", "redis: usec per ALIAS merging 2 profiles", "(EVALSHA usec, batch-size)"),
    ("link_alias_us", "redis: usec per ALIAS linking a new id", "(EVALSHA usec, batch-size)"),
    ("merge_us", "redis: usec per merge (difference)", ""),
]
CDP = keys.PREFIX
BEYOND = 1_000_000  # partition numbers no worker owns
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
        out.append((f"bench-{run}-{tag}-{i}", payload, rng.randrange(500)))
    return out


def pair_ids(run: str, tag: str, k: int) -> tuple[str, str]:
    """(userId, anonymousId) of the k-th pair of profiles a merging ALIAS joins."""
    return f"bench-{run}-{tag}u{k}", f"bench-{run}-{tag}a{k}"


def plan(run: str, events: int, users: int, merge_ratio: float) -> tuple[list[Spec], list[Spec]]:
    """(warm-up, measured) phases of the HTTP part.

    The measured phase holds ``events`` events: ``round(events * merge_ratio)`` ALIAS
    anonymousId -> userId, each between an anonymous and an identified profile that the
    warm-up created (one TRACK on each side), shuffled into the mixed workload.
    """
    rng = random.Random(run)
    pairs = round(events * merge_ratio)
    measured, warmup = workload(run, "http", events - pairs, users, rng), list[Spec]()
    for k in range(pairs):
        uid, anon = pair_ids(run, "m", k)
        for side, who in (("a", {"anonymousId": anon}), ("u", {"userId": uid})):
            track = {"type": "TRACK", "name": rng.choice(NAMES), **who}
            warmup.append((f"bench-{run}-warm-{k}{side}", track, rng.randrange(500)))
        alias = {"type": "ALIAS", "anonymousId": anon, "userId": uid}
        spec = (f"bench-{run}-merge-{k}", alias, rng.randrange(500))
        measured.insert(rng.randrange(len(measured) + 1), spec)
    return warmup, measured


def small_profiles(run: str, n: int, bucket_ms: int) -> tuple[list[Spec], ...]:
    """(setup, merging, linking) for the merge cost: ``n`` pairs of small profiles.

    An anonymous one (anonymousId, email) created first, so it survives, and an
    identified one (userId, email, another anonymousId); each with 3 traits and 3
    TRACKs a bucket apart (2 counters of 3 buckets). ``merging`` is one ALIAS per pair;
    ``linking`` one ALIAS per pair from a new anonymousId to its userId.
    """
    setup, merging, linking = list[Spec](), list[Spec](), list[Spec]()
    for k in range(n):
        uid, anon = pair_ids(run, "r", k)
        traits = {"plan": "pro", "visits": k, "country": "FR"}
        sides = (
            {"anonymousId": anon, "email": f"{anon}@example.com"},
            {"userId": uid, "email": f"{uid}@example.com", "anonymousId": anon + "-b"},
        )
        for side, who in enumerate(sides):
            identify = {"type": "IDENTIFY", "traits": traits, **who}
            setup.append((f"bench-{run}-r{k}-{side}", identify, 0))
            for b in range(3):
                track = {"type": "TRACK", "name": NAMES[0], **who}
                setup.append((f"bench-{run}-r{k}-{side}-{b}", track, b * bucket_ms))
        alias = {"type": "ALIAS", "anonymousId": anon, "userId": uid}
        merging.append((f"bench-{run}-rm{k}", alias, 0))
        alias = {"type": "ALIAS", "anonymousId": anon + "-c", "userId": uid}
        linking.append((f"bench-{run}-rl{k}", alias, 0))
    return setup, merging, linking


def body(spec: Spec, now: int) -> bytes:
    return _encoder.encode({"eventId": spec[0], "ts": iso_ms(now - spec[2]), "payload": spec[1]})


def stream_event(spec: Spec, settings: Settings) -> StreamEvent:
    """The event exactly as the API puts it on a partition stream."""
    now = now_ms()
    return decode_ingest(
        body(spec, now),
        now_ms=now,
        max_event_bytes=settings.max_event_bytes,
        max_future_skew_ms=settings.max_future_skew_ms,
    )


async def send_all(url: str, specs: Sequence[Spec], concurrency: int) -> dict[str, Any]:
    """POST every event with ``concurrency`` requests in flight."""
    latencies: list[float] = []
    answers: Counter[str] = Counter()
    pending, last_accept = iter(specs), 0.0
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client() -> None:
            nonlocal last_accept
            for spec in pending:  # one iterator shared by every client
                started = time.perf_counter()
                try:
                    async with session.post(url, data=body(spec, now_ms()), headers=headers) as r:
                        await r.read()
                        answers[str(r.status)] += 1
                        last_accept = time.perf_counter() if r.status == 202 else last_accept
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


async def done_count(redis: Redis) -> tuple[int, int]:
    """(processed + dedup_hits + dropped, late) from cdp:metrics."""
    values = await redis.hmget(keys.METRICS, ["processed", "dedup_hits", "dropped", "late"])
    *done, late = (int(v or 0) for v in values)
    return sum(done), late


async def send_and_wait(
    redis: Redis, url: str, specs: Sequence[Spec], concurrency: int, s: Settings, workers: int
) -> dict[str, Any]:
    """``send_all``, then (with a live worker) wait until every accepted event is done."""
    before, late_before = await done_count(redis)
    out = await send_all(url + "/cdp/ingest", specs, concurrency)
    start, last_accept = out.pop("start"), out.pop("last_accept")
    if not workers or not out["accepted"]:
        return out
    deadline = time.perf_counter() + 120 + s.window_size_ms / 1000
    while (done := (await done_count(redis))[0] - before) < out["accepted"]:
        if time.perf_counter() > deadline:
            print(f"cdp bench: timed out: {done} of {out['accepted']} events done")
            break
        await asyncio.sleep(0.02)
    end, late = time.perf_counter(), (await done_count(redis))[1] - late_before
    out.update(e2e_done=done, late=late, e2e_seconds=round(end - start, 2))
    out.update(e2e_eps=round(done / (end - start)), drain_s=round(end - last_accept, 2))
    return out


async def last_merge_record(redis: Redis) -> str:
    last: Any = await redis.xrevrange(keys.MERGES, count=1)
    return text(last[0][0]) if last else "0-0"


async def merge_records(redis: Redis, after: str, run: str) -> dict[str, int]:
    """This run's records in ``cdp:merges`` past ``after``: merges, refusals, and the
    merges made by the merging ALIAS events of ``plan`` (``alias_merges``)."""
    statuses: Counter[str] = Counter()
    ours, alias_merges = f"bench-{run}-", 0
    while True:
        page: Any = await redis.xrange(keys.MERGES, min=f"({after}", count=1000)
        if not page:
            break
        for entry_id, fields in page:
            event_id, status = text(fields.get(b"eventId", b"")), text(fields[b"status"])
            if event_id.startswith(ours):
                statuses[status] += 1
                alias_merges += status == "merged" and event_id.startswith(ours + "merge-")
            after = text(entry_id)
    return {
        "merges": statuses["merged"],
        "refused": statuses["refused"],
        "alias_merges": alias_merges,
    }


async def timed(
    calls: int, queue: Callable[[Any, int], Awaitable[Any] | Any], redis: Redis, per_trip: int
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

    def __init__(self, redis: Redis, prefix: str) -> None:
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

    def __init__(self, redis: Redis, settings: Settings, prefix: str, partition: int) -> None:
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
        ctx = ApplyContext(now_ms=now_ms(), worker_id="")
        chunks = [batch[i : i + size] for i in range(0, len(batch), size)]

        async def queue(pipe: Any, i: int) -> None:
            await queue_apply(pipe, self.scripts, self.settings, ctx, self.partition, chunks[i])

        try:
            calls_s, replies = await timed(len(chunks), queue, self.redis, max(1, 10_000 // size))
        except ResponseError as exc:
            raise RuntimeError(f"apply_batch failed: {exc}") from None
        applied = sum(self.scripts.apply_batch.decode(r).applied for r in replies)
        return calls_s * len(batch) / len(chunks), applied


async def used_memory(redis: Redis) -> int:
    """``used_memory``, read while no AOF rewrite runs: during one, Redis 6 keeps every
    write in 10 MB blocks that count in used_memory, and the stack's AOF passes
    auto-aof-rewrite-min-size (64 MB) several times in a run like this one."""
    deadline = time.perf_counter() + 30
    while int((await redis.info("persistence")).get("aof_rewrite_in_progress", 0)):
        if time.perf_counter() > deadline:
            print("cdp bench: warning: an AOF rewrite is running: memory figures overstated")
            break
        await asyncio.sleep(0.05)
    await redis.connection_pool.disconnect()  # our query buffers count in used_memory too
    return int((await redis.info("memory"))["used_memory"])


async def raw_redis(redis: Redis, s: Settings, run: str, n: int, users: int) -> dict[str, float]:
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


async def memory(redis: Redis, s: Settings, prefix: str, run: str, n: int) -> dict[str, float]:
    """used_memory growth per dedup entry, then per profile (dedup entries deducted)."""
    mem = RawApply(redis, s, prefix, BEYOND + 1)  # fresh dedup keys; XACK of ids not pending
    m0, now = await used_memory(redis), now_ms()
    dedup_only = [  # no identifier: the script records the eventId and nothing else
        StreamEvent(str(uuid.uuid4()), now, now, "TRACK", name="x") for _ in range(n)
    ]
    await mem.run([("0-1", ev) for ev in dedup_only], 100)
    m1, keys1 = await used_memory(redis), await redis.dbsize()
    people, events = max(1, n // 3), []
    for u in range(people):
        uid = f"bench-{run}-m{u}"
        traits = {"plan": "pro", "visits": u, "country": "FR"}
        ident = {"type": "IDENTIFY", "userId": uid, "email": f"{uid}@example.com", "traits": traits}
        events.append(stream_event((str(uuid.uuid4()), ident, 0), s))
        for name in NAMES[:2]:
            track = {"type": "TRACK", "userId": uid, "name": name}
            events.append(stream_event((str(uuid.uuid4()), track, 0), s))
    await mem.run([("0-1", ev) for ev in events], 100)
    m2, keys2 = await used_memory(redis), await redis.dbsize()
    if await redis.exists(keys.identifier(f"user:bench-{run}-m0")):
        print("cdp bench: warning: apply_batch wrote keys outside bench:<run>:*")
    dedup = (m1 - m0) / n
    keys_per_profile = (keys2 - keys1) / people
    # Our key names are longer than cdp's: count each key as if its prefix were "cdp".
    longer = keys_per_profile * (len(prefix) - len(CDP))
    profile = (m2 - m1 - len(events) * dedup) / people - longer
    return {
        "dedup_bytes_per_entry": dedup,
        "profile_bytes": profile,
        "keys_per_profile": keys_per_profile,
    }


async def lua_time(redis: Redis, merges: str) -> tuple[int, int, int]:
    """(usec spent in EVALSHA since the server started, as Redis counts it; records in
    ``merges``; events the workers have done): read before and after a measurement."""
    stats = (await redis.info("commandstats")).get("cmdstat_evalsha", {})
    done, _ = await done_count(redis)
    return int(stats.get("usec", 0)), await redis.xlen(merges), done


async def merge_cost(redis: Redis, s: Settings, prefix: str, run: str, n: int) -> dict[str, float]:
    """EVALSHA usec per ALIAS that merges two small profiles, and per ALIAS that links."""
    setup, merging, linking = small_profiles(run, n, s.counter_bucket_ms)
    apply = RawApply(redis, s, prefix, BEYOND + 2)
    await apply.run([("0-1", stream_event(spec, s)) for spec in setup], 100)
    out, merges = dict[str, float](), f"{prefix}:merges"
    for kind, specs, records in (("merge", merging, n), ("link", linking, 0)):
        batch = await apply.pending([stream_event(spec, s) for spec in specs])
        usec0, len0, done0 = await lua_time(redis, merges)
        _, applied = await apply.run(batch, s.batch_size)
        usec1, len1, done1 = await lua_time(redis, merges)
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


async def cleanup(redis: Redis, run: str) -> None:
    """Delete the keys this run created: ``bench:<run>:*``, nothing else."""
    found = [key async for key in redis.scan_iter(match=f"bench:{run}:*", count=1000)]
    for i in range(0, len(found), 500):
        await redis.unlink(*found[i : i + 500])


async def check_api(url: str) -> None:
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            async with session.get(url + "/readyz") as r:
                status = r.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise RuntimeError(f"cannot reach the API at {url}: {exc or type(exc).__name__}") from None
    if status != 200:
        raise RuntimeError(f"the API at {url} is not ready: /readyz answered {status}")


async def run_bench(
    settings: Settings,
    url: str,
    events: int,
    concurrency: int,
    users: int,
    merge_ratio: float = 0.0,
) -> None:
    """Measure the stack at ``url`` and the Redis at ``settings.redis_url``; print both."""
    if min(events, concurrency, users) < 1:
        raise RuntimeError("--events, --concurrency and --users must be at least 1")
    if not 0 <= merge_ratio <= 1:
        raise RuntimeError("--merge-ratio must be between 0 and 1")
    run, url = uuid.uuid4().hex[:8], url.rstrip("/")
    redis = Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=30)
    try:
        try:
            info = await redis.info()
        except RedisError as exc:
            raise RuntimeError(f"cannot reach Redis at {settings.redis_url}: {exc}") from None
        await check_api(url)
        workers = await redis.zcount(keys.WORKERS, now_ms(), "+inf")
        warmup, specs = plan(run, events, users, merge_ratio)
        result: dict[str, Any] = {
            "run": run, "events": events, "concurrency": concurrency, "users": users,
            "merge_ratio": merge_ratio, "warmup_events": len(warmup),
            "window_size": format_duration(settings.window_size_ms), "workers": workers,
            "partitions": settings.partitions, "batch_size": settings.batch_size,
            "redis": info["redis_version"], "aof": bool(info.get("aof_enabled")),
        }  # fmt: skip
        if not workers:
            print("cdp bench: no live worker (cdp:workers): end-to-end not measured")
        if warmup:  # the profiles the merging ALIAS join must exist before they are sent
            done = await send_and_wait(redis, url, warmup, concurrency, settings, workers)
            result["warmup_seconds"] = done.get("e2e_seconds")
        merges_before = await last_merge_record(redis)
        result.update(await send_and_wait(redis, url, specs, concurrency, settings, workers))
        if workers:
            result.update(await merge_records(redis, merges_before, run))
            if result["alias_merges"] != len(warmup) // 2:
                print(
                    f"cdp bench: warning: {result['alias_merges']} merge records for"
                    f" {len(warmup) // 2} merging ALIAS events"
                )
        result.update(await raw_redis(redis, settings, run, events, users))
    finally:
        with contextlib.suppress(RedisError):
            await cleanup(redis, run)
        await redis.aclose()
    report(result)


def report(result: dict[str, Any]) -> None:
    r = result
    merging = f", merge-ratio {r['merge_ratio']} after a warm-up of {r['warmup_events']}"
    print(
        f"\ncdp bench, run {r['run']}: {r['events']} events, {r['concurrency']} in flight,"
        f" {r['users']} users{merging if r['merge_ratio'] else ''};"
        f" window-size {r['window_size']} (as set for this command),"
        f" {r['partitions']} partitions, {r['workers']} workers, batch-size {r['batch_size']};"
        f" Redis {r['redis']} (AOF {'on' if r['aof'] else 'off'})\n"
    )
    rows = list(ROWS)
    if r["batch_size"] not in (1, 10, 100):
        key, label = f"apply_eps_batch_{r['batch_size']}", f"{r['batch_size']} events/call"
        at = [row[0] for row in rows].index("apply_eps_batch_100") + 1
        rows.insert(at, (key, f"apply_batch, {label}: events/s", "42k at 500"))
    print(f"{'':42} {'measured':>12}   DESIGN.md, this kind of machine")
    for key, label, reference in rows:
        value = r.get(key, "-")
        shown = f"{value:,}" if isinstance(value, int) else str(value)
        shown = "none" if value == {} else shown
        print(f"{label:42} {shown:>12}   {reference}")
    print()
    print(json.dumps(result, separators=(",", ":")))
