"""Exactly-once in the profile: ``cdp:profile:{cid}:seen`` (lua/apply_batch-n.lua, on fakeredis).

The record of an applied eventId lives in the profile it was applied to, and a
redelivery is recognised before anything of it is written: through the profiles its
identifiers name when it comes back (a merge moves the loser's ids into the survivor),
before any link, merge or guard-rail refusal. Pruning and the legacy partition hashes
are in test_apply_batch.py ("dedup").
"""

from __future__ import annotations

from typing import Any

import pytest

from cdp import keys
from cdp.settings import Settings
from tests.support.events import event, track
from tests.support.lua import LuaHarness

MINUTE = 60_000
HOUR = 60 * MINUTE


def alias(event_id: str, ts: int, **kw: Any) -> Any:
    return event(event_id, ts, "ALIAS", **kw)


@pytest.mark.parametrize("when", ["a later call", "the call of the merge", "the next bucket"])
def test_an_event_applied_to_a_profile_merged_away_since_is_a_duplicate(
    lua: LuaHarness, now_ms: int, when: str
) -> None:
    """e1 is applied to p2 (anonymous); the ALIAS merges p2 into p1 (the older). e1
    redelivered names p1 now: it is found in p1's seen (absorbed from p2), not counted
    twice."""
    t = now_ms - HOUR
    e1 = track("e1", t, "Clicked", anon="a1")
    lua.apply(event("e0", t, user="u1"))  # p1
    assert lua.apply(e1).profiles == ("p2",)
    assert lua.r.hkeys(keys.seen("p2")) == ["e1"]
    link = alias("link", t + MINUTE, user="u1", anon="a1")
    if when == "the call of the merge":
        result = lua.apply(link, e1)
        assert (result.applied, result.duplicates, result.profiles) == (1, 1, ("p1",))
    else:
        assert lua.apply(link).profiles == ("p1",)
        later = now_ms + lua.settings.dedup_ttl_ms if when == "the next bucket" else None
        result = lua.apply(e1, now_ms=later)
        assert (result.applied, result.duplicates, result.profiles) == (0, 1, ())
    assert lua.meta("p2") == {
        "mergedInto": "p1",
        "mergedAt": lua.meta("p2")["mergedAt"],
        "mergeEventId": "link",
    }
    assert not lua.r.exists(keys.seen("p2"))
    assert sorted(lua.r.hkeys(keys.seen("p1"))) == ["e0", "e1", "link"]
    assert lua.counter("p1", "Clicked") == {lua_bucket(t): 1}
    assert lua.metric("dedup_hits") == 1
    assert lua.r.pttl(keys.seen("p1")) > 0


def lua_bucket(ts: int) -> str:
    return str(ts // MINUTE * MINUTE).zfill(13)


def test_the_survivor_keeps_the_later_bucket_the_older_seen_from_and_the_longer_ttl(
    lua: LuaHarness, now_ms: int
) -> None:
    ttl = lua.settings.dedup_ttl_ms
    b = now_ms // ttl
    t = now_ms - HOUR
    lua.apply(event("e0", t, user="u1"), now_ms=now_ms)  # p1, bucket b
    lua.apply(track("e1", t, "A", anon="a1"), now_ms=now_ms + ttl)  # p2, bucket b+1
    lua.r.hset(keys.seen("p1"), "e1", str(b))  # as if e1 had also been recorded in p1
    lua.r.pexpire(keys.seen("p1"), 60_000)
    lua.apply(alias("link", t + MINUTE, user="u1", anon="a1"), now_ms=now_ms + ttl)
    assert lua.r.hgetall(keys.seen("p1")) == {"e0": str(b), "e1": str(b + 1), "link": str(b + 1)}
    assert (lua.meta("p1")["seenFrom"], lua.meta("p1")["seenTo"]) == (str(b), str(b + 1))
    assert lua.r.pttl(keys.seen("p1")) > 60_000  # p2's, the longer


@pytest.mark.parametrize("rail", ["email limit", "different userIds"])
def test_a_redelivered_event_once_refused_by_a_guard_rail_records_nothing_again(
    make_harness: Any, now_ms: int, rail: str
) -> None:
    """The first delivery records a refusal in cdp:merges and applies the event where
    the guard rails allow; the redelivery is a duplicate before resolve_links: no second
    refusal, no link, no new profile, no write at all but the stream and the metric."""
    lua: LuaHarness = make_harness(settings=Settings(max_emails=1))
    t = now_ms - HOUR
    if rail == "email limit":
        lua.apply(event("e0", t, user="u1", email="one@example.com"))  # p1: 1 email
        # Its new email is refused (p1 holds max-emails); applied to p1.
        again = event("e1", t + MINUTE, user="u1", email="two@example.com", traits={"k": 1})
        applied_to = "p1"
    else:
        lua.apply(event("e0", t, user="u1", anon="a1"))  # p1
        # u2 is new, a1 names p1 whose userId differs: p1 refused, e1 goes to new p2.
        again = event("e1", t + MINUTE, user="u2", anon="a1", traits={"k": 1})
        applied_to = "p2"
    assert lua.apply(again).profiles == (applied_to,)
    (refusal,) = [m for m in lua.merges() if m["status"] == "refused"]
    assert refusal["reason"] == rail
    before = {k: v for k, v in lua.dump().items() if k != lua.stream and "metrics" not in k}

    result = lua.apply(again)
    assert (result.applied, result.duplicates, result.profiles) == (0, 1, ())
    after = {k: v for k, v in lua.dump().items() if k != lua.stream and "metrics" not in k}
    assert after == before
    assert len(lua.merges()) == 1
    assert lua.cid("email:two@example.com") is None
    assert lua.r.get(keys.PROFILE_SEQ) == ("1" if rail == "email limit" else "2")


def test_refused_and_suppressed_events_and_events_without_identifiers_record_nothing(
    lua: LuaHarness, now_ms: int
) -> None:
    t = now_ms - HOUR
    lua.apply(event("e0", t, user="u1"))
    lua.r.sadd(keys.SUPPRESSED, "anon:gone")
    result = lua.apply(
        track("gone-1", t, "A", anon="gone"),  # discarded
        track("nobody", t, "A"),  # no identifier: changes nothing
    )
    assert (result.applied, result.duplicates) == (0, 0)
    assert lua.r.keys("*:seen") == [keys.seen("p1")]
    assert lua.r.hkeys(keys.seen("p1")) == ["e0"]
    # A redelivery of the suppressed one is discarded again (counted again).
    lua.apply(track("gone-1", t, "A", anon="gone"))
    assert lua.metric("suppressed") == 2
