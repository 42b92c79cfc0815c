"""Convergence through the real pipeline: generated event sets POSTed to the API in a
random order, applied by three worker processes of which one is SIGKILLed mid-run and
restarted, must end in exactly the reference model's state. On one Redis (the workers
apply with ``apply_batch``) and on the session's 3-master Redis Cluster (the profile
protocol: per-profile scripts, claims and cross-slot merges)."""

from __future__ import annotations

import random
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdp.chaos.model import Model, canonical, snapshot
from cdp.connect import SyncClient, sync_client
from cdp.embedded import RedisServer
from cdp.embedded_cluster import EmbeddedCluster
from cdp.events import StreamEvent, iso_ms
from cdp.settings import Settings
from tests.support.cluster import flush_cluster
from tests.support.events import event_sets
from tests.support.stack import Stack
from tests.support.values import T0_MS as T0
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration


def body(ev: StreamEvent) -> dict[str, object]:
    payload = {
        k: v
        for k, v in (
            ("type", ev.type),
            ("userId", ev.userId),
            ("anonymousId", ev.anonymousId),
            ("email", ev.email),
            ("traits", ev.traits),
            ("name", ev.name),
        )
        if v is not None
    }
    return {"eventId": ev.eventId, "ts": iso_ms(ev.ts), "payload": payload}


@pytest.fixture(params=["one-redis", "cluster"])
def backend(request: pytest.FixtureRequest) -> tuple[str, Callable[[], None]]:
    """The URL of the session's Redis or cluster, and how to empty it."""
    if request.param == "cluster":
        cluster: EmbeddedCluster = request.getfixturevalue("redis_cluster")
        return cluster.url, lambda: flush_cluster(cluster)
    server: RedisServer = request.getfixturevalue("redis_server")

    def flush() -> None:
        with sync_client(server.url) as client:
            client.flushall()

    return server.url, flush


@settings(
    max_examples=3,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(events=event_sets(max_events=40), rng=st.randoms(use_true_random=False))
def test_pipeline_with_a_sigkill_converges_to_the_model(
    backend: tuple[str, Callable[[], None]], events: list[StreamEvent], rng: random.Random
) -> None:
    url, flush = backend
    flush()
    client: SyncClient = sync_client(url, decode_responses=True)
    with tempfile.TemporaryDirectory() as logs:
        stack = Stack(url, client, Path(logs))
        try:
            run(stack, events, rng)
        except BaseException:
            print(stack.logs())
            raise
        finally:
            stack.close()
            client.close()


def run(stack: Stack, events: list[StreamEvent], rng: random.Random) -> None:
    stack.set_clock(T0)
    stack.start_api()
    workers = [stack.start_worker(f"w{i}") for i in range(3)]
    order = events[:]
    rng.shuffle(order)
    for ev in order:
        assert stack.post("/cdp/ingest", body(ev)).status == 202
    wait_until(lambda: stack.pending() == len(events), message="every event buffered")
    stack.set_clock(T0 + 61_000)  # the watermark passes part of the events
    if any(ev.ts <= T0 + 56_000 for ev in events):
        stack.wait_metric("processed", 1)
    victim = workers[rng.randrange(3)]
    stack.kill(victim, signal.SIGKILL)
    stack.start_worker("w-restarted")
    stack.set_clock(T0 + 600_000)
    wait_until(
        lambda: stack.metric("processed") + stack.metric("dedup_hits") == len(events),
        timeout=30,
        message="every delivery applied or recognised as a duplicate",
    )
    stack.wait_idle()
    expected = Model(Settings()).apply(events)
    assert canonical(snapshot(stack.r)) == canonical(list(expected.profiles.values()))
    assert stack.metric("processed") == len({ev.eventId for ev in events})
