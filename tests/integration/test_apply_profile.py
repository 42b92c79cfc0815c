"""``apply_profile`` and the profile protocol against ``apply_batch``, on one real Redis.

The same events, cut into the same calls, go through ``apply_batch`` (one script per
partition batch) and through ``cdp.pipeline.profile_apply`` (one-slot scripts per
profile, claims driven by Python); every stored field of every profile must be equal:
meta (first/lastSeen, lastSeenMs, user and counts, version, seenFrom/seenTo), trait
cells (LWW on (ts, eventId), byte-wise ties, tombstones), counters and their oldest
bucket (cutoff), `seen` ids (dedup buckets). Then what only the script does: create,
FORWARDED, GONE, the guard rails on links, an undeclared counter key, poison.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from typing import Any

import msgspec
import pytest
import redis as redis_sync
from redis.exceptions import ResponseError

from cdp import keys
from cdp.connect import connect
from cdp.events import StreamEvent
from cdp.pipeline.apply import ApplyContext
from cdp.pipeline.profile_apply import apply_partition
from cdp.scripts import ProfileReply, Scripts, is_poison, load_scripts
from tests.support.events import event, track
from tests.support.lua import AFTER_EVENTS_MS
from tests.support.profile_protocol import (
    Calls,
    apply_batches,
    apply_calls,
    profiles_of,
    settings_of,
)
from tests.support.values import T0_MS

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000


def both(url: str, r: redis_sync.Redis, calls: Calls, now_ms: int = AFTER_EVENTS_MS) -> Any:
    """The state ``calls`` leave through apply_batch, and through the profile protocol;
    with each run's merge records."""
    batch_results = apply_batches(url, calls, now_ms)
    batch = profiles_of(r), [f for _, f in r.xrange(keys.MERGES)]
    r.flushall()
    profile_results = apply_calls(url, calls, now_ms)
    profile = profiles_of(r), [f for _, f in r.xrange(keys.MERGES)]
    for a, b in zip(batch_results, profile_results, strict=True):
        assert (a.applied, a.duplicates) == (b.applied, b.duplicates)
    return batch, profile


def refusals(records: list[dict[str, str]]) -> list[tuple[str, ...]]:
    return sorted(
        (f["eventId"], f["reason"], f.get("identifier", ""))
        for f in records
        if f["status"] == "refused"
    )


def test_traits_last_write_wins_with_tombstones_as_apply_batch(
    redis_url: str, r: redis_sync.Redis
) -> None:
    e = [
        event("e1", T0_MS, user="u1", traits={"plan": "free", "age": 3}),
        event("e3", T0_MS + 1000, user="u1", traits={"plan": None}),  # a tombstone
        event("e2", T0_MS + 1000, user="u1", anon="a1", traits={"plan": "pro"}),  # loses
        event("e0", T0_MS - 5000, anon="a1", user="u1", traits={"country": "FR", "age": 1}),
        event("E9", T0_MS + 1000, user="u1", traits={"country": "US"}),  # byte-wise tie
        event("e4", T0_MS + 2000, email="X@y.io", user="u1"),
    ]
    for calls in ([(0, e)], [(0, e[:2]), (0, e[2:4]), (0, e[4:])], [(0, e[::-1])]):
        batch, profile = both(redis_url, r, calls)
        assert profile == batch
        r.flushall()
    assert len(batch[0]) == 1


def test_counters_cutoff_and_seen_times_as_apply_batch(redis_url: str, r: redis_sync.Redis) -> None:
    now = T0_MS + DAY_MS + 120_000  # the counter window (a day) starts after T0 + 2 min
    e = [
        track("t1", T0_MS, "Clicked", user="u1"),  # before the cutoff: not counted
        track("t2", T0_MS + 180_000, "Clicked", user="u1"),
        track("t3", T0_MS + 181_000, "Viewed", user="u1", anon="a1"),
        event("p1", T0_MS + 240_000, "PAGE", anon="a1"),
        event("s1", T0_MS + DAY_MS, "SCREEN", user="u1"),
        track("t4", T0_MS + DAY_MS, "Clicked", user="u1"),
    ]
    batch, profile = both(redis_url, r, [(0, e[:3]), (0, e[3:])], now)
    assert profile == batch
    (state,) = profile[0].values()
    assert set(state["counters"]) == {"$seen", "$track", "Clicked", "Viewed", "$page", "$screen"}


def test_duplicates_within_and_across_calls_and_dedup_buckets(
    redis_url: str, r: redis_sync.Redis
) -> None:
    e1 = event("e1", T0_MS, user="u1", traits={"plan": "free"})
    e2 = track("e2", T0_MS + 10, "Clicked", anon="a9")
    calls = [(0, [e1, e1, e2]), (1, [e1, e2]), (0, [e2])]
    batch, profile = both(redis_url, r, calls)
    assert profile == batch
    # Two dedup buckets later the ids are forgotten: the replay is applied again.
    r.flushall()
    ttl = settings_of(redis_url).dedup_ttl_ms
    for now in (AFTER_EVENTS_MS, AFTER_EVENTS_MS + ttl, AFTER_EVENTS_MS + 3 * ttl):
        apply_batches(redis_url, [(0, [e1])], now)
    batch_state = profiles_of(r)
    r.flushall()
    results = [
        apply_calls(redis_url, [(0, [e1])], now)[0]
        for now in (AFTER_EVENTS_MS, AFTER_EVENTS_MS + ttl, AFTER_EVENTS_MS + 3 * ttl)
    ]
    assert [x.applied for x in results] == [1, 0, 1]
    assert profiles_of(r) == batch_state


def test_guard_rails_on_links_as_apply_batch(redis_url: str, r: redis_sync.Redis) -> None:
    emails = [event(f"m{i}", T0_MS + i, user="u1", email=f"m{i}@x.io") for i in range(7)]
    other = [
        event("o1", T0_MS + 100, anon="a1", user="u1"),
        event("o2", T0_MS + 200, anon="a1", user="u2"),  # different userIds: refused
        event("o3", T0_MS + 300, user="u2", email="m0@x.io"),  # ditto, through an email
    ]
    batch, profile = both(redis_url, r, [(0, emails[:3]), (0, emails[3:] + other)])
    assert profile[0] == batch[0]
    assert refusals(profile[1]) == refusals(batch[1])
    reasons = [f[1] for f in refusals(profile[1])]
    assert reasons.count("email limit") == 2 and "different userIds" in reasons
    # Every refused identifier was released: none names a profile that does not hold it.
    for ids in profile[0]:
        for identifier in ids:
            assert r.get(keys.identifier(identifier)) is not None
    assert r.get(keys.identifier("email:m6@x.io")) is None


# -- the script alone ---------------------------------------------------------------


@pytest.fixture
def call(redis_url: str) -> Iterator[Any]:
    """``call(cid, events, links, create=..., counters=None)``: one apply_profile."""
    runner = asyncio.Runner()
    settings = settings_of(redis_url)
    redis = runner.run(connect(settings))
    scripts = Scripts(redis)
    runner.run(load_scripts(redis))

    def go(
        cid: str,
        events: Sequence[StreamEvent],
        links: list[list[str]],
        *,
        create: bool = True,
        counters: list[str] | None = None,
    ) -> ProfileReply:
        from cdp.pipeline.profile_apply import _prepare

        rows = [_prepare(ev, "", settings) for ev in events]
        names = counters if counters is not None else sorted({n for x in rows for n in x.counters})
        return runner.run(
            scripts.apply_profile(
                cid=cid,
                counter_names=names,
                dedup_bucket=AFTER_EVENTS_MS // settings.dedup_ttl_ms,
                seen_expire_ms=60_000,
                counter_cutoff=f"{0:013d}",
                now_iso="2025-10-04T10:05:00.000Z",
                create=create,
                events=msgspec.json.encode([x.row for x in rows]),
                links=msgspec.json.encode(links),
                limits=msgspec.json.encode({"maxEmails": 1, "maxUsers": 1}),
            )
        )

    yield go
    runner.run(redis.aclose())
    runner.close()


def test_create_gone_and_forwarded(call: Any, r: redis_sync.Redis) -> None:
    e1 = event("e1", T0_MS, user="u1", traits={"plan": "free"})
    assert call("p7", [e1], [["user:u1"]], create=False).status == "GONE"
    assert not r.exists(keys.profile("p7"))
    reply = call("p7", [e1], [["user:u1"]])
    assert reply.status == "OK" and reply.events == ((True, ()),)
    assert r.hget(keys.profile("p7"), "createdAt") == "2025-10-04T10:05:00.000Z"
    assert r.smembers(keys.identifiers("p7")) == {"user:u1"}
    assert r.hget(keys.profile("p7"), "user") == "user:u1"
    # A duplicate writes nothing and hands back what it did not link.
    assert call("p7", [e1], [["user:u1", "anon:a1"]]).events == ((False, (("anon:a1", ""),)),)
    assert r.smembers(keys.identifiers("p7")) == {"user:u1"}
    r.hset(keys.profile("p7"), mapping={"mergedInto": "p2", "mergeState": "absorbed"})
    before = r.hgetall(keys.profile("p7"))
    reply = call("p7", [event("e2", T0_MS, user="u1")], [["user:u1"]])
    assert (reply.status, reply.survivor, reply.merge_state) == ("FORWARDED", "p2", "absorbed")
    assert r.hgetall(keys.profile("p7")) == before


def test_links_within_the_guard_rails(call: Any, r: redis_sync.Redis) -> None:
    e = [event(f"e{i}", T0_MS + i, user="u1") for i in range(3)]
    reply = call("p1", e, [["user:u1", "email:a@x.io"], ["email:b@x.io", "user:u2"], []])
    assert reply.events == (
        (True, ()),
        (True, (("email:b@x.io", "email limit"), ("user:u2", "userId limit"))),
        (True, ()),
    )
    assert r.hmget(keys.profile("p1"), "users", "emails", "anons") == ["1", "1", "0"]
    # Links past the events: a profile created by a claim whose apply never came.
    reply = call("p2", [], [["anon:z", "user:u9"]])
    assert reply.events == ((True, ()),)
    assert r.smembers(keys.identifiers("p2")) == {"anon:z", "user:u9"}


def test_a_counter_key_not_declared_fails_the_call(call: Any, r: redis_sync.Redis) -> None:
    with pytest.raises(ResponseError, match="not declared"):
        call("p1", [track("t1", T0_MS, "Clicked", user="u1")], [[]], counters=["$seen"])


def test_a_poison_event_is_refused_alone(call: Any, r: redis_sync.Redis) -> None:
    ok = event("e1", T0_MS, user="u1", traits={"plan": "free"})
    bad = event("e2", T0_MS + 1, user="u1", traits={"age": 3})
    r.hset(keys.traits("p1"), "age", "not json")
    with pytest.raises(ResponseError) as caught:
        call("p1", [ok, bad], [["user:u1"], []])
    assert is_poison(caught.value) and "event e2" in str(caught.value)
    assert r.hexists(keys.seen("p1"), "e1") and not r.hexists(keys.seen("p1"), "e2")


def test_the_orchestrator_raises_poison_with_the_events_before_it_applied(
    redis_url: str, r: redis_sync.Redis
) -> None:
    apply_calls(redis_url, [(0, [event("e0", T0_MS, user="u1")])])
    cid = r.get(keys.identifier("user:u1"))
    assert cid is not None
    r.hset(keys.traits(cid), "age", "not json")
    e = [event("e1", T0_MS + 1, user="u1"), event("e2", T0_MS + 2, user="u1", traits={"age": 1})]

    async def run() -> None:
        settings = settings_of(redis_url)
        redis = await connect(settings)
        try:
            ctx = ApplyContext(now_ms=AFTER_EVENTS_MS, worker_id="")
            await apply_partition(redis, Scripts(redis), settings, ctx, 3, [("", x) for x in e])
        finally:
            await redis.aclose()

    with pytest.raises(ResponseError) as caught:
        asyncio.run(run())
    assert is_poison(caught.value) and "event e2" in str(caught.value)
    assert r.hexists(keys.seen(cid), "e1") and not r.hexists(keys.seen(cid), "e2")
    assert not r.exists(keys.metrics(3))  # nothing acknowledged, nothing counted
