"""Convergence, the headline property, through the real Lua scripts on fakeredis.

Generated event sets (tests/support/events.py: collisions, alias chains, merges,
duplicates, equal timestamps, tombstones) are applied in random orders and random
batch sizes, in one stream or split over partitions applied in random interleavings,
and every run must end in exactly the reference model's state (cdp/chaos/model.py), up to
the choice of canonical ids. Conflicting sets (two userIds meeting) must keep the
guard rails' invariants whatever the order.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdp import keys
from cdp.chaos.model import Model, canonical, snapshot
from cdp.events import StreamEvent
from cdp.settings import Settings
from tests.support.events import conflicting_events, event_sets
from tests.support.lua import apply_in_order

SETTINGS = Settings()


def model_state(events: list[StreamEvent]) -> object:
    return canonical(list(Model(SETTINGS).apply(events).profiles.values()))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=event_sets(), rng=st.randoms(use_true_random=False), split=st.booleans())
def test_any_order_converges_to_the_model(
    events: list[StreamEvent], rng: random.Random, split: bool
) -> None:
    client = apply_in_order(events, rng, split)
    assert canonical(snapshot(client)) == model_state(events)
    # Every identifier resolves to the live profile that lists it.
    for profile in snapshot(client):
        for identifier in profile.identifiers:
            assert client.get(keys.identifier(identifier)) == f"p{profile.seq}"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=conflicting_events(), rng=st.randoms(use_true_random=False))
def test_conflicting_links_keep_the_guard_rails_in_any_order(
    events: list[StreamEvent], rng: random.Random
) -> None:
    client = apply_in_order(events, rng, split=True)
    profiles = snapshot(client)
    owners: dict[str, int] = {}
    for profile in profiles:
        users = [i for i in profile.identifiers if i.startswith("user:")]
        assert len(users) <= 1, f"profile p{profile.seq} carries {users}"
        for identifier in profile.identifiers:
            assert identifier not in owners, f"{identifier} in two profiles"
            owners[identifier] = profile.seq
            assert client.get(keys.identifier(identifier)) == f"p{profile.seq}"
    # Every event applied exactly once, to the profile of its userId.
    every_user = {f"user:{ev.userId}" for ev in events}
    assert every_user <= set(owners)
    refused = [f for _, f in client.xrange(keys.MERGES) if f["status"] == "refused"]
    # A user can gather every persona's email (six), one past max-emails (five).
    assert {f["reason"] for f in refused} <= {"different userIds", "email limit"}, refused


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=conflicting_events(), rng=st.randoms(use_true_random=False))
def test_conflicts_applied_in_event_time_order_match_the_model(
    events: list[StreamEvent], rng: random.Random
) -> None:
    """In (ts, eventId) order the guard rails decide exactly as the model does."""
    client = apply_in_order(events, rng, split=False, shuffle=False)
    model = Model(SETTINGS).apply(events)
    assert canonical(snapshot(client)) == canonical(list(model.profiles.values()))
    refused = [f["reason"] for _, f in client.xrange(keys.MERGES) if f["status"] == "refused"]
    assert sorted(refused) == sorted(reason for _, reason in model.refusals)
