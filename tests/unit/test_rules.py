"""cdp/segments/rules.py: what each rule kind answers and when it falls due, and that
``compile_rule`` (what the engine runs) answers exactly what the oracle
(tests/support/rules_oracle.py, the spec said plainly) does.

The example tests run against both (the ``run`` fixture); the properties generate valid
rule trees, profile views and times and compare the two.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdp import keys
from cdp.segments.definitions import builtins, parse_definition, reads_of
from cdp.segments.rules import (
    EVERYTHING,
    All,
    Any_,
    Count,
    Inactive,
    Not,
    ProfileView,
    Reads,
    Result,
    Returned,
    Rule,
    RuleError,
    TraitRule,
    compile_rule,
    parse_rule,
    rule_reads,
)
from cdp.settings import Settings
from tests.support.rules_oracle import evaluate

NOW = 1_759_574_700_000
MIN = 60_000
HOUR = 60 * MIN

Run = Callable[[Rule, ProfileView, int], Result]


@pytest.fixture(params=["oracle", "compiled"])
def run(request: pytest.FixtureRequest) -> Run:
    if request.param == "oracle":
        return evaluate
    return lambda rule, view, now_ms: compile_rule(rule)(view, now_ms)


def rule(obj: dict[str, Any]) -> Rule:
    return parse_rule(obj)


def traits(**values: Any) -> ProfileView:
    return ProfileView(traits=values)


# -- trait -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "value", "have", "expected"),
    [
        ("eq", "pro", "pro", True),
        ("eq", "pro", "free", False),
        ("eq", 1, 1.0, True),
        ("ne", "pro", "free", True),
        ("ne", "pro", "pro", False),
        ("in", ["team", "enterprise"], "team", True),
        ("in", ["team", "enterprise"], "pro", False),
        ("contains", "ex", "example.com", True),
        ("contains", "zz", "example.com", False),
        ("contains", "b", ["a", "b"], True),
        ("contains", "b", ["a", "bc"], False),
        ("contains", 1, 10, False),  # neither a string nor a list
        ("gt", 5, 6, True),
        ("gt", 5, 5, False),
        ("gte", 5, 5, True),
        ("lt", 5, 4.5, True),
        ("lte", 5, 5.0, True),
        ("lte", 5, 6, False),
        ("gt", 5, "6", False),  # a string is not a number
        ("gt", 0, True, False),  # nor is a bool
        ("gt", "2025-10-04T10:00:00Z", "2025-10-04T10:00:01Z", True),
        ("gt", "2025-10-04T10:00:00Z", "2025-10-04T11:00:00+02:00", False),  # 09:00 UTC
        ("lte", "2025-10-04T10:00:00Z", "2025-10-04T12:00:00+02:00", True),  # same instant
        ("lt", "2025-10-04T10:00:00Z", "2025-10-04T09:00:00", False),  # no zone: no time
        ("lt", "2025-10-04T10:00:00Z", "yesterday", False),
        ("lt", "2025-10-04T10:00:00Z", 5, False),
    ],
)
def test_trait_ops(run: Run, op: str, value: Any, have: Any, expected: bool) -> None:
    assert run(rule({"trait": "t", "op": op, "value": value}), traits(t=have), NOW) == (
        expected,
        None,
    )


@pytest.mark.parametrize("op", ["eq", "ne", "in", "contains", "gt", "gte", "lt", "lte"])
@pytest.mark.parametrize("view", [traits(), traits(t=None)], ids=["missing", "null"])
def test_a_missing_trait_only_satisfies_ne(run: Run, op: str, view: ProfileView) -> None:
    value: Any = ["x"] if op == "in" else 1
    assert run(rule({"trait": "t", "op": op, "value": value}), view, NOW) == (op == "ne", None)


def test_exists(run: Run) -> None:
    exists = rule({"trait": "email", "op": "exists"})
    assert run(exists, traits(email="a@b.c"), NOW) == (True, None)
    assert run(exists, traits(email=""), NOW) == (True, None)
    assert run(exists, traits(email=None), NOW) == (False, None)
    assert run(exists, traits(), NOW) == (False, None)
    assert run(Not(exists), traits(), NOW) == (True, None)


# -- count -----------------------------------------------------------------------------


def counters(event: str, *buckets: tuple[int, int]) -> ProfileView:
    return ProfileView(counters={event: dict(buckets)}, bucket_ms=MIN)


def test_count_counts_the_buckets_overlapping_the_window(run: Run) -> None:
    clicked = rule({"count": {"event": "Clicked", "within": "10m", "gte": 3}})
    # The bucket starting 10.5 minutes ago still overlaps (now - 10m, now]; the one 11
    # minutes ago does not; one in the future does not count yet.
    view = counters("Clicked", (NOW - 11 * MIN, 5), (NOW - 10 * MIN - 30_000, 2), (NOW, 1))
    assert run(clicked, view, NOW)[0] is True
    view = counters("Clicked", (NOW - 11 * MIN, 5), (NOW - 9 * MIN, 1), (NOW + MIN, 5))
    assert run(clicked, view, NOW) == (False, NOW + MIN)  # due when the future bucket counts
    assert run(clicked, counters("Clicked", (NOW - 9 * MIN, 2)), NOW) == (False, None)
    assert run(clicked, counters("Viewed", (NOW - 9 * MIN, 9)), NOW) == (False, None)
    assert run(clicked, ProfileView(), NOW) == (False, None)


def test_count_falls_due_when_enough_oldest_buckets_leave_the_window(run: Run) -> None:
    three = rule({"count": {"event": "Clicked", "within": "10m", "gte": 3}})
    view = counters("Clicked", (NOW - 9 * MIN, 2), (NOW - 5 * MIN, 1), (NOW - MIN, 2))
    # 5 events; without the oldest bucket 3 remain, without the next one 2: it stops
    # holding once the bucket 5 minutes ago has left the window.
    ok, due = run(three, view, NOW)
    assert (ok, due) == (True, NOW - 5 * MIN + MIN + 10 * MIN)
    assert due is not None
    assert run(three, view, due - 1)[0] is True
    assert run(three, view, due) == (False, None)
    # With gte 1 the last bucket decides.
    one = rule({"count": {"event": "Clicked", "within": "10m", "gte": 1}})
    assert run(one, view, NOW) == (True, NOW - MIN + MIN + 10 * MIN)


def test_count_without_an_event_counts_every_track(run: Run) -> None:
    any_track = rule({"count": {"within": "1h", "gte": 2}})
    assert any_track == Count(keys.ALL_TRACK, HOUR, 2)
    assert run(any_track, counters(keys.ALL_TRACK, (NOW - MIN, 2)), NOW)[0] is True
    assert run(any_track, counters("Clicked", (NOW - MIN, 2)), NOW) == (False, None)


# -- inactive, returned ----------------------------------------------------------------


def test_inactive(run: Run) -> None:
    ten = rule({"inactive": "10m"})
    assert run(ten, ProfileView(), NOW) == (False, None)  # never seen: never inactive
    last = NOW - 4 * MIN
    assert run(ten, ProfileView(last_seen_ms=last), NOW) == (False, last + 10 * MIN)
    assert run(ten, ProfileView(last_seen_ms=last), last + 10 * MIN - 1) == (
        False,
        last + 10 * MIN,
    )
    assert run(ten, ProfileView(last_seen_ms=last), last + 10 * MIN) == (True, None)
    assert run(Not(ten), ProfileView(last_seen_ms=last), NOW) == (True, last + 10 * MIN)


def test_returned(run: Run) -> None:
    returned = rule({"returned": {"after": "2h", "within": "1d"}})
    back = NOW - HOUR
    day = 24 * HOUR
    view = ProfileView(returns=((back, 3 * HOUR),))
    assert run(returned, view, NOW) == (True, back + day + 1)
    assert run(returned, view, back) == (True, back + day + 1)
    assert run(returned, view, back + day) == (True, back + day + 1)
    assert run(returned, view, back + day + 1) == (False, None)
    assert run(returned, view, back - 1) == (False, back)  # due when the return happens
    # A gap shorter than ``after`` is no return.
    assert run(returned, ProfileView(returns=((back, HOUR),)), NOW) == (False, None)
    # The latest qualifying return in the window sets the due time.
    view = ProfileView(returns=((back - 2 * HOUR, 2 * HOUR), (back, 5 * HOUR)))
    assert run(returned, view, NOW) == (True, back + day + 1)
    assert run(returned, ProfileView(), NOW) == (False, None)


# -- all, any, not ---------------------------------------------------------------------

YES = TraitRule("t", "exists", None)  # (True, None) on traits(t=1)
NO = TraitRule("u", "exists", None)  # (False, None)
VIEW = ProfileView(traits={"t": 1}, last_seen_ms=NOW - MIN)
SOON = Inactive(2 * MIN)  # (False, NOW + MIN)
LATER = Inactive(5 * MIN)  # (False, NOW + 4 MIN)


def test_all_is_due_only_from_its_deciding_children(run: Run) -> None:
    assert run(All((YES, YES)), VIEW, NOW) == (True, None)
    # False children decide: the earliest of their due times; true ones do not count.
    assert run(All((Not(SOON), LATER)), VIEW, NOW) == (False, NOW + 4 * MIN)
    assert run(All((SOON, LATER, YES)), VIEW, NOW) == (False, NOW + MIN)
    # A false child that time cannot change: never due.
    assert run(All((SOON, NO)), VIEW, NOW) == (False, None)
    # All true: it changes when the first child does.
    assert run(All((Not(LATER), Not(SOON), YES)), VIEW, NOW) == (True, NOW + MIN)


def test_any_is_due_only_from_its_deciding_children(run: Run) -> None:
    assert run(Any_((NO, NO)), VIEW, NOW) == (False, None)
    assert run(Any_((Not(LATER), SOON)), VIEW, NOW) == (True, NOW + 4 * MIN)
    assert run(Any_((Not(LATER), Not(SOON), NO)), VIEW, NOW) == (True, NOW + MIN)
    assert run(Any_((Not(SOON), YES)), VIEW, NOW) == (True, None)
    # All false: it changes when the first child does.
    assert run(Any_((LATER, SOON, NO)), VIEW, NOW) == (False, NOW + MIN)


def test_not_keeps_the_due_time(run: Run) -> None:
    assert run(Not(SOON), VIEW, NOW) == (True, NOW + MIN)
    assert run(Not(Not(SOON)), VIEW, NOW) == (False, NOW + MIN)
    assert run(Not(All((YES, NO))), VIEW, NOW) == (True, None)


def test_reengage_builtin(run: Run) -> None:
    settings_ = Settings()
    reengage = builtins(settings_)["reengage"].rule
    gap = settings_.reengage_inactivity_threshold_ms
    back = NOW - MIN
    view = ProfileView(last_seen_ms=back, returns=((back, gap),))
    ok, due = run(reengage, view, NOW)
    assert ok is True
    assert due == min(back + gap, back + settings_.reengage_duration_ms + 1)
    assert run(reengage, view, due)[0] is False


def test_segments_carry_their_compiled_rule() -> None:
    segment = parse_definition("s", {"rule": {"inactive": "10m"}})
    view = ProfileView(last_seen_ms=NOW)
    assert segment.check(view, NOW) == evaluate(segment.rule, view, NOW) == (False, NOW + 10 * MIN)
    assert segment == parse_definition("s", {"rule": {"inactive": "10m"}})


# -- compiled == oracle ------------------------------------------------------------------

TIMES = [
    "2025-10-04T10:00:00Z",
    "2025-10-04T10:00:00.500Z",
    "2025-10-04T12:00:00+02:00",
    "2025-10-04T10:00:01+00:00",
    "2025-10-04T10:00:00",  # no zone
    "2025-13-40T00:00:00Z",  # not a date
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(-3, 3, allow_nan=False) | st.sampled_from([math.nan, math.inf, -0.0, 1.0]),
    st.sampled_from(TIMES),
    st.sampled_from(["", "a", "ab", "b", "pro"]),
)
values = st.one_of(scalars, st.lists(scalars, max_size=3))
NAMES = ["a", "b", "c"]
OPS = ["eq", "ne", "in", "exists", "contains", "gt", "gte", "lt", "lte"]
EVENTS = ["E", "F", keys.ALL_TRACK]
small = st.integers(-20, 120)  # times, with now in 0..100: dense, so edges collide


def trait_json(name: str, op: str, value: Any) -> dict[str, Any]:
    if op == "exists":
        return {"trait": name, "op": op}
    return {"trait": name, "op": op, "value": value}


def parses(obj: dict[str, Any]) -> bool:
    try:
        parse_rule(obj)
    except RuleError:  # e.g. "in" without a list, "gt" on a string that is no time
        return False
    return True


# The nodes are built directly, with every value ``parse_rule`` accepts (compiled rules
# are compiled from parsed ones): durations and thresholds from 1, trait ops and values
# through parse_rule.
trait_rules = (
    st.builds(trait_json, st.sampled_from(NAMES), st.sampled_from(OPS), values)
    .filter(parses)
    .map(parse_rule)
)
leaves = st.one_of(
    trait_rules,
    st.builds(Count, st.sampled_from(EVENTS), st.integers(1, 60), st.integers(1, 6)),
    st.builds(Inactive, st.integers(1, 60)),
    st.builds(Returned, st.integers(1, 60), st.integers(1, 60)),
)
rules = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, min_size=1, max_size=4).map(lambda rs: All(tuple(rs))),
        st.lists(children, min_size=1, max_size=4).map(lambda rs: Any_(tuple(rs))),
        children.map(Not),
    ),
    max_leaves=10,
)
views = st.builds(
    ProfileView,
    traits=st.dictionaries(st.sampled_from(NAMES), values, max_size=3),
    counters=st.dictionaries(
        st.sampled_from(EVENTS),
        st.dictionaries(small, st.integers(-1, 4), max_size=6),
        max_size=3,
    ),
    last_seen_ms=st.none() | small,
    returns=st.lists(st.tuples(small, st.integers(0, 80)), max_size=4).map(tuple),
    bucket_ms=st.integers(1, 10),
)


def typed(result: Result) -> tuple[type, bool, int | None]:
    ok, due = result
    return type(ok), ok, due


@settings(max_examples=1500, deadline=None)
@given(rule_=rules, view=views, now=st.integers(0, 100))
def test_compiled_rules_answer_exactly_what_the_oracle_does(
    rule_: Rule, view: ProfileView, now: int
) -> None:
    assert typed(compile_rule(rule_)(view, now)) == typed(evaluate(rule_, view, now))


json_leaves = st.one_of(
    st.builds(trait_json, st.sampled_from(NAMES), st.sampled_from(OPS), values),
    st.builds(
        lambda event, within, gte: (
            {"count": {"within": within, "gte": gte}}
            if event is None
            else {"count": {"event": event, "within": within, "gte": gte}}
        ),
        st.sampled_from([None, "E"]),
        st.sampled_from(["1s", "5s", "1m"]),
        st.integers(1, 4),
    ),
    st.sampled_from(["1s", "30s", "1m"]).map(lambda d: {"inactive": d}),
    st.builds(
        lambda after, within: {"returned": {"after": after, "within": within}},
        st.sampled_from(["1s", "10s"]),
        st.sampled_from(["5s", "1m"]),
    ),
)
json_rules = st.recursive(
    json_leaves,
    lambda children: st.one_of(
        st.lists(children, min_size=1, max_size=3).map(lambda rs: {"all": rs}),
        st.lists(children, min_size=1, max_size=3).map(lambda rs: {"any": rs}),
        children.map(lambda r: {"not": r}),
    ),
    max_leaves=6,
)
second = st.integers(-30, 90).map(lambda s: 1_000_000 + s * 1000)
json_views = st.builds(
    ProfileView,
    traits=st.dictionaries(st.sampled_from(NAMES), values, max_size=3),
    counters=st.dictionaries(
        st.sampled_from(["E", keys.ALL_TRACK]),
        st.dictionaries(second, st.integers(1, 3), max_size=5),
        max_size=2,
    ),
    last_seen_ms=st.none() | second,
    returns=st.lists(st.tuples(second, st.integers(0, 20_000)), max_size=3).map(
        lambda pairs: tuple(sorted(dict(pairs).items()))
    ),
    bucket_ms=st.just(1000),
)


@settings(max_examples=500, deadline=None)
@given(obj=json_rules, view=json_views, now=second)
def test_compiled_json_rules_answer_exactly_what_the_oracle_does(
    obj: dict[str, Any], view: ProfileView, now: int
) -> None:
    try:
        parsed = parse_rule(obj)
    except RuleError:  # e.g. "in" without a list, "gt" on a string that is no time
        return
    assert compile_rule(parsed)(view, now) == evaluate(parsed, view, now)


# -- what a rule reads ---------------------------------------------------------------


def projected(view: ProfileView, reads: Reads) -> ProfileView:
    """``view`` as the engine sees it when ``profile_view`` reads only ``reads``: the
    traits and counters not named are absent, and so are the returns, derived from the
    ``$seen`` counter, unless it is named."""
    traits, counters = reads.traits, reads.counters
    return ProfileView(
        traits=view.traits
        if traits is None
        else {k: v for k, v in view.traits.items() if k in traits},
        counters=(
            view.counters
            if counters is None
            else {k: v for k, v in view.counters.items() if k in counters}
        ),
        last_seen_ms=view.last_seen_ms,
        returns=view.returns if counters is None or keys.SEEN in counters else (),
        bucket_ms=view.bucket_ms,
    )


def test_rule_reads_names_the_traits_and_counters_of_every_node() -> None:
    obj = {
        "any": [
            {"all": [{"trait": "plan", "op": "eq", "value": "pro"}, {"inactive": "1m"}]},
            {"not": {"count": {"event": "Clicked", "within": "1h", "gte": 2}}},
            {"count": {"within": "1h", "gte": 2}},
            {"returned": {"after": "10m", "within": "1h"}},
            {"not": {"trait": "seats", "op": "exists"}},
        ]
    }
    assert rule_reads(parse_rule(obj)) == Reads(
        traits=frozenset({"plan", "seats"}),
        counters=frozenset({"Clicked", keys.ALL_TRACK, keys.SEEN}),
    )
    assert rule_reads(parse_rule({"inactive": "5m"})) == Reads()
    assert Reads(traits=frozenset({"a"})) | EVERYTHING == EVERYTHING


def test_the_builtins_read_one_trait_and_two_counters() -> None:
    assert reads_of(builtins(Settings())) == Reads(
        traits=frozenset({"plan"}), counters=frozenset({keys.ALL_TRACK, keys.SEEN})
    )


@settings(max_examples=1500, deadline=None)
@given(rule_=rules, others=st.lists(rules, max_size=2), view=views, now=st.integers(0, 100))
def test_a_rule_answers_the_same_on_what_it_reads_as_on_the_whole_profile(
    rule_: Rule, others: list[Rule], view: ProfileView, now: int
) -> None:
    """The engine reads only the union of what the definitions read: the projection on
    that union (its own reads, with other rules' added) answers as the whole view."""
    reads = rule_reads(rule_)
    for other in others:
        reads |= rule_reads(other)
    check = compile_rule(rule_)
    assert typed(check(projected(view, reads), now)) == typed(check(view, now))
    assert typed(check(projected(view, rule_reads(rule_)), now)) == typed(check(view, now))
