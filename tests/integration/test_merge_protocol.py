"""The cross-slot merge (cdp/merge.py) against its oracle, the merge inside apply_batch.

Profiles built by ``apply_batch`` from events that do not merge, then merged by the
journaled protocol (``cdp.merge.merge``), on one real Redis and on the session's
3-master cluster, end in exactly the state an ALIAS event merging them in one
``apply_batch`` call leaves (``tests.support.merging``): traits, identifiers,
counters, seen ids, merged sets, memberships, records and EXIT events.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync

from cdp import faults, keys, merge
from cdp.connect import Client, connect, sync_client
from cdp.embedded_cluster import EmbeddedCluster
from cdp.events import iso_ms
from cdp.pipeline.apply import script_limits
from cdp.scripts import Scripts, load_scripts
from tests.support import merging
from tests.support.events import event, track
from tests.support.merging import Scenario
from tests.support.stack import Stack
from tests.support.values import NOW_MS, T0_MS, iso
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

# Where the loser's journal is when its process died just after each step.
JOURNAL_AT = {
    "intent": None,
    "frozen": "frozen",
    "absorbed": "absorbed",
    "repointed": "repointed",
    "finished": "done",
}


def db_url(url: str, db: int) -> str:
    return url.rsplit("/", 1)[0] + f"/{db}"


def oracle_state(url: str, scenario: Scenario) -> dict[str, Any]:
    oracle_url = db_url(url, 0)
    merging.build(oracle_url, scenario)
    merging.oracle(oracle_url, scenario)
    r = redis_sync.Redis.from_url(oracle_url)
    try:
        return merging.normalised(r)
    finally:
        r.close()


def built(redis_url: str, size: int) -> tuple[Scenario, dict[str, Any], str]:
    """The scenario, the oracle's state (db 0) and the URL of its profiles built (db 1)."""
    scenario = Scenario(size)
    expected = oracle_state(redis_url, scenario)
    mine = db_url(redis_url, 1)
    merging.build(mine, scenario)
    return scenario, expected, mine


def assert_state(url: str, expected: dict[str, Any]) -> None:
    """``url`` holds the oracle's state, and no open journal."""
    r = redis_sync.Redis.from_url(url)
    try:
        assert merging.normalised(r) == expected
        assert r.zcard(keys.MERGES_OPEN) == 0
    finally:
        r.close()


def assert_oracle(url: str, scenario: Scenario, expected: dict[str, Any]) -> None:
    """The ALIAS applied on ``url`` (one profile's now) leaves the oracle's state."""
    merging.oracle(url, scenario)
    assert_state(url, expected)


@pytest.mark.parametrize("size", [2, 3])
def test_merge_on_one_redis_equals_apply_batch(redis_url: str, size: int) -> None:
    scenario, expected, mine = built(redis_url, size)
    asyncio.run(merging.run_merges(mine, scenario.pairs, scenario))
    assert len(expected["segment events"]) == size - 1
    assert_oracle(mine, scenario, expected)  # the ALIAS itself, now on one profile


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


def from_cluster(cluster: EmbeddedCluster, redis_url: str, scenario: Scenario) -> dict[str, Any]:
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
    scenario, expected, mine = built(redis_url, 2)
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
    assert_oracle(mine, scenario, expected)


def run_process(url: str, what: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    """``tests.support.merging.main`` in a process of its own (killed at ``fault``)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(faults.ENV, None)
    if fault is not None:
        env[faults.ENV] = fault
    return subprocess.run(
        [sys.executable, "-c", "from tests.support.merging import main; main()", url, what, "2"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("step", ["intent", "frozen", "absorbed", "repointed", "finished"])
def test_a_merge_killed_at_each_step_is_finished_by_another_process(
    redis_url: str, redis_cluster: EmbeddedCluster, redis_cluster_url: str, step: str
) -> None:
    scenario = Scenario(2)
    expected = oracle_state(redis_url, scenario)
    to_cluster(redis_url, redis_cluster_url, scenario)
    killed = run_process(redis_cluster_url, "merge", f"merge:{step}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    cluster = sync_client(redis_cluster_url, decode_responses=True)
    try:
        assert cluster.zrange(keys.MERGES_OPEN, 0, -1) == ["p2"]  # the journal is open
        journal = cluster.hget(keys.profile("p2"), "mergeState")
        assert journal == JOURNAL_AT[step]
    finally:
        cluster.close()
    resumed = run_process(redis_cluster_url, "resume")
    assert resumed.returncode == 0, resumed.stderr
    # Only a journal never frozen is dropped: the redelivered ALIAS merges again.
    assert json.loads(resumed.stdout) == (["p2"] if step == "intent" else [])
    assert from_cluster(redis_cluster, redis_url, scenario) == expected


def run(coro_fn: Any, url: str) -> Any:
    """``coro_fn(redis, scripts, settings)`` on a client of ``url`` with the scripts loaded."""

    async def go() -> Any:
        settings = merging.settings_of(url)
        redis = await connect(settings)
        try:
            await load_scripts(redis)
            return await coro_fn(redis, Scripts(redis), settings)
        finally:
            await redis.aclose()

    return asyncio.run(go())


def test_every_step_run_twice_changes_nothing_more(redis_url: str) -> None:
    scenario, expected, mine = built(redis_url, 2)
    assert scenario.alias is not None
    event_id, at = scenario.alias.eventId, iso_ms(scenario.alias.ts)
    limits = script_limits(merging.settings_of(mine), NOW_MS)

    async def steps(redis: Client, scripts: Scripts, settings: Any) -> None:
        await redis.zadd(keys.MERGES_OPEN, {"p2": NOW_MS})
        for _ in range(2):
            frozen = await scripts.merge_freeze(
                loser="p2",
                survivor="p1",
                counter_names=["$seen"],
                event_id=event_id,
                merged_at=at,
            )
        frozen = await scripts.merge_freeze(
            loser="p2",
            survivor="p1",
            counter_names=frozen.counter_names,
            event_id=event_id,
            merged_at=at,
        )
        await redis.zadd(keys.SEGMENTS_DUE, {"p1": NOW_MS + settings.lease_ttl_ms}, lt=True)

        async def absorb() -> str:
            answer = await scripts.merge_absorb(
                survivor="p1",
                loser="p2",
                counter_names=frozen.counter_names,
                state=frozen.state,
                limits=limits,
                now_iso=iso_ms(NOW_MS),
            )
            return answer.status

        assert [await absorb(), await absorb()] == ["OK", "ALREADY"]
        for _ in range(2):
            assert (
                await scripts.merge_advance(loser="p2", survivor="p1", done="frozen", to="absorbed")
                == "absorbed"
            )
        changed = [
            await scripts.identifier_repoint(typed, "p1", ["p2"])
            for _ in range(2)
            for typed in frozen.identifiers
        ]
        assert changed == [True] * len(frozen.identifiers) + [False] * len(frozen.identifiers)
        for _ in range(2):
            await scripts.merge_advance(loser="p2", survivor="p1", done="absorbed", to="repointed")
            assert await scripts.merge_finish(loser="p2", counter_names=frozen.counter_names) == (
                "DONE",
            )
        # An absorb retried late (its first answer lost) finds it absorbed.
        assert await absorb() == "ALREADY"
        for _ in range(2):
            assert await merge.resume(redis, scripts, settings, "p2", NOW_MS) == (
                merge.MergeOutcome("merged", "p1")
            )
        # The whole merge again: the journal says done, the record is not added twice.
        again = await merge.merge(redis, scripts, settings, "p2", "p1", event_id, at, NOW_MS)
        assert again == merge.MergeOutcome("merged", "p1")

    run(steps, mine)
    assert_oracle(mine, scenario, expected)


def test_a_loser_frozen_towards_a_profile_merged_meanwhile_goes_to_its_survivor(
    redis_url: str,
) -> None:
    """p3 frozen towards p2 (its process died), then p2 merged into p1: resuming p3's
    merge finds p2 forwarded, retargets the journal and absorbs into p1."""
    scenario, expected, mine = built(redis_url, 3)
    assert scenario.alias is not None
    event_id, at = scenario.alias.eventId, iso_ms(scenario.alias.ts)

    async def chain(redis: Client, scripts: Scripts, settings: Any) -> None:
        await redis.zadd(keys.MERGES_OPEN, {"p3": NOW_MS})
        frozen = await scripts.merge_freeze(
            loser="p3", survivor="p2", counter_names=[], event_id=event_id, merged_at=at
        )
        assert frozen.merge_state == "frozen"
        outcome = await merge.merge(redis, scripts, settings, "p2", "p1", event_id, at, NOW_MS)
        assert outcome == merge.MergeOutcome("merged", "p1")
        # The sweeper resumes journals older than lease-ttl only.
        ttl = settings.lease_ttl_ms
        assert await merge.resume_open(redis, scripts, settings, NOW_MS + ttl - 1, ttl) == 0
        assert await merge.resume_open(redis, scripts, settings, NOW_MS, 0) == 1
        assert await redis.hget(keys.profile("p3"), "mergedInto") == b"p1"
        # A merge asked of p3 now says where its state is.
        again = await merge.merge(redis, scripts, settings, "p3", "p2", event_id, at, NOW_MS)
        assert again == merge.MergeOutcome("merged", "p1")

    run(chain, mine)
    assert_oracle(mine, scenario, expected)


def test_a_refused_absorb_gives_the_loser_back(redis_url: str) -> None:
    """The plain reads saw p2 without a userId; it got one (u2) before the merge: the
    absorb refuses (different userIds), p2 is unfrozen and lives on, the refusal is
    recorded once, p1 is unchanged."""
    url = db_url(redis_url, 1)
    merging.build(url, Scenario(2))
    asyncio.run(merging.apply(url, [event("late-u2", T0_MS, user="u2", anon="a2")]))
    r = redis_sync.Redis.from_url(url, decode_responses=True)
    before = {k: r.hgetall(k) for k in (keys.profile("p1"), keys.traits("p1"))}

    async def refused(redis: Client, scripts: Scripts, settings: Any) -> None:
        outcome = await merge.merge(
            redis, scripts, settings, "p2", "p1", "alias-x", iso_ms(T0_MS), NOW_MS
        )
        assert outcome == merge.MergeOutcome("refused", "p1", "different userIds")

    run(refused, url)
    assert {k: r.hgetall(k) for k in before} == before
    assert "mergedInto" not in r.hgetall(keys.profile("p2"))
    assert r.zcard(keys.MERGES_OPEN) == 0
    assert r.smembers(keys.merged("p1")) == set()
    assert r.get(keys.identifier("anon:a2")) == "p2"
    records = [f for _, f in r.xrange(keys.MERGES)]
    assert records == [
        {
            "status": "refused",
            "reason": "different userIds",
            "survivor": "p1",
            "profile": "p2",
            "eventId": "alias-x",
            "ts": iso_ms(T0_MS),
        }
    ]
    # p2 lives: an event of its own is applied to it.
    asyncio.run(merging.apply(url, [event("after", T0_MS + 1, anon="a2", traits={"x": 1})]))
    assert "x" in r.hgetall(keys.traits("p2"))
    r.close()


def test_the_sweeper_of_a_worker_finishes_an_abandoned_merge(
    redis_url: str, redis_cluster: EmbeddedCluster, redis_cluster_url: str, tmp_path: Path
) -> None:
    """A merge killed after its absorb, on the cluster; a worker process (the sweeper)
    finds the journal older than lease-ttl and finishes it: the oracle's state."""
    scenario = Scenario(2)
    expected = oracle_state(redis_url, scenario)
    to_cluster(redis_url, redis_cluster_url, scenario)
    killed = run_process(redis_cluster_url, "merge", "merge:absorbed")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    cluster = sync_client(redis_cluster_url, decode_responses=True)
    stack = Stack(redis_cluster_url, cluster, tmp_path)  # type: ignore[arg-type]
    try:
        stack.set_clock(NOW_MS + 2_000)  # the journal is older than the stack's 1 s lease
        stack.start_worker()
        wait_until(
            lambda: cluster.zcard(keys.MERGES_OPEN) == 0,
            timeout=30,
            message="the sweeper to finish the merge",
        )
        assert cluster.hget(keys.profile("p2"), "mergeState") == "done"
    finally:
        stack.close()
        cluster.close()
    assert from_cluster(redis_cluster, redis_url, scenario) == expected


def test_a_profile_merged_by_apply_batch_is_not_merged_or_recorded_again(redis_url: str) -> None:
    scenario, expected, _ = built(redis_url, 2)
    oracle_url = db_url(redis_url, 0)

    async def again(redis: Client, scripts: Scripts, settings: Any) -> None:
        for loser, survivor in (("p2", "p1"), ("p2", "p3")):
            outcome = await merge.merge(
                redis, scripts, settings, loser, survivor, "later", iso_ms(T0_MS), NOW_MS
            )
            assert outcome == merge.MergeOutcome("merged", "p1")

    run(again, oracle_url)
    assert_state(oracle_url, expected)


WORKER_FIELDS = ("evaluatedMs", "evaluations", "mergeState")  # the worker's own bookkeeping


def profiles_state(r: redis_sync.Redis) -> dict[str, Any]:
    """``normalised`` of the profiles, identifiers and records only (no due set, no
    worker bookkeeping, no segment memberships or outboxes: the oracle evaluates no
    segment; tests/integration/test_segments_cluster.py compares those)."""
    out = {}
    for key, row in merging.normalised(r).items():
        if key.endswith((":segments", ":outbox", ":outbox:relay")):
            continue
        if key.startswith((keys.PROFILE_PREFIX, keys.IDENTIFIER_PREFIX, keys.MERGES)):
            kind, value, ttl = row
            if kind == "hash":
                value = {f: v for f, v in value.items() if f not in WORKER_FIELDS}
            out[key] = (kind, value, ttl)
    return out


@pytest.mark.parametrize("step", ["intent", "frozen", "absorbed", "repointed", "finished"])
def test_a_worker_killed_mid_merge_is_finished_by_another_worker(
    redis_url: str,
    redis_cluster: EmbeddedCluster,
    redis_cluster_url: str,
    tmp_path: Path,
    step: str,
) -> None:
    """Workers on the cluster (profile protocol): the one applying the ALIAS that merges
    p2 into p1 dies (SIGKILL) right after the given step of the merge; another worker
    takes the partitions over, meets p2 forwarded with its journal open (or, killed
    before the freeze, the journal never frozen, which it drops) and the ALIAS
    redelivered, finishes the merge and applies the ALIAS: the state apply_batch
    leaves on one Redis."""
    built_events = [
        event("b1", T0_MS, user="u1", traits={"plan": "free", "country": "FR"}),
        event("b3", T0_MS + 1_000, anon="a2", traits={"plan": "pro", "age": 3}),
        track("b4", T0_MS + 2_000, "Signed Up", anon="a2"),
    ]
    alias = event("alias-1", T0_MS + 11_000, "ALIAS", user="u1", anon="a2")
    # The workers' clock: at the first event, then past the window of each batch.
    built_at, alias_at = T0_MS + 10_000, T0_MS + 30_000
    oracle_url = db_url(redis_url, 0)
    asyncio.run(merging.apply(oracle_url, built_events, now_ms=built_at))
    asyncio.run(merging.apply(oracle_url, [alias], now_ms=alias_at))
    r = redis_sync.Redis.from_url(oracle_url)
    expected = profiles_state(r)
    r.close()

    cluster = sync_client(redis_cluster_url, decode_responses=True)
    stack = Stack(redis_cluster_url, cluster, tmp_path)
    try:
        stack.set_clock(T0_MS)
        stack.start_api()
        first = stack.start_worker("w1", fault_point=f"merge:{step}")
        for ev in built_events:
            kind = {"type": ev.type, "name": ev.name} if ev.name else {"type": ev.type}
            ids = {"userId": ev.userId, "anonymousId": ev.anonymousId}
            payload = {k: v for k, v in {**kind, **ids, "traits": ev.traits}.items() if v}
            stack.send(ev.eventId, iso(ev.ts), **payload)
        stack.set_clock(built_at)
        stack.wait_metric("processed", 3)
        stack.send("alias-1", iso(alias.ts), type="ALIAS", userId="u1", anonymousId="a2")
        stack.set_clock(alias_at)
        wait_until(lambda: first.poll() is not None, timeout=30, message="w1 to die")
        assert first.returncode == -signal.SIGKILL
        assert cluster.zrange(keys.MERGES_OPEN, 0, -1) == ["p2"]  # the journal is open
        assert cluster.hget(keys.profile("p2"), "mergeState") == JOURNAL_AT[step]
        stack.start_worker("w2")
        # Time passes (within the dedup bucket): killed after the repoint, no event
        # meets p2 any more; the sweeper finishes journals older than lease-ttl (1 s).
        stack.set_clock(alias_at + 2_000)
        stack.wait_metric("processed", 4, timeout=30)
        wait_until(lambda: cluster.zcard(keys.MERGES_OPEN) == 0, message="the journal closed")
        stack.wait_idle()
        assert cluster.hget(keys.profile("p2"), "mergeState") == "done"
    finally:
        stack.close()
        cluster.close()
    back = db_url(redis_url, 2)
    target = redis_sync.Redis.from_url(back)
    nodes = merging.masters(redis_cluster.nodes[0].port)
    try:
        merging.copy_keys(nodes, target)
        assert profiles_state(target) == expected
    finally:
        target.close()
        for node in nodes:
            node.close()
