"""Segment transitions under concurrent evaluators, on a real redis-server.

Several evaluators (a worker's tick, the sweeper, a second worker, a host whose clock
is behind) may read one profile and write its transitions in any interleaving. Each
evaluator here is the product's ``SegmentEngine`` on a client whose pipelines wait at a
gate (``tests.support.interleave``), so the test stops it between its read and its
write and decides what lands in between. Whatever the interleaving, per (segment,
profile) the events strictly alternate, each one is a real change of the answer, and
their times never go backwards (DESIGN.md, "Segments").
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from redis.asyncio import Redis

from cdp import keys
from cdp.events import StreamEvent, iso_ms
from cdp.scripts import Scripts
from cdp.segments.definitions import builtins, delete_definition
from cdp.segments.engine import SegmentEngine, parse_view
from cdp.settings import Settings, load_settings
from tests.support.interleave import Evaluator, apply_events, hooked_client
from tests.support.segments import full_view
from tests.support.values import T0_MS as T0
from tests.support.values import ms

pytestmark = pytest.mark.integration

S = 1_000
MIN = 60 * S
H = 60 * MIN


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def track(event_id: str, ts: int, user: str = "u1") -> StreamEvent:
    return StreamEvent(
        eventId=event_id, ts=ts, receivedAt=ts, type="TRACK", userId=user, name="Clicked"
    )


def identify(event_id: str, ts: int, plan: str, user: str = "u1") -> StreamEvent:
    return StreamEvent(
        eventId=event_id, ts=ts, receivedAt=ts, type="IDENTIFY", userId=user, traits={"plan": plan}
    )


async def stream(redis: Redis) -> list[dict[str, Any]]:
    return [json.loads(f[b"e"]) for _, f in await redis.xrange(keys.SEGMENT_EVENTS)]


def summary(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["payload"]["name"], e["ts"]) for e in events]


async def power_user(redis: Redis, settings: Settings) -> None:
    """p1 (u1): five TRACKs at T0..T0+4s, applied at T0+10s; not evaluated yet."""
    await apply_events(redis, settings, T0 + 10 * S, [track(f"t{i}", T0 + i * S) for i in range(5)])


def test_an_evaluation_read_before_the_sweepers_exit_cannot_enter_again(redis_url: str) -> None:
    """The observed ENTER, EXIT, ENTER, EXIT: a tick reads p1 before the power user's
    expiry, the worker's own evaluation ENTERs it, the sweeper EXITs it past the
    expiry, then the tick's write lands. The tick must not ENTER again (at a time
    before the EXIT), so the sweeper has nothing to EXIT again."""

    async def scenario() -> list[dict[str, Any]]:
        redis = Redis.from_url(redis_url)
        settings = load_settings(env={}, redis_url=redis_url)
        await power_user(redis, settings)
        t1 = T0 + 10 * S
        tick = Evaluator(redis_url, settings)
        other = SegmentEngine(redis, Scripts(redis), settings)
        try:
            await tick.start(["p1"], t1)
            assert tick.waiting  # read p1 (not a member, five TRACKs): about to ENTER
            assert await other.evaluate(["p1"], t1) == ["seg:power_user:p1:1"]
            expiry = int(await redis.zscore(keys.SEGMENTS_DUE, "p1"))
            assert expiry == T0 + MIN + 24 * H  # the first bucket leaves the window
            assert await other.evaluate(["p1"], expiry + S) == ["seg:power_user:p1:2"]
            await tick.finish()  # its write goes now
            assert await other.evaluate(["p1"], expiry + 2 * S) == []
            return await stream(redis)
        finally:
            await tick.close()
            await redis.aclose()

    events = run(scenario())
    expiry = T0 + MIN + 24 * H
    assert summary(events) == [
        ("power_user ENTER", iso_ms(T0 + 10 * S)),
        ("power_user EXIT", iso_ms(expiry + S)),
    ]


def test_a_host_whose_clock_is_behind_evaluates_no_earlier_than_the_last_evaluation(
    redis_url: str,
) -> None:
    """Two hosts: one past the expiry EXITs p1; then an event changes p1 (a new version)
    and a host whose clock is two seconds behind evaluates it. "Still a power user" is
    the answer of the past: it evaluates at the last evaluation's time instead, so no
    ENTER and no second EXIT after it (the event, after a day of silence, is a return:
    reengage ENTERs, at that time)."""

    async def scenario() -> list[dict[str, Any]]:
        redis = Redis.from_url(redis_url)
        settings = load_settings(env={}, redis_url=redis_url)
        engine = SegmentEngine(redis, Scripts(redis), settings)
        try:
            await power_user(redis, settings)
            assert await engine.evaluate(["p1"], T0 + 10 * S) == ["seg:power_user:p1:1"]
            expiry = int(await redis.zscore(keys.SEGMENTS_DUE, "p1"))
            assert await engine.evaluate(["p1"], expiry + S) == ["seg:power_user:p1:2"]
            slow = expiry - S  # this host's "now"
            result = await apply_events(redis, settings, slow, [identify("i1", slow, "free")])
            assert result.profiles == ("p1",)
            assert await engine.evaluate(["p1"], slow) == ["seg:reengage:p1:1"]
            assert await engine.evaluate(["p1"], expiry + 5 * S) == []  # the sweeper
            return await stream(redis)
        finally:
            await redis.aclose()

    events = run(scenario())
    assert summary(events) == [
        ("power_user ENTER", iso_ms(T0 + 10 * S)),
        ("power_user EXIT", iso_ms(T0 + MIN + 24 * H + S)),
        ("reengage ENTER", iso_ms(T0 + MIN + 24 * H + S)),
    ]


def test_two_workers_evaluating_one_profile_at_different_times(redis_url: str) -> None:
    """Two workers own the partitions of p1's userId and of its anonymousId. Both apply
    and read p1; the one with the later clock writes first (EXIT, past the expiry), the
    other's ENTER from before the expiry is refused and re-evaluated."""

    async def scenario() -> list[dict[str, Any]]:
        redis = Redis.from_url(redis_url)
        settings = load_settings(env={}, redis_url=redis_url)
        early, late = Evaluator(redis_url, settings), Evaluator(redis_url, settings)
        try:
            await power_user(redis, settings)
            expiry = T0 + MIN + 24 * H
            await early.start(["p1"], expiry - S)
            await late.start(["p1"], expiry + S)
            assert early.waiting and late.waiting  # both read "not a member"
            await late.commit()  # its answer: not a power user, nothing to write but due
            await early.finish()
            return await stream(redis)
        finally:
            await early.close()
            await late.close()
            await redis.aclose()

    assert run(scenario()) == []


def test_an_evaluation_at_the_last_evaluations_time_does_not_hide_itself(redis_url: str) -> None:
    """ABA: an accepted evaluation at the profile's evaluatedMs E leaves E as it was, so E
    cannot tell whether an evaluation was accepted since a read. p1 was evaluated at E;
    five TRACKs change it. Evaluator A (clock behind: it evaluates at E) and B (a day
    later, past the power-user window) both read it; A ENTERs power_user; B, which read
    "not a member" and finds "not a member", must not write over that (power_user would
    stay in with no due time: wrong until p1's next event): it is refused, reads again
    and EXITs."""

    async def scenario() -> tuple[list[dict[str, Any]], float | None]:
        redis = Redis.from_url(redis_url)
        settings = load_settings(env={}, redis_url=redis_url)
        engine = SegmentEngine(redis, Scripts(redis), settings)
        a, b = Evaluator(redis_url, settings), Evaluator(redis_url, settings)
        e = T0 + 10 * S
        try:
            await apply_events(redis, settings, T0, [identify("i0", T0, "free")])
            assert await engine.evaluate(["p1"], e) == []
            assert await redis.hget(keys.profile("p1"), "evaluatedMs") == str(e).encode()
            await apply_events(redis, settings, e, [track(f"t{i}", T0 + i * S) for i in range(5)])
            await a.start(["p1"], e - S)  # evaluates at E: a power user
            await b.start(["p1"], T0 + MIN + 24 * H + S)  # past the expiry: not one
            assert a.waiting and b.waiting
            await a.commit()
            await b.finish()
            return await stream(redis), await redis.zscore(keys.SEGMENTS_DUE, "p1")
        finally:
            await a.close()
            await b.close()
            await redis.aclose()

    events, due = run(scenario())
    assert summary(events) == [
        ("power_user ENTER", iso_ms(T0 + 10 * S)),
        ("power_user EXIT", iso_ms(T0 + MIN + 24 * H + S)),
    ]
    assert [e["eventId"] for e in events] == ["seg:power_user:p1:1", "seg:power_user:p1:2"]
    assert due is None or due > T0 + MIN + 24 * H + S  # nothing left due before B's time


# -- property: any interleaving of evaluators, applies and clocks ----------------------

EVALUATORS = 3

step = st.one_of(
    st.tuples(st.just("advance"), st.integers(0, 40 * MIN)),
    st.tuples(st.just("apply"), st.sampled_from(["track", "pro", "free"]), st.integers(-5, 5)),
    st.tuples(st.just("start"), st.integers(0, EVALUATORS - 1), st.integers(-10, 10)),
    st.tuples(st.just("commit"), st.integers(0, EVALUATORS - 1)),
    st.tuples(st.just("sweep"), st.integers(-10, 10)),
)


@hsettings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(step, min_size=1, max_size=30))
def test_any_interleaving_keeps_transitions_alternating_real_and_in_time_order(
    redis_url: str, steps: list[tuple[Any, ...]]
) -> None:
    """Three evaluators and a sweeper with skewed clocks (minutes apart), applies in
    between, reads and writes in any order. After each write, every new event must be
    the answer of its rule at the event's time on the profile as it is; per (segment,
    profile) the events alternate ENTER, EXIT, ... with consecutive numbers and
    non-decreasing times."""
    settings = load_settings(
        env={}, redis_url=redis_url, power_user_threshold=3, power_user_window_ms=30 * MIN
    )
    segments = builtins(settings)

    async def scenario() -> None:
        redis = Redis.from_url(redis_url)
        await redis.flushall()
        evaluators = [Evaluator(redis_url, settings) for _ in range(EVALUATORS)]
        sweeper = SegmentEngine(redis, Scripts(redis), settings)
        checked = 0

        async def check_new_events() -> None:
            nonlocal checked
            events = await stream(redis)
            if len(events) == checked:
                return
            (row,) = await full_view(redis, ["p1"])
            snap = parse_view("p1", row, settings.counter_bucket_ms)
            assert snap is not None
            for e in events[checked:]:
                props = e["payload"]["properties"]
                matches, _ = segments[props["segment"]].check(snap.view, ms(e["ts"]))
                assert matches == (props["transition"] == "ENTER"), (e, snap)
            checked = len(events)

        clock = T0 + H
        n = 0
        try:
            await apply_events(redis, settings, clock, [identify("e0", clock, "free")])
            for s in steps:
                if s[0] == "advance":
                    clock += s[1]
                elif s[0] == "apply":
                    n += 1
                    ts = clock + s[2] * S
                    ev = track(f"e{n}", ts) if s[1] == "track" else identify(f"e{n}", ts, s[1])
                    await apply_events(redis, settings, clock + 5 * S, [ev])
                elif s[0] == "start" and evaluators[s[1]].idle:
                    await evaluators[s[1]].start(["p1"], clock + s[2] * MIN)
                elif s[0] == "commit" and evaluators[s[1]].waiting:
                    await evaluators[s[1]].commit()
                elif s[0] == "sweep":  # an evaluation from read to write, undisturbed
                    await sweeper.evaluate(["p1"], clock + s[1] * MIN)
                await check_new_events()
            for evaluator in evaluators:
                await evaluator.finish()
                await check_new_events()
            # The sweeper, much later: settles whatever time alone changes.
            await sweeper.evaluate(["p1"], clock + 3 * H)
            await check_new_events()
            per_segment: dict[str, list[dict[str, Any]]] = {}
            for e in await stream(redis):
                per_segment.setdefault(e["payload"]["properties"]["segment"], []).append(e)
            for name, events in per_segment.items():
                kinds = [e["payload"]["properties"]["transition"] for e in events]
                assert kinds == ["ENTER", "EXIT"] * (len(kinds) // 2) + ["ENTER"] * (
                    len(kinds) % 2
                ), (name, summary(events))
                assert [e["eventId"] for e in events] == [
                    f"seg:{name}:p1:{i}" for i in range(1, len(events) + 1)
                ]
                times = [ms(e["ts"]) for e in events]
                assert times == sorted(times), (name, summary(events))
        finally:
            for evaluator in evaluators:
                await evaluator.close()
            await redis.aclose()

    run(scenario())


# -- deleting a segment while evaluators write ---------------------------------------

VIP = {"rule": {"trait": "plan", "op": "eq", "value": "pro"}, "description": ""}


async def define(redis: Redis, name: str, definition: dict[str, Any]) -> None:
    """What PUT /cdp/segments/{name} stores (the backfill aside)."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(keys.SEGMENTS, name, json.dumps(definition))
        pipe.incr(keys.SEGMENTS_VERSION)
        await pipe.execute()


@pytest.mark.parametrize("lands_after", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("wish", ["EXIT", "ENTER"])
def test_deleting_a_segment_while_an_evaluator_writes_it(
    redis_url: str, wish: str, lands_after: int
) -> None:
    """An evaluator loaded the definitions (custom segment vip) and read p1 before vip is
    deleted; its write (vip EXIT, or vip ENTER) lands after the deletion's n-th round
    trip. Whatever n: nothing is ever ENTERed into the deleted segment, no membership of
    it is left, and after vip is defined again its events never reuse an eventId."""
    settings = load_settings(env={}, redis_url=redis_url)

    async def scenario() -> tuple[list[dict[str, Any]], list[Any], list[Any]]:
        redis = Redis.from_url(redis_url)
        engine = SegmentEngine(redis, Scripts(redis), settings)
        stale = Evaluator(redis_url, settings)
        t = T0
        try:
            await define(redis, "vip", VIP)
            await apply_events(redis, settings, t, [identify("e1", t, "pro")])
            await apply_events(redis, settings, t, [identify("e2", t, "pro", user="u2")])
            assert await engine.evaluate(["p2"], t + S) == [
                "seg:pro_plan:p2:1",
                "seg:vip:p2:1",
            ]
            if wish == "EXIT":  # p1 is a member, then leaves the plan
                await engine.evaluate(["p1"], t + S)
                await apply_events(redis, settings, t + 2 * S, [identify("e3", t + 2 * S, "free")])
            await stale.start(["p1"], t + 3 * S)
            assert stale.waiting  # read p1, about to write vip (and pro_plan) {wish}

            async def after(n: int) -> None:
                if n == lands_after:
                    await stale.finish()

            deleting = hooked_client(redis_url, after)
            try:
                assert await delete_definition(deleting, "vip")
            finally:
                await deleting.aclose()
            await stale.finish()
            members_after_delete = await redis.zrange(keys.segment_members("vip"), 0, -1)
            states_after_delete = [
                json.loads(raw)["in"]
                for raw in await redis.hmget(keys.profile_segments("p1"), "vip")
                if raw is not None
            ]
            # vip defined again: p1 enters and leaves it, numbering after what it had.
            await define(redis, "vip", VIP)
            await apply_events(redis, settings, t + 4 * S, [identify("e4", t + 4 * S, "pro")])
            await engine.evaluate(["p1"], t + 5 * S)
            await apply_events(redis, settings, t + 6 * S, [identify("e5", t + 6 * S, "free")])
            await engine.evaluate(["p1"], t + 7 * S)
            return await stream(redis), members_after_delete, states_after_delete
        finally:
            await stale.close()
            await redis.aclose()

    events, members_after_delete, states_after_delete = run(scenario())
    assert members_after_delete == []
    assert True not in states_after_delete
    ids = [e["eventId"] for e in events]
    assert len(ids) == len(set(ids)), summary(events)
    vip = [
        e["payload"]["name"]
        for e in events
        if e["payload"]["properties"]["canonicalId"] == "p1"
        and e["payload"]["properties"]["segment"] == "vip"
    ]
    before_redefinition = ["vip ENTER"] if wish == "EXIT" else []
    assert vip == [*before_redefinition, "vip ENTER", "vip EXIT"], summary(events)


@pytest.mark.parametrize("lands_after", [1, 2, 3, 4, 5])
def test_a_segment_defined_again_while_its_deletion_runs(redis_url: str, lands_after: int) -> None:
    """vip (plan pro) is deleted; after the deletion's n-th round trip it is defined again
    with another rule (plan enterprise) and p1, a member, is evaluated against it (its
    backfill): EXIT. Ending the old memberships must not overwrite that: p1's later
    ENTER and EXIT never reuse an eventId."""
    settings = load_settings(env={}, redis_url=redis_url)
    enterprise = {"rule": {"trait": "plan", "op": "eq", "value": "enterprise"}}

    async def scenario() -> list[dict[str, Any]]:
        redis = Redis.from_url(redis_url)
        engine = SegmentEngine(redis, Scripts(redis), settings)
        t = T0
        try:
            await define(redis, "vip", VIP)
            await apply_events(redis, settings, t, [identify("e1", t, "pro")])
            assert "seg:vip:p1:1" in await engine.evaluate(["p1"], t + S)

            async def after(n: int) -> None:
                if n == lands_after:
                    await define(redis, "vip", enterprise)
                    await engine.evaluate(["p1"], t + 2 * S)

            deleting = hooked_client(redis_url, after)
            try:
                assert await delete_definition(deleting, "vip")
            finally:
                await deleting.aclose()
            if not await redis.hexists(keys.SEGMENTS, "vip"):  # the deletion was quicker
                await define(redis, "vip", enterprise)
                await engine.evaluate(["p1"], t + 2 * S)
            for i, plan in enumerate(["enterprise", "free"]):
                ts = t + (3 + 2 * i) * S
                await apply_events(redis, settings, ts, [identify(f"e{2 + i}", ts, plan)])
                await engine.evaluate(["p1"], ts + S)
            return await stream(redis)
        finally:
            await redis.aclose()

    events = run(scenario())
    ids = [e["eventId"] for e in events]
    assert len(ids) == len(set(ids)), summary(events)
    vip = [(e["payload"]["name"], e["eventId"]) for e in events if "vip" in e["eventId"]]
    assert [name for name, _ in vip][-2:] == ["vip ENTER", "vip EXIT"], vip
