"""Merges of existing profiles in lua/apply_batch-n.lua (includes/identity.lua), on fakeredis.

README "Identity resolution": when an event links identifiers of several profiles they
merge, atomically, into the oldest; traits by LWW on (ts, eventId) with tombstones,
identifiers by union with every index entry re-pointed, counters summed bucket by
bucket, firstSeen/lastSeen by min/max; the loser keeps only a forward pointer; each
merge and each guard-rail refusal is a record in ``cdp:merges``.

Every scenario asserts the exact resulting keys, and is also checked against the
reference model (cdp/chaos/model.py) with the events applied in (ts, eventId) order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import permutations
from typing import Any

import pytest

from cdp import keys
from cdp.chaos.model import Model, canonical, snapshot
from cdp.events import StreamEvent, iso_ms
from cdp.profiles import resolve
from cdp.settings import Settings
from tests.support.events import event, track
from tests.support.lua import LuaHarness

SECOND = 1_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE

# The documented fields of a live profile's hash (others may come and go with new
# features; these are the identity graph's).
META_FIELDS = ("createdAt", "firstSeen", "lastSeen", "user", "users", "emails", "anons", "merges")

MakeHarness = Callable[..., LuaHarness]


def alias(event_id: str, ts: int, **kw: Any) -> StreamEvent:
    return event(event_id, ts, "ALIAS", **kw)


def bucket(ts: int) -> str:
    """Independent of the product: the 13-digit start of the minute holding ts."""
    return str(ts // MINUTE * MINUTE).zfill(13)


def cell(value: Any, ts: int, event_id: str) -> dict[str, Any]:
    return {"v": value, "ts": iso_ms(ts), "eventId": event_id}


def meta(h: LuaHarness, cid: str) -> dict[str, str]:
    return {k: v for k, v in h.meta(cid).items() if k in META_FIELDS}


def profile_keys(h: LuaHarness, cid: str) -> set[str]:
    return set(h.r.keys(keys.profile(cid) + "*"))


def counter_keys(h: LuaHarness) -> set[str]:
    return set(h.r.keys(keys.PROFILE_PREFIX + "*:counter:*"))


def index(h: LuaHarness) -> dict[str, str]:
    """The whole identifier index: typed identifier -> canonical id."""
    out = {}
    for key in h.r.keys(keys.IDENTIFIER_PREFIX + "*"):
        out[key[len(keys.IDENTIFIER_PREFIX) + 1 : -1]] = h.r.get(key)
    return out


def forward(survivor: str, ts: int, event_id: str) -> dict[str, str]:
    """The whole hash of a merged-away profile."""
    return {"mergedInto": survivor, "mergedAt": iso_ms(ts), "mergeEventId": event_id}


def merged_record(survivor: str, loser: str, event_id: str, ts: int) -> dict[str, str]:
    return {
        "status": "merged",
        "survivor": survivor,
        "merged": loser,
        "eventId": event_id,
        "ts": iso_ms(ts),
    }


def refused_record(reason: str, event_id: str, ts: int, **fields: str) -> dict[str, str]:
    return {"status": "refused", "reason": reason, **fields, "eventId": event_id, "ts": iso_ms(ts)}


def apply_each(h: LuaHarness, events: Iterable[StreamEvent]) -> list[tuple[str, ...]]:
    """One script call per event; the profiles each applied to."""
    return [h.apply(ev).profiles for ev in events]


DEDUP_FIELDS = ("seenFrom", "seenTo")  # of a profile hash: the bookkeeping of its seen ids


def state_without_dedup(h: LuaHarness, *, stream: bool = True) -> dict[str, Any]:
    """``dump()`` without the dedup records (the profiles' seen hashes and their
    seenFrom / seenTo, the legacy partition hashes) and metrics (and the stream, if
    asked)."""
    out = {
        k: v
        for k, v in h.dump().items()
        if not k.startswith("cdp:dedup:")
        and not k.endswith(":seen")
        and not k.startswith(keys.METRICS)
        and (stream or k != h.stream)
    }
    for k, (kind, value, expiry) in out.items():
        if kind == "hash" and k.startswith(keys.PROFILE_PREFIX):
            out[k] = (kind, {f: v for f, v in value.items() if f not in DEDUP_FIELDS}, expiry)
    return out


def without_entry_ids(state: dict[str, Any]) -> dict[str, Any]:
    """Stream entries by their fields only (entry ids come from each server's clock)."""
    out = dict(state)
    for key, (kind, value, expiry) in state.items():
        if kind == "stream":
            entries, pending = value
            out[key] = (kind, ([fields for _, fields in entries], pending), expiry)
    return out


# ------------------------------------------------------------------ the model


def lua_view(h: LuaHarness) -> tuple[Any, ...]:
    profiles = snapshot(h.r)
    refusals = sorted((f["eventId"], f["reason"]) for f in h.merges() if f["status"] == "refused")
    merges = {frozenset(p.identifiers): p.merges for p in profiles}
    return canonical(profiles), merges, refusals


def model_view(settings: Settings, events: list[StreamEvent]) -> tuple[Any, ...]:
    model = Model(settings).apply(events)
    profiles = list(model.profiles.values())
    merges = {frozenset(p.identifiers): p.merges for p in profiles}
    return canonical(profiles), merges, sorted(model.refusals)


def assert_model_agrees(
    make_harness: MakeHarness,
    settings: Settings,
    events: list[StreamEvent],
    scenario: LuaHarness | None = None,
) -> None:
    """Applied in (ts, eventId) order, the script ends where the model does.

    ``scenario``: the harness the test built its state in, when that state must equal
    the model's too (it applied the events in (ts, eventId) order, or they converge).
    """
    expected = model_view(settings, events)
    assert expected[0], "the scenario has profiles"
    fresh = make_harness(settings=settings)
    fresh.apply(*sorted(events, key=lambda e: (e.ts, e.eventId)))
    assert lua_view(fresh) == expected
    if scenario is not None:
        assert lua_view(scenario) == expected


# ------------------------------------------------------- 1. two profiles, one ALIAS


def two_profiles(t: int, newer_first: bool) -> tuple[list[StreamEvent], ...]:
    """A survivor S (created first) and a loser L, with traits and counters that meet.

    ``newer_first``: L owns user:u-1 and S anon:a-1, so the ALIAS (userId, then
    anonymousId) names the newer profile's identifier first; otherwise the reverse.
    """
    s_ids = {"anon": "a-1"} if newer_first else {"user": "u-1"}
    l_ids = {"user": "u-1"} if newer_first else {"anon": "a-1"}
    m = MINUTE
    survivor = [
        event("s0", t, **s_ids, email="s@x.io", traits={"plan": "free", "only_s": 1}),
        track("s1", t + 10 * SECOND, "Clicked", **s_ids),
        track("s2", t + 20 * SECOND, "Clicked", **s_ids),
        event("s3", t + m, **s_ids, traits={"status": "active"}),
        track("s4", t + m + 30 * SECOND, "Viewed", **s_ids),
        track("s5", t + 2 * m, "Clicked", **s_ids),
        event("s6", t + 3 * m, **s_ids, traits={"country": "US"}),
        event("k4-a", t + 4 * m, **s_ids, traits={"tieA": "S"}),
        event("k5-b", t + 5 * m, **s_ids, traits={"tieB": "S"}),
        event("s7", t + 6 * m, **s_ids, traits={"beta": True}),
    ]
    loser = [
        event("l0", t + 30 * SECOND, **l_ids, email="l@x.io", traits={"only_l": "x"}),
        # country older than S's; a tombstone of beta older than S's value.
        event("l1", t + m, **l_ids, traits={"country": "DE", "beta": None}),
        event("l2", t + 2 * m, **l_ids, traits={"plan": "pro"}),  # newer than S's
        track("l3", t + 2 * m + 10 * SECOND, "Clicked", **l_ids),  # bucket shared with S
        track("l4", t + 3 * m, "Signup", **l_ids),
        event("k4-b", t + 4 * m, **l_ids, traits={"tieA": "L"}),  # same ts, greater id
        event("k5-a", t + 5 * m, **l_ids, traits={"tieB": "L"}),  # same ts, smaller id
        track("l5", t + 5 * m + 30 * SECOND, "Viewed", **l_ids),
        event("l6", t + 6 * m, **l_ids, traits={"status": None}),  # tombstone, newer than S's
        track("l7", t + 7 * m, "Clicked", **l_ids),  # the latest event time of all
    ]
    # Arrives late: L's earliest event, before anything of S.
    late = [track("l8", t - 5 * m, "Clicked", **l_ids)]
    link = [alias("alias", t + 3 * m + 30 * SECOND, user="u-1", anon="a-1")]
    return survivor, loser, late, link


@pytest.mark.parametrize("newer_first", [True, False], ids=["newer-id-first", "older-id-first"])
def test_alias_merges_two_profiles_into_the_oldest(lua, make_harness, now_ms, newer_first):
    t = now_ms - 3 * HOUR
    m = MINUTE
    survivor, loser, late, link = two_profiles(t, newer_first)
    assert lua.apply(*survivor).profiles == ("p1",) * len(survivor)
    assert lua.apply(*loser).profiles == ("p2",) * len(loser)
    assert lua.apply(*late).profiles == ("p2",)
    # The set-up is what the test means: L holds both tombstones' counterparts.
    assert lua.traits("p2")["beta"] == cell(None, t + m, "l1")
    assert lua.traits("p2")["status"] == cell(None, t + 6 * m, "l6")
    assert lua.r.hget(keys.counters("p2"), "Clicked") == bucket(t - 5 * m)
    assert lua.r.hget(keys.counters("p1"), "Clicked") == bucket(t)
    assert lua.r.hget(keys.counters("p2"), "$seen") == bucket(t - 5 * m)
    assert lua.r.hget(keys.counters("p1"), "$seen") == bucket(t)

    result = lua.apply(*link)
    assert result.profiles == ("p1",)

    # Traits: LWW per trait over both profiles.
    assert lua.traits("p1") == {
        "plan": cell("pro", t + 2 * m, "l2"),  # L's newer value wins
        "country": cell("US", t + 3 * m, "s6"),  # L's older value loses
        "tieA": cell("L", t + 4 * m, "k4-b"),  # equal ts: the greater eventId (L's)
        "tieB": cell("S", t + 5 * m, "k5-b"),  # equal ts: the greater eventId (S's)
        "status": cell(None, t + 6 * m, "l6"),  # L's newer tombstone, with L's ts
        "beta": cell(True, t + 6 * m, "s7"),  # L's older tombstone does not win
        "only_s": cell(1, t, "s0"),
        "only_l": cell("x", t + 30 * SECOND, "l0"),
    }
    profile = lua.read_profile("p2")
    assert profile["canonicalId"] == "p1"
    assert "status" not in profile["traits"]
    assert profile["tombstones"] == {"status": {"ts": iso_ms(t + 6 * m), "eventId": "l6"}}
    assert profile["mergedFrom"] == ["p2"]

    # Identifiers: the union, and every index entry points to the survivor.
    ids = {"user:u-1", "anon:a-1", "email:s@x.io", "email:l@x.io"}
    assert lua.identifiers("p1") == ids
    assert index(lua) == dict.fromkeys(ids, "p1")

    # Counters: summed bucket by bucket; the oldest bucket is the min of both.
    assert lua.counter("p1", "Clicked") == {
        bucket(t - 5 * m): 1,  # L only
        bucket(t): 2,  # S only
        bucket(t + 2 * m): 2,  # both
        bucket(t + 7 * m): 1,  # L only
    }
    assert lua.counter("p1", "Viewed") == {bucket(t + m): 1, bucket(t + 5 * m): 1}
    assert lua.counter("p1", "Signup") == {bucket(t + 3 * m): 1}
    assert lua.counter("p1", "$track") == {
        bucket(t - 5 * m): 1,
        bucket(t): 2,
        bucket(t + m): 1,
        bucket(t + 2 * m): 2,
        bucket(t + 3 * m): 1,
        bucket(t + 5 * m): 1,
        bucket(t + 7 * m): 1,
    }
    # Every event of both, and the ALIAS itself (applied to the survivor).
    assert lua.counter("p1", "$seen") == {
        bucket(t - 5 * m): 1,  # l8
        bucket(t): 4,  # s0 s1 s2 l0
        bucket(t + m): 3,  # s3 s4 l1
        bucket(t + 2 * m): 3,  # s5 l2 l3
        bucket(t + 3 * m): 3,  # s6 l4 alias
        bucket(t + 4 * m): 2,  # k4-a k4-b
        bucket(t + 5 * m): 3,  # k5-b k5-a l5
        bucket(t + 6 * m): 2,  # s7 l6
        bucket(t + 7 * m): 1,  # l7
    }
    assert lua.r.hgetall(keys.counters("p1")) == {
        "Clicked": bucket(t - 5 * m),  # L's is older
        "Viewed": bucket(t + m),  # S's is older
        "Signup": bucket(t + 3 * m),  # L's only
        "$track": bucket(t - 5 * m),
        "$seen": bucket(t - 5 * m),  # L's is older
    }
    assert counter_keys(lua) == {
        keys.counter("p1", name) for name in ("Clicked", "Viewed", "Signup", "$track", "$seen")
    }

    # firstSeen from L's late event, lastSeen from L's last: min and max of both.
    assert meta(lua, "p1") == {
        "createdAt": iso_ms(now_ms),
        "firstSeen": iso_ms(t - 5 * m),
        "lastSeen": iso_ms(t + 7 * m),
        "user": "user:u-1",
        "users": "1",
        "emails": "2",
        "anons": "1",
        "merges": "1",
    }
    assert lua.r.smembers(keys.merged("p1")) == {"p2"}

    # The loser: nothing left but its forward pointer.
    assert profile_keys(lua, "p2") == {keys.profile("p2")}
    assert lua.meta("p2") == forward("p1", t + 3 * m + 30 * SECOND, "alias")
    assert lua.run(resolve(lua.redis, "p2")) == "p1"

    assert lua.merges() == [merged_record("p1", "p2", "alias", t + 3 * m + 30 * SECOND)]
    assert lua.r.get(keys.PROFILE_SEQ) == "2"

    # The same events in any order converge: the model (event-time order) agrees.
    assert_model_agrees(make_harness, lua.settings, survivor + loser + late + link, scenario=lua)


# ------------------------------------------------ 2. three profiles, one IDENTIFY

VALUES = {"user": "u-1", "email": "E@x.io", "anon": "a-1"}
TYPED = {"user": "user:u-1", "email": "email:e@x.io", "anon": "anon:a-1"}


@pytest.mark.parametrize("kinds", list(permutations(VALUES)), ids="-".join)
def test_identify_merges_three_profiles_in_one_event(lua, make_harness, now_ms, kinds):
    """p1, p2, p3 each own one of the event's identifiers (whichever type): p1 survives."""
    t = now_ms - 3 * HOUR
    m = MINUTE
    k1, k2, k3 = ({kind: VALUES[kind]} for kind in kinds)
    events = [
        event("a0", t, **k1, traits={"plan": "free", "src": "p1"}),
        track("a1", t + m, "Clicked", **k1),
        event("b0", t + 2 * m, **k2, traits={"plan": "pro"}),
        track("b1", t + 3 * m, "Clicked", **k2),
        event("c0", t + 4 * m, **k3, traits={"seats": 3, "plan": None}),
        track("c1", t + 5 * m, "Signup", **k3),
    ]
    assert [p for (p,) in apply_each(lua, events)] == ["p1"] * 2 + ["p2"] * 2 + ["p3"] * 2
    meet = event(
        "meet",
        t + 4 * m + 30 * SECOND,
        user="u-1",
        email=" e@X.IO ",
        anon="a-1",
        traits={"linked": True},
    )
    assert lua.apply(meet).profiles == ("p1",)

    assert lua.merges() == [
        merged_record("p1", "p2", "meet", t + 4 * m + 30 * SECOND),
        merged_record("p1", "p3", "meet", t + 4 * m + 30 * SECOND),
    ]
    assert index(lua) == dict.fromkeys(TYPED.values(), "p1")
    assert lua.identifiers("p1") == set(TYPED.values())
    assert lua.traits("p1") == {
        "plan": cell(None, t + 4 * m, "c0"),
        "src": cell("p1", t, "a0"),
        "seats": cell(3, t + 4 * m, "c0"),
        "linked": cell(True, t + 4 * m + 30 * SECOND, "meet"),
    }
    assert lua.counter("p1", "Clicked") == {bucket(t + m): 1, bucket(t + 3 * m): 1}
    assert lua.counter("p1", "Signup") == {bucket(t + 5 * m): 1}
    assert lua.counter("p1", "$track") == {
        bucket(t + m): 1,
        bucket(t + 3 * m): 1,
        bucket(t + 5 * m): 1,
    }
    # Every event of the three, and the meeting IDENTIFY itself.
    assert lua.counter("p1", "$seen") == {
        bucket(t): 1,
        bucket(t + m): 1,
        bucket(t + 2 * m): 1,
        bucket(t + 3 * m): 1,
        bucket(t + 4 * m): 2,  # c0 meet
        bucket(t + 5 * m): 1,
    }
    assert lua.r.hgetall(keys.counters("p1")) == {
        "Clicked": bucket(t + m),
        "Signup": bucket(t + 5 * m),
        "$track": bucket(t + m),
        "$seen": bucket(t),
    }
    assert meta(lua, "p1") == {
        "createdAt": iso_ms(now_ms),
        "firstSeen": iso_ms(t),
        "lastSeen": iso_ms(t + 5 * m),
        "user": "user:u-1",
        "users": "1",
        "emails": "1",
        "anons": "1",
        "merges": "2",
    }
    assert lua.r.smembers(keys.merged("p1")) == {"p2", "p3"}
    for loser in ("p2", "p3"):
        assert profile_keys(lua, loser) == {keys.profile(loser)}
        assert lua.meta(loser) == forward("p1", t + 4 * m + 30 * SECOND, "meet")
    assert counter_keys(lua) == {
        keys.counter("p1", n) for n in ("Clicked", "Signup", "$track", "$seen")
    }
    assert lua.r.get(keys.PROFILE_SEQ) == "3"

    # Not in event-time order (meet is before c1), but these events converge.
    assert_model_agrees(make_harness, lua.settings, [*events, meet], scenario=lua)


# --------------------------------------------------------------------- 3. chains


def chain_events(t: int) -> tuple[list[StreamEvent], list[StreamEvent]]:
    """p1..p4, then p4 into p3, p3 (holding p4) into p2, p2 (holding both) into p1."""
    m = MINUTE
    creators = [
        event("c1", t, email="one@x.io", traits={"from_p1": 1}),
        event("c2", t + m, anon="a-2", traits={"from_p2": 2}),
        event("c3", t + 2 * m, user="u-3", traits={"from_p3": 3}),
        event("c4", t + 3 * m, anon="a-4", traits={"from_p4": 4}),
    ]
    links = [
        alias("m1", t + 4 * m, user="u-3", anon="a-4"),  # p4 -> p3
        alias("m2", t + 5 * m, user="u-3", anon="a-2"),  # p3 -> p2 (older, anon only)
        event("m3", t + 6 * m, email="one@x.io", anon="a-2"),  # p2 -> p1
    ]
    return creators, links


@pytest.mark.parametrize("one_call", [False, True], ids=["call-per-event", "one-batch"])
def test_chained_merges_leave_one_hop_pointers_to_the_final_survivor(
    lua, make_harness, now_ms, one_call
):
    t = now_ms - 3 * HOUR
    m = MINUTE
    creators, links = chain_events(t)
    assert [p for (p,) in apply_each(lua, creators)] == ["p1", "p2", "p3", "p4"]
    if one_call:
        assert lua.apply(*links).profiles == ("p3", "p2", "p1")
    else:
        assert apply_each(lua, links) == [("p3",), ("p2",), ("p1",)]

    ids = {"email:one@x.io", "anon:a-2", "user:u-3", "anon:a-4"}
    for identifier in ids | {"p1", "p2", "p3", "p4"}:
        assert lua.run(resolve(lua.redis, identifier)) == "p1", identifier
    assert index(lua) == dict.fromkeys(ids, "p1")
    # One hop: every merged-away id points at the final survivor itself; each keeps the
    # time and event of its own merge.
    assert lua.meta("p4") == forward("p1", t + 4 * m, "m1")
    assert lua.meta("p3") == forward("p1", t + 5 * m, "m2")
    assert lua.meta("p2") == forward("p1", t + 6 * m, "m3")
    for loser in ("p2", "p3", "p4"):
        assert profile_keys(lua, loser) == {keys.profile(loser)}
    assert lua.r.smembers(keys.merged("p1")) == {"p2", "p3", "p4"}
    assert meta(lua, "p1")["merges"] == "3"
    assert lua.trait_values("p1") == {"from_p1": 1, "from_p2": 2, "from_p3": 3, "from_p4": 4}
    assert lua.merges() == [
        merged_record("p3", "p4", "m1", t + 4 * m),
        merged_record("p2", "p3", "m2", t + 5 * m),
        merged_record("p1", "p2", "m3", t + 6 * m),
    ]
    assert lua.read_profile("p4")["mergedFrom"] == ["p2", "p3", "p4"]

    assert_model_agrees(make_harness, lua.settings, creators + links, scenario=lua)


# ---------------------------------------------------------------- 4. guard rails


@pytest.mark.parametrize("user_exists", [False, True], ids=["new-user", "known-user"])
def test_different_user_ids_are_never_merged(lua, make_harness, now_ms, user_exists):
    t = now_ms - HOUR
    events = [event("e1", t, user="u1", email="shared@x.io", traits={"plan": "pro"})]
    if user_exists:
        events.append(event("e2", t + MINUTE, user="u2", traits={"plan": "free"}))
    apply_each(lua, events)
    p1_before = {k: v for k, v in lua.dump().items() if "{p1}" in k}

    link = event("e3", t + 2 * MINUTE, user="u2", email="shared@x.io", traits={"seats": 2})
    assert lua.apply(link).profiles == ("p2",)  # the profile of its userId, new or not

    assert lua.merges() == [refused_record("different userIds", "e3", t + 2 * MINUTE, profile="p1")]
    assert index(lua) == {"user:u1": "p1", "email:shared@x.io": "p1", "user:u2": "p2"}
    assert lua.identifiers("p2") == {"user:u2"}
    expected_traits = {"seats": cell(2, t + 2 * MINUTE, "e3")}
    if user_exists:
        expected_traits["plan"] = cell("free", t + MINUTE, "e2")
    assert lua.traits("p2") == expected_traits
    assert meta(lua, "p2")["lastSeen"] == iso_ms(t + 2 * MINUTE)
    assert meta(lua, "p2")["merges"] == "0"
    # p1 is untouched by the refused link (the event did not apply to it).
    assert {k: v for k, v in lua.dump().items() if "{p1}" in k} == p1_before
    assert lua.r.get(keys.PROFILE_SEQ) == "2"

    assert_model_agrees(make_harness, lua.settings, [*events, link], scenario=lua)


def test_merge_different_users_merges_within_the_user_id_limit(make_harness, now_ms):
    s = Settings(merge_different_users=True, max_user_ids=2)
    h = make_harness(settings=s)
    t = now_ms - HOUR
    m = MINUTE
    events = [
        event("e1", t, user="u1", email="e1@x.io", traits={"n": 1}),
        event("e2", t + m, user="u2", email="e2@x.io", traits={"n": 2}),
        event("e3", t + 2 * m, user="u3", email="e3@x.io", traits={"n": 3}),
        event("m1", t + 3 * m, user="u1", email="e2@x.io"),  # u1 + u2: within the limit
        event("m2", t + 4 * m, user="u1", email="e3@x.io", traits={"x": 1}),  # a third: no
        event("m3", t + 5 * m, user="u3", email="e1@x.io", traits={"y": 1}),  # from u3's side
    ]
    assert apply_each(h, events) == [("p1",), ("p2",), ("p3",), ("p1",), ("p1",), ("p3",)]
    assert h.merges() == [
        merged_record("p1", "p2", "m1", t + 3 * m),
        refused_record("userId limit", "m2", t + 4 * m, profile="p3"),
        refused_record("userId limit", "m3", t + 5 * m, profile="p1"),
    ]
    assert index(h) == {
        "user:u1": "p1",
        "email:e1@x.io": "p1",
        "user:u2": "p1",
        "email:e2@x.io": "p1",
        "user:u3": "p3",
        "email:e3@x.io": "p3",
    }
    assert meta(h, "p1")["user"] == "user:u1"
    assert (meta(h, "p1")["users"], meta(h, "p1")["merges"]) == ("2", "1")
    assert h.trait_values("p1") == {"n": 2, "x": 1}
    assert h.trait_values("p3") == {"n": 3, "y": 1}
    assert h.meta("p2") == forward("p1", t + 3 * m, "m1")

    assert_model_agrees(make_harness, s, events, scenario=h)


@pytest.mark.parametrize("max_user_ids", [1, 2])
def test_a_new_user_id_is_not_glued_to_a_profile_at_the_user_id_limit(
    make_harness, now_ms, max_user_ids
):
    h = make_harness(settings=Settings(merge_different_users=True, max_user_ids=max_user_ids))
    t = now_ms - HOUR
    setup = [event("e1", t, user="u1", email="e@x.io")]
    if max_user_ids == 2:
        setup += [
            event("e2", t, user="u2", email="f@x.io"),
            event("m1", t, user="u1", email="f@x.io"),  # p2 -> p1
        ]
    apply_each(h, setup)
    assert meta(h, "p1")["users"] == str(max_user_ids)  # p1 is at the limit
    assert h.merges() == ([merged_record("p1", "p2", "m1", t)] if max_user_ids == 2 else [])

    new = event("new", t + MINUTE, user="u9", email="e@x.io", traits={"x": 1})
    (cid,) = h.apply(new).profiles
    # README: "an event always applies to the profile of its userId".
    assert h.cid("user:u9") == cid
    assert cid != "p1"
    assert "x" not in h.trait_values("p1")
    assert [f["reason"] for f in h.merges() if f["eventId"] == "new"] == ["userId limit"]


def test_a_third_email_is_not_linked_beyond_max_emails(make_harness, now_ms):
    s = Settings(max_emails=2)
    h = make_harness(settings=s)
    t = now_ms - HOUR
    m = MINUTE
    events = [
        event("e1", t, user="u1", email="a@x.io"),
        event("e2", t + m, user="u1", email="b@x.io"),
        event("e3", t + 2 * m, user="u1", email="c@x.io", traits={"plan": "pro"}),
        event("e4", t + 3 * m, email="c@x.io"),  # c is free: a profile of its own
    ]
    assert apply_each(h, events) == [("p1",), ("p1",), ("p1",), ("p2",)]
    assert h.merges() == [
        refused_record("email limit", "e3", t + 2 * m, profile="p1", identifier="email:c@x.io")
    ]
    assert h.identifiers("p1") == {"user:u1", "email:a@x.io", "email:b@x.io"}
    assert meta(h, "p1")["emails"] == "2"
    assert h.trait_values("p1") == {"plan": "pro"}  # the event still applied
    assert index(h) == {
        "user:u1": "p1",
        "email:a@x.io": "p1",
        "email:b@x.io": "p1",
        "email:c@x.io": "p2",
    }
    # Before e4, the refused email had no index entry at all.
    fresh = make_harness(settings=s)
    apply_each(fresh, events[:3])
    assert fresh.r.exists(keys.identifier("email:c@x.io")) == 0
    assert fresh.cid("email:c@x.io") is None

    assert_model_agrees(make_harness, s, events, scenario=h)


def test_anonymous_id_limit_refuses_a_merge_through_an_anon_but_not_through_an_email(
    make_harness, now_ms
):
    s = Settings(max_anonymous_ids=2)
    h = make_harness(settings=s)
    t = now_ms - HOUR
    m = MINUTE
    setup = [
        event("u0", t, user="u1", traits={"who": "u1"}),  # p1
        event("x0", t + m, anon="a1", email="x@x.io", traits={"who": "x"}),  # p2
        event("x1", t + 2 * m, email="x@x.io", anon="a2"),
        event("x2", t + 3 * m, email="x@x.io", anon="a3"),  # p2: 3 anons, > the limit
        event("y0", t + 4 * m, anon="b1", email="y@x.io"),  # p3
        event("y1", t + 5 * m, email="y@x.io", anon="b2"),  # p3: 2 anons, = the limit
    ]
    assert [p for (p,) in apply_each(h, setup)] == ["p1", "p2", "p2", "p2", "p3", "p3"]
    assert (meta(h, "p2")["anons"], meta(h, "p3")["anons"]) == ("3", "2")

    links = [
        alias("m1", t + 6 * m, user="u1", anon="a1"),  # p2 only through an anon: refused
        alias("m2", t + 7 * m, user="u1", anon="b1"),  # p3 at the limit: merged
        event("m3", t + 8 * m, user="u1", email="x@x.io"),  # p2 through its email: merged
    ]
    assert apply_each(h, links) == [("p1",), ("p1",), ("p1",)]
    assert h.merges() == [
        refused_record("anonymousId limit", "m1", t + 6 * m, profile="p2"),
        merged_record("p1", "p3", "m2", t + 7 * m),
        merged_record("p1", "p2", "m3", t + 8 * m),
    ]
    ids = {
        "user:u1",
        "anon:a1",
        "anon:a2",
        "anon:a3",
        "email:x@x.io",
        "anon:b1",
        "anon:b2",
        "email:y@x.io",
    }
    assert index(h) == dict.fromkeys(ids, "p1")
    assert meta(h, "p1")["anons"] == "5"
    assert meta(h, "p1")["merges"] == "2"

    assert_model_agrees(make_harness, s, setup + links, scenario=h)


def test_anonymous_id_limit_state_after_the_refusal(make_harness, now_ms):
    """After m1 alone: a1 still belongs to p2, which is untouched; nothing merged."""
    s = Settings(max_anonymous_ids=2)
    h = make_harness(settings=s)
    t = now_ms - HOUR
    m = MINUTE
    setup = [
        event("u0", t, user="u1"),
        event("x0", t + m, anon="a1", email="x@x.io"),
        event("x1", t + 2 * m, email="x@x.io", anon="a2"),
        event("x2", t + 3 * m, email="x@x.io", anon="a3"),
    ]
    apply_each(h, setup)
    p2_before = {k: v for k, v in h.dump().items() if "{p2}" in k}
    link = alias("m1", t + 6 * m, user="u1", anon="a1")
    assert h.apply(link).profiles == ("p1",)
    assert h.cid("anon:a1") == "p2"
    assert h.identifiers("p1") == {"user:u1"}
    assert {k: v for k, v in h.dump().items() if "{p2}" in k} == p2_before
    assert meta(h, "p1")["lastSeen"] == iso_ms(t + 6 * m)
    assert h.merges() == [refused_record("anonymousId limit", "m1", t + 6 * m, profile="p2")]

    assert_model_agrees(make_harness, s, [*setup, link], scenario=h)


def test_max_merges_refuses_a_second_merge_into_the_same_survivor(make_harness, now_ms):
    s = Settings(max_merges=1)
    h = make_harness(settings=s)
    t = now_ms - HOUR
    m = MINUTE
    setup = [
        event("e1", t, user="u1"),
        event("e2", t + m, anon="a2", traits={"from": "p2"}),
        event("e3", t + 2 * m, anon="a3", traits={"from": "p3"}),
        alias("m1", t + 3 * m, user="u1", anon="a2"),
    ]
    assert apply_each(h, setup) == [("p1",), ("p2",), ("p3",), ("p1",)]
    p3_before = {k: v for k, v in h.dump().items() if "{p3}" in k}

    second = event("m2", t + 4 * m, user="u1", anon="a3", traits={"x": 1})
    assert h.apply(second).profiles == ("p1",)
    assert h.merges() == [
        merged_record("p1", "p2", "m1", t + 3 * m),
        refused_record("merge limit", "m2", t + 4 * m, survivor="p1", profile="p3"),
    ]
    assert index(h) == {"user:u1": "p1", "anon:a2": "p1", "anon:a3": "p3"}
    assert meta(h, "p1")["merges"] == "1"
    assert h.trait_values("p1") == {"from": "p2", "x": 1}
    assert {k: v for k, v in h.dump().items() if "{p3}" in k} == p3_before

    assert_model_agrees(make_harness, s, [*setup, second], scenario=h)


def test_a_merge_limit_refusal_still_applies_the_event_to_its_user_ids_profile(
    make_harness, now_ms
):
    h = make_harness(settings=Settings(max_merges=1))
    t = now_ms - HOUR
    m = MINUTE
    apply_each(
        h,
        [
            event("e1", t, anon="a1"),  # p1
            event("e2", t + m, email="b@x.io"),  # p2
            event("m1", t + 2 * m, email="b@x.io", anon="a1"),  # p2 -> p1: p1 at the limit
            event("e3", t + 3 * m, user="u3"),  # p3
        ],
    )
    result = h.apply(event("m2", t + 4 * m, user="u3", anon="a1", traits={"plan": "pro"}))
    assert [f["reason"] for f in h.merges() if f["status"] == "refused"] == ["merge limit"]
    # README: "an event always applies to the profile of its userId".
    assert result.profiles == ("p3",)
    assert h.trait_values("p3") == {"plan": "pro"}
    assert h.trait_values("p1") == {}


@pytest.mark.parametrize("blocked", ["guest, n/a", ""], ids=["blocked", "default"])
def test_placeholder_values_create_no_identifiers_and_no_merges(make_harness, now_ms, blocked):
    s = Settings(blocked_identifiers=blocked)
    h = make_harness(settings=s)
    t = now_ms - HOUR
    m = MINUTE
    events = [
        event("e1", t, email="a@x.io", anon="guest"),
        event("e2", t + m, email="b@x.io", anon="guest"),
        event("e3", t + 2 * m, anon="c-1", email="N/A"),
        event("e4", t + 3 * m, anon="d-1", email=" n/a "),
        event("e5", t + 4 * m, user="null", anon="e-1"),
        event("e6", t + 5 * m, user="NULL", anon="f-1"),
        event("e7", t + 6 * m, user="Undefined", anon="g-1", email="0"),
        event("e8", t + 7 * m, user=" anonymous ", anon="[object Object]", email="-1"),
    ]
    # Built-in placeholders are blocked whatever the setting.
    builtin = {"anon:c-1", "anon:d-1", "anon:e-1", "anon:f-1", "anon:g-1"}
    if blocked:
        results = apply_each(h, [*events, event("e9", t + 8 * m, anon=" GUEST ")])
        assert results == [(f"p{i}",) for i in range(1, 8)] + [(), ()]
        assert set(index(h)) == {"email:a@x.io", "email:b@x.io"} | builtin
        assert h.r.get(keys.PROFILE_SEQ) == "7"
        assert h.metric("processed") == 7
    else:
        # Without the setting "guest" and "n/a" are identifiers, and glue profiles.
        results = apply_each(h, events)
        assert results == [("p1",), ("p1",), ("p2",), ("p2",), ("p3",), ("p4",), ("p5",), ()]
        assert index(h)["email:b@x.io"] == index(h)["anon:guest"] == "p1"
        assert index(h)["anon:d-1"] == index(h)["email:n/a"] == "p2"
    assert not any("null" in i.lower() or "undefined" in i.lower() for i in index(h))
    assert h.merges() == []
    assert h.r.keys(keys.profile("*") + ":merged") == []

    assert_model_agrees(make_harness, s, events, scenario=h)


# ------------------------------------------------------------- 5. redelivery


def merge_setup(t: int) -> tuple[list[StreamEvent], StreamEvent]:
    m = MINUTE
    setup = [
        event("s0", t, anon="a-1", traits={"plan": "free"}),
        track("s1", t + m, "Clicked", anon="a-1"),
        event("l0", t + 2 * m, user="u-1", email="l@x.io", traits={"plan": "pro"}),
        track("l1", t + 3 * m, "Clicked", user="u-1"),
        event("l2", t + 4 * m, user="u-1", traits={"country": None}),
    ]
    return setup, alias("alias", t + 5 * m, user="u-1", anon="a-1", traits={"seats": 2})


@pytest.mark.parametrize("mode", ["same-entry", "new-entry", "after-dedup-ttl"])
def test_a_redelivered_merge_changes_nothing(lua, now_ms, mode):
    t = now_ms - HOUR
    setup, link = merge_setup(t)
    apply_each(lua, setup)
    entries = lua.deliver([link])
    assert lua.apply_entries(entries).profiles == ("p1",)
    before = state_without_dedup(lua, stream=mode == "same-entry")
    seen_before = lua.dump()[keys.seen("p1")]
    assert len(lua.merges()) == 1

    if mode == "same-entry":  # the pending entry claimed and applied again
        result = lua.apply_entries(entries)
    elif mode == "new-entry":  # the client sent it again
        result = lua.apply(link)
    else:  # so late that dedup has forgotten it: LWW and union are idempotent anyway
        result = lua.apply(link, now_ms=now_ms + 2 * lua.settings.dedup_ttl_ms)

    if mode == "after-dedup-ttl":
        assert (result.applied, result.duplicates, result.profiles) == (1, 0, ("p1",))
    else:
        assert (result.applied, result.duplicates, result.profiles) == (0, 1, ())
        assert lua.metric("dedup_hits") == 1
        assert lua.dump()[keys.seen("p1")] == seen_before  # a duplicate writes nothing
    assert lua.pending() == 0
    after = state_without_dedup(lua, stream=mode == "same-entry")
    seen = keys.counter("p1", keys.SEEN)
    assert before[seen] == ("zset", [(bucket(t + i * MINUTE), 1.0) for i in range(6)], -1)
    if mode == "after-dedup-ttl":
        # Applied again, the ALIAS counts again as activity in its bucket (dedup alone
        # makes counting exactly-once): the one key besides "version" that changes.
        bumped = [*before[seen][1][:5], (bucket(t + 5 * MINUTE), 2.0)]
        assert after[seen] == ("zset", bumped, -1)
        after[seen] = before[seen]
        # The profile hash's "version" counts applies (for segment evaluation), not
        # state: an event applied again bumps it. Every other field must be as it was.
        for snap in (before, after):
            kind, fields, expiry = snap[keys.profile("p1")]
            snap[keys.profile("p1")] = (
                kind,
                {k: v for k, v in fields.items() if k != "version"},
                expiry,
            )
    assert after == before


def test_a_merge_delivered_twice_in_one_batch_equals_it_delivered_once(make_harness, now_ms):
    t = now_ms - HOUR
    setup, link = merge_setup(t)
    once, twice = make_harness(), make_harness()
    for h in (once, twice):
        apply_each(h, setup)
    assert once.apply(link).profiles == ("p1",)
    result = twice.apply(link, link)
    assert (result.applied, result.duplicates, result.profiles) == (1, 1, ("p1",))
    # Two servers: the same records, under different stream entry ids.
    assert without_entry_ids(state_without_dedup(twice, stream=False)) == without_entry_ids(
        state_without_dedup(once, stream=False)
    )
    assert twice.r.hgetall(keys.seen("p1")) == once.r.hgetall(keys.seen("p1"))
    assert twice.pending() == once.pending() == 0
