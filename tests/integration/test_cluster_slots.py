"""The product's non-script paths on the session's real 3-master Redis Cluster.

Script calls survive a node that forgot its scripts; the API stores a /v1/batch that
spans partitions with one call per partition and says which calls a refused partition
kept out (500 partly_stored); a worker's reader (in-process) reads partitions held by
different masters; dead letters are recorded once and acknowledged; segments and
webhooks are created and deleted over the admin API. No event is applied here: the
apply script is not cluster-safe yet (docs/cluster.md).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from cdp import keys
from cdp.api.app import create_app
from cdp.clock import SystemClock
from cdp.connect import Client, connect
from cdp.identity import partition_of, routing_id
from cdp.metrics import read_snapshot
from cdp.pipeline.buffer import PartitionBuffer
from cdp.redis_nodes import for_each_master, info_sum
from cdp.scripts import Scripts, load_scripts, script_names, source
from cdp.settings import Settings, load_settings
from cdp.streams import text
from tests.support.values import ADMIN_TOKEN
from workers.dead_letters import Dropped
from workers.housekeeping import ensure_groups
from workers.worker import Worker

pytestmark = pytest.mark.integration

PARTITIONS = 16
WRITE_KEY = "wk1"


def settings_of(url: str) -> Settings:
    return load_settings(
        env={},
        redis_url=url,
        partitions=PARTITIONS,
        write_keys=WRITE_KEY,
        admin_token=ADMIN_TOKEN,
    )


async def cluster_client(url: str) -> RedisCluster:
    redis = await connect(settings_of(url))
    assert isinstance(redis, RedisCluster)
    await redis.initialize()
    return redis


def master_of(redis: RedisCluster, key: str) -> str:
    return str(redis.get_node_from_key(key).name)


def partition_of_user(user: str) -> int:
    return partition_of(routing_id(user, None, None), PARTITIONS)


def users_over_masters(redis: RedisCluster, n: int) -> list[str]:
    """``n`` user ids whose partitions' streams are held by every master."""
    users = [f"u{i}" for i in range(n)]
    masters = {master_of(redis, keys.stream(partition_of_user(u))) for u in users}
    assert len(masters) == 3, "the users do not reach every master"
    return users


Api = TestClient[Any, Any]
Body = Callable[[RedisCluster, Api], Awaitable[None]]


def run(url: str, body: Body) -> None:
    """``body(redis, api)``: a cluster client and the API app in this process."""

    async def main() -> None:
        redis = await cluster_client(url)
        try:
            async with TestClient(TestServer(create_app(settings_of(url)))) as api:
                await body(redis, api)
        finally:
            await redis.aclose()

    asyncio.run(main())


def basic_auth() -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()}


def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def batch(users: list[str]) -> dict[str, Any]:
    return {
        "batch": [
            {"type": "track", "userId": u, "event": "Seen", "messageId": f"m-{u}"} for u in users
        ]
    }


async def entries_per_stream(redis: Client) -> dict[int, int]:
    return {p: int(await redis.xlen(keys.stream(p))) for p in range(PARTITIONS)}


# -- scripts ------------------------------------------------------------------------


def test_scripts_are_loaded_on_every_master_and_reloaded_after_noscript(
    redis_cluster_url: str,
) -> None:
    async def body(redis: RedisCluster, api: Api) -> None:
        await for_each_master(redis, "SCRIPT", "FLUSH")
        await load_scripts(redis)
        shas = [redis.register_script(source(name)).sha for name in script_names()]
        for exists in await for_each_master(redis, "SCRIPT", "EXISTS", *shas):
            assert list(exists) == [1] * len(shas)

        # Nodes that forgot them (a failover, a new node): a pipeline of calls over
        # every master is answered as if nothing had happened.
        scripts = Scripts(redis)
        await for_each_master(redis, "SCRIPT", "FLUSH")
        leases = [keys.lease(p) for p in range(PARTITIONS)]
        assert len({master_of(redis, lease) for lease in leases}) == 3
        async with redis.pipeline(transaction=False) as pipe:
            for lease in leases:
                await scripts.lease_acquire.queue(pipe, lease, "w1", 60_000)
            acquired = await pipe.execute()
        assert [scripts.lease_acquire.decode(a) for a in acquired] == [True] * PARTITIONS
        for lease in leases:
            assert await redis.get(lease) == b"w1"

    run(redis_cluster_url, body)


# -- publishing ---------------------------------------------------------------------


def test_a_batch_spanning_partitions_is_stored_on_several_masters(
    redis_cluster_url: str,
) -> None:
    async def body(redis: RedisCluster, api: Api) -> None:
        users = users_over_masters(redis, 40)
        resp = await api.post("/v1/batch", json=batch(users), headers=basic_auth())
        assert resp.status == 200, await resp.text()
        assert await resp.json() == {"success": True}

        per_stream = await entries_per_stream(redis)
        touched = {partition_of_user(u) for u in users}
        # One entry per partition the request touched, none elsewhere.
        assert per_stream == {p: int(p in touched) for p in range(PARTITIONS)}
        assert len({master_of(redis, keys.stream(p)) for p in touched}) == 3
        assert ((await read_snapshot(redis, PARTITIONS)).values)["accepted"] == len(users)

    run(redis_cluster_url, body)


def test_a_batch_refused_by_one_partition_is_a_500_naming_what_was_stored(
    redis_cluster_url: str,
) -> None:
    async def body(redis: RedisCluster, api: Api) -> None:
        users = users_over_masters(redis, 40)
        refused = partition_of_user(users[0])
        await redis.set(keys.stream(refused), "not a stream")  # its call fails: WRONGTYPE
        resp = await api.post("/v1/batch", json=batch(users), headers=basic_auth())
        assert resp.status == 500, await resp.text()
        assert resp.headers["Retry-After"] == "1"
        answer = await resp.json()
        assert answer["code"] == "partly_stored"
        expected = [i for i, u in enumerate(users) if partition_of_user(u) != refused]
        assert answer["stored"] == expected
        assert ((await read_snapshot(redis, PARTITIONS)).values)["accepted"] == len(expected)

        # The partition is writable again: the retry stores it (the workers find the
        # rest duplicates by their messageIds).
        await redis.delete(keys.stream(refused))
        resp = await api.post("/v1/batch", json=batch(users), headers=basic_auth())
        assert resp.status == 200, await resp.text()
        assert await redis.xlen(keys.stream(refused)) == 1

    run(redis_cluster_url, body)


# -- reading, dead letters ----------------------------------------------------------


async def getkeys_calls(redis: RedisCluster) -> int:
    """COMMAND calls (GETKEYS among them) over the masters, as commandstats counts them."""
    stats = await info_sum(redis, "commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k.startswith("cmdstat_command"))


async def read_until(worker: Worker, partitions: list[int], wanted: int) -> None:
    deadline = asyncio.get_running_loop().time() + 20
    while worker.state.buffered < wanted:
        assert asyncio.get_running_loop().time() < deadline, "entries not read"
        await worker.reader.read_once(partitions, 100)


def test_the_reader_reads_partitions_held_by_different_masters(
    redis_cluster_url: str,
) -> None:
    async def body(redis: RedisCluster, api: Api) -> None:
        await ensure_groups(redis, PARTITIONS)
        users = users_over_masters(redis, 40)
        resp = await api.post("/v1/batch", json=batch(users), headers=basic_auth())
        assert resp.status == 200
        worker = Worker(redis, settings_of(redis_cluster_url), SystemClock(), worker_id="w1")
        partitions = list(range(PARTITIONS))
        for p in partitions:
            worker.state.buffers[p] = PartitionBuffer()
        await read_until(worker, partitions, len(users))
        buffered = {p for p, b in worker.state.buffers.items() if len(b)}
        assert buffered == {partition_of_user(u) for u in users}
        assert len({master_of(redis, keys.stream(p)) for p in buffered}) == 3
        # Nothing new for the group: a read now buffers nothing more.
        await worker.reader.read_once(partitions, 100)
        assert worker.state.buffered == len(users)
        # The client routes XREADGROUP by its stream keys itself: no COMMAND GETKEYS
        # round trip per read (redis-py's way, which failed inside redis-py while a
        # master was failing over and stopped a worker's read loop).
        before = await getkeys_calls(redis)
        await worker.reader.read_once(partitions, 100)
        await redis.xreadgroup(keys.GROUP, "w1", {keys.stream(0): ">"}, count=1)
        assert await getkeys_calls(redis) == before

    run(redis_cluster_url, body)


def test_dead_letters_are_recorded_once_and_acknowledged(redis_cluster_url: str) -> None:
    async def body(redis: RedisCluster, api: Api) -> None:
        await ensure_groups(redis, PARTITIONS)
        user = next(
            u
            for u in (f"late{i}" for i in range(100))
            if master_of(redis, keys.stream(partition_of_user(u))) != master_of(redis, keys.DEAD)
        )
        p = partition_of_user(user)
        resp = await api.post("/v1/batch", json=batch([user]), headers=basic_auth())
        assert resp.status == 200
        worker = Worker(redis, settings_of(redis_cluster_url), SystemClock(), worker_id="w1")
        worker.state.buffers[p] = PartitionBuffer()
        await read_until(worker, [p], 1)
        ((raw_id, _),) = await redis.xrange(keys.stream(p))
        entry_id = text(raw_id)
        dropped = [Dropped(entry_id, None, b"{not json", "undecodable: test")]
        # As if a crash had come between the record and the acknowledgement: the entry
        # is recorded again (claimed, dropped again), and nothing is written twice.
        await worker.dead_letters.record(p, dropped)
        await worker.dead_letters.record(p, dropped)
        records = await redis.xrange(keys.DEAD)
        assert len(records) == 1
        assert records[0][1][b"entryId"] == entry_id.encode()
        assert (await redis.xpending(keys.stream(p), keys.GROUP))["pending"] == 0

    run(redis_cluster_url, body)


# -- admin: segments, webhooks ------------------------------------------------------


def test_segments_and_webhooks_are_created_and_deleted_over_the_api(
    redis_cluster_url: str,
) -> None:
    async def body(redis: RedisCluster, api: Api) -> None:
        rule = {"rule": {"trait": "plan", "op": "eq", "value": "gold"}, "description": "gold"}
        resp = await api.put("/cdp/segments/gold", json=rule, headers=admin())
        assert resp.status == 201, await resp.text()
        assert (await resp.json())["backfill"]["state"] == "running"
        assert await redis.sismember(keys.BACKFILLS, "gold")
        assert await redis.get(keys.SEGMENTS_VERSION) == b"1"
        resp = await api.get("/cdp/segments/gold", headers=admin())
        assert resp.status == 200
        assert (await resp.json())["rule"] == rule["rule"]
        resp = await api.delete("/cdp/segments/gold", headers=admin())
        assert resp.status == 204
        assert not await redis.hexists(keys.SEGMENTS, "gold")
        assert not await redis.sismember(keys.BACKFILLS, "gold")
        assert not await redis.exists(keys.segment_backfill("gold"))
        assert await redis.get(keys.SEGMENTS_VERSION) == b"2"
        resp = await api.delete("/cdp/segments/gold", headers=admin())
        assert resp.status == 404

        hook = {"url": "http://127.0.0.1:9/hook", "segments": ["gold"]}
        resp = await api.post("/cdp/webhooks", json=hook, headers=admin())
        assert resp.status == 201, await resp.text()
        hook_id = (await resp.json())["id"]
        resp = await api.get("/cdp/webhooks", headers=admin())
        (listed,) = (await resp.json())["webhooks"]
        assert listed["delivery"] == {"cursor": "0-0", "attempts": "0"}
        resp = await api.delete(f"/cdp/webhooks/{hook_id}", headers=admin())
        assert resp.status == 204
        assert not await redis.exists(keys.webhook_state(hook_id))
        assert not await redis.hexists(keys.WEBHOOKS, hook_id)
        resp = await api.delete(f"/cdp/webhooks/{hook_id}", headers=admin())
        assert resp.status == 404

    run(redis_cluster_url, body)


def test_every_record_stream_shares_a_slot_with_its_marks() -> None:
    for stream in (keys.DROPPED, keys.DEAD, keys.WEBHOOKS_DEAD):
        assert key_slot(stream.encode()) == key_slot(keys.record_marks(stream).encode())
