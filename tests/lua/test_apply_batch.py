"""lua/apply_batch-n.lua on fakeredis, called through the real ``queue_apply``.

Each test delivers real stream entries to the consumer group (XADD + XREADGROUP),
applies them with one or more script calls and reads the keys back. Event times are
placed a few hours before ``now_ms``, a fixed instant (see tests/support/lua.py).
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from cdp import keys
from cdp.events import StreamEvent, iso_ms
from cdp.pipeline.apply import bucket_member, dedup_key
from tests.support.events import event, track
from tests.support.metrics import totals

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR


def bucket(ts: int) -> str:
    """Independent of the product: the 13-digit start of the minute holding ts."""
    return str(ts // MINUTE * MINUTE).zfill(13)


def cell(value: Any, ts: int, event_id: str) -> dict[str, Any]:
    return {"v": value, "ts": iso_ms(ts), "eventId": event_id}


# --------------------------------------------------------------------------- LWW


def test_newer_write_wins_and_a_four_hour_late_older_write_is_rejected(lua, make_harness, now_ms):
    """The seed's "Preventing Stale Updates" scenario, in both arrival orders."""
    t10 = now_ms - 5 * HOUR
    t11 = t10 + HOUR
    a = event("evt-a", t10, user="u123", traits={"plan": "free", "email": "old@example.com"})
    b = event("evt-b", t11, user="u123", traits={"plan": "pro", "email": "new@example.com"})
    expected = {
        "plan": cell("pro", t11, "evt-b"),
        "email": cell("new@example.com", t11, "evt-b"),
    }

    # B first, then A arrives 4 hours late: A's older values are rejected.
    assert lua.apply(b).applied == 1
    late = lua.apply(a)
    assert late.applied == 1  # the event is applied (seen, deduped); its traits lose
    cid = lua.cid("user:u123")
    assert lua.traits(cid) == expected

    # In order: the newer write replaces the older one.
    other = make_harness()
    other.apply(a)
    assert other.trait_values(other.cid("user:u123")) == {
        "plan": "free",
        "email": "old@example.com",
    }
    other.apply(b)
    assert other.traits(other.cid("user:u123")) == expected


def test_lww_is_per_trait(lua, now_ms):
    """The seed's per-trait example: a late event loses `plan`, still wins `country`."""
    t10 = now_ms - 5 * HOUR
    lua.apply(event("e1", t10, user="u123", traits={"plan": "free", "country": "US"}))
    lua.apply(event("e2", t10 + HOUR, user="u123", traits={"plan": "pro"}))
    cid = lua.cid("user:u123")
    assert lua.traits(cid) == {
        "plan": cell("pro", t10 + HOUR, "e2"),
        "country": cell("US", t10, "e1"),
    }
    # Late event at 10:30: plan (11:00) stays, country (10:00) is older and is replaced.
    lua.apply(
        event("e3", t10 + 30 * MINUTE, user="u123", traits={"plan": "basic", "country": "CA"})
    )
    assert lua.traits(cid) == {
        "plan": cell("pro", t10 + HOUR, "e2"),
        "country": cell("CA", t10 + 30 * MINUTE, "e3"),
    }


def test_trait_values_keep_their_json_type(lua, now_ms):
    traits = {"seats": 3, "ratio": 0.5, "beta": True, "tags": ["a", "b"], "addr": {"city": "Oslo"}}
    lua.apply(event("e1", now_ms - HOUR, user="u1", traits=traits))
    assert lua.trait_values(lua.cid("user:u1")) == traits


@pytest.mark.parametrize("split", [True, False], ids=["two-calls", "one-batch"])
def test_equal_ts_is_decided_by_event_id_in_every_order(make_harness, now_ms, split):
    t = now_ms - HOUR
    low = event("evt-1", t, user="u1", traits={"plan": "free", "seats": 1})
    high = event("evt-2", t, user="u1", traits={"plan": "pro"})
    results = []
    for order in ([low, high], [high, low]):
        h = make_harness()
        if split:
            for ev in order:
                h.apply(ev)
        else:
            h.apply(*order)
        results.append(h.traits(h.cid("user:u1")))
    assert results[0] == results[1]
    assert results[0] == {"plan": cell("pro", t, "evt-2"), "seats": cell(1, t, "evt-1")}


def test_json_null_is_a_tombstone_that_an_older_write_cannot_resurrect(lua, now_ms):
    t = now_ms - 2 * HOUR
    lua.apply(event("e1", t, user="u1", traits={"plan": "pro", "country": "US"}))
    lua.apply(event("e2", t + 2 * MINUTE, user="u1", traits={"plan": None}))

    profile = lua.read_profile("user:u1")
    assert "plan" not in profile["traits"]
    assert profile["traits"]["country"]["v"] == "US"
    assert profile["tombstones"] == {"plan": {"ts": iso_ms(t + 2 * MINUTE), "eventId": "e2"}}

    # An older write (between the value and the tombstone) is rejected.
    lua.apply(event("e3", t + MINUTE, user="u1", traits={"plan": "basic"}))
    profile = lua.read_profile("user:u1")
    assert "plan" not in profile["traits"]
    assert profile["tombstones"]["plan"]["eventId"] == "e2"

    # A newer write brings the trait back: the tombstone is an ordinary LWW value.
    lua.apply(event("e4", t + 3 * MINUTE, user="u1", traits={"plan": "enterprise"}))
    profile = lua.read_profile("user:u1")
    assert profile["traits"]["plan"] == cell("enterprise", t + 3 * MINUTE, "e4")
    assert profile["tombstones"] == {}


def test_first_seen_is_the_min_and_last_seen_the_max_of_event_times(lua, now_ms):
    t = now_ms - 3 * HOUR
    for i, offset in enumerate([5, 1, 9, 3]):
        lua.apply(track(f"e{i}", t + offset * MINUTE, "Clicked", user="u1"))
    meta = lua.meta(lua.cid("user:u1"))
    assert meta["firstSeen"] == iso_ms(t + MINUTE)
    assert meta["lastSeen"] == iso_ms(t + 9 * MINUTE)
    assert meta["createdAt"] == iso_ms(now_ms)


# ------------------------------------------------------------------------- dedup


def test_same_event_id_twice_in_one_batch_is_applied_once(lua, now_ms):
    ev = track("evt-1", now_ms - HOUR, "Feature Used", user="u1")
    result = lua.apply(ev, ev)
    assert (result.applied, result.duplicates) == (1, 1)
    assert result.profiles == ("p1",)
    assert lua.counter("p1", "Feature Used") == {bucket(now_ms - HOUR): 1}
    assert lua.counter("p1", "$seen") == {bucket(now_ms - HOUR): 1}
    assert lua.metric("processed") == 1
    assert lua.metric("dedup_hits") == 1
    assert lua.pending() == 0  # the duplicate's entry is acknowledged too


def test_same_event_id_in_a_later_call_changes_nothing(lua, now_ms):
    t = now_ms - HOUR
    lua.apply(track("evt-1", t, "Feature Used", user="u1"))
    first = lua.dump()
    # A redelivery, even with a different body, is recognised by its eventId.
    again = track("evt-1", t + MINUTE, "Feature Used", user="u1", traits={"plan": "pro"})
    result = lua.apply(again)
    assert (result.applied, result.duplicates, result.profiles) == (0, 1, ())
    assert lua.counter("p1", "Feature Used") == {bucket(t): 1}
    assert lua.counter("p1", "$seen") == {bucket(t): 1}
    assert lua.traits("p1") == {}
    assert lua.meta("p1")["lastSeen"] == iso_ms(t)
    assert lua.metric("processed") == 1
    assert lua.metric("dedup_hits") == 1
    # Apart from the new stream entry and the metric, no key changed.
    after = lua.dump()
    changed = {k for k in first.keys() | after.keys() if first.get(k) != after.get(k)}
    assert changed == {lua.stream, keys.metrics(lua.partition)}


def test_the_profile_records_the_id_in_its_bucket_and_expires_at_the_end_of_the_next(lua, now_ms):
    ttl = lua.settings.dedup_ttl_ms
    now = now_ms + 7 * MINUTE  # 7 minutes into a 10-minute dedup bucket
    lua.apply(track("evt-1", now_ms - HOUR, "Feature Used", user="u1"), now_ms=now)
    b = now // ttl
    key = keys.seen("p1")
    assert lua.r.hgetall(key) == {"evt-1": str(b)}
    assert (lua.meta("p1")["seenFrom"], lua.meta("p1")["seenTo"]) == (str(b), str(b))
    # Nothing goes to the partition's dedup hashes any more.
    assert not lua.r.keys("cdp:dedup:*")
    # It lives until the end of bucket b+1 of the injected clock: 13 minutes from now,
    # whatever Redis' own wall clock says (relative TTL, not an absolute PEXPIREAT).
    expire_in = (b + 2) * ttl - now
    assert expire_in == 13 * MINUTE
    assert expire_in - 5_000 < lua.r.pttl(key) <= expire_in
    # A later event of the same bucket leaves the expiry alone (no PEXPIRE per event);
    # one of the next bucket moves it to the end of the bucket after that.
    lua.r.pexpire(key, 1_000_000)
    lua.apply(track("evt-2", now_ms - HOUR, "Feature Used", user="u1"), now_ms=now + MINUTE)
    assert 990_000 < lua.r.pttl(key) <= 1_000_000
    later = now + ttl
    lua.apply(track("evt-3", now_ms - HOUR, "Feature Used", user="u1"), now_ms=later)
    assert (b + 3) * ttl - later - 5_000 < lua.r.pttl(key) <= (b + 3) * ttl - later
    assert lua.r.hgetall(key) == {"evt-1": str(b), "evt-2": str(b), "evt-3": str(b + 1)}
    assert (lua.meta("p1")["seenFrom"], lua.meta("p1")["seenTo"]) == (str(b), str(b + 1))


def test_an_id_is_honoured_through_the_next_bucket_then_pruned_when_the_profile_is_touched(
    lua, now_ms
):
    """Recorded in bucket b: a duplicate until the end of bucket b+1 (test clock); the
    first record of the profile in bucket b+2 deletes it (and only what expired), so
    the hash shrinks without a scan per event."""
    ttl = lua.settings.dedup_ttl_ms
    b = now_ms // ttl
    t = now_ms - HOUR
    start = b * ttl
    lua.apply(*[track(f"old-{i}", t, "A", user="u1") for i in range(3)], now_ms=start)
    lua.apply(track("mid-1", t, "A", user="u1"), now_ms=start + ttl)  # bucket b+1
    assert lua.r.hlen(keys.seen("p1")) == 4
    # The last instant of bucket b+1: still a duplicate.
    result = lua.apply(track("old-0", t, "A", user="u1"), now_ms=start + 2 * ttl - 1)
    assert (result.applied, result.duplicates) == (0, 1)
    # The first instant of bucket b+2: forgotten, applied again; the record prunes the
    # ids of bucket b, keeps mid-1 (b+1) and the new one (b+2).
    result = lua.apply(track("old-1", t, "A", user="u1"), now_ms=start + 2 * ttl)
    assert (result.applied, result.duplicates) == (1, 0)
    assert lua.r.hgetall(keys.seen("p1")) == {"mid-1": str(b + 1), "old-1": str(b + 2)}
    assert lua.meta("p1")["seenFrom"] == str(b + 1)
    assert lua.counter("p1", "A") == {bucket(t): 5}
    # A duplicate prunes nothing (it writes nothing at all).
    result = lua.apply(track("old-1", t, "A", user="u1"), now_ms=start + 3 * ttl)
    assert (result.applied, result.duplicates) == (0, 1)
    assert lua.r.hlen(keys.seen("p1")) == 2


def test_previous_dedup_bucket_still_dedups(lua, now_ms):
    ttl = lua.settings.dedup_ttl_ms
    ev = track("evt-1", now_ms - HOUR, "Feature Used", user="u1")
    assert lua.apply(ev, now_ms=now_ms).applied == 1
    # One dedup bucket later the id is found in the previous bucket.
    result = lua.apply(ev, now_ms=now_ms + ttl)
    assert (result.applied, result.duplicates) == (0, 1)
    assert lua.counter("p1", "Feature Used") == {bucket(now_ms - HOUR): 1}
    assert lua.counter("p1", "$seen") == {bucket(now_ms - HOUR): 1}
    # Two buckets later it is forgotten (dedup-ttl is a window, at most 2 x ttl).
    result = lua.apply(ev, now_ms=now_ms + 2 * ttl)
    assert (result.applied, result.duplicates) == (1, 0)
    assert lua.counter("p1", "Feature Used") == {bucket(now_ms - HOUR): 2}
    assert lua.counter("p1", "$seen") == {bucket(now_ms - HOUR): 2}


# ---------------------------------------------------------------------- identity


def test_unknown_identifiers_get_a_new_profile_each(lua, now_ms):
    t = now_ms - HOUR
    first = lua.apply(event("e1", t, user="u1", email=" U1@Example.COM "))
    second = lua.apply(event("e2", t, user="u2"))
    assert first.profiles == ("p1",)
    assert second.profiles == ("p2",)
    assert lua.cid("user:u1") == "p1"
    assert lua.cid("email:u1@example.com") == "p1"
    assert lua.cid("user:u2") == "p2"
    assert lua.identifiers("p1") == {"user:u1", "email:u1@example.com"}
    assert lua.identifiers("p2") == {"user:u2"}
    assert lua.r.get(keys.PROFILE_SEQ) == "2"


def test_known_identifier_resolves_to_its_profile(lua, now_ms):
    lua.apply(event("e1", now_ms - HOUR, user="u1"))
    result = lua.apply(track("e2", now_ms - HOUR, "Clicked", user="u1"))
    assert result.profiles == ("p1",)
    assert lua.r.get(keys.PROFILE_SEQ) == "1"


def test_identify_with_several_identifiers_links_them_all(lua, now_ms):
    result = lua.apply(
        event("e1", now_ms - HOUR, user="u1", anon="a1", email="Foo@Example.com", traits={})
    )
    (cid,) = result.profiles
    expected = {"user:u1", "anon:a1", "email:foo@example.com"}
    assert lua.identifiers(cid) == expected
    assert {lua.cid(i) for i in expected} == {cid}


def test_identify_adds_new_identifiers_to_the_known_profile(lua, now_ms):
    lua.apply(event("e1", now_ms - HOUR, user="u1"))
    lua.apply(event("e2", now_ms - HOUR, user="u1", email="new@example.com"))
    assert lua.identifiers("p1") == {"user:u1", "email:new@example.com"}
    assert lua.cid("email:new@example.com") == "p1"


def test_alias_links_an_anonymous_id_to_the_existing_user_profile(lua, now_ms):
    t = now_ms - HOUR
    lua.apply(event("e1", t, user="user-123", traits={"plan": "pro"}))
    result = lua.apply(event("e2", t + MINUTE, "ALIAS", anon="anon-456", user="user-123"))
    assert result.profiles == ("p1",)
    assert lua.cid("anon:anon-456") == "p1"
    assert lua.identifiers("p1") == {"user:user-123", "anon:anon-456"}
    assert lua.r.get(keys.PROFILE_SEQ) == "1"
    # Later anonymous activity lands on the user's profile.
    lua.apply(track("e3", t + 2 * MINUTE, "Clicked", anon="anon-456"))
    assert lua.counter("p1", "Clicked") == {bucket(t + 2 * MINUTE): 1}
    # Every event counts as activity, the IDENTIFY and the ALIAS included.
    assert lua.counter("p1", "$seen") == {
        bucket(t): 1,
        bucket(t + MINUTE): 1,
        bucket(t + 2 * MINUTE): 1,
    }


def test_alias_links_a_user_id_to_the_existing_anonymous_profile(lua, now_ms):
    t = now_ms - HOUR
    lua.apply(track("e1", t, "Clicked", anon="anon-1"))
    lua.apply(event("e2", t + MINUTE, "ALIAS", anon="anon-1", user="u1"))
    assert lua.cid("user:u1") == "p1"
    assert lua.identifiers("p1") == {"anon:anon-1", "user:u1"}


def test_event_meeting_two_profiles_applies_to_the_oldest_and_loses_nothing(lua, now_ms):
    """DESIGN "Identity resolution": the oldest profile survives and holds both."""
    t = now_ms - HOUR
    lua.apply(event("e1", t, anon="a2", traits={"plan": "free", "country": "US"}))  # p1
    lua.apply(track("e2", t, "Clicked", anon="a2"))
    lua.apply(event("e3", t + 30_000, user="u1", traits={"plan": "pro"}))  # p2
    lua.apply(track("e4", t + 2 * MINUTE, "Clicked", user="u1"))
    assert (lua.cid("anon:a2"), lua.cid("user:u1")) == ("p1", "p2")

    meet = event(
        "e5", t + MINUTE, user="u1", anon="a2", email="both@example.com", traits={"seats": 2}
    )
    result = lua.apply(meet)
    assert result.profiles == ("p1",)
    # Every identifier of both profiles, and the event's new one, resolves to p1.
    ids = {"anon:a2", "user:u1", "email:both@example.com"}
    assert {i: lua.cid(i) for i in ids} == dict.fromkeys(ids, "p1")
    assert lua.identifiers("p1") == ids
    # Traits by LWW over both profiles and the event; counters summed; seen widened.
    assert lua.traits("p1") == {
        "plan": cell("pro", t + 30_000, "e3"),
        "country": cell("US", t, "e1"),
        "seats": cell(2, t + MINUTE, "e5"),
    }
    assert lua.counter("p1", "Clicked") == {bucket(t): 1, bucket(t + 2 * MINUTE): 1}
    assert lua.counter("p1", "$track") == {bucket(t): 1, bucket(t + 2 * MINUTE): 1}
    # e1, e2, e3 (30 s later), then the meeting event e5 and e4.
    assert lua.counter("p1", "$seen") == {
        bucket(t): 3,
        bucket(t + MINUTE): 1,
        bucket(t + 2 * MINUTE): 1,
    }
    assert (lua.meta("p1")["firstSeen"], lua.meta("p1")["lastSeen"]) == (
        iso_ms(t),
        iso_ms(t + 2 * MINUTE),
    )
    assert lua.r.get(keys.PROFILE_SEQ) == "2"  # no third profile
    (merge,) = lua.merges()
    assert merge["survivor"] == "p1"
    assert "p2" in merge.values()
    assert (merge["eventId"], merge["ts"]) == ("e5", iso_ms(t + MINUTE))


def test_profiles_of_two_different_user_ids_are_not_merged(lua, now_ms):
    """Guard rail: the link is recorded as refused, the event applies to its userId's."""
    t = now_ms - HOUR
    lua.apply(event("e1", t, user="u1", traits={"plan": "pro"}))  # p1
    lua.apply(event("e2", t, user="u2", email="shared@example.com", traits={"plan": "free"}))
    p2_before = {k: v for k, v in lua.dump().items() if "{p2}" in k}

    result = lua.apply(event("e3", t + MINUTE, user="u1", email="shared@example.com"))
    assert result.profiles == ("p1",)
    assert lua.cid("user:u1") == "p1"
    assert lua.cid("email:shared@example.com") == "p2"
    assert lua.cid("user:u2") == "p2"
    assert lua.identifiers("p1") == {"user:u1"}
    assert lua.meta("p1")["lastSeen"] == iso_ms(t + MINUTE)
    assert {k: v for k, v in lua.dump().items() if "{p2}" in k} == p2_before
    (record,) = lua.merges()
    assert record["status"] == "refused"
    assert record["eventId"] == "e3"


def test_oldest_profile_is_chosen_by_number_not_by_text(lua, now_ms):
    """p9 is older than p10 although "p10" < "p9" as text."""
    t = now_ms - HOUR
    creators = [event(f"e{i:02d}", t, user=f"u{i}") for i in range(1, 9)]
    creators.append(event("e09", t, anon="a9"))
    creators.append(event("e10", t, user="u10"))
    assert lua.apply(*creators).profiles == tuple(f"p{i}" for i in range(1, 11))
    result = lua.apply(event("e11", t, user="u10", anon="a9", traits={"x": 1}))
    assert result.profiles == ("p9",)
    assert lua.trait_values("p9") == {"x": 1}
    assert lua.traits("p10") == {}
    assert lua.merges()[0]["survivor"] == "p9"


def test_event_without_usable_identifiers_creates_nothing_but_is_acknowledged(lua, now_ms):
    # Only blocked placeholder values: typed_identifiers leaves nothing.
    ev = event("e1", now_ms - HOUR, user="null", anon="undefined", email="  ")
    assert ev.identifiers() == []
    result = lua.apply(ev)
    assert (result.applied, result.duplicates, result.profiles) == (0, 0, ())
    assert lua.r.get(keys.PROFILE_SEQ) is None
    assert lua.profile_ids() == []
    assert lua.pending() == 0


# ---------------------------------------------------------------------- counters


def test_track_counts_its_name_and_all_tracks_in_the_bucket_of_event_time(lua, now_ms):
    t = now_ms - 3 * HOUR + 17_000  # 17 s into a minute
    lua.apply(
        track("e1", t, "Feature Used", user="u1"),
        track("e2", t + 20_000, "Feature Used", user="u1"),
        track("e3", t + 30_000, "Signup", user="u1"),
    )
    assert bucket_member(t, MINUTE) == bucket(t)  # the product's bucket is the minute's start
    assert lua.counter("p1", "Feature Used") == {bucket(t): 2}
    assert lua.counter("p1", "Signup") == {bucket(t): 1}
    assert lua.counter("p1", "$track") == {bucket(t): 3}
    assert lua.counter("p1", "$seen") == {bucket(t): 3}
    assert lua.counter_names("p1") == {"Feature Used", "Signup", "$track", "$seen"}


def test_late_event_counts_in_its_own_older_bucket(lua, now_ms):
    t = now_ms - HOUR
    lua.apply(track("e1", t, "Feature Used", user="u1"))
    lua.apply(track("e2", t - 5 * MINUTE, "Feature Used", user="u1"))  # arrives later
    expected = {bucket(t): 1, bucket(t - 5 * MINUTE): 1}
    assert lua.counter("p1", "Feature Used") == expected
    assert lua.counter("p1", "$track") == expected
    assert lua.counter("p1", "$seen") == expected


def test_identify_and_alias_count_only_as_activity(lua, now_ms):
    t = now_ms - HOUR
    lua.apply(event("e1", t, user="u1", traits={"plan": "pro"}))
    lua.apply(event("e2", t, "ALIAS", user="u1", anon="a1"))
    assert lua.counter_names("p1") == {"$seen"}
    assert lua.r.keys(keys.counter("p1", "*")) == [keys.counter("p1", "$seen")]
    assert lua.counter("p1", "$seen") == {bucket(t): 2}
    lua.apply(track("e3", t, "Signup", user="u1"))
    assert lua.counter("p1", "$track") == {bucket(t): 1}
    assert lua.counter("p1", "$seen") == {bucket(t): 3}
    assert lua.counter_names("p1") == {"$seen", "Signup", "$track"}


def test_events_before_the_counter_cutoff_are_not_counted(lua, now_ms):
    window = lua.settings.counter_window_ms
    assert window == DAY
    at_cutoff = now_ms - window  # minute-aligned: the cutoff bucket itself counts
    result = lua.apply(
        track("e1", at_cutoff, "Feature Used", user="u1"),
        track("e2", at_cutoff - 1, "Feature Used", user="u1"),
    )
    assert result.applied == 2  # both applied (firstSeen...), only one counted
    assert lua.counter("p1", "Feature Used") == {bucket(at_cutoff): 1}
    assert lua.counter("p1", "$track") == {bucket(at_cutoff): 1}
    assert lua.counter("p1", "$seen") == {bucket(at_cutoff): 1}
    assert lua.meta("p1")["firstSeen"] == iso_ms(at_cutoff - 1)


def test_buckets_older_than_the_cutoff_are_pruned(lua, now_ms):
    old = now_ms - HOUR
    lua.apply(track("e1", old, "Feature Used", user="u1"))
    later = now_ms + DAY  # the cutoff is now past the old bucket
    lua.apply(track("e2", later - MINUTE, "Feature Used", user="u1"), now_ms=later)
    assert lua.counter("p1", "Feature Used") == {bucket(later - MINUTE): 1}
    assert lua.counter("p1", "$track") == {bucket(later - MINUTE): 1}
    assert lua.counter("p1", "$seen") == {bucket(later - MINUTE): 1}


def test_buckets_older_than_the_cutoff_are_pruned_whatever_their_counts(lua, now_ms):
    old = now_ms - HOUR
    lua.apply(*[track(f"e{i}", old, "Feature Used", user="u1") for i in range(3)])
    assert lua.counter("p1", "Feature Used") == {bucket(old): 3}
    assert lua.counter("p1", "$seen") == {bucket(old): 3}
    later = now_ms + DAY
    lua.apply(track("e9", later - MINUTE, "Feature Used", user="u1"), now_ms=later)
    assert lua.counter("p1", "Feature Used") == {bucket(later - MINUTE): 1}
    assert lua.counter("p1", "$seen") == {bucket(later - MINUTE): 1}


# ----------------------------------------------------------------- ack and lease


def test_batch_entries_are_acknowledged(lua, now_ms):
    t = now_ms - HOUR
    ev = track("e2", t, "Clicked", user="u2")
    entries = lua.deliver([event("e1", t, user="u1"), ev, ev, event("e3", t, anon="a3")])
    assert lua.pending() == 4
    result = lua.apply_entries(entries)
    assert (result.applied, result.duplicates) == (3, 1)
    assert lua.pending() == 0


def test_only_the_batch_entries_are_acknowledged(lua, now_ms):
    t = now_ms - HOUR
    entries = lua.deliver([event(f"e{i}", t, user="u1") for i in range(3)])
    lua.apply_entries(entries[:2])
    pending = lua.r.xpending_range(lua.stream, keys.GROUP, "-", "+", 10)
    assert [p["message_id"] for p in pending] == [entries[2][0]]


@pytest.mark.parametrize("holder", ["w2", None], ids=["other-worker", "no-lease"])
def test_apply_without_the_lease_returns_lease_lost_and_changes_nothing(lua, now_ms, holder):
    if holder is None:
        lua.r.delete(keys.lease(lua.partition))
    else:
        lua.r.set(keys.lease(lua.partition), holder)
    lua.apply(event("e0", now_ms - 2 * HOUR, user="u0"), worker_id="")  # some prior state
    t = now_ms - HOUR
    entries = lua.deliver(
        [track("e1", t, "Clicked", user="u1", traits={"plan": "pro"}), event("e2", t, user="u0")]
    )
    before = lua.dump()
    result = lua.apply_entries(entries, worker_id="w1")
    assert result.lease_lost
    assert (result.applied, result.profiles) == (0, ())
    assert lua.dump() == before
    assert lua.pending() == 2
    # The holder (or, with no lease, an unfenced call) applies the same entries.
    assert lua.apply_entries(entries, worker_id=holder or "").applied == 2
    assert lua.pending() == 0


def test_the_lease_holder_applies(lua, now_ms):
    assert lua.r.get(keys.lease(lua.partition)) == "w1"
    result = lua.apply(event("e1", now_ms - HOUR, user="u1"), worker_id="w1")
    assert not result.lease_lost
    assert result.applied == 1


# ------------------------------------------------------------------- convergence


def convergence_events(t: int) -> list[StreamEvent]:
    """Events of three people, with duplicates, equal timestamps and a tombstone.

    Every event of one person carries that person's hub identifier (user:alice,
    user:bob, anon:anon-9), so no order can make an event meet two profiles.
    """
    m = MINUTE
    a1 = event(
        "a1", t, user="alice", email="Alice@Example.com", traits={"plan": "free", "country": "US"}
    )
    a2 = event("a2", t + m, user="alice", traits={"plan": "pro"})
    a3 = event("a3", t + m, user="alice", traits={"plan": "basic", "seats": 3})  # a3 > a2
    a4 = event("a4", t + 3 * m, user="alice", traits={"country": None})  # tombstone
    a5 = event("a5", t + 2 * m, user="alice", anon="anon-1", traits={"country": "FR", "seats": 5})
    a6 = track("a6", t + 30_000, "Feature Used", user="alice")
    a7 = track("a7", t + 10 * m, "Feature Used", user="alice", anon="anon-1")
    a8 = event("a8", t + 20 * m, "ALIAS", user="alice", anon="anon-2")
    b1 = track("b1", t, "Signup", user="bob", anon="null")  # blocked anonymousId
    b2 = event("b2", t + 10_000, user="bob", traits={"plan": "pro"})
    b3 = track("b3", t - 2 * HOUR, "Signup", user="bob")
    b4 = event("b4", t + 10_000, user="bob", traits={"plan": "team"})  # equal ts, b4 > b2
    c1 = track("c1", t + 5 * m, "Page Viewed", anon="anon-9")
    c2 = track("c2", t + 5 * m, "Page Viewed", anon="anon-9", email="C@Example.com")
    return [a1, a2, a3, a4, a5, a6, a7, a8, b1, b2, b3, b4, c1, c2, a6, b2, c1]


def snapshot(h) -> dict[str, Any]:
    """State keyed by identifier sets (canonical ids depend on arrival order)."""
    profiles = {}
    for cid in h.profile_ids():
        ids = frozenset(h.identifiers(cid))
        assert ids not in profiles
        profiles[ids] = {
            "traits": h.r.hgetall(keys.traits(cid)),
            "meta": h.meta(cid),
            "counters": {name: h.counter(cid, name) for name in h.counter_names(cid)},
        }
    index = {
        key: frozenset(h.identifiers(h.r.get(key)))
        for key in h.r.scan_iter(match=keys.IDENTIFIER_PREFIX + "*")
    }
    return {
        "profiles": profiles,
        "index": index,
        "metrics": totals(h.r),
        "merges": h.merges(),
        "pending": h.pending(),
    }


def test_every_order_of_the_same_events_converges(make_harness, now_ms):
    t = now_ms - 3 * HOUR
    events = convergence_events(t)
    rng = random.Random(20251004)
    snapshots = []
    for _ in range(20):
        order = rng.sample(events, len(events))
        h = make_harness()
        entries = h.deliver(order)
        i = 0
        while i < len(entries):  # random batch boundaries, one script call each
            size = rng.randint(1, 5)
            h.apply_entries(entries[i : i + size])
            i += size
        snapshots.append(snapshot(h))

    first = snapshots[0]
    for other in snapshots[1:]:
        assert other == first

    # ... and the state they agree on is the expected one.
    alice = frozenset({"user:alice", "email:alice@example.com", "anon:anon-1", "anon:anon-2"})
    bob = frozenset({"user:bob"})
    nine = frozenset({"anon:anon-9", "email:c@example.com"})
    assert set(first["profiles"]) == {alice, bob, nine}
    a = first["profiles"][alice]
    assert (a["meta"]["firstSeen"], a["meta"]["lastSeen"]) == (
        iso_ms(t),
        iso_ms(t + 20 * MINUTE),
    )
    assert a["counters"]["Feature Used"] == {bucket(t): 1, bucket(t + 10 * MINUTE): 1}
    # Every applied event once (a6's redelivery is a duplicate): a1 a6, a2 a3, a5, a4, a7, a8.
    assert a["counters"]["$seen"] == {
        bucket(t): 2,
        bucket(t + MINUTE): 2,
        bucket(t + 2 * MINUTE): 1,
        bucket(t + 3 * MINUTE): 1,
        bucket(t + 10 * MINUTE): 1,
        bucket(t + 20 * MINUTE): 1,
    }
    assert set(a["counters"]) == {"Feature Used", "$track", "$seen"}
    assert '"v":"basic"' in a["traits"]["plan"] and '"eventId":"a3"' in a["traits"]["plan"]
    assert '"v":5' in a["traits"]["seats"]
    assert '"v":null' in a["traits"]["country"] and '"eventId":"a4"' in a["traits"]["country"]
    b = first["profiles"][bob]
    assert '"v":"team"' in b["traits"]["plan"]
    assert b["counters"]["$track"] == {bucket(t - 2 * HOUR): 1, bucket(t): 1}
    assert b["counters"]["$seen"] == {bucket(t - 2 * HOUR): 1, bucket(t): 3}  # b3; b1 b2 b4
    assert set(b["counters"]) == {"Signup", "$track", "$seen"}
    assert first["profiles"][nine]["counters"]["Page Viewed"] == {bucket(t + 5 * MINUTE): 2}
    assert first["profiles"][nine]["counters"]["$seen"] == {bucket(t + 5 * MINUTE): 2}
    assert first["metrics"] == {"processed": 14, "dedup_hits": 3}
    assert first["merges"] == []
    assert first["pending"] == 0
    assert len(first["index"]) == 7


def test_only_non_empty_stream_ids_are_acknowledged_and_a_repeated_one_is_harmless(lua, now_ms):
    """Several events of one stream entry: only the one naming the entry acknowledges it."""
    (first, e1), (second, e2) = lua.deliver(
        [
            track("sid-1", now_ms - HOUR, "A", user="u1"),
            track("sid-2", now_ms - HOUR + 1, "A", user="u1"),
        ]
    )
    result = lua.apply_entries([("", e1), (first, e2)])
    assert (result.applied, lua.pending()) == (2, 1)
    e3 = track("sid-3", now_ms - HOUR + 2, "A", user="u1")
    result = lua.apply_entries([(second, e2), (second, e3)])  # e2 again: a duplicate
    assert (result.applied, result.duplicates, lua.pending()) == (1, 1, 0)


def test_the_unsharded_dedup_hashes_of_before_an_upgrade_still_dedup(lua, now_ms):
    """An id recorded by an older layout (cdp:dedup:{pN}:<bucket>, no shard) in the
    current or previous bucket is still a duplicate; nothing is written there."""
    ttl = lua.settings.dedup_ttl_ms
    b = now_ms // ttl
    lua.r.hset(keys.dedup(lua.partition, b), "old-cur", "1")
    lua.r.hset(keys.dedup(lua.partition, b - 1), "old-prev", "1")
    result = lua.apply(
        track("old-cur", now_ms - HOUR, "A", user="u1"),
        track("old-prev", now_ms - HOUR, "A", user="u1"),
        track("new-1", now_ms - HOUR, "A", user="u1"),
    )
    assert (result.applied, result.duplicates) == (1, 2)
    assert lua.r.hlen(keys.dedup(lua.partition, b)) == 1
    assert lua.r.keys("cdp:dedup:*:*:*") == []
    assert lua.r.hgetall(keys.seen("p1")) == {"new-1": str(b)}


def test_the_partition_dedup_shards_of_before_dedup_moved_into_the_profile_still_dedup(lua, now_ms):
    """An id recorded in a partition dedup shard (cdp:dedup:{pN}:<bucket>:<shard>, the
    layout before the profiles' seen) in the current or previous bucket is still a
    duplicate after the upgrade: no second count; those hashes are never written."""
    ttl = lua.settings.dedup_ttl_ms
    b = now_ms // ttl
    t = now_ms - HOUR
    assert lua.apply(track("before-0", t, "A", user="u1")).applied == 1  # the profile
    lua.r.delete(keys.seen("p1"))  # as if it had been applied by the older layout
    lua.r.hset(dedup_key(lua.partition, b, "before-0", lua.settings), "before-0", "1")
    lua.r.hset(dedup_key(lua.partition, b - 1, "before-1", lua.settings), "before-1", "1")
    lua.r.hset(dedup_key(lua.partition, b - 2, "expired", lua.settings), "expired", "1")
    shards = sorted(lua.r.keys("cdp:dedup:*"))
    result = lua.apply(
        track("before-0", t, "A", user="u1"),
        track("before-1", t, "A", user="u1"),
        track("expired", t, "A", user="u1"),  # two buckets old: forgotten
        track("after-0", t, "A", user="u1"),
    )
    assert (result.applied, result.duplicates) == (2, 2)
    assert lua.counter("p1", "A") == {bucket(t): 3}
    assert sorted(lua.r.keys("cdp:dedup:*")) == shards
    assert all(lua.r.hlen(k) == 1 for k in shards)
    assert lua.r.hgetall(keys.seen("p1")) == {"expired": str(b), "after-0": str(b)}
