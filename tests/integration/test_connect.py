"""The client factory (cdp/connect.py) and the keyless helpers (cdp/redis_nodes.py)
against one Redis and a real 3-master Redis Cluster started here.

The cluster is the session's (``redis_cluster``, tests/support/cluster.py); the test of a
cluster that is not ok yet starts its own and takes slots away from it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import redis as redis_sync
import structlog
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from cdp.connect import connect, sync_client, target, wait_for_redis
from cdp.embedded import free_port
from cdp.embedded_cluster import EmbeddedCluster, slot_ranges
from cdp.errors import SettingsError
from cdp.redis_nodes import dbsize, for_each_master, info_sum, scan_all
from cdp.settings import load_settings
from tests.support.cluster import ClusterFactory, cluster_ok, flush_cluster
from tests.support.wait import wait_until


def url_of(cluster: EmbeddedCluster, node: int) -> str:
    return f"redis://127.0.0.1:{cluster.ports[node]}"


def test_auto_mode_finds_a_single_redis(redis_url: str) -> None:
    async def check() -> None:
        redis = await connect(load_settings(env={"CDP_REDIS_URL": redis_url}))
        try:
            assert type(redis) is Redis
            await redis.set("k", "v")
            assert await dbsize(redis) == 1
            assert len(await for_each_master(redis, "PING")) == 1
        finally:
            await redis.aclose()
        found = await wait_for_redis(load_settings(env={"CDP_REDIS_URL": redis_url}), LOG)
        assert found is not None and found.cluster is False

    asyncio.run(check())
    with sync_client(redis_url) as client:
        assert type(client) is redis_sync.Redis


LOG = structlog.get_logger("test")


async def until(predicate: Callable[[], bool], timeout: float = 20) -> None:
    """Poll ``predicate`` on the event loop (the task under test runs meanwhile)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_auto_mode_finds_a_cluster_and_its_keys_on_every_master(
    redis_cluster: EmbeddedCluster,
) -> None:
    names = [f"spread:{{{i}}}" for i in range(60)]  # hash tags over many slots
    flush_cluster(redis_cluster)  # the session's cluster: start empty

    async def check() -> None:
        settings = load_settings(env={"CDP_REDIS_URL": url_of(redis_cluster, 1)})
        redis = await connect(settings)
        try:
            assert isinstance(redis, RedisCluster)
            for name in names:
                await redis.set(name, "x")
            per_master = await for_each_master(redis, "DBSIZE")
            assert len(per_master) == 3 and all(n > 0 for n in per_master)
            assert await dbsize(redis) == len(names)
            assert sorted([k.decode() async for k in scan_all(redis, "spread:*")]) == sorted(names)
            stats = await info_sum(redis, "commandstats")
            assert stats["cmdstat_set"]["calls"] >= len(names)  # summed over the masters
            await redis.delete(*names)  # split by slot by redis-py
        finally:
            await redis.aclose()
        found = await wait_for_redis(settings, LOG)
        assert found is not None and found.cluster is True

    asyncio.run(check())
    with sync_client(url_of(redis_cluster, 2)) as client:
        assert isinstance(client, redis_sync.RedisCluster)
        assert client.set("spread:{sync}", 1) and client.delete("spread:{sync}") == 1


def test_redis_cluster_scheme_starts_from_any_listed_node(redis_cluster: EmbeddedCluster) -> None:
    dead = free_port()
    url = f"redis-cluster://127.0.0.1:{dead},127.0.0.1:{redis_cluster.ports[2]}"
    assert target(url).nodes == [("127.0.0.1", dead), ("127.0.0.1", redis_cluster.ports[2])]

    async def check() -> None:
        settings = load_settings(env={"CDP_REDIS_URL": url})
        redis = await connect(settings)
        try:
            assert isinstance(redis, RedisCluster)
            assert await redis.set("scheme:{a}", 1) and await redis.get("scheme:{a}") == b"1"
            await redis.delete("scheme:{a}")
        finally:
            await redis.aclose()
        # The dead node first: the probe goes on to the next one.
        found = await wait_for_redis(settings, LOG)
        assert found is not None and found.cluster is True

    asyncio.run(check())
    with pytest.raises(SettingsError, match="redis-cluster=no"):
        target(url, "no")


def test_a_database_other_than_0_on_a_cluster_is_refused(
    redis_cluster: EmbeddedCluster, redis_url: str
) -> None:
    with pytest.raises(SettingsError, match="database 3 on a Redis Cluster"):
        target(f"redis-cluster://127.0.0.1:{redis_cluster.ports[0]}/3")
    with pytest.raises(SettingsError, match="database 2 on a Redis Cluster"):
        target(redis_cluster.url + "/2", "yes")
    # auto: refused once the server says it is a cluster; a single Redis keeps its db.
    with pytest.raises(SettingsError, match="database 1 on a Redis Cluster"):
        asyncio.run(connect(load_settings(env={"CDP_REDIS_URL": redis_cluster.url + "/1"})))
    single = redis_url.rsplit("/", 1)[0] + "/1"

    async def single_db() -> None:
        redis = await connect(load_settings(env={"CDP_REDIS_URL": single}))
        assert type(redis) is Redis and redis.connection_pool.connection_kwargs["db"] == 1
        await redis.aclose()

    asyncio.run(single_db())


def test_wait_for_redis_waits_until_the_cluster_serves_every_slot(
    cluster_factory: ClusterFactory,
) -> None:
    forming = cluster_factory.start(masters=3)
    first = redis_sync.Redis(port=forming.ports[0], decode_responses=True)
    ranges = slot_ranges(3)[0]
    first.execute_command("CLUSTER", "DELSLOTS", *range(ranges[0], ranges[1] + 1))
    wait_until(lambda: not cluster_ok(forming.ports[0]), timeout=20, message="cluster_state:fail")
    try:
        settings = load_settings(env={"CDP_REDIS_URL": forming.url, "CDP_REDIS_CLUSTER": "yes"})

        async def check() -> None:
            with structlog.testing.capture_logs() as logs:
                waiting = asyncio.create_task(wait_for_redis(settings, LOG))

                def attempts() -> int:
                    return sum(e["event"] == "waiting for redis" for e in logs)

                await until(lambda: attempts() >= 3 or waiting.done())
                assert not waiting.done()
                assert "cluster_state:fail" in logs[-1]["error"]
                slots = range(ranges[0], ranges[1] + 1)
                await asyncio.to_thread(first.execute_command, "CLUSTER", "ADDSLOTS", *slots)
                found = await asyncio.wait_for(waiting, 30)
            assert found is not None and found.cluster is True
            assert logs[-1]["event"] == "redis answers"

        asyncio.run(check())
    finally:
        first.close()


def test_redis_cluster_yes_against_a_single_redis_keeps_waiting(redis_url: str) -> None:
    settings = load_settings(env={"CDP_REDIS_URL": redis_url, "CDP_REDIS_CLUSTER": "yes"})
    stopping = asyncio.Event()

    async def check() -> None:
        with structlog.testing.capture_logs() as logs:
            waiting = asyncio.create_task(wait_for_redis(settings, LOG, stopping))
            await until(lambda: bool(logs))
            stopping.set()
            assert await waiting is None
        assert "redis-cluster=yes but the server says cluster_enabled:0" in logs[0]["error"]

    asyncio.run(check())
