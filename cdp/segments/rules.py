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
(``$.all[1].count.within``). ``rule_reads(rule)`` names what of a profile the rule
reads (the traits and counters), so that the engine reads only those.
``compile_rule(rule)`` turns a parsed rule into a function of (view, now_ms) that
returns whether the profile matches and, when time alone can change that answer, the
earliest time at which it may (the due time the sweeper waits for); a definition
compiles its rule once and the engine runs it. The one other evaluator is the test
oracle (tests/support/rules_oracle.py).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal, NamedTuple, assert_never

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
    """An invalid rule; the message starts with the path of the offending node, which
    ``path`` holds (``$.rule.all[1].count.within``; given when the message does not
    start with it, as ``name`` for a definition's name)."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        if path is None:
            path = message.partition(": ")[0] if message.startswith("$") else "$"
        self.path = path


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
            raise RuleError(f"{path}{where.rstrip('`')}: {text}") from None
        raise RuleError(f"{path}: {message}") from None


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


# -- what a rule reads ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reads:
    """The traits and counters of a profile that rules read, by name; None: every one.

    Every rule kind names what it reads, so no rule needs None today; it is what the
    full read (``profile_view`` without a projection, the tests' reference) stands for,
    and the union with it is the full read again. lastSeen and firstSeen are always read.
    """

    traits: frozenset[str] | None = frozenset()
    counters: frozenset[str] | None = frozenset()

    def __or__(self, other: Reads) -> Reads:
        return Reads(_union(self.traits, other.traits), _union(self.counters, other.counters))


EVERYTHING = Reads(None, None)


def _union(a: frozenset[str] | None, b: frozenset[str] | None) -> frozenset[str] | None:
    return None if a is None or b is None else a | b


def rule_reads(rule: Rule) -> Reads:
    """What ``rule`` reads of a profile: the traits it tests, the counters it counts
    (``returned`` reads the ``$seen`` counter, from which the engine derives returns)."""
    match rule:
        case All(rules) | Any_(rules):
            reads = Reads()
            for inner in rules:
                reads |= rule_reads(inner)
            return reads
        case Not(inner):
            return rule_reads(inner)
        case TraitRule(name):
            return Reads(traits=frozenset((name,)))
        case Count(event):
            return Reads(counters=frozenset((event,)))
        case Inactive():
            return Reads()
        case Returned():
            return Reads(counters=frozenset((keys.SEEN,)))
        case _:
            assert_never(rule)


# -- evaluation ----------------------------------------------------------------------
#
# ``compile_rule`` turns a rule as ``parse_rule`` returns it into a closure: the
# per-node dispatch, the constants (ISO times, the operator) and the intermediate lists
# are done once at compile time or folded into single passes. What each node answers
# is said once more, plainly, by the test oracle tests/support/rules_oracle.py; a
# property test (tests/unit/test_rules.py) holds the two together.

Result = tuple[bool, int | None]  # (matches, earliest time it may change by time alone)
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
    """``rule`` (as ``parse_rule`` returns it) -> a function of (view, now_ms) returning
    whether the profile matches at ``now_ms`` and, when time alone can change that
    answer, the earliest time at which it may (the due time the sweeper waits for)."""
    match rule:
        case All(rules):
            return _compile_combination(tuple(compile_rule(r) for r in rules), absorbing=False)
        case Any_(rules):
            return _compile_combination(tuple(compile_rule(r) for r in rules), absorbing=True)
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
        case _:
            assert_never(rule)


def _compile_combination(checks: tuple[Check, ...], absorbing: bool) -> Check:
    """all (``absorbing`` False) or any (True). A child with the absorbing value (false
    for all, true for any) decides the answer, which can only change once every such
    child has: with one that time cannot change, the answer is final and the remaining
    children need not run; otherwise it is due when the first deciding child is. With
    no deciding child, it is due when the first child is."""
    final: Result = (absorbing, None)

    def check(view: ProfileView, now_ms: int) -> Result:
        deciding: int | None = None
        other: int | None = None
        for child in checks:
            ok, due = child(view, now_ms)
            if ok == absorbing:
                if due is None:
                    return final
                if deciding is None or due < deciding:
                    deciding = due
            elif due is not None and (other is None or due < other):
                other = due
        if deciding is not None:
            return absorbing, deciding
        return not absorbing, other

    return check


def _compile_not(inner: Rule) -> Check:
    """The inner answer negated, due when it is."""
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
    """Never due (only a change to the profile changes it). A trait that is absent or
    null satisfies ``ne`` and nothing else (``exists`` included)."""
    yes, no = (_FALSE, _TRUE) if negate else (_TRUE, _FALSE)
    answers = _Answers(yes, no, yes if op == "ne" else no)
    if op in _TRAIT_OPS:
        return _TRAIT_OPS[op](name, value, answers)
    if isinstance(value, str):  # ``value`` is an ISO-8601 time with a zone
        return _trait_time(name, _ORDER[op], _time(value), answers)
    return _trait_number(name, _ORDER[op], value, answers)


class _Answers(NamedTuple):
    """What a trait check answers: it holds, it does not, the trait is absent or null."""

    yes: Result
    no: Result
    missing: Result


def _trait_exists(name: str, value: Any, a: _Answers) -> Check:
    yes, no, missing = a  # locals: faster to read than attributes

    def check_exists(view: ProfileView, now_ms: int) -> Result:
        return no if view.traits.get(name) is None else yes

    return check_exists


def _trait_test(test: Callable[[Any, Any], bool]) -> Callable[[str, Any, _Answers], Check]:
    """A builder of checks answering ``test(trait value, rule value)``."""

    def build(name: str, value: Any, a: _Answers) -> Check:
        yes, no, missing = a  # locals: faster to read than attributes

        def check_test(view: ProfileView, now_ms: int) -> Result:
            have = view.traits.get(name)
            if have is None:
                return missing
            return yes if test(have, value) else no

        return check_test

    return build


def _is_in(have: Any, value: Any) -> bool:
    """``value`` is a list."""
    return have in value


def _trait_contains(name: str, value: Any, a: _Answers) -> Check:
    """A substring of a string trait, or an item of a list trait."""

    yes, no, missing = a  # locals: faster to read than attributes

    def check_contains(view: ProfileView, now_ms: int) -> Result:
        have = view.traits.get(name)
        if have is None:
            return missing
        if isinstance(have, str) and isinstance(value, str):
            return yes if value in have else no
        return yes if isinstance(have, list) and value in have else no

    return check_contains


_TRAIT_OPS: dict[str, Callable[[str, Any, _Answers], Check]] = {
    "exists": _trait_exists,
    "eq": _trait_test(operator.eq),
    "ne": _trait_test(operator.ne),
    "in": _trait_test(_is_in),
    "contains": _trait_contains,
}


def _trait_time(name: str, compare: Callable[[Any, Any], bool], right: Any, a: _Answers) -> Check:
    yes, no, missing = a  # locals: faster to read than attributes

    def check_time(view: ProfileView, now_ms: int) -> Result:
        have = view.traits.get(name)
        if have is None:
            return missing
        left = _time_cached(have) if isinstance(have, str) else None
        if left is None:  # not a time (a zone included): no order
            return no
        return yes if compare(left, right) else no

    return check_time


def _trait_number(name: str, compare: Callable[[Any, Any], bool], value: Any, a: _Answers) -> Check:
    yes, no, missing = a  # locals: faster to read than attributes

    def check_number(view: ProfileView, now_ms: int) -> Result:
        have = view.traits.get(name)
        if have is None:
            return missing
        if isinstance(have, bool) or not isinstance(have, int | float):
            return no  # a bool, a string or a list is no number
        return yes if compare(have, value) else no

    return check_number


def _compile_count(event: str, within_ms: int, gte: int) -> Check:
    """At least ``gte`` events in the buckets whose span overlaps (now - within, now]
    (exact to a bucket). While it holds, it is due when enough of the oldest buckets
    have left the window; while it does not, when the next future bucket starts."""

    def check_count(view: ProfileView, now_ms: int) -> Result:
        buckets = view.counters.get(event)
        if not buckets:
            return _FALSE
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
        # It stops holding once enough of the oldest buckets have left the window: at
        # the latest with the newest one (then 0 < gte remain).
        live.sort()
        remaining = total
        for bucket, n in live[:-1]:
            remaining -= n
            if remaining < gte:
                return True, bucket + bucket_ms + within_ms
        return True, live[-1][0] + bucket_ms + within_ms

    return check_count


def _compile_inactive(for_ms: int, *, negate: bool) -> Check:
    """No event for at least ``for_ms``, due when that becomes true; never true of a
    profile never seen."""
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
    """A return after at least ``after_ms`` of inactivity at a time in [now - within,
    now]: due when the latest such return leaves the window; without one, when the
    next future return happens."""

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
