"""The cross-slot merge (cdp/merge.py) against its oracle, the merge inside apply_batch.

Profiles built by ``apply_batch`` from events that do not merge, then merged by the
journaled protocol (``cdp.merge.merge``), on one real Redis and on the session's
3-master cluster, end in exactly the state an ALIAS event merging them in one
``apply_batch`` call leaves (``tests.support.merging``): traits, identifiers,
counters, seen ids, merged sets, memberships, records and EXIT events.
"""

from __future__ import annotations

import asyncio

import pytest
import redis as redis_sync

from cdp import keys, merge
from cdp.connect import connect, sync_client
from cdp.embedded_cluster import EmbeddedCluster
from cdp.events import iso_ms
from cdp.scripts import Scripts
from tests.support import merging
from tests.support.merging import Scenario
from tests.support.values import NOW_MS

pytestmark = pytest.mark.integration


def db_url(url: str, db: int) -> str:
    return url.rsplit("/", 1)[0] + f"/{db}"


def oracle_state(url: str, scenario: Scenario) -> dict:
    oracle_url = db_url(url, 0)
    merging.build(oracle_url, scenario)
    merging.oracle(oracle_url, scenario)
    r = redis_sync.Redis.from_url(oracle_url)
    try:
        return merging.normalised(r)
    finally:
        r.close()


@pytest.mark.parametrize("size", [2, 3])
def test_merge_on_one_redis_equals_apply_batch(redis_url: str, size: int) -> None:
    scenario = Scenario(size)
    expected = oracle_state(redis_url, scenario)
    mine = db_url(redis_url, 1)
    merging.build(mine, scenario)
    asyncio.run(merging.run_merges(mine, scenario.pairs, scenario))
    merging.oracle(mine, scenario)  # the ALIAS itself, now applied to one profile
    r = redis_sync.Redis.from_url(mine)
    assert merging.normalised(r) == expected
    assert len(expected["segment events"]) == size - 1
    r.close()


def to_cluster(redis_url: str, cluster_url: str, scenario: Scenario) -> None:
    """The scenario's profiles built on one Redis (db 1), copied to the cluster."""
    built = db_url(redis_url, 1)
    merging.build(built, scenario)
    source = redis_sync.Redis.from_url(built)
    target = sync_client(cluster_url)
    try:
        assert merging.copy_keys(source, target) > 10
    finally:
        source.close()
        target.close()


def from_cluster(cluster: EmbeddedCluster, redis_url: str, scenario: Scenario) -> dict:
    """The cluster's keys copied to one Redis (db 2), the ALIAS applied there: its state."""
    back = db_url(redis_url, 2)
    target = redis_sync.Redis.from_url(back)
    nodes = merging.masters(cluster.nodes[0].port)
    try:
        merging.copy_keys(nodes, target)
        merging.oracle(back, scenario)
        return merging.normalised(target)
    finally:
        target.close()
        for node in nodes:
            node.close()


def test_merge_across_slots_equals_apply_batch(
    redis_url: str, redis_cluster: EmbeddedCluster, redis_cluster_url: str
) -> None:
    scenario = Scenario(3)
    expected = oracle_state(redis_url, scenario)
    to_cluster(redis_url, redis_cluster_url, scenario)
    asyncio.run(merging.run_merges(redis_cluster_url, scenario.pairs, scenario))
    assert from_cluster(redis_cluster, redis_url, scenario) == expected


def test_resume_finishes_a_frozen_merge(redis_url: str) -> None:
    """A journal left frozen (its process gone after step 1) is finished by resume."""
    scenario = Scenario(2)
    expected = oracle_state(redis_url, scenario)
    mine = db_url(redis_url, 1)
    merging.build(mine, scenario)
    assert scenario.alias is not None
    alias = scenario.alias

    async def freeze_then_resume() -> None:
        settings = merging.settings_of(mine)
        redis = await connect(settings)
        scripts = Scripts(redis)
        await redis.zadd(keys.MERGES_OPEN, {"p2": NOW_MS})
        frozen = await scripts.merge_freeze(
            loser="p2",
            survivor="p1",
            counter_names=[],
            event_id=alias.eventId,
            merged_at=iso_ms(alias.ts),
        )
        assert frozen.status == "STATE" and frozen.merge_state == "frozen"
        assert set(frozen.counter_names) == {"$seen", "$track", "$page", "Signed Up", "Viewed"}
        assert await merge.resume(redis, scripts, settings, "p1", NOW_MS) is None
        outcome = await merge.resume(redis, scripts, settings, "p2", NOW_MS)
        assert outcome == merge.MergeOutcome("merged", "p1")
        assert await redis.zcard(keys.MERGES_OPEN) == 0
        await redis.aclose()

    asyncio.run(freeze_then_resume())
    merging.oracle(mine, scenario)
    r = redis_sync.Redis.from_url(mine)
    assert merging.normalised(r) == expected
    r.close()
