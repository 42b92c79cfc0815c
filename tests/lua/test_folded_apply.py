"""The folded apply on a real redis-server: one call for a whole event set leaves exactly
the state that one call per event leaves, and the reference model's profiles.

``lua/apply_batch-n.lua`` keeps each touched profile's seen times, version and the ids
applied to it in the call, folds a counter bucket's later increments and marks the due
profiles once, flushing all that before a merge and at the end. These tests
hold it to the per-event apply (one event per call, nothing to fold) on generated sets
(``tests.support.events``: shared identifiers so merges happen, duplicates, tombstones,
equal times with different eventIds), with imports and PAGE events mixed in, counters
across buckets, and a second phase later than the counter cutoff (late events not
counted, old buckets pruned); every key is compared: profiles, traits with their
stamps, identifiers, counters and their oldest buckets, merges, the due set, the
profiles' seen ids (with seenFrom / seenTo and whether they expire), metrics,
acknowledgements. A failure in the middle of a call is held to the
per-event semantics too: the ids of the events before it recorded, its own and later
ones not.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import redis as redis_sync
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from cdp import keys
from cdp.chaos.model import Model, canonical, snapshot
from cdp.embedded import RedisServer
from cdp.events import StreamEvent, stream_encoder
from cdp.pipeline.apply import ApplyContext, queue_apply
from cdp.scripts import BatchResult, Scripts, is_poison
from cdp.settings import Settings
from tests.support.events import event_sets, track
from tests.support.values import NOW_MS, T0_MS

pytestmark = pytest.mark.integration

SETTINGS = Settings()
PARTITION = 0
AFTER_EVENTS_MS = T0_MS + 300_000
# A day and a minute after the events: the counter cutoff falls inside their span.
PAST_CUTOFF_MS = T0_MS + SETTINGS.counter_window_ms + 61_000


@pytest.fixture(scope="module")
def real_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis_sync.Redis]:
    server = RedisServer(tmp_path_factory.mktemp("folded-redis"), appendonly=False).start()
    client = redis_sync.Redis.from_url(server.url, decode_responses=True)
    yield client
    client.close()
    server.stop()


def deliver(r: redis_sync.Redis, events: list[StreamEvent], first: int) -> list[tuple[str, Any]]:
    """XADD the events with explicit ids (the same in both runs) and read them."""
    stream = keys.stream(PARTITION)
    ids = []
    for n, ev in enumerate(events):
        ids.append(r.xadd(stream, {"e": stream_encoder.encode(ev)}, id=f"{first + n}-1"))
    r.xreadgroup(keys.GROUP, "c", {stream: ">"})
    return list(zip(ids, events, strict=True))


def apply_calls(url: str, calls: list[list[tuple[str, Any]]], now_ms: int) -> list[Any]:
    async def run() -> list[Any]:
        redis = Redis.from_url(url)
        scripts, replies = Scripts(redis), []
        try:
            for chunk in calls:
                async with redis.pipeline(transaction=False) as pipe:
                    await queue_apply(
                        pipe, scripts, SETTINGS, ApplyContext(now_ms, ""), PARTITION, chunk
                    )
                    (reply,) = await pipe.execute(raise_on_error=False)
                replies.append(reply)
        finally:
            await redis.aclose()
        return replies

    return asyncio.run(run())


def url_of(r: redis_sync.Redis) -> str:
    kw = r.connection_pool.connection_kwargs
    return f"redis://{kw['host']}:{kw['port']}/0"


def fresh(r: redis_sync.Redis) -> None:
    r.flushall()
    r.xgroup_create(keys.stream(PARTITION), keys.GROUP, id="0", mkstream=True)


def dump(r: redis_sync.Redis) -> dict[str, Any]:
    """Every key: its value (streams by their fields: entry ids of XADD * differ), and
    whether it expires."""
    out: dict[str, Any] = {}
    for key in sorted(r.keys("*")):
        kind = r.type(key)
        if kind == "string":
            value: Any = r.get(key)
        elif kind == "hash":
            value = r.hgetall(key)
        elif kind == "set":
            value = sorted(r.smembers(key))
        elif kind == "zset":
            value = r.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            value = [fields for _, fields in r.xrange(key)]
            if key == keys.stream(PARTITION):
                value = (value, r.xpending(key, keys.GROUP)["pending"])
        else:  # pragma: no cover - the scripts write no other type
            value = kind
        out[key] = (kind, value, r.pttl(key) > 0)
    return out


def run_phases(
    r: redis_sync.Redis, phases: list[tuple[list[StreamEvent], int]], per_event: bool
) -> tuple[dict[str, Any], list[int]]:
    """Apply each phase's events (sorted as a tick sorts them) at its "now", in one call
    or one call per event; the state left and the applied count of each call."""
    fresh(r)
    applied, first = [], 1
    for events, now_ms in phases:
        batch = deliver(r, sorted(events, key=lambda e: (e.ts, e.eventId)), first)
        first += len(events)
        calls = [[item] for item in batch] if per_event else [batch]
        for reply in apply_calls(url_of(r), calls, now_ms):
            applied.append(BatchResult.decode(reply).applied)
    return dump(r), applied


@st.composite
def varied_sets(draw: st.DrawFn, pages: bool) -> list[StreamEvent]:
    """``event_sets`` with some events made imports and (if ``pages``) TRACKs made PAGEs."""
    events = draw(event_sets(max_events=30))
    out = []
    for ev in events:
        if draw(st.integers(0, 4)) == 0:
            ev = msgspec.structs.replace(ev, mode="import")
        if pages and ev.type == "TRACK" and draw(st.booleans()):
            ev = msgspec.structs.replace(ev, type="PAGE", name=None)
        out.append(ev)
    # A duplicate shares its original's fields (the same delivery again).
    first: dict[str, StreamEvent] = {}
    return [first.setdefault(ev.eventId, ev) for ev in out]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=varied_sets(pages=False))
def test_one_call_for_the_whole_set_equals_one_call_per_event_and_the_model(
    real_redis: redis_sync.Redis, events: list[StreamEvent]
) -> None:
    folded, _ = run_phases(real_redis, [(events, AFTER_EVENTS_MS)], per_event=False)
    model = canonical(list(Model(SETTINGS).apply(events).profiles.values()))
    assert canonical(snapshot(real_redis)) == model
    one_by_one, _ = run_phases(real_redis, [(events, AFTER_EVENTS_MS)], per_event=True)
    assert folded == one_by_one


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=varied_sets(pages=True), data=st.data())
def test_folding_across_buckets_and_past_the_counter_cutoff_changes_nothing(
    real_redis: redis_sync.Redis, events: list[StreamEvent], data: st.DataObject
) -> None:
    """Phase 1 opens buckets; phase 2, a day later, finds some past the cutoff (pruned,
    late events not counted) and merges profiles that hold old buckets."""
    rng = random.Random(data.draw(st.integers(0, 2**16)))
    split = rng.randint(0, len(events))
    phases = [(events[:split], AFTER_EVENTS_MS), (events[split:], PAST_CUTOFF_MS)]
    folded, folded_applied = run_phases(real_redis, phases, per_event=False)
    one_by_one, per_event_applied = run_phases(real_redis, phases, per_event=True)
    assert folded == one_by_one
    assert sum(folded_applied) == sum(per_event_applied)


def test_a_failure_in_the_middle_of_a_call_records_the_events_before_it_only(
    real_redis: redis_sync.Redis,
) -> None:
    """Event k fails (CDP_POISON: its counter key is not a zset): events 0..k-1 are
    applied, written (folded state included) and recorded; k and later are not."""
    fresh(real_redis)
    user, now = "mid-victim", NOW_MS
    (first,) = apply_calls(
        url_of(real_redis), [deliver(real_redis, [track("m-0", T0_MS, "Ok", user=user)], 1)], now
    )
    cid = real_redis.get(keys.identifier(f"user:{user}"))
    real_redis.set(keys.counter(cid, "Broken"), "not a sorted set")
    events = [
        track("m-1", T0_MS + 1, "Ok", user=user),
        track("m-2", T0_MS + 2, "Ok", user=user),  # the same bucket again: folded
        track("m-3", T0_MS + 3, "Broken", user=user),  # k
        track("m-4", T0_MS + 4, "Ok", user=user),
    ]
    (reply,) = apply_calls(url_of(real_redis), [deliver(real_redis, events, 2)], now)
    assert is_poison(reply) and "m-3" in str(reply), reply
    bucket = str(now // SETTINGS.dedup_ttl_ms)

    def recorded(event_id: str) -> bool:
        return real_redis.hget(keys.seen(cid), event_id) == bucket

    assert [recorded(f"m-{i}") for i in range(5)] == [True, True, True, False, False]
    assert 0 < real_redis.pttl(keys.seen(cid))
    # The folded writes of m-1 and m-2 were flushed before the refusal: their counts,
    # lastSeen and version. m-3's part of the folded state is dropped (its $seen
    # increment was folded, so unlike one call per event it is not left behind to be
    # counted again when the parked event is replayed).
    t0_bucket = f"{T0_MS - T0_MS % SETTINGS.counter_bucket_ms:013d}"
    assert real_redis.zscore(keys.counter(cid, "Ok"), t0_bucket) == 3
    assert real_redis.zscore(keys.counter(cid, "$seen"), t0_bucket) == 3
    meta = real_redis.hgetall(keys.profile(cid))
    assert meta["lastSeenMs"] == f"{T0_MS + 2:013d}"
    assert meta["version"] == "3"
    assert real_redis.hget(keys.metrics(PARTITION), "processed") == "3"
    assert real_redis.xpending(keys.stream(PARTITION), keys.GROUP)["pending"] == 4
    assert BatchResult.decode(first).applied == 1
