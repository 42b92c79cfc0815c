"""Segments on a Redis Cluster: the outbox packing of the segment scripts, and the relay.

- The cluster-safe scripts touch only the keys they declare: on one real Redis, with
  every ``redis.call`` of the script checked against its KEYS, the whole life of some
  segments (evaluation, time-driven exits, backfill, deletion) runs through them.
- On the session's real 3-master cluster the engine records exactly the ENTER/EXIT
  events, memberships, members zsets and due times one Redis records for the same
  profiles (built by the apply script on one Redis and copied with DUMP/RESTORE): after
  the apply, time-driven exits by the sweeper, a backfill, a deletion.
- The relay leaves an outbox another relay holds (its lease), pops only what is still
  the head, applies a members-only entry in order, and adds nothing marked twice.
- The relay is exactly once when the process relaying is SIGKILLed between its XADD and
  its pop (``outbox:added``): the sweeper of another process relays what was left, one
  event per id, the members zsets right.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync
from redis.asyncio import Redis

from cdp import keys
from cdp.connect import Client, connect, sync_client
from cdp.events import StreamEvent
from cdp.pipeline.apply import ApplyContext, queue_apply
from cdp.scripts import Scripts, typed
from cdp.scripts.loader import source
from cdp.segments.definitions import delete_definition, parse_definition, store_definition
from cdp.segments.engine import SegmentEngine
from cdp.segments.outbox import Relay
from cdp.segments.sweeper import Sweeper, start_backfill
from cdp.settings import Settings, load_settings
from cdp.streams import text
from tests.support.events import event, track
from tests.support.values import T0_MS
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

HOUR = 3_600_000
NOW = T0_MS + 24 * HOUR
LEASE_TTL_MS = 1_000
PROFILES = 40
CUSTOM = {
    "paying": {"rule": {"trait": "plan", "op": "in", "value": ["pro", "team"]}},
    "buyer": {"rule": {"count": {"event": "Purchase", "within": "2h", "gte": 2}}},
    "idle": {"rule": {"inactive": "3h"}},
    "back": {"rule": {"returned": {"after": "2h", "within": "6h"}}},
}
LATER = {"free": {"rule": {"trait": "plan", "op": "eq", "value": "free"}}}
CLUSTER_SAFE = ("profile_view", "segment_transition", "segment_forget", "outbox_add", "outbox_pop")


def settings_of(url: str) -> Settings:
    return load_settings(env={}, redis_url=url, lease_ttl_ms=LEASE_TTL_MS)


class FixedClock:
    def __init__(self, now_ms: int) -> None:
        self.now = now_ms

    async def now_ms(self) -> int:
        return self.now


# -- the profiles ---------------------------------------------------------------------


def events(seed: int) -> list[StreamEvent]:
    """IDENTIFY with traits and TRACKs over the day before NOW, for PROFILES users."""
    rng = random.Random(seed)
    out = []
    for u in range(PROFILES):
        t0 = NOW - rng.randrange(20 * HOUR)
        plan = rng.choice(["free", "pro", "team"])
        out.append(event(f"i{u}", t0, user=f"u{u}", traits={"plan": plan}))
        ts = t0
        for k in range(rng.randrange(1, 6)):
            ts = min(NOW - 1, ts + rng.choice([60_000, 30 * 60_000, 3 * HOUR]))
            name = rng.choice(["Viewed", "Purchase"])
            out.append(track(f"t{u}-{k}", ts, name, user=f"u{u}"))
    out.sort(key=lambda e: (e.ts, e.eventId))
    return out


async def fill(redis: Redis, seed: int) -> None:
    """The profiles, applied by the apply script on one Redis (batch protocol)."""
    scripts, settings = Scripts(redis), Settings()
    ordered = events(seed)
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(0, len(ordered), 100):
            chunk = [(f"0-{i + j + 1}", e) for j, e in enumerate(ordered[i : i + 100])]
            await queue_apply(pipe, scripts, settings, ApplyContext(NOW, ""), 0, chunk)
        await pipe.execute()


COPIED = re.compile(rb"^cdp:(profile:|identifier:|profiles$|segments:due$|seq:profile$)")


def copy_profiles(src: redis_sync.Redis, dst: Any) -> int:
    """DUMP/RESTORE every profile, identifier and index key of ``src`` into ``dst``."""
    copied = 0
    for key in src.scan_iter(match="cdp:*", count=1000):
        if COPIED.match(key):
            dst.restore(key, 0, src.dump(key), replace=True)
            copied += 1
    return copied


# -- the life of the segments -------------------------------------------------------------


async def define(redis: Client, definitions: dict[str, Any]) -> None:
    for name, body in definitions.items():
        await store_definition(redis, parse_definition(name, body))


async def sweep(redis: Client, engine: SegmentEngine, now_ms: int) -> None:
    """One sweep at ``now_ms`` (time-driven re-evaluation, a backfill step)."""
    sweeper = Sweeper(redis, engine.scripts, engine, FixedClock(now_ms), "w1", LEASE_TTL_MS)
    await sweeper.run_once()
    await sweeper.release()


Stage = tuple[str, Callable[[Client, SegmentEngine, Settings], Any]]


async def _evaluate_all(redis: Client, engine: SegmentEngine, _: Settings) -> None:
    cids = [text(c) for c in await redis.zrange(keys.PROFILES, 0, -1)]
    await engine.evaluate(cids, NOW)


async def _backfill(redis: Client, engine: SegmentEngine, _: Settings) -> None:
    await define(redis, LATER)
    await start_backfill(redis, "free")
    while await redis.scard(keys.BACKFILLS):
        await sweep(redis, engine, NOW + 30 * HOUR)


async def _delete(redis: Client, _: SegmentEngine, settings: Settings) -> None:
    assert await delete_definition(redis, "paying", settings)


STAGES: list[Stage] = [
    ("evaluated after the apply", _evaluate_all),
    ("swept 2 h later", lambda redis, engine, _: sweep(redis, engine, NOW + 2 * HOUR)),
    ("swept 7 h later", lambda redis, engine, _: sweep(redis, engine, NOW + 7 * HOUR)),
    ("swept 30 h later", lambda redis, engine, _: sweep(redis, engine, NOW + 30 * HOUR)),
    ("backfilled", _backfill),
    ("deleted", _delete),
]


def state(client: Any) -> dict[str, Any]:
    """What segments left in Redis: the events (per profile, in stream order), each
    members zset, each profile's memberships, the due index."""
    cids = [text(c) for c in client.zrange(keys.PROFILES, 0, -1)]
    per_profile: dict[str, list[Any]] = {}
    for _, fields in client.xrange(keys.SEGMENT_EVENTS):
        entry = {text(k): text(v) for k, v in fields.items()}
        entry["e"] = json.loads(entry["e"])
        per_profile.setdefault(entry["canonicalId"], []).append(entry)
    names = [*CUSTOM, *LATER, "power_user", "pro_plan", "reengage"]
    return {
        "events": per_profile,
        "members": {
            n: client.zrange(keys.segment_members(n), 0, -1, withscores=True) for n in names
        },
        "memberships": {c: client.hgetall(keys.profile_segments(c)) for c in cids},
        "due": client.zrange(keys.SEGMENTS_DUE, 0, -1, withscores=True),
    }


async def live(client: Client, settings: Settings, outbox: bool | None) -> list[str]:
    """Runs every stage on ``client``; the number of events after each."""
    await define(client, CUSTOM)
    engine = SegmentEngine(client, Scripts(client), settings, outbox=outbox)
    counts = []
    for _, stage in STAGES:
        await stage(client, engine, settings)
        counts.append(await client.xlen(keys.SEGMENT_EVENTS))
    return counts


def outboxes(client: Any) -> list[bytes]:
    """Every outbox key left (on every master)."""
    if isinstance(client, redis_sync.RedisCluster):
        found: list[bytes] = []
        for node in client.get_primaries():
            found += client.scan_iter(match="cdp:profile:*:outbox", target_nodes=node)
        return found
    return list(client.scan_iter(match="cdp:profile:*:outbox"))


# -- declared keys ---------------------------------------------------------------------

_STRICT = """local __declared = {}
for _, k in ipairs(KEYS) do __declared[k] = true end
local function __strict_call(command, key, ...)
  if not __declared[key] then
    error("UNDECLARED " .. command .. " " .. tostring(key))
  end
  return redis.call(command, key, ...)
end
"""


def strict_source(name: str) -> str:
    """The script with every ``redis.call`` checked: its key must be one of KEYS."""
    text_ = source(name)
    if name not in CLUSTER_SAFE and not name.startswith("lease_"):
        return text_
    header_end = text_.index("]]") + 2
    body = text_[header_end:].replace("local rcall = redis.call", "local rcall = __strict_call")
    body = body.replace("redis.call(", "__strict_call(")
    return text_[:header_end] + "\n" + _STRICT + body


@pytest.fixture
def strict_scripts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(typed, "source", strict_source)


def test_the_outbox_packing_touches_only_declared_keys_and_matches_the_direct_one(
    redis_url: str, strict_scripts: None
) -> None:
    """One Redis, two databases: the batch protocol's direct packing in 0, the same
    profiles through the outboxes in 1, every script call checked for undeclared keys."""
    direct_url, outbox_url = redis_url, re.sub(r"(/\d*)?$", "/1", redis_url, count=1)

    async def main() -> tuple[list[str], list[str]]:
        direct = Redis.from_url(direct_url)
        outbox = Redis.from_url(outbox_url)
        try:
            await outbox.flushdb()
            await fill(direct, seed=1)
            counts_direct = await live(direct, settings_of(direct_url), outbox=False)
            await outbox.flushdb()
            await fill(outbox, seed=1)
            counts_outbox = await live(outbox, settings_of(outbox_url), outbox=True)
        finally:
            await direct.aclose()
            await outbox.aclose()
        return counts_direct, counts_outbox

    # The check itself: a key built by name is refused.
    probe = redis_sync.Redis.from_url(redis_url)
    with pytest.raises(redis_sync.ResponseError, match="UNDECLARED GET cdp:x"):
        probe.eval(_STRICT + "return __strict_call('GET', 'cdp:x')", 1, "cdp:y")
    probe.close()

    counts_direct, counts_outbox = asyncio.run(main())
    assert counts_direct == counts_outbox
    assert len(set(counts_direct)) > 3  # every stage but the deletion records events
    one = redis_sync.Redis.from_url(direct_url)
    other = redis_sync.Redis.from_url(outbox_url)
    try:
        assert state(other) == state(one)
        assert outboxes(other) == []
    finally:
        one.close()
        other.close()


# -- on the cluster ----------------------------------------------------------------------


@pytest.fixture
def single(redis_url: str) -> Iterator[redis_sync.Redis]:
    client = redis_sync.Redis.from_url(redis_url)
    yield client
    client.close()


def built_on_both(redis_url: str, cluster_url: str, seed: int) -> Any:
    """The same profiles on one Redis and on the cluster; the cluster's sync client."""

    async def build() -> None:
        redis = Redis.from_url(redis_url)
        await fill(redis, seed)
        await redis.aclose()

    asyncio.run(build())
    cluster = sync_client(cluster_url)
    assert copy_profiles(redis_sync.Redis.from_url(redis_url), cluster) > PROFILES * 5
    return cluster


def run_live(url: str, outbox: bool | None) -> list[str]:
    async def main() -> list[str]:
        settings = settings_of(url)
        client = await connect(settings)
        try:
            return await live(client, settings, outbox)
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_the_cluster_records_exactly_what_one_redis_records(
    redis_url: str, redis_cluster_url: str, single: redis_sync.Redis
) -> None:
    cluster = built_on_both(redis_url, redis_cluster_url, seed=2)
    try:
        counts_one = run_live(redis_url, outbox=None)  # one Redis: direct
        counts_cluster = run_live(redis_cluster_url, outbox=None)  # a cluster: outbox
        assert counts_cluster == counts_one
        assert 0 < counts_one[0] < counts_one[3] < counts_one[4]  # sweeps, backfill
        got = state(cluster)
        assert got == state(single)
        assert outboxes(cluster) == []
        kinds = {(e["segment"], e["transition"]) for es in got["events"].values() for e in es}
        # Time-driven ENTERs and EXITs (the sweeps), the backfill's ENTERs.
        assert {("idle", "ENTER"), ("power_user", "EXIT"), ("back", "EXIT")} <= kinds
        assert ("free", "ENTER") in kinds
        marks = cluster.zcard(keys.record_marks(keys.SEGMENT_EVENTS))
        assert marks == counts_one[-1]  # one mark per event relayed
        # The profiles' slots are spread over the masters.
        masters = {cluster.get_node_from_key(keys.profile(f"p{n}")).name for n in range(1, 9)}
        assert len(masters) == 3
    finally:
        cluster.close()


# -- the relay killed between its XADD and its pop --------------------------------------

CHILD = """
import asyncio, sys
from cdp import keys
from cdp.connect import connect
from cdp.scripts import Scripts
from cdp.segments.engine import SegmentEngine
from cdp.segments.outbox import Relay
from cdp.settings import load_settings
from cdp.streams import text

async def main(url, now):
    settings = load_settings(env={}, redis_url=url, lease_ttl_ms=int(sys.argv[3]))
    redis = await connect(settings)
    cids = [text(c) for c in await redis.zrange(keys.PROFILES, 0, -1)]
    await SegmentEngine(redis, Scripts(redis), settings).evaluate(cids, now)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def test_a_relay_killed_after_its_xadd_leaves_entries_another_relays_once(
    redis_url: str, redis_cluster_url: str, single: redis_sync.Redis
) -> None:
    cluster = built_on_both(redis_url, redis_cluster_url, seed=3)
    try:
        asyncio.run(_define_both(redis_url, redis_cluster_url))
        env = {**os.environ, "CDP_FAULT_POINT": "outbox:added"}
        child = subprocess.run(
            [sys.executable, "-c", CHILD, redis_cluster_url, str(NOW), str(LEASE_TTL_MS)],
            env=env,
            cwd=Path(__file__).resolve().parents[2],
            capture_output=True,
            timeout=60,
        )
        assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
        added = cluster.xlen(keys.SEGMENT_EVENTS)
        left = outboxes(cluster)
        assert added > 0 and left  # killed between the XADD and the pop
        assert all(cluster.exists(key + b":relay") for key in left)  # its leases

        # The reference: the same evaluation on one Redis, nobody killed.
        asyncio.run(_evaluate_single(redis_url))

        # Another process's sweeper, once the dead relay's leases expire: the due guard
        # names the profiles left, their evaluation relays them.
        wait_until(lambda: not any(cluster.exists(k + b":relay") for k in left), timeout=10)
        asyncio.run(_sweep_cluster(redis_cluster_url, NOW + LEASE_TTL_MS))
        assert outboxes(cluster) == []
        ids = [text(f[b"eventId"]) for _, f in cluster.xrange(keys.SEGMENT_EVENTS)]
        assert len(ids) == len(set(ids))  # one event per id
        assert cluster.xlen(keys.SEGMENT_EVENTS) >= added
        expected = state(single)
        got = state(cluster)
        assert got["events"] == expected["events"]
        assert got["members"] == expected["members"]
        assert got["memberships"] == expected["memberships"]
    finally:
        cluster.close()


async def _define_both(*urls: str) -> None:
    for url in urls:
        client = await connect(settings_of(url))
        await define(client, CUSTOM)
        await client.aclose()


async def _evaluate_single(url: str) -> None:
    client = await connect(settings_of(url))
    engine = SegmentEngine(client, Scripts(client), settings_of(url))
    await _evaluate_all(client, engine, settings_of(url))
    # The profiles the cluster's sweeper evaluates again at NOW + lease-ttl: the same here.
    await sweep(client, engine, NOW + LEASE_TTL_MS)
    await client.aclose()


async def _sweep_cluster(url: str, now_ms: int) -> None:
    settings = settings_of(url)
    client = await connect(settings)
    await sweep(client, SegmentEngine(client, Scripts(client), settings), now_ms)
    await client.aclose()


# -- the relay's lease and compare-and-pop -----------------------------------------------


def entry(event_id: str, op: str, stream: str = keys.SEGMENT_EVENTS) -> str:
    """An outbox entry as lua/includes/outbox.lua writes it."""
    fields = ["eventId", event_id, "e", "{}"] if stream else {}
    member = {"segment": "vip", "cid": "p1", "op": op, "score": 1}
    body = {"id": event_id, "stream": stream, "maxlen": 100, "fields": fields, "member": member}
    return json.dumps(body)


def test_the_relay_leaves_an_outbox_another_relay_holds_and_pops_only_the_head(
    redis_url: str, r: redis_sync.Redis
) -> None:
    first, second = entry("seg:vip:p1:1", "add"), entry("seg:vip:p1:2", "rem")
    dropped = entry("drop:vip:p1:2", "add", stream="")  # a members change only
    r.rpush(keys.outbox("p1"), first, second, dropped)
    r.set(keys.outbox_relay("p1"), "another relay", px=60_000)

    async def relay() -> Any:
        client = Redis.from_url(redis_url)
        try:
            scripts = Scripts(client)
            return await Relay(client, scripts, settings_of(redis_url)).relay(["p1"])
        finally:
            await client.aclose()

    held = asyncio.run(relay())
    assert (held.added, held.emptied) == (0, set())  # the other relay's: untouched
    assert r.llen(keys.outbox("p1")) == 3 and r.xlen(keys.SEGMENT_EVENTS) == 0

    # Compare-and-pop: what is not the head is not popped.
    async def pop(entries: list[str]) -> int:
        client = Redis.from_url(redis_url)
        try:
            left: int = await Scripts(client).outbox_pop("p1", "me", [e.encode() for e in entries])
            return left
        finally:
            await client.aclose()

    assert asyncio.run(pop([second])) == 3

    r.delete(keys.outbox_relay("p1"))
    done = asyncio.run(relay())
    assert (done.added, done.emptied) == (2, {"p1"})
    assert [f["eventId"] for _, f in r.xrange(keys.SEGMENT_EVENTS)] == [
        "seg:vip:p1:1",
        "seg:vip:p1:2",
    ]
    assert r.zrange(keys.segment_members("vip"), 0, -1) == ["p1"]  # add, rem, add
    assert not r.exists(keys.outbox("p1"), keys.outbox_relay("p1"))
    # Pushed again (a crash before the pop, say): marked, so not added again.
    r.rpush(keys.outbox("p1"), first)
    assert asyncio.run(relay()).added == 0
    assert r.xlen(keys.SEGMENT_EVENTS) == 2 and not r.exists(keys.outbox("p1"))

    # A merged-away profile's outbox is relayed by the evaluation that finds it gone.
    r.hset(keys.profile("p2"), mapping={"mergedInto": "p1", "mergeState": "done"})
    r.rpush(keys.outbox("p2"), entry("seg:vip:p2:1", "rem"))

    async def evaluate_gone() -> list[str]:
        client = Redis.from_url(redis_url)
        try:
            engine = SegmentEngine(client, Scripts(client), settings_of(redis_url), outbox=True)
            return await engine.evaluate(["p2"], NOW)
        finally:
            await client.aclose()

    assert asyncio.run(evaluate_gone()) == []
    assert r.xlen(keys.SEGMENT_EVENTS) == 3 and not r.exists(keys.outbox("p2"))
