"""The segment rule language: JSON in, a tree of conditions out, evaluated purely.

A rule is one JSON object of one of these shapes (combine freely)::

    {"all": [rule, ...]}          every rule holds            (at least one)
    {"any": [rule, ...]}          at least one rule holds     (at least one)
    {"not": rule}                 the rule does not hold
    {"trait": "plan", "op": "eq", "value": "pro"}
        op: eq, ne, in (value is a list), exists (no value), contains (a string or
        list trait contains value), gt, gte, lt, lte (numbers, or ISO-8601 times)
    {"count": {"event": "Clicked", "within": "24h", "gte": 5}}
        at least ``gte`` TRACK events named ``event`` (any TRACK when absent) whose
        time falls within the last ``within`` (to counter-bucket granularity)
    {"inactive": "10m"}           no event for at least this long
    {"returned": {"after": "10m", "within": "1h"}}
        an event arrived after at least ``after`` of inactivity, in the last ``within``

Durations are a whole number and a unit (``DURATION``: 500ms, 5s, 2m, 24h, 7d); times
compared with gt/gte/lt/lte are RFC 3339 with a zone (cdp.events.DATE_TIME).

``parse_rule(obj)`` validates (msgspec for each node's fields) and raises
``RuleError`` whose message starts with the JSON path of the offending node
(``$.all[1].count.within``). ``evaluate(rule, view, now_ms)`` returns whether the
profile matches and, when time alone can change that answer, the earliest time at
which it may (the due time the sweeper waits for). ``evaluate`` is the reference;
``compile_rule(rule)`` turns a rule into a closure that returns exactly what
``evaluate`` does, only faster (the engine runs the closures; a property test holds
the two together).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal

import msgspec

from cdp import keys
from cdp.errors import CdpError
from cdp.events import DATE_TIME
from cdp.settings import parse_duration_ms

# Also the ``Duration`` pattern of the OpenAPI document.
DURATION = r"^[1-9][0-9]{0,15}(ms|s|m|h|d)$"
_DURATION = re.compile(DURATION)
_DATE_TIME = re.compile(DATE_TIME)


class RuleError(CdpError):
    """An invalid rule; the message starts with the path of the offending node."""


@dataclass(frozen=True, slots=True)
class ProfileView:
    """What rules read of a profile (times in epoch ms)."""

    traits: dict[str, Any] = field(default_factory=dict)
    counters: dict[str, dict[int, int]] = field(default_factory=dict)  # name -> bucket -> n
    last_seen_ms: int | None = None
    returns: tuple[tuple[int, int], ...] = ()  # (time of the event, inactivity before it)
    bucket_ms: int = 60_000


# -- the nodes ---------------------------------------------------------------------

TraitOp = Literal["eq", "ne", "in", "exists", "contains", "gt", "gte", "lt", "lte"]


class Trait(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    trait: str
    op: TraitOp
    value: Any = None


class CountSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    within: str
    gte: int
    event: str | None = None


class ReturnedSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    after: str
    within: str


@dataclass(frozen=True, slots=True)
class All:
    rules: tuple[Rule, ...]


@dataclass(frozen=True, slots=True)
class Any_:
    rules: tuple[Rule, ...]


@dataclass(frozen=True, slots=True)
class Not:
    rule: Rule


@dataclass(frozen=True, slots=True)
class TraitRule:
    name: str
    op: str
    value: Any


@dataclass(frozen=True, slots=True)
class Count:
    event: str  # counter name; keys.ALL_TRACK for any TRACK
    within_ms: int
    gte: int


@dataclass(frozen=True, slots=True)
class Inactive:
    for_ms: int


@dataclass(frozen=True, slots=True)
class Returned:
    after_ms: int
    within_ms: int


Rule = All | Any_ | Not | TraitRule | Count | Inactive | Returned

_SHAPES = "all, any, not, trait, count, inactive or returned"


def parse_rule(obj: Any, path: str = "$") -> Rule:
    """Validate a decoded JSON rule; RuleError names the path of what is wrong."""
    if not isinstance(obj, dict) or not obj:
        raise RuleError(f"{path}: a rule is a JSON object with one of {_SHAPES}")
    if "trait" in obj:
        node = _convert(obj, Trait, path)
        if node.op == "in" and not isinstance(node.value, list):
            raise RuleError(f"{path}.value: op 'in' needs a list")
        if node.op != "exists" and "value" not in obj:
            raise RuleError(f"{path}.value: op {node.op!r} needs a value")
        if node.op in ("gt", "gte", "lt", "lte") and not _orderable(node.value):
            raise RuleError(f"{path}.value: op {node.op!r} needs a number or an ISO-8601 time")
        return TraitRule(node.trait, node.op, node.value)
    if len(obj) != 1:
        raise RuleError(f"{path}: expected exactly one of {_SHAPES}, got {sorted(obj)}")
    ((kind, body),) = obj.items()
    here = f"{path}.{kind}"
    if kind in ("all", "any"):
        if not isinstance(body, list) or not body:
            raise RuleError(f"{here}: expected a non-empty list of rules")
        rules = tuple(parse_rule(r, f"{here}[{i}]") for i, r in enumerate(body))
        return All(rules) if kind == "all" else Any_(rules)
    if kind == "not":
        return Not(parse_rule(body, here))
    if kind == "count":
        spec = _convert(body, CountSpec, here)
        if spec.gte < 1:
            raise RuleError(f"{here}.gte: must be at least 1")
        return Count(
            spec.event or keys.ALL_TRACK, _duration(spec.within, f"{here}.within"), spec.gte
        )
    if kind == "inactive":
        return Inactive(_duration(body, here))
    if kind == "returned":
        spec = _convert(body, ReturnedSpec, here)
        return Returned(
            _duration(spec.after, f"{here}.after"), _duration(spec.within, f"{here}.within")
        )
    raise RuleError(f"{path}: unknown rule {kind!r}; expected one of {_SHAPES}")


def _convert(obj: Any, kind: type[Any], path: str) -> Any:
    try:
        return msgspec.convert(obj, kind)
    except msgspec.ValidationError as exc:
        message = str(exc)
        if " - at `$" in message:
            text, _, where = message.rpartition(" - at `$")
            return _raise(f"{path}{where.rstrip('`')}: {text}")
        return _raise(f"{path}: {message}")


def _raise(message: str) -> Any:
    raise RuleError(message)


def _duration(raw: Any, path: str) -> int:
    if not isinstance(raw, str):
        raise RuleError(f"{path}: expected a duration like '10m', got {raw!r}")
    if not _DURATION.fullmatch(raw):
        raise RuleError(
            f"{path}: {raw!r} is not a duration; write a whole number and a unit, like "
            "'500ms', '5s', '2m', '24h' or '7d'"
        )
    try:
        return parse_duration_ms(raw, path)
    except CdpError as exc:  # pragma: no cover (the pattern admits only what it parses)
        raise RuleError(str(exc)) from None


def _time(value: Any) -> float | None:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            return None
        return parsed.timestamp() if parsed.tzinfo else None
    return None


def _orderable(value: Any) -> bool:
    """A rule's bound: a number, or an RFC 3339 time (a stored trait may be any ISO-8601)."""
    if isinstance(value, str):
        return _DATE_TIME.fullmatch(value) is not None and _time(value) is not None
    return isinstance(value, int | float) and not isinstance(value, bool)


# -- evaluation ----------------------------------------------------------------------

Result = tuple[bool, int | None]  # (matches, earliest time it may change by time alone)


def _earliest(*times: int | None) -> int | None:
    known = [t for t in times if t is not None]
    return min(known) if known else None


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
    raise TypeError(f"not a rule: {rule!r}")  # pragma: no cover


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


def _count(view: ProfileView, event: str, within_ms: int, gte: int, now_ms: int) -> Result:
    """Buckets whose span overlaps (now - within, now] count; exact to a bucket."""
    buckets = view.counters.get(event, {})
    start = now_ms - within_ms
    live = sorted((b, n) for b, n in buckets.items() if b + view.bucket_ms > start and b <= now_ms)
    total = sum(n for _, n in live)
    if total >= gte:
        # It stops holding once enough of the oldest buckets have left the window.
        remaining = total
        for bucket, n in live:
            remaining -= n
            if remaining < gte:
                return True, bucket + view.bucket_ms + within_ms
        return True, None  # pragma: no cover (remaining reaches 0 < gte)
    future = [b for b in buckets if b > now_ms]
    return False, min(future) if future else None


# -- compiled evaluation -------------------------------------------------------------
#
# ``compile_rule`` returns, for each rule, a closure equivalent to ``evaluate`` with the
# per-node dispatch, the validation-time constants (ISO times, the op) and the
# intermediate lists done once at compile time or folded into single passes. Keep every
# closure in step with ``evaluate``: tests/unit/test_rules.py checks that they agree.

Check = Callable[[ProfileView, int], Result]

_TRUE: Result = (True, None)
_FALSE: Result = (False, None)
_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}


@lru_cache(maxsize=4096)
def _time_cached(value: str) -> float | None:
    return _time(value)


def compile_rule(rule: Rule) -> Check:
    """``rule`` -> a function of (view, now_ms) returning what ``evaluate`` returns."""
    match rule:
        case All(rules):
            return _compile_combination(
                tuple(compile_rule(r) for r in rules), _stops_early(rules), absorbing=False
            )
        case Any_(rules):
            return _compile_combination(
                tuple(compile_rule(r) for r in rules), _stops_early(rules), absorbing=True
            )
        case Not(inner):
            return _compile_not(inner)
        case TraitRule(name, op, value):
            return _compile_trait(name, op, value, negate=False)
        case Count(event, within_ms, gte):
            return _compile_count(event, within_ms, gte)
        case Inactive(for_ms):
            return _compile_inactive(for_ms, negate=False)
        case Returned(after_ms, within_ms):
            return _compile_returned(after_ms, within_ms)
    raise TypeError(f"not a rule: {rule!r}")  # pragma: no cover


def _compile_combination(checks: tuple[Check, ...], early: bool, absorbing: bool) -> Check:
    """all (``absorbing`` False) or any (True): a child with the absorbing value decides;
    with one whose due is None the answer is final (and, when no child can raise, the
    remaining ones need not run)."""
    final_result: Result = (absorbing, None)

    def check(view: ProfileView, now_ms: int) -> Result:
        deciding: int | None = None
        other: int | None = None
        final = False
        for child in checks:
            ok, due = child(view, now_ms)
            if ok == absorbing:
                if due is None:
                    if early:
                        return final_result
                    final = True
                elif deciding is None or due < deciding:
                    deciding = due
            elif due is not None and (other is None or due < other):
                other = due
        if final:
            return final_result
        if deciding is not None:
            return absorbing, deciding
        return not absorbing, other

    return check


def _stops_early(rules: tuple[Rule, ...]) -> bool:
    """Whether no rule of ``rules`` can raise, so that all/any may skip the rest once the
    answer is final (``evaluate`` runs every child, and raises with the first that does)."""
    return not any(_can_raise(r) for r in rules)


def _can_raise(rule: Rule) -> bool:
    match rule:
        case All(rules) | Any_(rules):
            return any(_can_raise(r) for r in rules)
        case Not(inner):
            return _can_raise(inner)
        case TraitRule(_, op, value):
            return not _well_formed(op, value)
    return False


def _well_formed(op: str, value: Any) -> bool:
    """Whether ``_trait`` cannot raise with this op and value (true of every trait rule
    that ``parse_rule`` accepts)."""
    if op in ("exists", "eq", "ne", "contains"):
        return True
    if op == "in":
        return isinstance(value, list)
    return op in _ORDER and (
        isinstance(value, str) or (isinstance(value, int | float) and not isinstance(value, bool))
    )


def _compile_not(inner: Rule) -> Check:
    match inner:
        case TraitRule(name, op, value):
            return _compile_trait(name, op, value, negate=True)
        case Inactive(for_ms):
            return _compile_inactive(for_ms, negate=True)
    child = compile_rule(inner)

    def check_not(view: ProfileView, now_ms: int) -> Result:
        ok, due = child(view, now_ms)
        return not ok, due

    return check_not


def _compile_trait(name: str, op: str, value: Any, *, negate: bool) -> Check:
    yes, no = (_FALSE, _TRUE) if negate else (_TRUE, _FALSE)
    missing = yes if op == "ne" else no  # absent or None

    if op == "exists":

        def check_exists(view: ProfileView, now_ms: int) -> Result:
            return no if view.traits.get(name) is None else yes

        return check_exists
    if op == "eq":

        def check_eq(view: ProfileView, now_ms: int) -> Result:
            have = view.traits.get(name)
            if have is None:
                return missing
            return yes if have == value else no

        return check_eq
    if op == "ne":

        def check_ne(view: ProfileView, now_ms: int) -> Result:
            have = view.traits.get(name)
            if have is None:
                return missing
            return yes if have != value else no

        return check_ne
    if op == "in" and isinstance(value, list):

        def check_in(view: ProfileView, now_ms: int) -> Result:
            have = view.traits.get(name)
            if have is None:
                return missing
            return yes if have in value else no

        return check_in
    if op == "contains":

        def check_contains(view: ProfileView, now_ms: int) -> Result:
            have = view.traits.get(name)
            if have is None:
                return missing
            if isinstance(have, str) and isinstance(value, str):
                return yes if value in have else no
            return yes if isinstance(have, list) and value in have else no

        return check_contains
    compare = _ORDER.get(op)
    if compare is not None and isinstance(value, str):
        right = _time(value)

        def check_time(view: ProfileView, now_ms: int) -> Result:
            have = view.traits.get(name)
            if have is None:
                return missing
            if right is None or not isinstance(have, str):
                return no
            left = _time_cached(have)
            if left is None:
                return no
            return yes if compare(left, right) else no

        return check_time
    if compare is not None and isinstance(value, int | float) and not isinstance(value, bool):

        def check_number(view: ProfileView, now_ms: int) -> Result:
            have = view.traits.get(name)
            if have is None:
                return missing
            if isinstance(have, bool) or not isinstance(have, int | float):
                return no
            return yes if compare(have, value) else no

        return check_number

    # Anything else (only reachable by building a TraitRule by hand): the reference.
    def check_other(view: ProfileView, now_ms: int) -> Result:
        return yes if _trait(view.traits, name, op, value) else no

    return check_other


def _compile_count(event: str, within_ms: int, gte: int) -> Check:
    empty = _TRUE if gte <= 0 else _FALSE  # no buckets: total 0

    def check_count(view: ProfileView, now_ms: int) -> Result:
        buckets = view.counters.get(event)
        if not buckets:
            return empty
        bucket_ms = view.bucket_ms
        start = now_ms - within_ms
        total = 0
        live: list[tuple[int, int]] = []
        future: int | None = None
        for bucket, n in buckets.items():
            if bucket > now_ms:
                if future is None or bucket < future:
                    future = bucket
            elif bucket + bucket_ms > start:
                total += n
                live.append((bucket, n))
        if total < gte:
            return False, future
        # It stops holding once enough of the oldest buckets have left the window.
        live.sort()
        remaining = total
        for bucket, n in live:
            remaining -= n
            if remaining < gte:
                return True, bucket + bucket_ms + within_ms
        return _TRUE

    return check_count


def _compile_inactive(for_ms: int, *, negate: bool) -> Check:
    if negate:

        def check_active(view: ProfileView, now_ms: int) -> Result:
            last_seen = view.last_seen_ms
            if last_seen is None:
                return _TRUE
            since = last_seen + for_ms
            return _FALSE if now_ms >= since else (True, since)

        return check_active

    def check_inactive(view: ProfileView, now_ms: int) -> Result:
        last_seen = view.last_seen_ms
        if last_seen is None:
            return _FALSE
        since = last_seen + for_ms
        return _TRUE if now_ms >= since else (False, since)

    return check_inactive


def _compile_returned(after_ms: int, within_ms: int) -> Check:
    def check_returned(view: ProfileView, now_ms: int) -> Result:
        start = now_ms - within_ms
        current: int | None = None
        upcoming: int | None = None
        for t, gap in view.returns:
            if gap >= after_ms:
                if t > now_ms:
                    if upcoming is None or t < upcoming:
                        upcoming = t
                elif t >= start and (current is None or t > current):
                    current = t
        if current is not None:
            return True, current + within_ms + 1
        return False, upcoming

    return check_returned
