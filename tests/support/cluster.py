"""Real Redis Clusters for the tests: ``cdp.embedded_cluster.EmbeddedCluster`` on free
ports in a temporary directory, and what a test reads from one.

``ClusterFactory.start(masters, replicas)`` starts a cluster and returns it: its
``url`` (the first node's ``redis://``) and its ``nodes``, each a ``RedisServer`` with
``pid``, ``port`` and ``data_dir``, so a test can SIGKILL or SIGSTOP one. ``close()``
stops every cluster it started (a frozen node is continued first), whatever the test
did. Start skips the test when the redis-server binary has no cluster mode.
``tests/conftest.py`` makes the fixtures (``redis_cluster``, ``redis_cluster_url``,
``cluster_factory``).

Faults under load (``tests/integration/test_cluster_faults.py``): ``move_slots``
(live resharding of chosen slots: CLUSTER SETSLOT IMPORTING/MIGRATING, MIGRATE in
batches, SETSLOT NODE everywhere), ``fail_over`` (SIGKILL a master, wait for its
replica's promotion and ``cluster_state:ok``), ``rejoin`` (the killed node back as a
replica); ``LoadDriver`` (a thread POSTing events at a steady rate, retrying with the
same eventId, recording the ``History`` of what was acknowledged) and its checkers:
``check_streams`` (every partition stream on every master against the history) and
``check_applied`` (the profiles' ``seen`` ids, totals and counters against what the
streams hold).
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from cdp import keys
from cdp.embedded import find_redis_server
from cdp.embedded_cluster import CLUSTER_SLOTS, EmbeddedCluster
from cdp.errors import RedisServerError
from cdp.metrics import counters_sync
from tests.support.wait import wait_until

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


# -- faults under load: live resharding, failover, a load driver and its checker --------


def _node_client(port: int) -> redis.Redis:
    return redis.Redis(port=port, decode_responses=True, socket_timeout=10)


def _cmd(client: redis.Redis, *args: object) -> Any:
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def masters_of(cluster: EmbeddedCluster) -> list[NodeRow]:
    """The masters serving slots, as a live node sees them."""
    for node in cluster.nodes:
        if node.process is None or node.process.poll() is not None:
            continue
        try:
            return [row for row in cluster_nodes(node.port) if row.is_master and row.slots]
        except redis.RedisError:
            continue
    raise AssertionError("no node of the cluster answers CLUSTER NODES")


def owner_of(cluster: EmbeddedCluster, slot: int) -> NodeRow:
    """The master serving ``slot`` (CLUSTER SLOTS as a live master sees it)."""
    masters = masters_of(cluster)
    client = _node_client(masters[0].port)
    try:
        for first, last, primary, *_ in _cmd(client, "CLUSTER", "SLOTS"):
            if int(first) <= slot <= int(last):
                port = int(primary[1])
                return next(m for m in masters if m.port == port)
    finally:
        client.close()
    raise AssertionError(f"slot {slot} is served by no master")


def move_slots(
    cluster: EmbeddedCluster, slots: list[int], to_node: NodeRow, batch: int = 50
) -> int:
    """Live resharding of ``slots`` to ``to_node`` while clients run; returns how many
    keys were moved.

    CLUSTER SETSLOT and MIGRATE from Python rather than ``redis-cli --cluster
    reshard``: reshard moves a *number* of slots of its own choosing (a test must move
    the slots that hold partition streams), asks its questions on a terminal unless
    given ``--cluster-yes``, and its failures are text to parse; here each step is one
    command whose error is raised where it happens. Per slot, the order Redis's
    documentation gives: IMPORTING on the target, MIGRATING on the source, MIGRATE
    the keys in batches (GETKEYSINSLOT; several keys per MIGRATE, so a stream and its
    partition's metrics hash usually move together), then SETSLOT NODE on the target,
    the source and every other master. Meanwhile the source answers ASK for a key
    already moved (and TRYAGAIN for a multi-key call whose keys are split), which
    redis-py's cluster client follows; afterwards MOVED."""
    moved = 0
    masters = masters_of(cluster)
    clients = {m.node_id: _node_client(m.port) for m in masters}
    try:
        target = clients[to_node.node_id]
        for slot in slots:
            source = owner_of(cluster, slot)
            if source.node_id == to_node.node_id:
                continue
            src = clients[source.node_id]
            _cmd(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
            _cmd(src, "CLUSTER", "SETSLOT", slot, "MIGRATING", to_node.node_id)
            while names := _cmd(src, "CLUSTER", "GETKEYSINSLOT", slot, batch):
                _cmd(src, "MIGRATE", "127.0.0.1", to_node.port, "", 0, 10_000, "KEYS", *names)
                moved += len(names)
            others = [c for n, c in clients.items() if n not in (to_node.node_id, source.node_id)]
            for client in [target, src, *others]:
                _cmd(client, "CLUSTER", "SETSLOT", slot, "NODE", to_node.node_id)
    finally:
        for client in clients.values():
            client.close()
    return moved


def fail_over(
    cluster: EmbeddedCluster,
    master: NodeRow,
    timeout: float = 40.0,
    meanwhile: Callable[[], object] | None = None,
) -> NodeRow:
    """SIGKILL ``master`` (a node of a cluster with replicas) and wait until one of
    its replicas was promoted, serves its slots, and every live node answers
    ``cluster_state:ok``; returns the promoted replica's row. ``meanwhile`` is called
    right after the kill (e.g. to start a process while the master is gone)."""
    (victim,) = [n for n in cluster.nodes if n.port == master.port]
    replicas = [r.node_id for r in cluster_nodes(master.port) if r.master_id == master.node_id]
    assert replicas, f"master {master.port} has no replica to take over"
    assert victim.process is not None
    victim.process.kill()
    victim.process.wait()
    if meanwhile is not None:
        meanwhile()
    alive = [n.port for n in cluster.nodes if n.process is not None and n.process.poll() is None]

    def promoted() -> NodeRow | None:
        try:
            rows = {row.node_id: row for row in cluster_nodes(alive[0])}
            if not all(cluster_ok(port) for port in alive):
                return None
        except redis.RedisError:
            return None
        for node_id in replicas:
            if rows[node_id].is_master and rows[node_id].slots:
                return rows[node_id]
        return None

    promoted_row: NodeRow = wait_until(
        promoted, timeout=timeout, interval=0.1, message="a replica to take the slots over"
    )
    return promoted_row


def rejoin(cluster: EmbeddedCluster, port: int, timeout: float = 40.0) -> None:
    """Start a killed node again on its data dir: it finds its ``nodes.conf``, learns
    its replica was promoted, and comes back as that one's replica; waits until its
    replication link is up."""
    (node,) = [n for n in cluster.nodes if n.port == port]
    node.start()

    def replicating() -> bool:
        client = _node_client(port)
        try:
            info = client.info("replication")
            return info.get("role") == "slave" and info.get("master_link_status") == "up"
        except redis.RedisError:
            return False
        finally:
            client.close()

    wait_until(replicating, timeout=timeout, interval=0.1, message=f"node {port} to replicate")


# -- the load driver and its checker ---------------------------------------------------


@dataclass
class Attempt:
    """One POST of one eventId and how the API answered it (0: no answer)."""

    event_id: str
    status: int
    at: float  # time.monotonic()


@dataclass
class History:
    """What a load driver sent and what the API acknowledged."""

    attempts: list[Attempt] = field(default_factory=list)
    acked: dict[str, str] = field(default_factory=dict)  # eventId -> userId, 2xx answered
    given_up: set[str] = field(default_factory=set)  # never acknowledged before the stop

    def statuses(self) -> Counter[int]:
        return Counter(a.status for a in self.attempts)

    def retried(self) -> set[str]:
        seen: Counter[str] = Counter(a.event_id for a in self.attempts)
        return {event_id for event_id, n in seen.items() if n > 1}


class LoadDriver(threading.Thread):
    """POSTs ``/cdp/ingest`` events at a steady ``rate`` (per second) from a thread,
    each a new eventId for one of ``users`` users (TRACK ``Bought``, ts ``ts``, or the
    wall clock's now when ``ts`` is None: for a stack on the system clock), and
    records the history. An event not answered 2xx (503/504 while the cluster moves,
    fails over, or is not replicated) is retried with the same eventId, after the
    next new event, until ``stop()``; it is then in ``given_up``. Thread-safe reads of
    the history: after ``stop()``."""

    def __init__(
        self,
        api_url: str,
        ts: str | None,
        *,
        rate: float = 100.0,
        users: int = 40,
        prefix: str = "ev",
        timeout: float = 10.0,
    ) -> None:
        super().__init__(daemon=True)
        self.api_url, self.ts, self.rate, self.users = api_url, ts, rate, users
        self.prefix, self.timeout = prefix, timeout
        self.history = History()
        self._stop_event = threading.Event()
        self._lock = threading.Lock()  # the history, written here, read by the test
        self._sent = 0

    @property
    def acked_count(self) -> int:
        with self._lock:
            return len(self.history.acked)

    def unacked(self) -> set[str]:
        """The eventIds sent and not (yet) acknowledged."""
        with self._lock:
            return {a.event_id for a in self.history.attempts} - set(self.history.acked)

    def stop(self) -> History:
        """Stop sending; retries still pending are abandoned (``given_up``)."""
        self._stop_event.set()
        self.join(timeout=60)
        return self.history

    def run(self) -> None:
        pending: list[tuple[str, str]] = []
        period = 1.0 / self.rate
        next_at = time.monotonic()
        while not self._stop_event.is_set():
            event_id = f"{self.prefix}-{self._sent}"
            user = f"u{self._sent % self.users}"
            self._sent += 1
            for retry_id, retry_user in [(event_id, user), *pending]:
                if self._post(retry_id, retry_user):
                    pending = [p for p in pending if p[0] != retry_id]
                elif (retry_id, retry_user) not in pending:
                    pending.append((retry_id, retry_user))
            next_at += period
            self._stop_event.wait(max(0.0, next_at - time.monotonic()))
        with self._lock:
            self.history.given_up = {event_id for event_id, _ in pending}

    def _post(self, event_id: str, user: str) -> bool:
        ts = self.ts or datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        body = json.dumps(
            {
                "eventId": event_id,
                "ts": ts,
                "payload": {"type": "TRACK", "userId": user, "name": "Bought"},
            }
        ).encode()
        request = urllib.request.Request(
            f"{self.api_url}/cdp/ingest",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        status = 0
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                status = response.status
        except urllib.error.HTTPError as err:
            status = err.code
        except OSError:  # no answer at all
            status = 0
        with self._lock:
            self.history.attempts.append(Attempt(event_id, status, time.monotonic()))
            if 200 <= status < 300:
                self.history.acked[event_id] = user
        return 200 <= status < 300


@dataclass(frozen=True)
class StreamCheck:
    """The partition streams held by every master, against a history."""

    entries: Counter[str]  # eventId -> how many stream entries hold it
    users: dict[str, str]  # eventId -> its userId, for every event the streams hold
    lost: set[str]  # acknowledged, in no stream
    duplicated: set[str]  # in more than one entry
    strays: list[str]  # partition stream keys found on a master not serving their slot


def stream_events(client: redis.Redis, key: str) -> list[tuple[str, str]]:
    """(eventId, userId) of every event of every entry of stream ``key`` (an entry
    holds one event, ``e``, or several, ``b``)."""
    found: list[tuple[str, str]] = []
    for _, entry in client.xrange(key):
        events = [json.loads(entry["e"])] if "e" in entry else json.loads(entry["b"])
        found += [(str(event["eventId"]), str(event.get("userId"))) for event in events]
    return found


def check_streams(cluster: EmbeddedCluster, history: History) -> StreamCheck:
    """Read every partition stream on every master (a SCAN of each, so a copy left on
    a master that no longer serves the slot would be counted and reported too) and
    compare with ``history``."""
    counts: Counter[str] = Counter()
    users: dict[str, str] = {}
    strays: list[str] = []
    for master in masters_of(cluster):
        client = _node_client(master.port)
        try:
            for key in client.scan_iter(match=f"{keys.PREFIX}:events:{{p*}}", count=1000):
                slot = int(_cmd(client, "CLUSTER", "KEYSLOT", key))
                if owner_of(cluster, slot).node_id != master.node_id:
                    strays.append(f"{key} on {master.port}")
                    continue
                for event_id, user in stream_events(client, key):
                    counts[event_id] += 1
                    users[event_id] = user
        finally:
            client.close()
    lost = {event_id for event_id in history.acked if counts[event_id] == 0}
    duplicated = {event_id for event_id, n in counts.items() if n > 1}
    return StreamCheck(counts, users, lost, duplicated, strays)


@dataclass(frozen=True)
class AppliedCheck:
    """What the workers applied (each profile's ``seen``: the eventIds applied to it),
    against what the streams hold (``StreamCheck``) and what was acknowledged."""

    unapplied: dict[str, set[str]]  # user -> stored eventIds not in its profile's seen
    wrong_totals: dict[str, tuple[int, int]]  # user -> (Bought total, eventIds in seen)
    strangers: set[str]  # eventIds in a seen that the driver never sent
    lost: set[str]  # acknowledged, in no stream and applied to no profile
    applied: int  # eventIds in the seen hashes
    processed: int  # the partitions' processed counters, summed
    dedup_hits: int
    events: int  # events the streams hold (an eventId in two entries counts twice)


def check_applied(
    client: Any,
    history: History,
    streams: StreamCheck,
    partitions: int,
    bought_total: Callable[[str], int],
) -> AppliedCheck:
    """Every event the streams hold applied exactly once: its eventId in the ``seen``
    of its user's profile (the identifier key names the profile), and the profile's
    ``Bought`` total (``bought_total(user)``, e.g. from the profile API) equal to the
    eventIds in its ``seen`` (the driver sends nothing else: one count per id applied).
    An acknowledged event missing from the streams (a write lost with a master) may
    still have been applied from a worker's buffer: it is lost only when no ``seen``
    holds it either."""
    per_user: dict[str, set[str]] = {}
    for event_id, user in streams.users.items():
        per_user.setdefault(user, set()).add(event_id)
    for user in history.acked.values():
        per_user.setdefault(user, set())
    unapplied: dict[str, set[str]] = {}
    wrong: dict[str, tuple[int, int]] = {}
    applied: set[str] = set()
    for user, event_ids in sorted(per_user.items()):
        cid = client.get(keys.identifier(f"user:{user}"))
        seen = set(client.hkeys(keys.seen(cid))) if cid else set()
        applied |= seen
        if event_ids - seen:
            unapplied[user] = event_ids - seen
        total = bought_total(user)
        if total != len(seen):
            wrong[user] = (total, len(seen))
    sent = {attempt.event_id for attempt in history.attempts}
    counters = counters_sync(client, partitions, ["processed", "dedup_hits"])
    return AppliedCheck(
        unapplied,
        wrong,
        applied - sent,
        set(history.acked) - set(streams.entries) - applied,
        len(applied),
        counters["processed"],
        counters["dedup_hits"],
        sum(streams.entries.values()),
    )
