"""cdp.metrics.read_snapshot on fakeredis (Redis 7 semantics: XINFO GROUPS has ``lag``;
the Redis 6.2 count of entries after last-delivered-id is exercised against the real
redis-server by tests/integration/test_metrics.py)."""

from __future__ import annotations

import asyncio

import fakeredis
import msgspec
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cdp import keys
from cdp.clock import wall_ms
from cdp.histograms import APPLY_BATCH, Observed
from cdp.metrics import SnapshotCollector, read_snapshot
from cdp.scripts import BatchResult
from tests.support.events import track
from workers.ticking import fresh_ts


async def _fill(r: fakeredis.FakeAsyncRedis) -> None:
    now = wall_ms()
    await r.zadd(keys.WORKERS, {"w1": now + 60_000, "gone": now - 1})
    await r.hset(keys.METRICS_BUFFERED, mapping={"w1": 3, "gone": 9})
    await r.set(keys.lease(0), "w1")
    await r.set(keys.lease(1), "gone")  # an expired worker's lease is not counted
    await r.hset(keys.metrics(1), "accepted", 4)
    await r.xgroup_create(keys.stream(0), keys.GROUP, id="0", mkstream=True)
    for n in range(4):
        await r.xadd(keys.stream(0), {"n": n})
    await r.xreadgroup(keys.GROUP, "w1", {keys.stream(0): ">"}, count=1)


def test_snapshot_reads_lag_pending_buffers_and_leases() -> None:
    async def run() -> None:
        r = fakeredis.FakeAsyncRedis()
        await _fill(r)
        snap = await read_snapshot(r, 3)
        assert snap.lag == {0: 3, 1: 0, 2: 0}  # partitions 1, 2: no stream yet
        assert snap.pending == {0: 1, 1: 0, 2: 0}
        assert snap.buffered == {"w1": 3}
        assert snap.partitions == {"w1": 1}
        assert snap.values["accepted"] == 4 and snap.values["buffered"] == 3
        registry = CollectorRegistry(auto_describe=False)
        registry.register(SnapshotCollector(snap))
        text = generate_latest(registry).decode()
        kinds = {f.name: f.type for f in text_string_to_metric_families(text)}
        assert kinds["cdp_events_accepted"] == "counter"
        assert kinds["cdp_consumer_lag_entries"] == "gauge"
        assert 'cdp_consumer_lag_entries{partition="0"} 3.0' in text

    asyncio.run(run())


def test_worker_histograms_are_summed_and_exposed_cumulatively() -> None:
    async def run() -> None:
        r = fakeredis.FakeAsyncRedis()
        for values in ([0.003, 0.003, 0.2], [0.003, 20.0]):  # two workers' flushes
            seen = Observed(APPLY_BATCH)
            for v in values:
                seen.observe(v)
            key = keys.histogram(APPLY_BATCH.key)  # as lua/histogram_add-1.lua adds them
            for name, n in seen.increments().items():
                await r.hincrby(key, name, n)
            await r.hincrbyfloat(key, "sum", seen.sum)
        snap = await read_snapshot(r, 1)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(SnapshotCollector(snap))
        text = generate_latest(registry).decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        family = families["cdp_apply_batch_duration_seconds"]
        assert family.type == "histogram"
        buckets = {s.labels["le"]: s.value for s in family.samples if s.name.endswith("_bucket")}
        assert buckets["0.0025"] == 0 and buckets["0.005"] == 3 and buckets["0.25"] == 4
        assert buckets["10.0"] == 4 and buckets["+Inf"] == 5
        samples = {s.name: s.value for s in family.samples if "le" not in s.labels}
        assert samples["cdp_apply_batch_duration_seconds_count"] == 5
        assert abs(samples["cdp_apply_batch_duration_seconds_sum"] - 20.209) < 1e-9
        assert (await r.hgetall(keys.histogram("apply-batch")))[b"count"] == b"5"
        # Nothing observed yet: the family is there, empty.
        fresh = families["cdp_event_freshness_seconds"]
        assert fresh.type == "histogram"
        assert {s.value for s in fresh.samples} == {0}

    asyncio.run(run())


def test_freshness_is_observed_only_when_every_live_event_of_a_slice_was_applied() -> None:
    live = [track(f"e{n}", 1_000 + n, "Opened", user="u") for n in range(3)]
    imported = msgspec.structs.replace(track("i", 5, "Opened", user="u"), mode="import")
    applied_all = BatchResult(applied=4, profiles=("p1", "p1", "p1"))
    assert fresh_ts([*live, imported], applied_all) == [1_000, 1_001, 1_002]
    one_duplicate = BatchResult(applied=3, duplicates=1, profiles=("p1", "p1"))
    assert fresh_ts([*live, imported], one_duplicate) == []


def test_a_deleted_segment_leaves_the_snapshot_its_counts_kept() -> None:
    async def run() -> None:
        r = fakeredis.FakeAsyncRedis()
        await r.hset(keys.SEGMENTS, "vip", "{}")
        await r.hset(
            keys.METRICS_TAIL, mapping={"enter:vip": 3, "enter:gone": 2, "exit:pro_plan": 1}
        )
        snap = await read_snapshot(r, 1)
        assert set(snap.tail.transitions) == {"vip", "pro_plan"}  # "gone" was deleted
        assert (await r.hget(keys.METRICS_TAIL, "enter:gone")) == b"2"

    asyncio.run(run())
