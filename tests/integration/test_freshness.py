"""Freshness: an event is applied when the watermark passes it, not on the next tick.

The worker runs with a ticker-interval of a minute, so its periodic tick never comes
during a test: what is applied was applied by a tick the watermark (or a late event)
woke. Time is the test clock (CDP_CLOCK=redis): an event on time cannot be applied
before the clock passes its ts + window-size, and is applied once it has.
"""

from __future__ import annotations

import pytest

from cdp import keys
from cdp.events import iso_ms as iso
from tests.support.stack import Stack
from tests.support.values import T0_MS
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

WINDOW_MS = 1_000
LONG_TICK = {"ticker_interval": "60s", "window_size": "1s"}


def start(stack: Stack) -> None:
    stack.set_clock(T0_MS)
    stack.start_api(**LONG_TICK)
    stack.start_worker("w", **LONG_TICK)
    wait_until(
        lambda: all(stack.r.get(keys.lease(p)) for p in range(stack.partitions)),
        message="the worker to own every partition",
    )


def applied(stack: Stack, user: str) -> bool:
    return stack.r.get(keys.identifier(f"user:{user}")) is not None


def test_an_event_on_time_is_applied_once_the_watermark_passes_it(stack: Stack) -> None:
    start(stack)
    assert (
        stack.send("fresh-1", iso(T0_MS), type="TRACK", userId="u1", name="Clicked").status == 202
    )
    wait_until(lambda: stack.pending() == 1, message="the event read into the buffer")
    # The clock has not passed ts + window-size: no tick may apply it (whenever it runs).
    assert not applied(stack, "u1")
    stack.set_clock(T0_MS + WINDOW_MS)
    # The next periodic tick is a minute away: only a tick planned for the event's due
    # time (ts + window-size) applies it within the deadline.
    wait_until(lambda: applied(stack, "u1"), timeout=30, message="the event applied")
    assert stack.metric("processed") == 1
    wait_until(lambda: stack.pending() == 0, message="its entry acknowledged")


def test_a_late_event_is_applied_at_once(stack: Stack) -> None:
    start(stack)
    # ts <= now - window-size at arrival: late (not dropped: within grace-period), due
    # at once; the clock does not move.
    late = iso(T0_MS - WINDOW_MS - 500)
    assert stack.send("late-1", late, type="TRACK", userId="u2", name="Clicked").status == 202
    wait_until(lambda: applied(stack, "u2"), timeout=30, message="the late event applied")
    assert stack.metric("processed") == 1
    assert stack.metric("late") == 1


def test_events_arriving_over_time_are_each_applied_when_due(stack: Stack) -> None:
    start(stack)
    for i in range(5):
        ts = T0_MS + i * 2 * WINDOW_MS
        stack.set_clock(ts)
        user = f"s{i}"
        assert (
            stack.send(f"seq-{i}", iso(ts), type="TRACK", userId=user, name="Clicked").status == 202
        )
        wait_until(lambda: stack.pending() == 1, message="the event read into the buffer")
        assert not applied(stack, user)
        stack.set_clock(ts + WINDOW_MS)
        wait_until(lambda u=user: applied(stack, u), timeout=30, message=f"event {i} applied")
    assert stack.metric("processed") == 5
