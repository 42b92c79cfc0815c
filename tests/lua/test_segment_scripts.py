"""lua/profile_view-n.lua, lua/segment_transition-n.lua and the erasure job (cdp.erasure,
lua/erase_profile-n.lua) on fakeredis.

The scripts are called through ``cdp.scripts.Scripts`` (EVALSHA, the typed calls
``cdp.segments.engine`` and ``cdp.api.erasure`` make, replies decoded); the profiles they
read are built by the real apply script (the ``lua`` harness, tests/support/lua.py). Every test
asserts the exact keys the script leaves behind.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from cdp import erasure, keys
from cdp.events import iso_ms
from cdp.scripts import ProfileRow, TransitionRequest
from cdp.segments.engine import Snapshot, parse_view
from cdp.segments.rules import ProfileView
from tests.support.events import event, track
from tests.support.lua import LuaHarness
from tests.support.segments import full_view

SECOND = 1_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE

_encode = msgspec.json.Encoder().encode  # as cdp.scripts.calls encodes JSON arguments


def text(value: Any) -> Any:
    """A script reply with every bulk string decoded (nested arrays and rows included)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [text(v) for v in value]
    if isinstance(value, ProfileRow):
        return ProfileRow(*text(list(msgspec.structs.astuple(value))))
    return value


def bucket(ts: int) -> str:
    """Independent of the product: the 13-digit start of the minute holding ts."""
    return str(ts // MINUTE * MINUTE).zfill(13)


def cell(value: Any, ts: int, event_id: str) -> dict[str, Any]:
    return {"v": value, "ts": iso_ms(ts), "eventId": event_id}


def view(lua: LuaHarness, *cids: str) -> list[ProfileRow]:
    """profile_view of everything (bulk strings as bytes)."""
    return lua.run(full_view(lua.redis, cids))


def version(lua: LuaHarness, cid: str) -> str:
    return lua.r.hget(keys.profile(cid), "version")


def evaluated(lua: LuaHarness, cid: str) -> str:
    """The profile's evaluatedMs ("" before its first accepted evaluation)."""
    return lua.r.hget(keys.profile(cid), "evaluatedMs") or ""


def evaluations(lua: LuaHarness, cid: str) -> str:
    """The profile's count of accepted evaluations ("" before the first one)."""
    return lua.r.hget(keys.profile(cid), "evaluations") or ""


def request(
    lua: LuaHarness,
    cid: str,
    wanted: dict[str, bool],
    *,
    at: int,
    due: int | str = "",
    who: dict[str, str] | None = None,
    drop: list[str] | None = None,
    read_version: str | None = None,
    read_evaluations: str | None = None,
) -> TransitionRequest:
    """One profile's evaluation as the engine sends it. What the evaluation read (version,
    evaluations count) defaults to what the profile holds now."""
    return TransitionRequest(
        cid=cid,
        version=(version(lua, cid) or "") if read_version is None else read_version,
        at_iso=iso_ms(at),
        at_ms=at,
        due_ms=None if due == "" else int(due),
        wanted=wanted,
        who={"userId": "u1"} if who is None else who,
        dropped=drop or [],
        read_evaluations=evaluations(lua, cid) if read_evaluations is None else read_evaluations,
    )


def transitions(
    lua: LuaHarness, requests: list[TransitionRequest], *, definitions: str | None = None
) -> list[list[str]]:
    """segment_transition as the engine calls it, for several profiles in one call; the
    reply as [status, eventId...] per profile. The definitions version defaults to the
    current one."""
    replies = lua.run(
        lua.scripts.segment_transition(
            requests,
            events_maxlen=lua.settings.segment_events_maxlen,
            definitions_version=(
                (lua.r.get(keys.SEGMENTS_VERSION) or "") if definitions is None else definitions
            ),
        )
    )
    return [[reply.status, *reply.event_ids] for reply in replies]


def transition(
    lua: LuaHarness,
    cid: str,
    wanted: dict[str, bool],
    *,
    definitions: str | None = None,
    **read: Any,
) -> list[str]:
    """segment_transition for one profile (``request``'s arguments)."""
    (reply,) = transitions(lua, [request(lua, cid, wanted, **read)], definitions=definitions)
    return reply


def erase(lua: LuaHarness, cid: str, *, at: int, job: str = "job-1") -> list[Any]:
    """The erasure job (``cdp.erasure``) as cdp.api.erasure starts it, run to its end; the
    outcome as ["OK", identifiers, exits] or ["GONE"] (then abandoned, as the API does)."""

    async def run() -> list[Any]:
        await erasure.start(lua.redis, lua.scripts, lua.settings, job, cid, at, "test")
        result, done = await erasure.run(lua.redis, lua.scripts, lua.settings, job, "test")
        if result == "gone":
            await erasure.abandon(lua.redis, job, "gone")
            return ["GONE"]
        assert result == "done" and done is not None, result
        return ["OK", done.identifiers, done.exits]

    return lua.run(run())


def without_jobs(dump: dict[str, Any]) -> dict[str, Any]:
    """A dump without the erasure jobs' own keys."""
    return {
        k: v for k, v in dump.items() if not k.startswith("cdp:job:") and k != keys.ERASURES_OPEN
    }


def states(lua: LuaHarness, cid: str) -> dict[str, dict[str, Any]]:
    return {k: json.loads(v) for k, v in lua.r.hgetall(keys.profile_segments(cid)).items()}


def members(lua: LuaHarness, name: str) -> list[tuple[str, float]]:
    return lua.r.zrange(keys.segment_members(name), 0, -1, withscores=True)


def segment_events(lua: LuaHarness) -> list[dict[str, str]]:
    return [fields for _, fields in lua.r.xrange(keys.SEGMENT_EVENTS)]


def due(lua: LuaHarness, cid: str) -> float | None:
    return lua.r.zscore(keys.SEGMENTS_DUE, cid)


def seg_event(
    name: str, cid: str, n: int, transition: str, at: int, who: dict[str, str], **props: str
) -> dict[str, Any]:
    """The stream entry of one transition, ``e`` parsed (the README's seed format)."""
    event_id = f"seg:{name}:{cid}:{n}"
    return {
        "eventId": event_id,
        "segment": name,
        "transition": transition,
        "canonicalId": cid,
        "e": {
            "eventId": event_id,
            "ts": iso_ms(at),
            "payload": {
                "type": "TRACK",
                "name": f"{name} {transition}",
                **who,
                "properties": {
                    "canonicalId": cid,
                    "segment": name,
                    "transition": transition,
                    **props,
                },
            },
        },
    }


def parsed(fields: dict[str, str]) -> dict[str, Any]:
    return fields | {"e": json.loads(fields["e"])}


def profile_keys(lua: LuaHarness, cid: str) -> set[str]:
    return set(lua.r.scan_iter(match=keys.profile(cid) + "*"))


def two_profiles_merged(lua: LuaHarness, t: int) -> None:
    """p1 (user:u1) and p2 (anon:a2), then an ALIAS merges p2 into p1."""
    lua.apply(event("m1", t, user="u1", traits={"plan": "pro"}))
    lua.apply(track("m2", t, "Clicked", anon="a2"))
    lua.apply(event("m3", t + MINUTE, "ALIAS", user="u1", anon="a2"))
    assert lua.meta("p2") == {
        "mergedInto": "p1",
        "mergedAt": iso_ms(t + MINUTE),
        "mergeEventId": "m3",
    }


# ------------------------------------------------------------------ profile_view


def test_profile_view_reads_everything_the_rules_need(lua, now_ms):
    t0 = now_ms - 3 * HOUR  # minute-aligned
    lua.apply(
        event("e1", t0, user="u1", email="Ann@Example.com", traits={"plan": "pro", "seats": 3}),
        track("e2", t0 + 10 * SECOND, "Clicked", user="u1"),  # 10 s later: not a return
        track("e2b", t0 + 20 * SECOND, "Clicked", user="u1"),
        track("e3", t0 + 5 * MINUTE, "Clicked", user="u1"),  # 4 idle buckets: a return
    )
    assert version(lua, "p1") == "4"
    assert transition(lua, "p1", {"vip": True}, at=now_ms, due=now_ms + HOUR) == [
        "OK",
        "seg:vip:p1:1",
    ]

    raw = view(lua, "p1")
    (row,) = text(raw)
    assert row.evaluated_ms == str(now_ms)  # the transition's evaluation time
    assert row.evaluations == "1"  # one accepted evaluation
    assert (row.version, row.merged_into, row.user, row.last_seen_ms) == (
        "4",
        None,
        "user:u1",
        f"{t0 + 5 * MINUTE:013d}",
    )
    assert row.first_seen == iso_ms(t0)
    traits, counters, segs = row.traits, row.counters, row.segments
    assert len(traits) == 4
    assert {traits[i]: json.loads(traits[i + 1]) for i in range(0, len(traits), 2)} == {
        "plan": cell("pro", t0, "e1"),
        "seats": cell(3, t0, "e1"),
    }
    # name, [bucket, count, ...] in ZRANGE order (by count, then bucket).
    clicked = [bucket(t0 + 5 * MINUTE), "1", bucket(t0), "2"]
    assert len(counters) == 6
    assert dict(zip(counters[::2], counters[1::2], strict=True)) == {
        "Clicked": clicked,
        "$track": clicked,
        "$seen": [bucket(t0 + 5 * MINUTE), "1", bucket(t0), "3"],  # the IDENTIFY too
    }
    assert len(segs) == 2
    assert segs[0] == "vip"
    assert json.loads(segs[1]) == {"in": True, "n": 1, "since": iso_ms(now_ms)}
    assert row.first_identifier is None  # a userId: no fallback identifier
    assert row.outbox == 0  # one Redis, batch protocol: nothing through the outbox
    assert due(lua, "p1") == now_ms + HOUR

    # ... and the engine makes of that row exactly what the rules need.
    counter = {t0 + 5 * MINUTE: 1, t0: 2}
    # returns_of: the $seen buckets after a gap, the gap start to start (exact to a
    # bucket); the first bucket holds firstSeen, so no return before it.
    assert parse_view("p1", raw[0], lua.settings.counter_bucket_ms, due(lua, "p1")) == Snapshot(
        cid="p1",
        version="4",
        view=ProfileView(
            traits={"plan": "pro", "seats": 3},
            counters={"Clicked": counter, "$track": counter, "$seen": {t0 + 5 * MINUTE: 1, t0: 3}},
            last_seen_ms=t0 + 5 * MINUTE,
            returns=((t0 + 5 * MINUTE, 5 * MINUTE),),
            bucket_ms=60_000,
        ),
        who={"userId": "u1"},
        memberships={"vip": True},
        due=now_ms + HOUR,
        evaluated=str(now_ms),
        evaluations="1",
    )


def test_profile_view_due_is_the_apply_scripts_mark_until_evaluated(lua, now_ms):
    lua.apply(event("e1", now_ms - HOUR, user="u1"))
    (row,) = text(view(lua, "p1"))
    assert row.version == "1"
    assert due(lua, "p1") == now_ms + lua.settings.lease_ttl_ms  # dirtyDue
    assert row.first_seen == iso_ms(now_ms - HOUR)
    # No traits, no memberships; the IDENTIFY counts as activity only.
    assert (row.traits, row.counters, row.segments) == (
        [],
        ["$seen", [bucket(now_ms - HOUR), "1"]],
        [],
    )


def test_profile_view_without_user_id_gives_the_first_identifier(lua, now_ms):
    lua.apply(track("e1", now_ms - HOUR, "Clicked", anon="a9", email="Zed@Example.com"))
    (row,) = text(view(lua, "p1"))
    assert row.user is None
    assert row.first_identifier == "anon:a9"  # sorted: anon: < email:
    snap = parse_view("p1", view(lua, "p1")[0], lua.settings.counter_bucket_ms)
    assert snap is not None and snap.who == {"anonymousId": "a9"}


def test_profile_view_of_a_merged_away_and_an_unknown_id(lua, now_ms):
    two_profiles_merged(lua, now_ms - HOUR)
    live, merged, unknown = text(view(lua, "p1", "p2", "p99"))
    assert live.version == "3"  # created, its event, the merge's bump + the ALIAS itself
    assert live.merged_into is None
    assert live.first_seen == iso_ms(now_ms - HOUR)
    empty = [None, None, None, None, None, [], [], [], None, None, None, 0]
    assert merged == ProfileRow(*empty[:1], "p1", *empty[2:])
    assert unknown == ProfileRow(*empty)
    for cid, row in (("p2", merged), ("p99", unknown)):
        assert parse_view(cid, row, lua.settings.counter_bucket_ms) is None


# ------------------------------------------------------------ segment_transition


def test_enter_writes_the_state_the_members_the_event_and_the_due_time(lua, now_ms):
    lua.apply(event("e0", now_ms - HOUR, user="u0"))  # p1, so that the score is not 1
    lua.apply(event("e1", now_ms - HOUR, user="u1"))
    assert lua.cid("user:u1") == "p2"
    before = version(lua, "p2")

    reply = transition(lua, "p2", {"vip": True}, at=now_ms, due=now_ms + HOUR)
    assert reply == ["OK", "seg:vip:p2:1"]
    assert states(lua, "p2") == {"vip": {"in": True, "n": 1, "since": iso_ms(now_ms)}}
    assert members(lua, "vip") == [("p2", 2.0)]
    assert [parsed(f) for f in segment_events(lua)] == [
        seg_event("vip", "p2", 1, "ENTER", now_ms, {"userId": "u1"})
    ]
    assert due(lua, "p2") == now_ms + HOUR
    assert version(lua, "p2") == before  # a transition is not a profile change
    assert states(lua, "p1") == {}


def test_the_same_wish_again_emits_nothing_and_exit_continues_the_count(lua, now_ms):
    lua.apply(event("e1", now_ms - HOUR, user="u1"))
    assert transition(lua, "p1", {"vip": True}, at=now_ms, due=now_ms + HOUR) == [
        "OK",
        "seg:vip:p1:1",
    ]
    snapshot = lua.dump()

    # A retry, or a second evaluator with the same answer: nothing changes but the time
    # of the last accepted evaluation and their count.
    assert transition(lua, "p1", {"vip": True}, at=now_ms + 1, due=now_ms + HOUR) == ["OK"]
    assert (evaluated(lua, "p1"), evaluations(lua, "p1")) == (str(now_ms + 1), "2")
    lua.r.hset(keys.profile("p1"), mapping={"evaluatedMs": now_ms, "evaluations": 1})
    assert lua.dump() == snapshot

    later = now_ms + 10 * MINUTE
    assert transition(lua, "p1", {"vip": False}, at=later) == ["OK", "seg:vip:p1:2"]
    assert states(lua, "p1") == {"vip": {"in": False, "n": 2, "since": iso_ms(later)}}
    assert not lua.r.exists(keys.segment_members("vip"))
    assert [parsed(f) for f in segment_events(lua)] == [
        seg_event("vip", "p1", 1, "ENTER", now_ms, {"userId": "u1"}),
        seg_event("vip", "p1", 2, "EXIT", later, {"userId": "u1"}),
    ]
    assert due(lua, "p1") is None

    # EXIT again: nothing; ENTER again: n = 3.
    assert transition(lua, "p1", {"vip": False}, at=later + 1) == ["OK"]
    assert len(segment_events(lua)) == 2
    assert transition(lua, "p1", {"vip": True}, at=later + 2) == ["OK", "seg:vip:p1:3"]
    assert members(lua, "vip") == [("p1", 1.0)]


def test_the_event_names_an_anonymous_profile_by_the_identifier_given(lua, now_ms):
    lua.apply(track("e1", now_ms - HOUR, "Clicked", anon="a1"))
    who = {"anonymousId": "a1"}
    assert transition(lua, "p1", {"vip": True}, at=now_ms, who=who) == ["OK", "seg:vip:p1:1"]
    assert [parsed(f) for f in segment_events(lua)] == [
        seg_event("vip", "p1", 1, "ENTER", now_ms, who)
    ]
    assert "userId" not in json.loads(segment_events(lua)[0]["e"])["payload"]


def test_a_stale_version_changes_nothing_not_even_the_due_index(lua, now_ms):
    lua.apply(event("e1", now_ms - HOUR, user="u1"))
    assert transition(lua, "p1", {"old": True}, at=now_ms, due=now_ms + HOUR)[0] == "OK"
    read = version(lua, "p1")
    lua.apply(track("e2", now_ms - HOUR + MINUTE, "Clicked", user="u1"))  # changed since read
    assert version(lua, "p1") != read
    snapshot = lua.dump()
    for due_arg in ("", now_ms + 2 * HOUR):
        reply = transition(
            lua, "p1", {"vip": True}, at=now_ms, due=due_arg, drop=["old"], read_version=read
        )
        assert reply == ["STALE"]
        assert lua.dump() == snapshot


def test_an_evaluation_older_than_the_last_accepted_one_is_refused(lua, now_ms):
    """Evaluation times never go backwards: once an evaluation at t is accepted, one at an
    earlier time is refused, even if it read the current version and evaluations count."""
    lua.apply(event("e1", now_ms - HOUR, user="u1"))
    assert evaluated(lua, "p1") == ""
    assert transition(lua, "p1", {"vip": True}, at=now_ms, due=now_ms + HOUR)[0] == "OK"
    assert evaluated(lua, "p1") == str(now_ms)
    snapshot = lua.dump()
    assert transition(lua, "p1", {"vip": False}, at=now_ms - 1) == ["STALE"]
    assert lua.dump() == snapshot
    # The same time is not older: accepted.
    assert transition(lua, "p1", {"vip": False}, at=now_ms) == ["OK", "seg:vip:p1:2"]


def test_an_evaluation_that_read_before_another_was_accepted_is_refused(lua, now_ms):
    """Two evaluators read p1 (same version, no evaluation yet); the first one's write is
    accepted; the second one's, even at a later time, is refused: the memberships it
    compared against are not the current ones any more (it must read again)."""
    lua.apply(event("e1", now_ms - HOUR, user="u1"))
    assert transition(lua, "p1", {"vip": True}, at=now_ms, read_evaluations="")[0] == "OK"
    snapshot = lua.dump()
    for at in (now_ms - 1, now_ms, now_ms + MINUTE):
        reply = transition(lua, "p1", {"other": True}, at=at, read_evaluations="")
        assert reply == ["STALE"]
    assert lua.dump() == snapshot


def test_an_evaluation_that_read_before_another_at_the_same_time_was_accepted_is_refused(
    lua, now_ms
):
    """ABA: an accepted evaluation at the profile's evaluatedMs leaves evaluatedMs as it
    was. Evaluator A (its clock behind: it evaluates at evaluatedMs) and B (later) read
    the same version and evaluatedMs; A ENTERs vip; B, which read vip out and wants it
    out, must not be accepted: vip would stay in with no due time (wrong until the
    profile's next event)."""
    lua.apply(event("e1", now_ms - HOUR, user="u1"))
    assert transition(lua, "p1", {}, at=now_ms, due=now_ms + HOUR)[0] == "OK"
    lua.apply(track("e2", now_ms - HOUR + MINUTE, "Clicked", user="u1"))  # a new version
    read_version, read_count = version(lua, "p1"), evaluations(lua, "p1")
    assert read_count == "1"
    a = transition(
        lua, "p1", {"vip": True}, at=now_ms, read_version=read_version, read_evaluations=read_count
    )
    assert a == ["OK", "seg:vip:p1:1"]
    assert evaluated(lua, "p1") == str(now_ms)  # the same time: evaluatedMs is unchanged
    assert evaluations(lua, "p1") == "2"  # ... but the token is not
    snapshot = lua.dump()
    b = transition(
        lua, "p1", {}, at=now_ms + MINUTE, read_version=read_version, read_evaluations=read_count
    )
    assert b == ["STALE"]
    assert lua.dump() == snapshot
    assert states(lua, "p1")["vip"]["in"] is True


def test_an_evaluation_with_older_definitions_is_refused(lua, now_ms):
    """A segment deleted (or changed) after the evaluator loaded the definitions: its
    write is refused, so a deleted segment is never entered again."""
    lua.apply(event("e1", now_ms - HOUR, user="u1"))
    loaded = lua.r.get(keys.SEGMENTS_VERSION) or ""
    lua.r.incr(keys.SEGMENTS_VERSION)
    snapshot = lua.dump()
    assert transition(lua, "p1", {"vip": True}, at=now_ms, definitions=loaded) == ["STALE"]
    assert lua.dump() == snapshot
    assert transition(lua, "p1", {"vip": True}, at=now_ms, definitions="1")[0] == "OK"


def test_a_merged_away_or_unknown_profile_is_gone_and_leaves_the_due_index(lua, now_ms):
    two_profiles_merged(lua, now_ms - HOUR)
    assert due(lua, "p2") is None  # the merge removed it; put stale entries back
    lua.r.zadd(keys.SEGMENTS_DUE, {"p2": now_ms, "p99": now_ms})
    p1_due = due(lua, "p1")
    snapshot = {k: v for k, v in lua.dump().items() if k != keys.SEGMENTS_DUE}

    for cid in ("p2", "p99"):
        for read in ("0", "1", ""):
            assert transition(
                lua, cid, {"vip": True}, at=now_ms, due=now_ms + HOUR, read_version=read
            ) == ["GONE"]
        assert due(lua, cid) is None

    assert {k: v for k, v in lua.dump().items() if k != keys.SEGMENTS_DUE} == snapshot
    assert lua.r.zrange(keys.SEGMENTS_DUE, 0, -1, withscores=True) == [("p1", p1_due)]
    assert lua.meta("p2")["mergedInto"] == "p1"
    assert not lua.r.exists(keys.profile("p99"), keys.profile_segments("p99"))


def one_of_each(lua: LuaHarness, now_ms: int) -> list[TransitionRequest]:
    """Profiles p1..p6 and one evaluation of each, one of every kind of answer:
    p1 ENTERs vip, p2 (a member) EXITs it, p3 changed since it was read (STALE), p4 was
    merged into p1 (GONE), p5 was evaluated later than this evaluation's time (STALE),
    p6 only moves its due time, and p99 does not exist (GONE)."""
    t = now_ms - HOUR
    for n in (1, 2, 3):
        lua.apply(event(f"e{n}", t, user=f"u{n}"))
    lua.apply(track("e4", t, "Clicked", anon="a4"))
    lua.apply(event("e5", t, user="u5"))
    lua.apply(track("e6", t, "Clicked", anon="a6"))
    assert transition(lua, "p2", {"vip": True}, at=t)[0] == "OK"
    assert transition(lua, "p5", {}, at=now_ms + MINUTE)[0] == "OK"
    stale_read = request(lua, "p3", {"vip": True}, at=now_ms)
    lua.apply(track("e3b", t + MINUTE, "Clicked", user="u3"))  # p3 changes after the read
    lua.apply(event("e4b", t + MINUTE, "ALIAS", user="u1", anon="a4"))  # p4 into p1
    assert lua.meta("p4")["mergedInto"] == "p1"
    return [
        request(lua, "p1", {"vip": True}, at=now_ms, due=now_ms + HOUR),
        request(lua, "p2", {"vip": False}, at=now_ms, who={"userId": "u2"}),
        stale_read,
        request(lua, "p4", {"vip": True}, at=now_ms, read_version="1", read_evaluations=""),
        request(lua, "p5", {"vip": True}, at=now_ms),
        request(lua, "p6", {}, at=now_ms, due=now_ms + 2 * HOUR, who={"anonymousId": "a6"}),
        request(lua, "p99", {"vip": True}, at=now_ms, read_version="1", read_evaluations=""),
    ]


def comparable(dump: dict[str, Any]) -> dict[str, Any]:
    """``LuaHarness.dump`` less what two servers' clocks make differ: the streams' entry
    ids, and expiry times (whether a key expires is kept)."""
    return {
        key: (kind, [f for _, f in value[0]] if kind == "stream" else value, ttl > 0)
        for key, (kind, value, ttl) in dump.items()
    }


def test_one_call_for_several_profiles_answers_each_as_its_own_call_would(make_harness, now_ms):
    """The engine writes a chunk of evaluations in one call: every profile gets the answer
    and the writes that a call of its own gives it (the same replies, the same keys
    after), whatever the others' answers."""
    batched, alone = make_harness(), make_harness()
    requests = one_of_each(batched, now_ms)
    assert one_of_each(alone, now_ms) == requests
    p2_before = states(batched, "p2")["vip"]

    replies = transitions(batched, requests)
    assert replies == [
        ["OK", "seg:vip:p1:1"],
        ["OK", "seg:vip:p2:2"],
        ["STALE"],
        ["GONE"],
        ["STALE"],
        ["OK"],
        ["GONE"],
    ]
    assert replies == [transitions(alone, [r])[0] for r in requests]
    assert comparable(batched.dump()) == comparable(alone.dump())

    # And what each answer means, in the batched server.
    assert members(batched, "vip") == [("p1", 1.0)]
    assert p2_before["in"] and states(batched, "p2")["vip"]["in"] is False
    assert states(batched, "p3") == {} and states(batched, "p5") == {}
    assert (due(batched, "p1"), due(batched, "p6")) == (now_ms + HOUR, now_ms + 2 * HOUR)
    assert due(batched, "p4") is None and due(batched, "p99") is None
    assert evaluations(batched, "p3") == "" and evaluations(batched, "p5") == "1"
    assert [parsed(f)["e"]["payload"]["userId"] for f in segment_events(batched)][1:] == [
        "u1",
        "u2",
    ]


def test_the_due_index_is_set_to_argv5_or_removed_when_empty(lua, now_ms):
    lua.apply(event("e1", now_ms - HOUR, user="u1"))
    assert due(lua, "p1") == now_ms + lua.settings.lease_ttl_ms  # the apply script's mark
    # A later time replaces an earlier one (the evaluation knows best, unlike apply's LT).
    assert transition(lua, "p1", {}, at=now_ms, due=now_ms + 3 * HOUR) == ["OK"]
    assert due(lua, "p1") == now_ms + 3 * HOUR
    assert transition(lua, "p1", {}, at=now_ms, due=now_ms + HOUR) == ["OK"]
    assert due(lua, "p1") == now_ms + HOUR
    assert transition(lua, "p1", {}, at=now_ms, due="") == ["OK"]
    assert due(lua, "p1") is None
    assert not lua.r.exists(keys.SEGMENTS_DUE)
    assert segment_events(lua) == []
    assert states(lua, "p1") == {}


def test_dropped_segments_end_their_memberships_silently_keeping_n(lua, now_ms):
    lua.apply(event("e1", now_ms - HOUR, user="u1"))
    lua.apply(event("e2", now_ms - HOUR, user="u2"))
    assert transition(lua, "p1", {"old": True, "vip": True}, at=now_ms)[0] == "OK"
    assert transition(lua, "p2", {"old": True}, at=now_ms)[0] == "OK"
    assert transition(lua, "p1", {"gone": True}, at=now_ms)[0] == "OK"
    assert transition(lua, "p1", {"gone": False}, at=now_ms)[0] == "OK"  # in: false, n: 2
    emitted = segment_events(lua)
    assert len(emitted) == 5

    reply = transition(lua, "p1", {}, at=now_ms + MINUTE, drop=["gone", "old"])
    assert reply == ["OK"]
    # Out, but n is kept: a segment defined again never reuses an eventId.
    later = iso_ms(now_ms + MINUTE)
    assert states(lua, "p1") == {
        "vip": {"in": True, "n": 1, "since": iso_ms(now_ms)},
        "old": {"in": False, "n": 1, "since": later},
        "gone": {"in": False, "n": 2, "since": later},
    }
    assert members(lua, "old") == [("p2", 2.0)]  # only p1's membership goes
    assert members(lua, "vip") == [("p1", 1.0)]
    assert segment_events(lua) == emitted  # no EXIT


def test_several_segments_in_one_call_emit_in_sorted_name_order(lua, now_ms):
    lua.apply(event("e1", now_ms - HOUR, user="u1"))
    wanted = {"zeta": True, "alpha": True, "mid": True, "beta": False}  # beta: no change
    assert _encode(wanted).startswith(b'{"zeta"')  # the JSON is not in name order
    reply = transition(lua, "p1", wanted, at=now_ms)
    assert reply == ["OK", "seg:alpha:p1:1", "seg:mid:p1:1", "seg:zeta:p1:1"]
    assert [f["eventId"] for f in segment_events(lua)] == reply[1:]
    assert set(states(lua, "p1")) == {"alpha", "mid", "zeta"}
    for name in ("alpha", "mid", "zeta"):
        assert members(lua, name) == [("p1", 1.0)]

    # A mixed call: EXITs and ENTERs together, still by name.
    reply = transition(lua, "p1", {"zeta": False, "beta": True, "alpha": False}, at=now_ms + 1)
    assert reply == ["OK", "seg:alpha:p1:2", "seg:beta:p1:1", "seg:zeta:p1:2"]
    assert [(f["segment"], f["transition"]) for f in segment_events(lua)[3:]] == [
        ("alpha", "EXIT"),
        ("beta", "ENTER"),
        ("zeta", "EXIT"),
    ]


# ------------------------------------------------------- merges end memberships


def test_a_merge_ends_the_losers_memberships_with_exit_events_naming_the_survivor(lua, now_ms):
    """p2 (anon a2, email) is in vip (its 3rd transition) and was in old; an ALIAS merges
    it into p1. vip EXITs p2 once, numbered after its ENTER, reason "merged", naming the
    survivor; old emits nothing. A redelivery of the ALIAS, and a later event linking
    the same identifiers, change nothing more."""
    t = now_ms - HOUR
    lua.apply(event("m1", t, user="u1", traits={"plan": "pro"}))
    lua.apply(track("m2", t, "Clicked", anon="a2", email="Zed@Example.com"))
    who = {"anonymousId": "a2"}  # as profile_view names p2: its first identifier
    for at, wanted in ((1, True), (2, False), (3, True)):
        transition(lua, "p2", {"vip": wanted}, at=t + at * MINUTE, who=who)
    transition(lua, "p2", {"old": True}, at=t + 4 * MINUTE, who=who)
    transition(lua, "p2", {"old": False}, at=t + 5 * MINUTE, who=who)
    transition(lua, "p1", {"vip": True}, at=t + 5 * MINUTE)
    before = segment_events(lua)
    assert len(before) == 6

    alias = event("m3", t + 6 * MINUTE, "ALIAS", user="u1", anon="a2")
    lua.apply(alias)
    assert lua.meta("p2")["mergedInto"] == "p1"
    emitted = segment_events(lua)
    assert emitted[:6] == before
    assert [parsed(f) for f in emitted[6:]] == [
        seg_event(
            "vip", "p2", 4, "EXIT", now_ms, who, reason="merged", mergedInto="p1"
        )  # at the apply's "now", the merge's processing time
    ]
    assert members(lua, "vip") == [("p1", 1.0)]
    assert profile_keys(lua, "p2") == {keys.profile("p2")}

    lua.apply(alias)  # redelivered: a duplicate
    lua.apply(event("m4", t + 7 * MINUTE, user="u1", anon="a2", email="zed@example.com"))
    assert segment_events(lua) == emitted


def test_a_merge_exit_is_never_older_than_the_losers_last_transition(lua, now_ms):
    """An evaluator whose clock is ahead of the worker's entered p2 "later" than the
    merge's now: the EXIT takes that time, so the pair stays in time order."""
    lua.apply(event("m1", now_ms - HOUR, user="u1"))
    lua.apply(track("m2", now_ms - HOUR, "Clicked", anon="a2"))
    ahead = now_ms + 3 * SECOND
    who = {"anonymousId": "a2"}
    transition(lua, "p2", {"vip": True}, at=ahead, who=who)
    lua.apply(event("m3", now_ms - MINUTE, "ALIAS", user="u1", anon="a2"))
    assert lua.meta("p2")["mergedInto"] == "p1"
    enter, exit_ = (parsed(f) for f in segment_events(lua))
    assert exit_ == seg_event("vip", "p2", 2, "EXIT", ahead, who, reason="merged", mergedInto="p1")
    assert enter["e"]["ts"] == exit_["e"]["ts"]


# ----------------------------------------------------------------- erase_profile


def erasable(lua: LuaHarness, now_ms: int) -> dict[str, Any]:
    """p1: user, email, two anons (one via a merge of p2), traits, counters ($seen too),
    a live membership (vip, n=1) and an ended one (old, n=2); p3 a bystander member."""
    t = now_ms - 2 * HOUR
    lua.apply(event("e1", t, user="u1", email="Ann@Example.com", anon="a1", traits={"plan": "pro"}))
    lua.apply(track("e2", t, "Clicked", anon="a2"))  # p2
    lua.apply(event("e3", t, user="u9", traits={"plan": "free"}))  # p3, the bystander
    lua.apply(event("e4", t + MINUTE, "ALIAS", user="u1", anon="a2"))  # p2 -> p1
    lua.apply(track("e5", t + 10 * MINUTE, "Clicked", user="u1"))  # a return (in $seen)
    assert lua.meta("p2")["mergedInto"] == "p1"
    # e1 and p2's e2, the ALIAS, then e5 after 9 idle buckets: a return for returns_of.
    assert lua.counter("p1", "$seen") == {
        bucket(t): 2,
        bucket(t + MINUTE): 1,
        bucket(t + 10 * MINUTE): 1,
    }
    entered = transition(lua, "p1", {"vip": True, "old": True}, at=now_ms, due=now_ms + HOUR)
    assert entered == ["OK", "seg:old:p1:1", "seg:vip:p1:1"]
    assert transition(lua, "p1", {"old": False}, at=now_ms, due=now_ms + HOUR)[0] == "OK"
    assert transition(lua, "p3", {"vip": True}, at=now_ms, who={"userId": "u9"})[0] == "OK"
    ids = {"user:u1", "email:ann@example.com", "anon:a1", "anon:a2"}
    assert lua.identifiers("p1") == ids
    p1 = keys.profile("p1")
    assert profile_keys(lua, "p1") == {
        p1,
        p1 + ":traits",
        p1 + ":identifiers",
        p1 + ":counters",
        p1 + ":counter:Clicked",
        p1 + ":counter:$track",
        p1 + ":counter:$seen",
        p1 + ":merged",
        p1 + ":segments",
        p1 + ":seen",  # its events' ids, p2's e2 among them (absorbed by the merge)
    }
    assert "e2" in lua.r.hkeys(keys.seen("p1"))
    assert profile_keys(lua, "p2") == {keys.profile("p2")}
    assert members(lua, "vip") == [("p1", 1.0), ("p3", 3.0)]
    assert due(lua, "p1") == now_ms + HOUR
    return {"ids": ids}


def test_erasure_forgets_every_key_suppresses_every_identifier_and_exits(lua, now_ms):
    ids = erasable(lua, now_ms)["ids"]
    bystander = {k: v for k, v in lua.dump().items() if "{p3}" in k}
    events_before = segment_events(lua)
    at = now_ms + 5 * MINUTE

    assert erase(lua, "p1", at=at, job="job-7") == ["OK", 4, 1]

    assert profile_keys(lua, "p1") == set()
    assert profile_keys(lua, "p2") == set()  # the merged-away id's pointer too
    for typed in ids:
        assert not lua.r.exists(keys.identifier(typed)), typed
    assert lua.r.smembers(keys.SUPPRESSED) == ids
    assert lua.r.zrange(keys.PROFILES, 0, -1) == ["p3"]
    assert due(lua, "p1") is None
    assert members(lua, "vip") == [("p3", 3.0)]
    assert not lua.r.exists(keys.segment_members("old"))

    # The live membership ended with one EXIT that continues its count; "old" was not
    # a membership any more: no event.
    emitted = segment_events(lua)
    assert emitted[: len(events_before)] == events_before
    assert [parsed(f) for f in emitted[len(events_before) :]] == [
        seg_event("vip", "p1", 2, "EXIT", at, {"userId": "u1"}, reason="erased")
    ]

    (audit,) = [fields for _, fields in lua.r.xrange(keys.AUDIT)]
    assert audit == {
        "action": "erase",
        "canonicalId": "p1",
        "job": "job-7",
        "by": "admin",
        "at": iso_ms(at),
        "identifiers": "4",
        "exits": "1",
    }
    for value in audit.values():
        for typed in ids:
            assert typed.split(":", 1)[1] not in value

    # The job is done and holds no identifier any more; nobody else was touched.
    assert lua.r.hget(keys.job("job-7"), "state") == "done"
    assert not lua.r.exists(keys.job_identifiers("job-7"), keys.outbox("p1"))
    assert lua.r.zrange(keys.ERASURES_OPEN, 0, -1) == []
    assert {k: v for k, v in lua.dump().items() if "{p3}" in k} == bystander
    assert lua.cid("user:u9") == "p3"


def test_erasing_a_merged_away_id_erases_its_survivor_and_twice_is_gone(lua, now_ms):
    erasable(lua, now_ms)
    assert erase(lua, "p2", at=now_ms, job="job-a") == ["OK", 4, 1]  # follows p2 -> p1
    (audit,) = [fields for _, fields in lua.r.xrange(keys.AUDIT)]
    assert audit["canonicalId"] == "p1"
    assert profile_keys(lua, "p1") == profile_keys(lua, "p2") == set()
    snapshot = without_jobs(lua.dump())
    assert erase(lua, "p1", at=now_ms + 1, job="job-b") == ["GONE"]
    assert erase(lua, "p99", at=now_ms + 1, job="job-c") == ["GONE"]
    assert without_jobs(lua.dump()) == snapshot
    assert lua.r.hget(keys.job("job-b"), "state") == "failed"
    assert lua.r.zrange(keys.ERASURES_OPEN, 0, -1) == []


def test_events_naming_a_suppressed_identifier_are_discarded_others_apply(lua, now_ms):
    erasable(lua, now_ms)
    assert erase(lua, "p1", at=now_ms)[0] == "OK"
    seq = lua.r.get(keys.PROFILE_SEQ)
    processed = lua.metric("processed")
    t = now_ms - MINUTE

    result = lua.apply(
        track("s1", t, "Clicked", email=" ANN@example.COM "),  # normalised, then suppressed
        event("s2", t, anon="fresh", user="u1", traits={"plan": "x"}),  # one suppressed id
        track("s3", t, "Clicked", anon="a2"),  # the merged-away profile's identifier
        event("u1", t, user="u9", traits={"plan": "team"}),  # the bystander
    )
    assert (result.applied, result.duplicates, result.profiles) == (1, 0, ("p3",))
    assert lua.metric("suppressed") == 3
    assert lua.metric("processed") == processed + 1
    assert lua.pending() == 0  # discarded events are acknowledged
    assert lua.r.get(keys.PROFILE_SEQ) == seq  # no profile created
    assert lua.r.zrange(keys.PROFILES, 0, -1) == ["p3"]
    for typed in ("user:u1", "email:ann@example.com", "anon:a2", "anon:fresh"):
        assert lua.cid(typed) is None
    assert profile_keys(lua, "p1") == set()
    assert lua.trait_values("p3") == {"plan": "team"}


@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "effect-only"])
@pytest.mark.parametrize("crashed_after", erasure.STEPS[:-1])
def test_an_erasure_interrupted_after_any_step_is_resumed_with_one_audit_and_one_exit(
    lua, now_ms, crashed_after, recorded
):
    """The runner dies after a step (``recorded``: the job hash names it; effect-only:
    the step's writes are in, the record of it is not, so the resumer runs it again);
    once its lease is gone, the sweeper's resume finishes the job exactly as one run."""
    ids = erasable(lua, now_ms)["ids"]
    events_before = len(segment_events(lua))
    at = now_ms + 5 * MINUTE
    previous = (
        erasure.STEPS[erasure.STEPS.index(crashed_after) - 1]
        if crashed_after != "suppressed"
        else ""
    )

    async def interrupted_then_resumed() -> int:
        settings = lua.settings
        await erasure.start(lua.redis, lua.scripts, settings, "job-1", "p1", at, "api-1")
        result, _ = await erasure.run(
            lua.redis, lua.scripts, settings, "job-1", "api-1", crashed_after
        )
        assert result == "audited"  # stopped where it was told to
        if not recorded:
            await lua.redis.hset(keys.job("job-1"), "step", previous)
        # still held by the dead runner: nobody else runs it
        assert await erasure.resume_open(lua.redis, lua.scripts, settings, "w2") == 0
        await lua.redis.delete(keys.job_lease("job-1"))  # its lease expired
        return await erasure.resume_open(lua.redis, lua.scripts, settings, "w2")

    assert lua.run(interrupted_then_resumed()) == 1
    job = lua.r.hgetall(keys.job("job-1"))
    assert (job["state"], job["step"], job["identifiers"], job["exits"]) == (
        "done",
        "purged",
        "4",
        "1",
    )
    assert [parsed(f) for f in segment_events(lua)[events_before:]] == [
        seg_event("vip", "p1", 2, "EXIT", at, {"userId": "u1"}, reason="erased")
    ]
    (audit,) = [fields for _, fields in lua.r.xrange(keys.AUDIT)]
    assert (audit["job"], audit["canonicalId"], audit["exits"]) == ("job-1", "p1", "1")
    assert profile_keys(lua, "p1") == profile_keys(lua, "p2") == set()
    for typed in ids:
        assert not lua.r.exists(keys.identifier(typed)), typed
    assert lua.r.smembers(keys.SUPPRESSED) == ids
    assert members(lua, "vip") == [("p3", 3.0)]
    assert lua.r.zrange(keys.PROFILES, 0, -1) == ["p3"]
    assert due(lua, "p1") is None
    assert not lua.r.exists(keys.job_identifiers("job-1"), keys.job_lease("job-1"))
    assert lua.r.zrange(keys.ERASURES_OPEN, 0, -1) == []


def test_a_finished_or_expired_job_left_in_the_open_index_is_dropped_from_it(lua, now_ms):
    """A crash between a job's last write and its ZREM, or a job hash that expired:
    the resume drops the entry and writes nothing else (no second audit, no job hash)."""
    assert erase(lua, "p1", at=now_ms, job="job-1") == ["GONE"]  # nothing to erase
    erasable(lua, now_ms)
    assert erase(lua, "p1", at=now_ms, job="job-2") == ["OK", 4, 1]
    lua.r.zadd(keys.ERASURES_OPEN, {"job-2": now_ms, "job-gone": now_ms})
    snapshot = lua.dump()
    assert lua.run(erasure.resume_open(lua.redis, lua.scripts, lua.settings, "w2")) == 2
    assert lua.r.zrange(keys.ERASURES_OPEN, 0, -1) == []
    after = lua.dump()
    del snapshot[keys.ERASURES_OPEN]
    assert {k: v for k, v in after.items() if not k.endswith(":lease")} == snapshot
    assert lua.r.xlen(keys.AUDIT) == 1


def test_an_identifier_linked_during_the_erasure_is_suppressed_and_unindexed_too(lua, now_ms):
    """Between the suppression and the profile's step, an apply links a new identifier
    (its event was resolved before the suppression): the job suppresses it as well."""
    ids = erasable(lua, now_ms)["ids"]

    async def run() -> None:
        settings = lua.settings
        await erasure.start(lua.redis, lua.scripts, settings, "job-1", "p1", now_ms, "api")
        await erasure.run(lua.redis, lua.scripts, settings, "job-1", "api", "unindexed")
        await lua.redis.sadd(keys.identifiers("p1"), "anon:late")
        await lua.redis.set(keys.identifier("anon:late"), "p1")
        await lua.redis.set(keys.identifier("anon:other"), "p3")
        result, job = await erasure.run(lua.redis, lua.scripts, settings, "job-1", "api")
        assert result == "done" and job is not None and job.identifiers == 5

    lua.run(run())
    assert lua.r.smembers(keys.SUPPRESSED) == ids | {"anon:late"}
    assert not lua.r.exists(keys.identifier("anon:late"))
    assert lua.cid("anon:other") == "p3"  # compare-and-delete: another profile's entry stays


def test_erasure_exit_of_an_anonymous_member_names_its_anonymous_id(lua, now_ms):
    """README "Segments": every segment event's userId is the profile's userId, else its
    anonymousId or email, so downstream systems can match the EXIT to the ENTER."""
    lua.apply(track("e1", now_ms - HOUR, "Clicked", anon="a1"))
    who = {"anonymousId": "a1"}
    assert transition(lua, "p1", {"vip": True}, at=now_ms, who=who)[0] == "OK"
    assert erase(lua, "p1", at=now_ms + 1) == ["OK", 1, 1]
    assert [parsed(f) for f in segment_events(lua)][1:] == [
        seg_event("vip", "p1", 2, "EXIT", now_ms + 1, who, reason="erased")
    ]


# ---------------------------------------------------------------- segment_forget


def forget(lua: LuaHarness, name: str, chunk: int) -> int:
    """A chunk of the members zset, as delete_definition reads it, then the script."""
    cids = lua.r.zrange(keys.segment_members(name), 0, chunk - 1)
    return lua.run(lua.scripts.segment_forget(name, cids)) if cids else 0


def test_forgetting_a_deleted_segment_ends_memberships_by_chunk_keeping_n(lua, now_ms):
    for u in ("u1", "u2", "u3"):
        lua.apply(event(f"e-{u}", now_ms - HOUR, user=u))
    assert transition(lua, "p1", {"old": True, "vip": True}, at=now_ms)[0] == "OK"
    assert transition(lua, "p2", {"old": True}, at=now_ms)[0] == "OK"
    assert transition(lua, "p2", {"old": False}, at=now_ms + 1)[0] == "OK"
    assert transition(lua, "p2", {"old": True}, at=now_ms + 2)[0] == "OK"  # n = 3
    assert transition(lua, "p3", {"old": True}, at=now_ms)[0] == "OK"
    emitted = segment_events(lua)
    before = {cid: states(lua, cid) for cid in ("p1", "p2", "p3")}

    assert forget(lua, "old", 2) == 2  # p1, p2 (by profile number)
    assert members(lua, "old") == [("p3", 3.0)]
    assert forget(lua, "old", 2) == 1
    assert forget(lua, "old", 2) == 0
    assert not lua.r.exists(keys.segment_members("old"))
    for cid in ("p1", "p2", "p3"):
        old = before[cid]["old"]
        assert states(lua, cid)["old"] == {"in": False, "n": old["n"], "since": old["since"]}
    assert states(lua, "p1")["vip"] == before["p1"]["vip"]  # another segment: untouched
    assert members(lua, "vip") == [("p1", 1.0)]
    assert segment_events(lua) == emitted  # silently


def test_forgetting_stops_once_the_segment_is_defined_again(lua, now_ms):
    lua.apply(event("e1", now_ms - HOUR, user="u1"))
    assert transition(lua, "p1", {"old": True}, at=now_ms)[0] == "OK"
    lua.r.hset(keys.SEGMENTS, "old", '{"rule": {"inactive": "1d"}}')
    snapshot = lua.dump()
    assert forget(lua, "old", 500) == 0
    assert lua.dump() == snapshot
