"""Returns (the input of "returned" rules, hence of reengage) agree in every order.

They are derived from the "$seen" activity buckets rather than measured at apply
time, so a late event, or one of the same person's events from another partition,
cannot change which returns a profile has.
"""

from __future__ import annotations

import asyncio
import itertools
import random

import fakeredis

from cdp import keys
from cdp.events import StreamEvent
from cdp.scripts import ProfileRow
from cdp.segments.engine import parse_view
from cdp.segments.rules import ProfileView, compile_rule, parse_rule
from tests.support.lua import apply_in_order
from tests.support.segments import full_view
from tests.support.values import T0_MS as T0

MIN = 60_000
REENGAGE = compile_rule(
    parse_rule(
        {"all": [{"returned": {"after": "10m", "within": "1h"}}, {"not": {"inactive": "10m"}}]}
    )
)


def view_after(events: list[StreamEvent]) -> ProfileView:
    client = apply_in_order(events, random.Random(0), split=False, shuffle=False)
    server = client.connection_pool.connection_kwargs["server"]

    async def read() -> list[ProfileRow]:
        redis = fakeredis.FakeAsyncRedis(server=server)
        rows = await full_view(redis, ["p1"])
        await redis.aclose()
        return rows

    (row,) = asyncio.run(read())
    snap = parse_view("p1", row, MIN)
    assert snap is not None
    return snap.view


def test_every_order_gives_the_same_returns_and_the_same_reengage() -> None:
    events = [
        StreamEvent(
            eventId=f"e{m}",
            ts=T0 + m * MIN,
            receivedAt=T0 + m * MIN,
            type="TRACK",
            userId="u1",
            name="Clicked",
        )
        for m in (0, 14, 15)
    ]
    seen = set()
    for order in itertools.permutations(events):
        view = view_after(list(order))
        seen.add(view.returns)
        assert REENGAGE(view, T0 + 16 * MIN) == (True, T0 + 25 * MIN)
    assert seen == {((T0 + 14 * MIN, 14 * MIN),)}


def test_a_return_after_a_gap_longer_than_the_counters_keep_still_counts() -> None:
    old = StreamEvent(
        eventId="old",
        ts=T0 - 3 * 86_400_000,
        receivedAt=T0,
        type="TRACK",
        userId="u1",
        name="Clicked",
    )
    back = StreamEvent(
        eventId="back", ts=T0 + 4 * MIN, receivedAt=T0, type="TRACK", userId="u1", name="Clicked"
    )
    view = view_after([old, back])  # the 3-day-old bucket is past the cutoff: not counted
    assert list(view.counters[keys.SEEN]) == [T0 + 4 * MIN]
    assert REENGAGE(view, T0 + 5 * MIN)[0] is True
