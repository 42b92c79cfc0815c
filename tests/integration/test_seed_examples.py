"""The seed's three worked examples, end to end: HTTP API and worker processes on a real
redis-server, with the test clock standing in for hours of event time."""

from __future__ import annotations

import json

import pytest

from cdp import keys
from tests.support.stack import Stack
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration


def profile(stack: Stack, identifier: str) -> dict[str, object]:
    cid = stack.r.get(keys.identifier(identifier))
    assert cid is not None, f"no profile for {identifier}"
    traits = {k: json.loads(v) for k, v in stack.r.hgetall(keys.traits(cid)).items()}
    return {
        "cid": cid,
        "traits": traits,
        "ids": stack.r.smembers(keys.identifiers(cid)),
        "meta": stack.r.hgetall(keys.profile(cid)),
    }


def counter_total(stack: Stack, cid: str, name: str) -> int:
    return int(
        sum(score for _, score in stack.r.zrange(keys.counter(cid, name), 0, -1, withscores=True))
    )


def _stale_identify(stack: Stack) -> None:
    """Event B (11:00, plan pro) is applied; Event A (10:00, plan free) arrives at 14:00."""
    stack.set_clock("2025-10-04T11:00:00Z")
    stack.send(
        "evt-B",
        "2025-10-04T11:00:00Z",
        type="IDENTIFY",
        userId="u123",
        traits={"plan": "pro", "email": "new@example.com"},
    )
    stack.set_clock("2025-10-04T11:00:10Z")
    stack.wait_metric("processed", 1)
    stack.set_clock("2025-10-04T14:00:00Z")
    stack.send(
        "evt-A",
        "2025-10-04T10:00:00Z",
        type="IDENTIFY",
        userId="u123",
        traits={"plan": "free", "email": "old@example.com"},
    )
    stack.set_clock("2025-10-04T14:00:10Z")


def test_stale_identify_reaches_lww_with_a_long_grace_period_and_is_rejected(stack: Stack) -> None:
    stack.start_api()
    stack.start_worker(grace_period="5h")
    _stale_identify(stack)
    stack.wait_metric("processed", 2)
    p = profile(stack, "user:u123")
    assert p["traits"]["plan"] == {"v": "pro", "ts": "2025-10-04T11:00:00.000Z", "eventId": "evt-B"}
    assert p["traits"]["email"]["v"] == "new@example.com"
    assert stack.metric("late") == 1
    assert stack.metric("dropped") == 0
    # lastSeen is LWW too; firstSeen takes the older event.
    assert p["meta"]["lastSeen"] == "2025-10-04T11:00:00.000Z"
    assert p["meta"]["firstSeen"] == "2025-10-04T10:00:00.000Z"


def test_stale_identify_is_dropped_and_recorded_under_the_default_grace(stack: Stack) -> None:
    stack.start_api()
    stack.start_worker()
    _stale_identify(stack)
    stack.wait_metric("dropped", 1)
    stack.wait_idle()
    assert stack.metric("processed") == 1
    (entry,) = stack.r.xrange(keys.DROPPED)
    fields = entry[1]
    assert json.loads(fields["e"])["eventId"] == "evt-A"
    assert "grace" in fields["reason"]
    p = profile(stack, "user:u123")
    assert p["traits"]["plan"]["v"] == "pro"
    assert p["meta"]["firstSeen"] == "2025-10-04T11:00:00.000Z"


def test_windowing_example_arrival_order_a_d_b_c(stack: Stack) -> None:
    """Arrival A, D, B, C as in the seed's timeline: counter 2, plan pro."""
    stack.set_clock("2025-10-04T10:00:01Z")
    stack.start_api()
    stack.start_worker()
    arrivals = [
        ("10:00:01", "A", "10:00:00", {"type": "IDENTIFY", "traits": {"plan": "free"}}),
        ("10:00:20", "D", "10:00:15", {"type": "IDENTIFY", "traits": {"plan": "pro"}}),
        ("10:00:25", "B", "10:00:05", {"type": "TRACK", "name": "Feature Used"}),
        ("10:00:26", "C", "10:00:10", {"type": "TRACK", "name": "Feature Used"}),
    ]
    for arrives, name, ts, payload in arrivals:
        stack.set_clock(f"2025-10-04T{arrives}Z")
        stack.send(f"evt-{name}", f"2025-10-04T{ts}Z", userId="u123", **payload)
    stack.set_clock("2025-10-04T10:00:30Z")
    stack.wait_metric("processed", 4)
    p = profile(stack, "user:u123")
    assert p["traits"]["plan"]["v"] == "pro"
    assert counter_total(stack, p["cid"], "Feature Used") == 2
    assert counter_total(stack, p["cid"], keys.ALL_TRACK) == 2
    assert stack.metric("late") == 3  # D, B and C arrived at or behind the watermark
    assert stack.metric("dropped") == 0


def test_windowing_buffers_until_the_watermark_then_applies_once(stack: Stack) -> None:
    """All four arrive before the watermark passes them: nothing applies until it does."""
    stack.set_clock("2025-10-04T10:00:00Z")
    stack.start_api()
    stack.start_worker()
    for name, ts in (("A", "10:00:00"), ("D", "10:00:15"), ("B", "10:00:05"), ("C", "10:00:10")):
        payload = (
            {"type": "TRACK", "name": "Feature Used"}
            if name in "BC"
            else {"type": "IDENTIFY", "traits": {"plan": "pro" if name == "D" else "free"}}
        )
        stack.send(f"evt-{name}", f"2025-10-04T{ts}Z", userId="u123", **payload)
    wait_until(
        lambda: sum(int(v) for v in stack.r.hvals(keys.METRICS_BUFFERED)) == 4,
        message="four events buffered",
    )
    assert stack.metric("processed") == 0
    assert stack.r.get(keys.identifier("user:u123")) is None
    stack.set_clock("2025-10-04T10:00:12Z")  # watermark 10:00:07: A and B are ready
    stack.wait_metric("processed", 2)
    p = profile(stack, "user:u123")
    assert p["traits"]["plan"]["v"] == "free"
    assert counter_total(stack, p["cid"], "Feature Used") == 1
    stack.set_clock("2025-10-04T10:00:30Z")
    stack.wait_metric("processed", 4)
    p = profile(stack, "user:u123")
    assert p["traits"]["plan"]["v"] == "pro"
    assert counter_total(stack, p["cid"], "Feature Used") == 2
    assert stack.metric("late") == 0


def test_identity_example_gives_one_canonical_profile(stack: Stack) -> None:
    stack.set_clock("2025-10-04T09:00:04Z")
    stack.start_api()
    stack.start_worker()
    stack.send("e1", "2025-10-04T09:00:00Z", type="IDENTIFY", anonymousId="anon-123")
    stack.send("e2", "2025-10-04T09:00:01Z", type="TRACK", anonymousId="anon-123", name="Viewed")
    stack.send(
        "e3", "2025-10-04T09:00:02Z", type="ALIAS", anonymousId="anon-123", userId="user-456"
    )
    stack.send(
        "e4", "2025-10-04T09:00:03Z", type="IDENTIFY", userId="user-456", email="User@Example.com"
    )
    stack.set_clock("2025-10-04T09:00:10Z")
    stack.wait_metric("processed", 4)
    p = profile(stack, "anon:anon-123")
    assert p["ids"] == {"anon:anon-123", "user:user-456", "email:user@example.com"}
    for identifier in p["ids"]:
        assert stack.r.get(keys.identifier(identifier)) == p["cid"]
    assert counter_total(stack, p["cid"], "Viewed") == 1
    assert int(stack.r.get(keys.PROFILE_SEQ)) == 1
