"""The projected ``profile_view`` (only the traits and counters the definitions read)
evaluates every segment exactly as the full read does.

Random profiles are built by the real apply script (traits set, overwritten and
tombstoned, TRACKs of several names over hours, anonymous and identified profiles,
merges); random rule definitions are added to the built-ins; each profile is read
both ways (``profile_view`` with and without the projection of
``cdp.segments.definitions.reads_of``) and every segment is evaluated on both
snapshots at several times: the answers and due times must agree, and everything but
the traits and counters must be the same.
"""

from __future__ import annotations

import random
from typing import Any

from cdp.segments.definitions import Segment, builtins, parse_definition, reads_of
from cdp.segments.engine import parse_view
from cdp.streams import text
from tests.support.events import event, track
from tests.support.lua import LuaHarness
from tests.support.segments import full_view

MINUTE = 60_000
HOUR = 60 * MINUTE
TRAITS = ["plan", "seats", "country", "vip", "tags"]
EVENTS = ["Clicked", "Viewed", "Bought"]
DURATIONS = ["1m", "10m", "30m", "1h", "3h", "24h"]


def random_value(rng: random.Random) -> Any:
    return rng.choice(
        [None, "pro", "free", "FR", 1, 3, 7.5, True, ["a", "b"], "2025-10-04T12:00:00Z"]
    )


def random_leaf(rng: random.Random) -> dict[str, Any]:
    kind = rng.choice(["trait", "trait", "count", "inactive", "returned"])
    if kind == "trait":
        op = rng.choice(["eq", "ne", "in", "exists", "contains", "gt", "lte"])
        rule: dict[str, Any] = {"trait": rng.choice(TRAITS), "op": op}
        if op == "in":
            rule["value"] = ["pro", 3, "FR"]
        elif op in ("gt", "lte"):
            rule["value"] = rng.choice([2, 5, "2025-10-04T11:00:00Z"])
        elif op != "exists":
            rule["value"] = rng.choice(["pro", "FR", 3, True, "a"])
        return rule
    if kind == "count":
        spec: dict[str, Any] = {"within": rng.choice(DURATIONS), "gte": rng.randint(1, 4)}
        if rng.random() < 0.7:
            spec["event"] = rng.choice(EVENTS)
        return {"count": spec}
    if kind == "inactive":
        return {"inactive": rng.choice(DURATIONS)}
    return {"returned": {"after": rng.choice(DURATIONS[:3]), "within": rng.choice(DURATIONS)}}


def random_rule(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    shape = rng.random() if depth < 2 else 1.0
    if shape < 0.25:
        return {"all": [random_rule(rng, depth + 1) for _ in range(rng.randint(1, 3))]}
    if shape < 0.45:
        return {"any": [random_rule(rng, depth + 1) for _ in range(rng.randint(1, 3))]}
    if shape < 0.55:
        return {"not": random_rule(rng, depth + 1)}
    return random_leaf(rng)


def random_definitions(rng: random.Random, lua: LuaHarness) -> dict[str, Segment]:
    segments = builtins(lua.settings)
    for n in range(rng.randint(1, 4)):
        segments[f"s{n}"] = parse_definition(f"s{n}", {"rule": random_rule(rng)})
    return segments


def build_profiles(rng: random.Random, lua: LuaHarness, now_ms: int) -> None:
    users = [("user", f"u{k}") for k in range(4)] + [("anon", f"a{k}") for k in range(3)]
    events = []
    for n in range(rng.randint(10, 40)):
        ts = now_ms - rng.randint(0, 26 * 60) * MINUTE - rng.randint(0, 59_999)
        kind, who = rng.choice(users)
        ids = {kind: who}
        if rng.random() < 0.1:  # an event naming two profiles merges them
            ids |= {"user": rng.choice(users[:4])[1]} if kind == "anon" else {"anon": "a0"}
        if rng.random() < 0.4:
            traits = {rng.choice(TRAITS): random_value(rng) for _ in range(rng.randint(1, 3))}
            events.append(event(f"e{n}", ts, traits=traits, **ids))
        else:
            events.append(track(f"e{n}", ts, rng.choice(EVENTS), **ids))
    for ev in sorted(events, key=lambda e: (e.ts, e.eventId)):
        lua.apply(ev)


def names(pairs: list[Any]) -> set[str]:
    """The names of a [name, value, ...] reply."""
    return {text(name) for name in pairs[::2]}


def pairs(flat: list[Any]) -> dict[str, Any]:
    return {text(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}


def row_without_reads(row: Any) -> tuple[Any, ...]:
    return (
        row.version,
        row.merged_into,
        row.user,
        row.last_seen_ms,
        row.first_seen,
        row.segments,
        row.first_identifier,
        row.outbox,
        row.evaluated_ms,
        row.evaluations,
    )


def test_the_projected_read_evaluates_every_segment_as_the_full_read(make_harness, now_ms):
    checked = projected_smaller = 0
    for seed in range(40):
        rng = random.Random(seed)
        lua = make_harness()
        build_profiles(rng, lua, now_ms)
        segments = random_definitions(rng, lua)
        reads = reads_of(segments)
        cids = lua.profile_ids() + ["p99"]
        full = lua.run(full_view(lua.redis, cids))
        projected = lua.run(
            lua.scripts.profile_view(cids, traits=reads.traits, counters=reads.counters)
        )
        for cid, whole, part in zip(cids, full, projected, strict=True):
            assert row_without_reads(part) == row_without_reads(whole)
            assert names(part.traits) <= (reads.traits or set())
            assert names(part.counters) <= (reads.counters or set())
            a = parse_view(cid, whole, lua.settings.counter_bucket_ms)
            b = parse_view(cid, part, lua.settings.counter_bucket_ms)
            if a is None or b is None:
                assert a is None and b is None
                continue
            projected_smaller += len(part.traits) + len(part.counters) < len(whole.traits) + len(
                whole.counters
            )
            for at in (now_ms, now_ms + 30 * MINUTE, now_ms + 3 * HOUR, now_ms + 25 * HOUR):
                for name, segment in segments.items():
                    assert segment.check(b.view, at) == segment.check(a.view, at), (seed, cid, name)
                    checked += 1
    assert checked > 1000
    assert projected_smaller > 20  # the projection does leave things out


def test_the_projection_reads_the_traits_and_counters_named_that_exist(lua, now_ms):
    lua.apply(event("e1", now_ms - HOUR, user="u1", traits={"plan": "pro", "seats": 2}))
    lua.apply(track("e2", now_ms - HOUR, "Clicked", user="u1"))
    (full,) = lua.run(full_view(lua.redis, ["p1"]))  # every trait and counter
    assert names(full.traits) == {"plan", "seats"}
    assert names(full.counters) == {"Clicked", "$track", "$seen"}
    (none,) = lua.run(lua.scripts.profile_view(["p1"], traits=(), counters=()))
    assert (none.traits, none.counters) == ([], [])
    assert row_without_reads(none) == row_without_reads(full)
    (some,) = lua.run(
        lua.scripts.profile_view(["p1"], traits=["seats", "nope"], counters=["$track", "Nope"])
    )
    assert names(some.traits) == {"seats"} and names(some.counters) == {"$track"}
    assert pairs(some.traits)["seats"] == pairs(full.traits)["seats"]
    assert pairs(some.counters)["$track"] == pairs(full.counters)["$track"]
