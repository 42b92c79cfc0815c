"""Segments end to end with worker processes on a real Redis and the test clock:
ENTER/EXIT exactly once, exits by time alone, late events, merges, crashes."""

from __future__ import annotations

import json
import signal

import pytest

from cdp import keys
from tests.support.stack import Stack
from tests.support.values import T0
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

H = 3_600_000


def segment_events(stack: Stack) -> list[dict[str, object]]:
    return [json.loads(fields["e"]) for _, fields in stack.r.xrange(keys.SEGMENT_EVENTS)]


def names(stack: Stack) -> list[str]:
    return [e["payload"]["name"] for e in segment_events(stack)]  # type: ignore[index]


def wait_events(stack: Stack, n: int, timeout: float = 20.0) -> list[str]:
    wait_until(
        lambda: stack.r.xlen(keys.SEGMENT_EVENTS) >= n,
        timeout=timeout,
        message=f"{n} segment events",
    )
    return names(stack)


@pytest.fixture
def live(stack: Stack) -> Stack:
    stack.set_clock(T0)
    stack.start_api()
    stack.start_worker("w1")
    return stack


def track(stack: Stack, event_id: str, ts: str, user: str = "u1", name: str = "Clicked") -> None:
    stack.send(event_id, ts, type="TRACK", userId=user, name=name)


def test_power_user_enters_then_exits_24h_later_by_time_alone(live: Stack) -> None:
    for i in range(5):
        track(live, f"t{i}", f"2025-10-04T10:00:0{i}Z")
    live.set_clock("2025-10-04T10:00:10Z")
    assert wait_events(live, 1) == ["power_user ENTER"]
    (enter,) = segment_events(live)
    assert enter["eventId"] == "seg:power_user:p1:1"
    assert enter["ts"] == "2025-10-04T10:00:10.000Z"
    assert enter["payload"] == {
        "type": "TRACK",
        "userId": "u1",
        "name": "power_user ENTER",
        "properties": {"canonicalId": "p1", "segment": "power_user", "transition": "ENTER"},
    }
    assert live.r.zrange(keys.segment_members("power_user"), 0, -1) == ["p1"]
    # No new event: the exit is due when the first bucket leaves the 24 h window.
    due = live.r.zscore(keys.SEGMENTS_DUE, "p1")
    assert due == 1_759_572_000_000 + 60_000 + 24 * H
    live.set_clock("2025-10-05T10:01:00.500Z")
    assert wait_events(live, 2) == ["power_user ENTER", "power_user EXIT"]
    assert live.r.zrange(keys.segment_members("power_user"), 0, -1) == []
    assert segment_events(live)[1]["eventId"] == "seg:power_user:p1:2"


def test_a_late_track_completing_the_fifth_gives_exactly_one_enter(live: Stack) -> None:
    for i in range(4):
        track(live, f"t{i}", f"2025-10-04T10:00:1{i}Z")
    live.set_clock("2025-10-04T10:00:30Z")
    live.wait_metric("processed", 4)
    live.wait_idle()
    assert live.r.xlen(keys.SEGMENT_EVENTS) == 0
    track(live, "late", "2025-10-04T10:00:01Z")  # 29 s late, within the grace period
    track(live, "late", "2025-10-04T10:00:01Z")  # and delivered twice
    live.set_clock("2025-10-04T10:00:31Z")
    live.wait_metric("processed", 5)
    assert wait_events(live, 1) == ["power_user ENTER"]
    live.set_clock("2025-10-04T10:05:00Z")
    live.wait_idle()
    assert names(live) == ["power_user ENTER"]
    assert live.metric("dedup_hits") == 1


def test_windowing_example_gives_one_pro_plan_enter_and_no_flicker(live: Stack) -> None:
    """The seed's A, D, B, C arrive within one window: one evaluation, one ENTER."""
    live.send("A", "2025-10-04T10:00:00Z", type="IDENTIFY", userId="u1", traits={"plan": "free"})
    live.send("D", "2025-10-04T10:00:03Z", type="IDENTIFY", userId="u1", traits={"plan": "pro"})
    live.send("B", "2025-10-04T10:00:01Z", type="TRACK", userId="u1", name="Feature Used")
    live.send("C", "2025-10-04T10:00:02Z", type="TRACK", userId="u1", name="Feature Used")
    live.set_clock("2025-10-04T10:00:30Z")
    live.wait_metric("processed", 4)
    assert wait_events(live, 1) == ["pro_plan ENTER"]
    live.send("E", "2025-10-04T10:00:31Z", type="IDENTIFY", userId="u1", traits={"plan": None})
    live.set_clock("2025-10-04T10:00:40Z")
    assert wait_events(live, 2) == ["pro_plan ENTER", "pro_plan EXIT"]


def test_reengage_enters_on_a_return_and_exits_when_inactive_again(live: Stack) -> None:
    track(live, "t1", "2025-10-04T10:00:00Z")
    live.set_clock("2025-10-04T10:15:00Z")
    live.wait_metric("processed", 1)
    track(live, "t2", "2025-10-04T10:15:00Z")  # back after 15 minutes
    live.set_clock("2025-10-04T10:15:06Z")
    assert wait_events(live, 1) == ["reengage ENTER"]
    live.set_clock("2025-10-04T10:24:59Z")
    live.wait_idle()
    assert names(live) == ["reengage ENTER"]
    live.set_clock("2025-10-04T10:25:00Z")  # inactive again for the 10-minute threshold
    assert wait_events(live, 2) == ["reengage ENTER", "reengage EXIT"]


def test_reengage_exits_after_its_duration_even_when_active(live: Stack) -> None:
    track(live, "t1", "2025-10-04T10:00:00Z")
    live.set_clock("2025-10-04T10:15:00Z")
    live.wait_metric("processed", 1)
    for minute in range(15, 80, 5):  # active every 5 minutes for over an hour
        ts = f"2025-10-04T{10 + minute // 60}:{minute % 60:02d}:00Z"
        live.set_clock(ts)
        live.send(f"m{minute}", ts, type="IDENTIFY", userId="u1")
        live.set_clock(ts.replace(":00Z", ":06Z"))
        live.wait_idle()
    # The tick evaluates after its apply acknowledged the events: wait for the EXIT.
    assert wait_events(live, 2) == ["reengage ENTER", "reengage EXIT"]
    exit_event = segment_events(live)[1]
    assert exit_event["ts"] == "2025-10-04T11:15:06.000Z"  # the first evaluation past 11:15


def test_merging_a_power_user_into_a_non_member(live: Stack) -> None:
    """The loser's membership ends with an EXIT (reason merged, naming the survivor); the
    survivor, evaluated with the merged counters, ENTERs (README "Segments")."""
    live.send("i1", "2025-10-04T09:59:00Z", type="IDENTIFY", userId="u1")  # older: survivor
    for i in range(5):
        live.send(
            f"a{i}", f"2025-10-04T10:00:0{i}Z", type="TRACK", anonymousId="anon", name="Clicked"
        )
    live.set_clock("2025-10-04T10:00:10Z")
    assert wait_events(live, 1) == ["power_user ENTER"]
    anon_cid = live.r.get(keys.identifier("anon:anon"))
    survivor = live.r.get(keys.identifier("user:u1"))
    assert segment_events(live)[0]["payload"]["properties"]["canonicalId"] == anon_cid
    live.send("alias", "2025-10-04T10:00:11Z", type="ALIAS", anonymousId="anon", userId="u1")
    live.set_clock("2025-10-04T10:00:20Z")
    assert wait_events(live, 3) == ["power_user ENTER", "power_user EXIT", "power_user ENTER"]
    live.wait_idle()
    exit_event, second = segment_events(live)[1:]
    assert exit_event == {
        "eventId": f"seg:power_user:{anon_cid}:2",
        "ts": "2025-10-04T10:00:20.000Z",
        "payload": {
            "type": "TRACK",
            "anonymousId": "anon",
            "name": "power_user EXIT",
            "properties": {
                "canonicalId": anon_cid,
                "segment": "power_user",
                "transition": "EXIT",
                "reason": "merged",
                "mergedInto": survivor,
            },
        },
    }
    assert second["payload"]["properties"]["canonicalId"] == survivor
    assert second["payload"]["userId"] == "u1"
    assert live.r.zrange(keys.segment_members("power_user"), 0, -1) == [survivor]


def test_a_merged_pro_plan_member_exits_once_however_often_the_merge_arrives(
    live: Stack,
) -> None:
    """p2 (anonymousId) is in pro_plan; an ALIAS merges it into p1 (userId, older). The
    stream shows p2's ENTER then one EXIT (reason merged, into p1): the ALIAS sent
    twice, and later events linking the same identifiers again, add nothing."""
    live.send("i1", "2025-10-04T09:59:00Z", type="IDENTIFY", userId="u1")
    live.send("i2", T0, type="IDENTIFY", anonymousId="a2", traits={"plan": "pro"})
    live.set_clock("2025-10-04T10:00:10Z")
    assert wait_events(live, 1) == ["pro_plan ENTER"]
    loser = live.r.get(keys.identifier("anon:a2"))
    survivor = live.r.get(keys.identifier("user:u1"))
    assert loser != survivor
    for _ in range(2):
        live.send("alias", "2025-10-04T10:00:11Z", type="ALIAS", anonymousId="a2", userId="u1")
    live.send("again", "2025-10-04T10:00:12Z", type="IDENTIFY", anonymousId="a2", userId="u1")
    live.set_clock("2025-10-04T10:00:20Z")
    live.wait_metric("processed", 4)
    live.wait_metric("dedup_hits", 1)
    # The survivor now holds plan pro: it ENTERs, evaluated with the merged traits.
    assert wait_events(live, 3) == ["pro_plan ENTER", "pro_plan EXIT", "pro_plan ENTER"]
    live.set_clock("2025-10-04T10:01:00Z")
    live.wait_idle()
    events = segment_events(live)
    assert len(events) == 3
    of_loser = [e for e in events if e["payload"]["properties"]["canonicalId"] == loser]
    assert [(e["payload"]["name"], e["eventId"]) for e in of_loser] == [
        ("pro_plan ENTER", f"seg:pro_plan:{loser}:1"),
        ("pro_plan EXIT", f"seg:pro_plan:{loser}:2"),
    ]
    assert of_loser[1]["payload"]["properties"] | {"canonicalId": None} == {
        "canonicalId": None,
        "segment": "pro_plan",
        "transition": "EXIT",
        "reason": "merged",
        "mergedInto": survivor,
    }
    assert of_loser[1]["payload"]["anonymousId"] == "a2"
    assert events[2]["payload"]["properties"]["canonicalId"] == survivor
    assert live.r.zrange(keys.segment_members("pro_plan"), 0, -1) == [survivor]


def test_two_workers_and_the_sweeper_under_sigkill_emit_each_transition_once(
    stack: Stack,
) -> None:
    users = 30
    stack.set_clock(T0)
    stack.start_api()
    victim = stack.start_worker("w1")
    stack.start_worker("w2")
    wait_until(lambda: stack.r.get(keys.SWEEPER_LEASE) is not None, message="a sweeper")
    for u in range(users):
        for i in range(5):
            track(stack, f"u{u}-t{i}", f"2025-10-04T10:00:0{i}Z", user=f"u{u}")
    stack.set_clock("2025-10-04T10:00:10Z")
    wait_until(lambda: stack.metric("processed") >= 40, message="part of the events applied")
    stack.kill(victim, signal.SIGKILL)
    stack.start_worker("w3")
    # Profiles the victim applied but had no time to evaluate fall due a lease-time
    # later (in the clock's time): let that time pass for the sweeper to find them.
    stack.set_clock("2025-10-04T10:00:15Z")
    stack.wait_metric("processed", users * 5, timeout=30)
    wait_events(stack, users, timeout=30)
    stack.set_clock("2025-10-05T10:02:00Z")  # every power user leaves by time alone
    wait_events(stack, 2 * users, timeout=30)
    stack.set_clock("2025-10-05T11:00:00Z")
    stack.wait_idle()
    events = segment_events(stack)
    ids = [e["eventId"] for e in events]
    assert len(ids) == len(set(ids)) == 2 * users
    per_profile: dict[str, list[str]] = {}
    for e in events:
        cid = e["payload"]["properties"]["canonicalId"]  # type: ignore[index]
        per_profile.setdefault(cid, []).append(e["payload"]["name"])  # type: ignore[index]
    assert len(per_profile) == users
    assert all(v == ["power_user ENTER", "power_user EXIT"] for v in per_profile.values())
