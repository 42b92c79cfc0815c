"""An embedded Redis Cluster for ``cdp up --cluster N`` and the test fixtures.

Beside the single embedded Redis (``cdp.embedded``), ``EmbeddedCluster`` runs N masters
(and R replicas of each) from the same redis-server binary, each a ``RedisServer`` with
``--cluster-enabled yes``, its own ``nodes.conf``, AOF and log in
``<data-dir>/cluster/node-<port>/`` and the same memory settings as the single one.
A node needs two ports, p and its cluster bus p + 10000; they are chosen on the first
start and recorded in ``<data-dir>/cluster/cluster.json``, because every ``nodes.conf``
remembers its peers by address: a restart reuses them and finds its data.

First start: the nodes come up empty, each gets a distinct config epoch, the masters
split the 16384 slots evenly (as ``redis-cli --cluster create`` does), the first node
MEETs the others, and each replica REPLICATEs its master once every node knows every
other. Restart: the nodes start on their recorded ports and rejoin by themselves.
Either way ``start`` returns once every node reports ``cluster_state:ok`` with all
slots assigned and every replica's link to its master is up. ``stop`` sends SIGTERM to
every node at once (each fsyncs its AOF and saves ``nodes.conf``), and SIGKILL to any
still running after ``timeout``. A cluster that cannot start is a ``RedisServerError``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import redis

from cdp.embedded import RedisServer, port_is_free
from cdp.errors import RedisServerError, SettingsError

CLUSTER_SLOTS = 16384
BUS_PORT_OFFSET = 10000  # Redis's cluster bus listens on the client port + 10000
MIN_MASTERS = 3  # a majority of masters must survive to flag a failed one and elect
DEFAULT_FIRST_PORT = 7000  # Redis's own examples number cluster nodes from 7000
LAYOUT_FILE = "cluster.json"


def choose_ports(count: int, first: int | None = None) -> list[int]:
    """``count`` ports p, each with p and p + 10000 free, scanning up from ``first``
    (default: a random start below Linux's ephemeral range, so neither the node nor
    its bus collides with a port the kernel hands out to a client)."""
    start = first if first is not None else random.randrange(20000, 22000)
    chosen: list[int] = []
    taken: set[int] = set()
    port = start
    while len(chosen) < count:
        if port + BUS_PORT_OFFSET > 65535:
            raise RedisServerError(
                f"no {count} free ports from {start} with their cluster bus port "
                f"(+{BUS_PORT_OFFSET}) free too; pick another first port with --redis-port"
            )
        pair = (port, port + BUS_PORT_OFFSET)
        if not taken.intersection(pair) and all(port_is_free(p) for p in pair):
            chosen.append(port)
            taken.update(pair)
        port += 1
    return chosen


def slot_ranges(masters: int) -> list[tuple[int, int]]:
    """The slots of each master, inclusive ranges, split as redis-cli splits them."""
    per_master = CLUSTER_SLOTS / masters
    ranges, first, cursor = [], 0, 0.0
    for i in range(masters):
        last = round(cursor + per_master - 1)
        if last > CLUSTER_SLOTS - 1 or i == masters - 1:
            last = CLUSTER_SLOTS - 1
        ranges.append((first, last))
        first, cursor = last + 1, cursor + per_master
    return ranges


def validate_shape(masters: int, replicas: int) -> None:
    if masters < MIN_MASTERS:
        raise SettingsError(
            f"--cluster: a Redis Cluster needs at least {MIN_MASTERS} masters (a majority "
            f"of them must agree to fail a master over), got {masters}"
        )
    if replicas < 0:
        raise SettingsError(f"--replicas: must be 0 or more, got {replicas}")


class EmbeddedCluster:
    """N masters with R replicas each, in ``<data_dir>/cluster``; ``start``, then ``stop``."""

    def __init__(
        self,
        data_dir: str | Path,
        masters: int = 3,
        replicas: int = 0,
        *,
        first_port: int | None = None,
        appendfsync: str = "everysec",
        node_timeout_ms: int = 5000,
    ) -> None:
        validate_shape(masters, replicas)
        self.root = Path(data_dir).resolve() / "cluster"
        self.masters, self.replicas = masters, replicas
        self.first_port = first_port
        self.appendfsync = appendfsync
        self.node_timeout_ms = node_timeout_ms
        self.nodes: list[RedisServer] = []
        self.created = False  # True when this start created the slots (not a restart)

    @property
    def url(self) -> str:
        """The first node's URL: a cluster client (``redis-cli -c``) finds the rest."""
        return f"redis://127.0.0.1:{self.nodes[0].port}"

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    def start(self, timeout: float = 60.0) -> EmbeddedCluster:
        layout = self.root / LAYOUT_FILE
        try:
            recorded = json.loads(layout.read_text()) if layout.exists() else None
            if recorded is not None and recorded.get("created"):
                self._check_shape(recorded)
                self._launch(recorded["ports"])
            elif recorded is None and any(self.root.glob("node-*")):
                raise RedisServerError(
                    f"{self.root} holds cluster nodes but no {LAYOUT_FILE} naming their "
                    "ports; restore it, or remove the directory to start a new cluster"
                )
            else:
                self._create(timeout)
            self._wait_healthy(timeout)
        except BaseException:  # Ctrl-C while it starts included: no orphaned node
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        live = [n.process for n in self.nodes if n.process is not None and n.process.poll() is None]
        for process in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGCONT)  # a test may have frozen it
                process.terminate()
        deadline = time.monotonic() + timeout
        for process in live:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for node in self.nodes:
            if node.process is not None and node.process.stderr is not None:
                node.process.stderr.close()

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- first start ---------------------------------------------------------------

    def _create(self, timeout: float) -> None:
        """Start empty nodes on chosen ports and join them; retried on other ports when
        the chosen ones were random and one was taken meanwhile."""
        attempts = 1 if self.first_port is not None else 3
        for attempt in range(attempts):
            if self.root.exists():  # nodes of a first start that did not finish: no data
                shutil.rmtree(self.root)
            ports = choose_ports(self.masters * (1 + self.replicas), self.first_port)
            self._write_layout(ports, created=False)
            try:
                self._launch(ports)
                break
            except RedisServerError:
                self.stop()
                if attempt == attempts - 1:
                    raise
        self._join(timeout)
        self._write_layout(self.ports, created=True)
        self.created = True

    def _write_layout(self, ports: list[int], *, created: bool) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        layout = {
            "masters": self.masters,
            "replicas": self.replicas,
            "ports": ports,
            "created": created,
        }
        tmp = self.root / (LAYOUT_FILE + ".tmp")
        tmp.write_text(json.dumps(layout, indent=2) + "\n")
        tmp.replace(self.root / LAYOUT_FILE)

    def _join(self, timeout: float) -> None:
        """Epochs, slots, MEET, then REPLICATE once every node knows every other."""
        clients = [self._client(node) for node in self.nodes]
        try:
            for epoch, client in enumerate(clients, start=1):
                _cluster(client, "SET-CONFIG-EPOCH", epoch)
            for client, (first, last) in zip(clients, slot_ranges(self.masters), strict=False):
                _cluster(client, "ADDSLOTS", *range(first, last + 1))
            for node in self.nodes[1:]:
                _cluster(clients[0], "MEET", "127.0.0.1", node.port)
            self._wait(lambda: all(self._knows_everyone(c) for c in clients), timeout, "MEET")
            master_ids = [_cluster(c, "MYID") for c in clients[: self.masters]]
            for i, client in enumerate(clients[self.masters :]):
                _cluster(client, "REPLICATE", master_ids[i % self.masters])
        finally:
            for client in clients:
                client.close()

    def _knows_everyone(self, client: redis.Redis) -> bool:
        lines = _cluster(client, "NODES").splitlines()
        return len(lines) == len(self.nodes) and not any("handshake" in line for line in lines)

    # -- every start ---------------------------------------------------------------

    def _check_shape(self, recorded: dict[str, object]) -> None:
        if (recorded["masters"], recorded["replicas"]) != (self.masters, self.replicas):
            raise RedisServerError(
                f"{self.root} holds a cluster of {recorded['masters']} masters with "
                f"{recorded['replicas']} replicas each; start it with --cluster "
                f"{recorded['masters']} --replicas {recorded['replicas']}, or use another "
                "--data-dir"
            )

    def _launch(self, ports: list[int]) -> None:
        for port in ports:
            if not port_is_free(port + BUS_PORT_OFFSET):
                raise RedisServerError(
                    f"port {port + BUS_PORT_OFFSET} (cluster bus of the node on {port}) "
                    "is already in use"
                )
        self.nodes = [
            RedisServer(
                self.root / f"node-{port}",
                port,
                appendfsync=self.appendfsync,
                extra_args=(
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    str(self.node_timeout_ms),
                ),
            )
            for port in ports
        ]
        for node in self.nodes:
            node.launch()
        for node in self.nodes:
            node.wait_ready()

    def _wait_healthy(self, timeout: float) -> None:
        self._wait(self.healthy, timeout, "cluster_state:ok on every node")

    def healthy(self) -> bool:
        """Every node running, answering ``cluster_state:ok`` with every slot assigned,
        every node known, ``masters`` of them masters and none failing; every replica's
        link to its master up."""
        for node in self.nodes:
            self._check_running(node)
        clients = [self._client(node) for node in self.nodes]
        try:
            return all(self._node_healthy(client) for client in clients)
        except redis.RedisError:
            return False
        finally:
            for client in clients:
                client.close()

    def _node_healthy(self, client: redis.Redis) -> bool:
        info = dict(_fields(_cluster(client, "INFO")))
        if (
            info.get("cluster_state") != "ok"
            or info.get("cluster_slots_assigned") != str(CLUSTER_SLOTS)
            or info.get("cluster_known_nodes") != str(len(self.nodes))
        ):
            return False
        roles = [line.split()[2].split(",") for line in _cluster(client, "NODES").splitlines()]
        masters = sum("master" in flags for flags in roles)
        if masters != self.masters or any("fail" in f or "fail?" in f for f in roles):
            return False  # a REPLICATE not yet gossiped here, or a node not yet seen back
        replication = client.info("replication")
        return replication.get("role") == "master" or replication.get("master_link_status") == "up"

    def _check_running(self, node: RedisServer) -> None:
        if node.process is not None and node.process.poll() is None:
            return
        log = node.data_dir / "redis.log"
        tail = log.read_text()[-2000:] if log.exists() else ""
        raise RedisServerError(f"cluster node on port {node.port} exited: {tail.strip()}")

    def _wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise RedisServerError(
                    f"the cluster in {self.root} did not reach {what} within {timeout:.0f} s"
                )
            time.sleep(0.05)

    @staticmethod
    def _client(node: RedisServer) -> redis.Redis:
        return redis.Redis(port=node.port, decode_responses=True, socket_timeout=5)


def _fields(text: str) -> Iterator[tuple[str, str]]:
    """The ``key:value`` lines of CLUSTER INFO."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            yield key.strip(), value.strip()


def _cluster(client: redis.Redis, *args: object) -> str:
    """One CLUSTER subcommand, its reply as text (redis-py types none of them)."""
    return str(client.execute_command("CLUSTER", *args))  # type: ignore[no-untyped-call]
