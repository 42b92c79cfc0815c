"""Identity convergence through the profile protocol, on one Redis and on a real
3-master Redis Cluster (the session's fixture).

As tests/lua/test_identity_convergence.py does for ``apply_batch``: generated event
sets (collisions, alias chains, merges, duplicates, equal timestamps, tombstones) are
applied through ``cdp.pipeline.profile_apply.apply_partition`` in random orders and
random batches, in one stream or split over partitions interleaved at random, and every
run must end in exactly the reference model's state (``cdp.chaos.model``), up to the
choice of canonical ids; every identifier names the live profile that lists it.
Conflicting sets (two userIds meeting) applied in event-time order make exactly the
model's refusals. On the cluster every script names its keys (a key of another slot
is refused, CROSSSLOT), so these runs also show the protocol is cluster-safe.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdp import keys
from cdp.chaos.model import Model, canonical, snapshot
from cdp.embedded import RedisServer
from cdp.embedded_cluster import EmbeddedCluster
from cdp.events import StreamEvent
from cdp.settings import Settings
from tests.support.cluster import flush_cluster
from tests.support.events import conflicting_events, event_sets
from tests.support.lua import plan_calls
from tests.support.profile_protocol import apply_calls, sync_of

pytestmark = pytest.mark.integration

SETTINGS = Settings()
FEW = settings(
    max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)


@pytest.fixture(params=["one-redis", "cluster"])
def fresh(request: pytest.FixtureRequest) -> Callable[[], str]:
    """A function emptying the Redis (or the cluster) and returning its URL."""
    if request.param == "cluster":
        cluster: EmbeddedCluster = request.getfixturevalue("redis_cluster")

        def empty_cluster() -> str:
            flush_cluster(cluster)
            return cluster.url

        return empty_cluster
    server: RedisServer = request.getfixturevalue("redis_server")

    def empty() -> str:
        with sync_of(server.url) as client:
            client.flushall()
        return server.url

    return empty


def model_state(events: list[StreamEvent]) -> object:
    return canonical(list(Model(SETTINGS).apply(events).profiles.values()))


@FEW
@given(events=event_sets(), rng=st.randoms(use_true_random=False), split=st.booleans())
def test_any_order_converges_to_the_model(
    fresh: Callable[[], str], events: list[StreamEvent], rng: random.Random, split: bool
) -> None:
    url = fresh()
    apply_calls(url, plan_calls(events, rng, split, True, SETTINGS.partitions))
    with sync_of(url) as client:
        profiles = snapshot(client)
        assert canonical(profiles) == model_state(events)
        for profile in profiles:
            for identifier in profile.identifiers:
                assert client.get(keys.identifier(identifier)) == f"p{profile.seq}"
        assert client.zcard(keys.MERGES_OPEN) == 0


@FEW
@given(events=conflicting_events(), rng=st.randoms(use_true_random=False))
def test_conflicts_applied_in_event_time_order_match_the_model(
    fresh: Callable[[], str], events: list[StreamEvent], rng: random.Random
) -> None:
    url = fresh()
    apply_calls(url, plan_calls(events, rng, False, False, SETTINGS.partitions))
    model = Model(SETTINGS).apply(events)
    with sync_of(url) as client:
        assert canonical(snapshot(client)) == canonical(list(model.profiles.values()))
        records = [f for _, f in client.xrange(keys.MERGES)]
    refused = [f["reason"] for f in records if f["status"] == "refused"]
    assert sorted(refused) == sorted(reason for _, reason in model.refusals)
