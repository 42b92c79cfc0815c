"""The client factory (cdp/connect.py) and the keyless helpers (cdp/redis_nodes.py)
against one Redis and a real 3-master Redis Cluster started here.

The cluster is three redis-server processes with ``cluster-enabled yes`` on free ports
(each port + 10000, the cluster bus, free too), introduced by CLUSTER MEET; its slots
are assigned by the test, so a test can watch a cluster that is not ok yet.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis as redis_sync
import structlog
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from cdp.connect import connect, sync_client, target, wait_for_redis
from cdp.embedded import find_redis_server, free_port, port_is_free
from cdp.errors import SettingsError
from cdp.redis_nodes import dbsize, for_each_master, info_sum, scan_all
from cdp.settings import load_settings
from tests.support.wait import wait_until

SLOTS = 16384


class LocalCluster:
    """Three masters, no replicas; ``assign_slots`` makes it ok."""

    def __init__(self, data_dir: Path, masters: int = 3) -> None:
        self.ports = [self._port() for _ in range(masters)]
        self.processes: list[subprocess.Popen[bytes]] = []
        for port in self.ports:
            node_dir = data_dir / str(port)
            node_dir.mkdir(parents=True)
            args = [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1"]
            args += ["--dir", str(node_dir), "--save", "", "--appendonly", "no"]
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            self.processes.append(subprocess.Popen(args, stdout=subprocess.DEVNULL))
        self.clients = [redis_sync.Redis(port=p, decode_responses=True) for p in self.ports]
        wait_until(self._all_answer, timeout=10, message="the cluster's nodes to answer")
        for client in self.clients[1:]:
            client.execute_command("CLUSTER", "MEET", "127.0.0.1", self.ports[0])

    @staticmethod
    def _port() -> int:
        while True:
            port = free_port()
            if port + 10000 < 65536 and port_is_free(port + 10000):
                return port

    def _all_answer(self) -> bool:
        try:
            return all(c.ping() for c in self.clients)
        except redis_sync.ConnectionError:
            return False

    def url(self, node: int = 0) -> str:
        return f"redis://127.0.0.1:{self.ports[node]}"

    def assign_slots(self) -> None:
        share = SLOTS // len(self.clients)
        for i, client in enumerate(self.clients):
            end = SLOTS if i == len(self.clients) - 1 else (i + 1) * share
            client.execute_command("CLUSTER", "ADDSLOTS", *range(i * share, end))
        wait_until(self.ok, timeout=20, message="cluster_state:ok on every node")

    def ok(self) -> bool:
        return all(c.cluster("INFO")["cluster_state"] == "ok" for c in self.clients)

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path_factory.mktemp("cluster"))
    try:
        local.assign_slots()
        yield local
    finally:
        local.stop()


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


def test_auto_mode_finds_a_cluster_and_its_keys_on_every_master(cluster: LocalCluster) -> None:
    names = [f"spread:{{{i}}}" for i in range(60)]  # hash tags over many slots

    async def check() -> None:
        settings = load_settings(env={"CDP_REDIS_URL": cluster.url(1)})
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
    with sync_client(cluster.url(2)) as client:
        assert isinstance(client, redis_sync.RedisCluster)
        assert client.set("spread:{sync}", 1) and client.delete("spread:{sync}") == 1


def test_redis_cluster_scheme_starts_from_any_listed_node(cluster: LocalCluster) -> None:
    dead = free_port()
    url = f"redis-cluster://127.0.0.1:{dead},127.0.0.1:{cluster.ports[2]}"
    assert target(url).nodes == [("127.0.0.1", dead), ("127.0.0.1", cluster.ports[2])]

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
    cluster: LocalCluster, redis_url: str
) -> None:
    with pytest.raises(SettingsError, match="database 3 on a Redis Cluster"):
        target(f"redis-cluster://127.0.0.1:{cluster.ports[0]}/3")
    with pytest.raises(SettingsError, match="database 2 on a Redis Cluster"):
        target(cluster.url() + "/2", "yes")
    # auto: refused once the server says it is a cluster; a single Redis keeps its db.
    with pytest.raises(SettingsError, match="database 1 on a Redis Cluster"):
        asyncio.run(connect(load_settings(env={"CDP_REDIS_URL": cluster.url() + "/1"})))
    single = redis_url.rsplit("/", 1)[0] + "/1"

    async def single_db() -> None:
        redis = await connect(load_settings(env={"CDP_REDIS_URL": single}))
        assert type(redis) is Redis and redis.connection_pool.connection_kwargs["db"] == 1
        await redis.aclose()

    asyncio.run(single_db())


def test_wait_for_redis_waits_until_the_cluster_serves_every_slot(tmp_path: Path) -> None:
    forming = LocalCluster(tmp_path)  # met, no slots yet: cluster_state:fail
    try:
        settings = load_settings(env={"CDP_REDIS_URL": forming.url(), "CDP_REDIS_CLUSTER": "yes"})

        async def check() -> None:
            with structlog.testing.capture_logs() as logs:
                waiting = asyncio.create_task(wait_for_redis(settings, LOG))

                def attempts() -> int:
                    return sum(e["event"] == "waiting for redis" for e in logs)

                await until(lambda: attempts() >= 3 or waiting.done())
                assert not waiting.done()
                assert "cluster_state:fail" in logs[-1]["error"]
                await asyncio.to_thread(forming.assign_slots)
                found = await asyncio.wait_for(waiting, 30)
            assert found is not None and found.cluster is True
            assert logs[-1]["event"] == "redis answers"

        asyncio.run(check())
    finally:
        forming.stop()


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
