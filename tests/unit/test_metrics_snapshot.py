"""cdp.metrics.read_snapshot on fakeredis (Redis 7 semantics: XINFO GROUPS has ``lag``;
the Redis 6.2 count of entries after last-delivered-id is exercised against the real
redis-server by tests/integration/test_metrics.py)."""

from __future__ import annotations

import asyncio

import fakeredis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cdp import keys
from cdp.clock import wall_ms
from cdp.metrics import SnapshotCollector, read_snapshot


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
