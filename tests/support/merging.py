"""The cross-slot merge (``cdp.merge``) against its oracle, the merge inside ``apply_batch``.

``Scenario``: profiles built with ``apply_batch`` on one real Redis from events that do
not merge (p1 the oldest; the younger ones have traits, counters, seen ids and a
segment membership each), and the ALIAS event that links them all. ``oracle(db)``
applies the ALIAS there: ``apply_batch`` merges them in one script. The protocol side
runs ``cdp.merge.merge`` for each loser on another database or a cluster (keys copied
there with DUMP/RESTORE), copies the keys back, applies the same ALIAS (now one
profile's: the fast path) and ``normalised`` states are compared: the same keys and
values, the segment EXITs of the outbox against the oracle's ``cdp:segment-events``
(their member op applied to the members zsets), times to live within a tolerance.

``main`` is what a killed process runs: ``python -c 'from tests.support.merging import
main; main()' <url> merge|resume <loser:survivor>...``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass, field
from typing import Any

import redis as redis_sync

from cdp import keys, merge
from cdp.connect import connect
from cdp.events import StreamEvent, iso_ms
from cdp.pipeline.apply import ApplyContext, queue_apply
from cdp.scripts import Scripts, load_scripts
from cdp.settings import Settings, load_settings
from tests.support.events import event, track
from tests.support.values import NOW_MS, T0_MS

MINUTE = 60_000
TTL_TOLERANCE_MS = 60_000  # the seen hashes' time to live: minutes, the steps ms apart


def settings_of(url: str) -> Settings:
    return load_settings(env={}, redis_url=url)


@dataclass
class Scenario:
    """``size`` profiles p1..p<size>, and the ALIAS naming one identifier of each."""

    size: int = 3
    build: list[StreamEvent] = field(default_factory=list)
    alias: StreamEvent | None = None

    def __post_init__(self) -> None:
        t = T0_MS
        # p1: a userId, traits, TRACKs; p2: an anonymousId; p3: an email. No event
        # names identifiers of two of them.
        evs = [
            event("b1", t, user="u1", traits={"plan": "free", "country": "FR"}),
            track("b2", t + MINUTE, "Signed Up", user="u1"),
            event("b3", t + 2 * MINUTE, anon="a2", traits={"plan": "pro", "age": 3}),
            track("b4", t + 3 * MINUTE, "Signed Up", anon="a2"),
            track("b5", t + 4 * MINUTE, "Viewed", anon="a2"),
            event("b6", t + 5 * MINUTE, "PAGE", anon="a2", traits={"country": None}),
        ]
        if self.size >= 3:
            evs += [
                event("b7", t + 6 * MINUTE, email="e3@x.io", traits={"plan": "team"}),
                track("b8", t + 7 * MINUTE, "Viewed", email="e3@x.io"),
                event("b9", t + MINUTE // 2, email="e3@x.io", traits={"age": 9}),
            ]
        self.build = evs
        named: dict[str, Any] = {"user": "u1", "anon": "a2"}
        if self.size >= 3:
            named["email"] = "e3@x.io"
        self.alias = event("alias-1", t + 10 * MINUTE, "ALIAS", **named)

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """(loser, survivor) of each merge the ALIAS makes, in apply_batch's order."""
        return [(f"p{i}", "p1") for i in range(2, self.size + 1)]


async def apply(url: str, events: list[StreamEvent], now_ms: int = NOW_MS) -> None:
    """``apply_batch`` on one Redis, one call per event (partition 0, no lease check)."""
    settings = settings_of(url)
    redis = await connect(settings)
    try:
        scripts = Scripts(redis)
        ctx = ApplyContext(now_ms=now_ms, worker_id="")
        for n, ev in enumerate(events):
            async with redis.pipeline(transaction=False) as pipe:
                await queue_apply(pipe, scripts, settings, ctx, 0, [(f"0-{n + 1}", ev)])
                await pipe.execute()
    finally:
        await redis.aclose()


def build(url: str, scenario: Scenario) -> None:
    """The scenario's profiles, and one segment membership ("in") per younger profile."""
    asyncio.run(apply(url, scenario.build))
    r = redis_sync.Redis.from_url(url)
    for loser, _ in scenario.pairs:
        state = {"in": True, "n": 1, "since": iso_ms(T0_MS + 9 * MINUTE)}
        r.hset(keys.profile_segments(loser), "vip", json.dumps(state))
        r.zadd(keys.segment_members("vip"), {loser: int(loser[1:])})
        r.hset(keys.profile_segments(loser), "gone", json.dumps({"in": False, "n": 2}))
    r.close()


def oracle(url: str, scenario: Scenario) -> None:
    """The scenario merged by apply_batch: its ALIAS applied."""
    assert scenario.alias is not None
    asyncio.run(apply(url, [scenario.alias]))


async def run_merges(url: str, pairs: list[tuple[str, str]], scenario: Scenario) -> None:
    """``cdp.merge.merge`` of each (loser, survivor), as the apply would call it."""
    assert scenario.alias is not None
    settings = settings_of(url)
    redis = await connect(settings)
    try:
        await load_scripts(redis)
        scripts = Scripts(redis)
        for loser, survivor in pairs:
            outcome = await merge.merge(
                redis,
                scripts,
                settings,
                loser,
                survivor,
                scenario.alias.eventId,
                iso_ms(scenario.alias.ts),
                NOW_MS,
            )
            assert outcome == merge.MergeOutcome("merged", survivor), outcome
    finally:
        await redis.aclose()


async def run_resume(url: str, pairs: list[tuple[str, str]], scenario: Scenario) -> list[str]:
    """What another worker does after a crash: ``resume_open``, then the redelivered
    ALIAS merges again whatever is still live. Returns the losers merged again."""
    settings = settings_of(url)
    redis = await connect(settings)
    again = []
    try:
        await load_scripts(redis)
        scripts = Scripts(redis)
        await merge.resume_open(redis, scripts, settings, NOW_MS, 0)
        for loser, survivor in pairs:
            if await merge.final_survivor(redis, loser) == loser:
                again.append(loser)
                await run_merges(url, [(loser, survivor)], scenario)
    finally:
        await redis.aclose()
    return again


def copy_keys(source: Any, target: Any, *, replace: bool = True) -> int:
    """DUMP/RESTORE every key of ``source`` (a sync Redis, or a list of them: a cluster's
    masters) into ``target`` (a sync Redis or RedisCluster), with its time to live."""
    sources = source if isinstance(source, list) else [source]
    copied = 0
    for node in sources:
        for key in node.scan_iter(count=1000):
            dumped = node.dump(key)
            ttl = node.pttl(key)
            target.restore(key, max(ttl, 0), dumped, replace=replace)
            copied += 1
    return copied


# Keys only one side has: the merge's own bookkeeping, the stream and metrics of the
# apply calls, the record marks of add_once.
_SKIP = (keys.stream(0), keys.record_marks(keys.MERGES), keys.SEGMENT_EVENTS)


def _value(r: redis_sync.Redis, raw: bytes, kind: str) -> Any:
    """A key's value, decoded (stream entries by their fields)."""
    if kind == "string":
        return r.get(raw)
    if kind == "hash":
        return {k.decode(): v.decode() for k, v in r.hgetall(raw).items()}
    if kind == "set":
        return sorted(m.decode() for m in r.smembers(raw))
    if kind == "zset":
        return {m.decode(): s for m, s in r.zrange(raw, 0, -1, withscores=True)}
    if kind == "stream":
        return [{k.decode(): v.decode() for k, v in f.items()} for _, f in r.xrange(raw)]
    return kind


def normalised(r: redis_sync.Redis) -> dict[str, Any]:
    """Every key's value (decoded), times to live rounded to TTL_TOLERANCE_MS; the
    outbox entries become the segment events they stand for, their member ops
    applied; ``cdp:merges`` and ``cdp:segment-events`` by their fields only."""
    out: dict[str, Any] = {}
    members_removed: list[tuple[str, str]] = []
    events: list[dict[str, str]] = []
    for raw in r.scan_iter(count=1000):
        key = raw.decode()
        if key in _SKIP or key.startswith(keys.METRICS):
            continue
        kind = r.type(raw).decode()
        if key.endswith(":outbox"):
            for entry in r.lrange(raw, 0, -1):
                record = json.loads(entry)
                assert record["stream"] == keys.SEGMENT_EVENTS
                fields = record["fields"]
                events.append(dict(zip(fields[::2], fields[1::2], strict=True)))
                member = record.get("member")
                if member and member["op"] == "rem":
                    members_removed.append((keys.segment_members(member["segment"]), member["cid"]))
            continue
        value = _value(r, raw, kind)
        if kind == "hash" and key.startswith(keys.PROFILE_PREFIX):
            value.pop("mergeState", None)  # the journal's (done): a protocol detail
        ttl = r.pttl(raw)
        out[key] = (kind, value, -1 if ttl < 0 else round(ttl / TTL_TOLERANCE_MS))
    for members, cid in members_removed:
        kind, value, ttl = out[members]
        value.pop(cid, None)
        out[members] = (kind, value, ttl) if value else None
        if not value:
            del out[members]
    for _, f in r.xrange(keys.SEGMENT_EVENTS):
        events.append({k.decode(): v.decode() for k, v in f.items()})
    for e in events:
        e["e"] = json.loads(e["e"])  # its keys in whatever order cjson wrote them
    out["segment events"] = sorted(events, key=lambda e: e["eventId"])
    return out


def main() -> None:
    """``<url> merge|resume <size>``: the scenario's merges, or resume_open then merges
    of what is still live (prints the losers merged again)."""
    url, what, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    scenario = Scenario(size)
    if what == "merge":
        asyncio.run(run_merges(url, scenario.pairs, scenario))
    else:
        print(json.dumps(asyncio.run(run_resume(url, scenario.pairs, scenario))))


def masters(port: int) -> list[redis_sync.Redis]:
    """Clients of the masters of the cluster whose node listens on ``port``."""
    from tests.support.cluster import cluster_nodes

    return [redis_sync.Redis(port=row.port) for row in cluster_nodes(port) if row.is_master]
