"""The segment rules said plainly: the oracle for ``cdp.segments.rules.compile_rule``.

``evaluate(rule, view, now_ms)`` answers what the compiled rule must: whether the
profile matches and, when time alone can change that answer, the earliest time at
which it may. It walks the tree on every call, builds its lists and parses its times
each time: written to be read, not to be fast. The product never runs it;
tests/unit/test_rules.py holds the compiled rules to it on generated rules and views.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, assert_never

from cdp.segments.rules import (
    All,
    Any_,
    Count,
    Inactive,
    Not,
    ProfileView,
    Result,
    Returned,
    Rule,
    TraitRule,
)


def evaluate(rule: Rule, view: ProfileView, now_ms: int) -> Result:
    match rule:
        case All(rules) | Any_(rules):
            results = [evaluate(r, view, now_ms) for r in rules]
            # A child with the absorbing value (false for all, true for any) decides the
            # result; it can only change once every such child has changed.
            absorbing = isinstance(rule, Any_)
            deciding = [due for ok, due in results if ok == absorbing]
            if not deciding:
                return not absorbing, _earliest(*(due for _, due in results))
            if any(due is None for due in deciding):
                return absorbing, None
            return absorbing, _earliest(*deciding)
        case Not(inner):
            ok, due = evaluate(inner, view, now_ms)
            return not ok, due
        case TraitRule(name, op, value):
            return _trait(view.traits, name, op, value), None
        case Count(event, within_ms, gte):
            return _count(view, event, within_ms, gte, now_ms)
        case Inactive(for_ms):
            if view.last_seen_ms is None:
                return False, None
            since = view.last_seen_ms + for_ms
            return (True, None) if now_ms >= since else (False, since)
        case Returned(after_ms, within_ms):
            qualifying = [t for t, gap in view.returns if gap >= after_ms]
            current = [t for t in qualifying if now_ms - within_ms <= t <= now_ms]
            upcoming = [t for t in qualifying if t > now_ms]
            if current:
                return True, max(current) + within_ms + 1
            return False, min(upcoming) if upcoming else None
        case _:
            assert_never(rule)


def _earliest(*times: int | None) -> int | None:
    known = [t for t in times if t is not None]
    return min(known) if known else None


def _trait(traits: dict[str, Any], name: str, op: str, value: Any) -> bool:
    if op == "exists":
        return traits.get(name) is not None
    if name not in traits or traits[name] is None:
        return op == "ne"
    have = traits[name]
    if op == "eq":
        return bool(have == value)
    if op == "ne":
        return bool(have != value)
    if op == "in":
        return have in value
    if op == "contains":
        if isinstance(have, str) and isinstance(value, str):
            return value in have
        return isinstance(have, list) and value in have
    left, right = have, value
    if isinstance(value, str):
        left, right = _time(have), _time(value)
    elif isinstance(have, bool) or not isinstance(have, int | float):
        return False
    if left is None or right is None:
        return False
    return bool(
        {"gt": left > right, "gte": left >= right, "lt": left < right, "lte": left <= right}[op]
    )


def _time(value: Any) -> float | None:
    """An ISO-8601 time with a zone, as epoch seconds; None for anything else."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.timestamp() if parsed.tzinfo else None


def _count(view: ProfileView, event: str, within_ms: int, gte: int, now_ms: int) -> Result:
    """Buckets whose span overlaps (now - within, now] count; exact to a bucket."""
    buckets = view.counters.get(event, {})
    start = now_ms - within_ms
    live = sorted((b, n) for b, n in buckets.items() if b + view.bucket_ms > start and b <= now_ms)
    total = sum(n for _, n in live)
    if total < gte:
        future = [b for b in buckets if b > now_ms]
        return False, min(future) if future else None
    # It stops holding once enough of the oldest buckets have left the window: the
    # first oldest-first prefix whose removal leaves fewer than gte.
    remaining = [total - sum(n for _, n in live[: i + 1]) for i in range(len(live))]
    leaving = next(bucket for (bucket, _), left in zip(live, remaining, strict=True) if left < gte)
    return True, leaving + view.bucket_ms + within_ms
