"""Real Redis Clusters for the tests: ``cdp.embedded_cluster.EmbeddedCluster`` on free
ports in a temporary directory, and what a test reads from one.

``ClusterFactory.start(masters, replicas)`` starts a cluster and returns it: its
``url`` (the first node's ``redis://``) and its ``nodes``, each a ``RedisServer`` with
``pid``, ``port`` and ``data_dir``, so a test can SIGKILL or SIGSTOP one. ``close()``
stops every cluster it started (a frozen node is continued first), whatever the test
did. Start skips the test when the redis-server binary has no cluster mode.
``tests/conftest.py`` makes the fixtures (``redis_cluster``, ``redis_cluster_url``,
``cluster_factory``).
"""

from __future__ import annotations

import functools
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from cdp.embedded import find_redis_server
from cdp.embedded_cluster import CLUSTER_SLOTS, EmbeddedCluster
from cdp.errors import RedisServerError

# Short, so that a killed master is failed over in a few seconds; long enough that a
# node starved of CPU on a busy 2-core machine is not failed over by mistake.
TEST_NODE_TIMEOUT_MS = 2000


@functools.cache
def cluster_skip_reason() -> str | None:
    """Why clusters cannot run here, or None when they can."""
    try:
        binary = find_redis_server()
    except RedisServerError as exc:
        return str(exc)
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    match = re.search(r"v=(\d+)\.(\d+)", version)
    if match is None or (int(match.group(1)), int(match.group(2))) < (3, 0):
        return f"{binary} has no cluster mode (Redis 3.0 or later needed): {version.strip()}"
    return None


class ClusterFactory:
    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.clusters: list[EmbeddedCluster] = []

    def start(self, masters: int = 3, replicas: int = 0) -> EmbeddedCluster:
        reason = cluster_skip_reason()
        if reason is not None:
            pytest.skip(reason)
        cluster = EmbeddedCluster(
            self.base_dir / f"cluster-{len(self.clusters)}",
            masters,
            replicas,
            node_timeout_ms=TEST_NODE_TIMEOUT_MS,
        )
        self.clusters.append(cluster)
        return cluster.start()

    def close(self) -> None:
        for cluster in self.clusters:
            cluster.stop()


@dataclass(frozen=True)
class NodeRow:
    """One line of CLUSTER NODES."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str  # "-" for a master
    link: str
    slots: int  # how many slots it serves

    @property
    def is_master(self) -> bool:
        return "master" in self.flags and "fail" not in self.flags


def cluster_nodes(port: int) -> list[NodeRow]:
    """CLUSTER NODES as the node on ``port`` sees the cluster."""
    client = redis.Redis(port=port, decode_responses=True, socket_timeout=5)
    try:
        text = str(client.execute_command("CLUSTER", "NODES"))  # type: ignore[no-untyped-call]
    finally:
        client.close()
    rows = []
    for line in text.splitlines():
        node_id, address, flags, master_id, _, _, _, link, *slots = line.split()
        rows.append(
            NodeRow(
                node_id=node_id,
                port=int(address.split("@")[0].rsplit(":", 1)[1]),
                flags=frozenset(flags.split(",")),
                master_id=master_id,
                link=link,
                slots=sum(_slot_count(s) for s in slots),
            )
        )
    return rows


def _slot_count(spec: str) -> int:
    if spec.startswith("["):  # a slot being migrated or imported
        return 0
    first, _, last = spec.partition("-")
    return int(last or first) - int(first) + 1


def cluster_info(port: int) -> dict[str, str]:
    client = redis.Redis(port=port, decode_responses=True, socket_timeout=5)
    try:
        text = str(client.execute_command("CLUSTER", "INFO"))  # type: ignore[no-untyped-call]
    finally:
        client.close()
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def cluster_ok(port: int) -> bool:
    """The node on ``port`` answers ``cluster_state:ok`` with every slot served."""
    try:
        info = cluster_info(port)
    except redis.RedisError:
        return False
    return info["cluster_state"] == "ok" and info["cluster_slots_ok"] == str(CLUSTER_SLOTS)


def flush_cluster(cluster: EmbeddedCluster) -> None:
    """Empty every master (a replica follows its master)."""
    for row in cluster_nodes(cluster.nodes[0].port):
        if row.is_master:
            client = redis.Redis(port=row.port)
            client.flushall()
            client.close()
