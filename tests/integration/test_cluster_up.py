"""``cdp up --cluster N`` as a user runs it, and the cluster fixtures of the tests.

What holds before the cluster-safe scripts (issue 11): the cluster comes up with its
masters owning every slot, ``redis-cli -c -u <printed URL>`` reads and writes keys of
every master, each node keeps an AOF in its own directory, Ctrl-C leaves no process,
a restart on the same data dir finds the keys, and with ``--replicas 1`` a SIGKILLed
master's replica takes its slots over while ``cdp up`` keeps running.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from cdp.embedded import find_redis_server, free_port
from cdp.embedded_cluster import CLUSTER_SLOTS, choose_ports
from tests.support.cluster import ClusterFactory, cluster_nodes, cluster_ok, cluster_skip_reason
from tests.support.stack import ROOT
from tests.support.wait import wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(cluster_skip_reason() is not None, reason=str(cluster_skip_reason())),
]

KEYS = [f"key-{i}" for i in range(30)]  # spread over the slots of all three masters


def _env(**extra: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CDP_")} | extra


def _redis_cli(*args: str) -> str:
    cli = Path(find_redis_server()).with_name("redis-cli")
    done = subprocess.run([str(cli), *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


class UpCluster:
    """``cdp up --cluster N`` in a subprocess, its output in a file."""

    def __init__(self, data_dir: Path, *flags: str) -> None:
        # Its nodes from a random port up (cdp up's default, 7000, is the user's).
        self.data_dir, self.flags = data_dir, ("--redis-port", str(choose_ports(1)[0]), *flags)
        self.log = data_dir.parent / "up.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.api_port = free_port()

    def start(self) -> str:
        """Start it; return the cluster URL it prints once up."""
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cdp", "up", "--data-dir", str(self.data_dir)]
                + ["--port", str(self.api_port), *self.flags],
                # The marker: every child of cdp up inherits it, so the teardown finds
                # them even after cdp up itself was killed.
                env=_env(TEST_CLUSTER_UP_DIR=str(self.data_dir)),
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        match = wait_until(self._printed_url, timeout=60, message="cdp up to print its URL")
        return str(match.group(0))

    def output(self) -> str:
        return self.log.read_text()

    def _printed_url(self) -> re.Match[str] | None:
        assert self.proc is not None
        assert self.proc.poll() is None, self.output()
        starts = self.output().split("cdp stopped.")[-1]
        if "is up" not in starts:
            return None
        return re.search(r"redis://127\.0\.0\.1:\d+(?=\s)", starts)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=60)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _node_pid(port: int) -> int:
    client = redis.Redis(port=port)
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _processes_naming(text: str) -> list[int]:
    """Live processes whose command line or environment contains ``text``, or whose
    working directory is under it (a redis-server: it rewrites its command line and
    runs in its --dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            blob = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
            cwd = os.readlink(entry / "cwd")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if (text.encode() in blob or cwd.startswith(text)) and _alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


UpFactory = Callable[..., UpCluster]


@pytest.fixture
def up_factory(tmp_path: Path) -> Iterator[UpFactory]:
    started: list[UpCluster] = []

    def make(*flags: str) -> UpCluster:
        up = UpCluster(tmp_path / "data", *flags)
        started.append(up)
        return up

    yield make
    for up in started:  # a failed test must not leave a cluster running
        up.kill()
    for pid in _processes_naming(str(tmp_path)):  # children and nodes of a killed cdp up
        os.kill(pid, signal.SIGKILL)


def test_up_cluster_serves_every_slot_and_finds_its_data_after_a_restart(
    up_factory: UpFactory, tmp_path: Path
) -> None:
    up = up_factory("--cluster", "3", "--redis-only")
    url = up.start()
    port = _port(url)
    assert f"redis-cli -c -p {port}" in up.output()

    for key in KEYS:
        assert _redis_cli("-c", "-u", url, "set", key, f"v-{key}") == "OK"
    assert [_redis_cli("-c", "-u", url, "get", key) for key in KEYS] == [f"v-{k}" for k in KEYS]
    masters = [row for row in cluster_nodes(port) if row.is_master]
    assert len(masters) == 3 and sum(m.slots for m in masters) == CLUSTER_SLOTS
    assert all(m.slots > 0 for m in masters)
    for master in masters:  # the keys went to every master, not all to the first
        assert redis.Redis(port=master.port).dbsize() > 0

    layout = json.loads((tmp_path / "data" / "cluster" / "cluster.json").read_text())
    assert layout["ports"][0] == port and len(layout["ports"]) == 3
    for node_port in layout["ports"]:
        assert (tmp_path / "data" / "cluster" / f"node-{node_port}" / "appendonly.aof").is_file()
    pids = [_node_pid(p) for p in layout["ports"]]

    assert up.stop() == 0  # Ctrl-C
    assert "cdp stopped." in up.output()
    assert not any(_alive(pid) for pid in pids)
    assert not any(_listening(p) for p in layout["ports"])

    assert up.start() == url  # same data dir: same ports, same keys, no re-create
    wait_until(lambda: cluster_ok(port), message="cluster_state:ok after the restart")
    assert _redis_cli("-c", "-u", url, "get", "key-7") == "v-key-7"
    assert len([row for row in cluster_nodes(port) if row.is_master]) == 3
    assert up.stop() == 0

    # A restart asking for another shape is refused before anything starts.
    done = subprocess.run(
        [sys.executable, "-m", "cdp", "up", "--cluster", "4", "--redis-only"]
        + ["--data-dir", str(tmp_path / "data")],
        env=_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2, done.stderr
    assert "holds a cluster of 3 masters with 0 replicas" in done.stderr


def test_up_cluster_runs_the_api_and_ctrl_c_leaves_no_process(
    up_factory: UpFactory, tmp_path: Path
) -> None:
    up = up_factory("--cluster", "3", "--workers", "1", "--api-processes", "1")
    url = up.start()
    assert f"cdp is up: API http://127.0.0.1:{up.api_port}" in up.output()
    import urllib.request

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{up.api_port}/healthz", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    wait_until(healthy, timeout=30, message="the API to answer /healthz")
    # The API and the worker name the cluster in their environment; the nodes answer
    # with their pids. After Ctrl-C none is left.
    assert _processes_naming(f"CDP_REDIS_URL={url}")  # the API (the worker may be restarting)
    layout = json.loads((tmp_path / "data" / "cluster" / "cluster.json").read_text())
    pids = [_node_pid(p) for p in layout["ports"]]
    assert up.stop() == 0
    assert _processes_naming(f"CDP_REDIS_URL={url}") == []
    assert not any(_alive(pid) for pid in pids)
    assert _processes_naming(str(tmp_path)) == []
    assert not _listening(up.api_port)


def test_up_cluster_with_replicas_fails_a_killed_master_over(up_factory: UpFactory) -> None:
    up = up_factory("--cluster", "3", "--replicas", "1", "--redis-only")
    url = up.start()
    rows = cluster_nodes(_port(url))
    masters = {row.node_id: row for row in rows if row.is_master}
    replicas = [row for row in rows if "slave" in row.flags]
    assert len(masters) == 3 and all(m.slots > 0 for m in masters.values())
    assert sorted(r.master_id for r in replicas) == sorted(masters)  # one replica each

    # Keys of every master; one of the victim's (not the master the URL names) is
    # replicated before the kill.
    for key in KEYS:
        _redis_cli("-c", "-u", url, "set", key, "kept")
    victim = next(m for m in masters.values() if m.port != _port(url))
    client = redis.Redis(port=victim.port, decode_responses=True)
    key = client.randomkey()
    assert key in KEYS
    assert client.execute_command("WAIT", 1, 5000) == 1
    client.close()
    (replica,) = [r for r in replicas if r.master_id == victim.node_id]

    os.kill(_node_pid(victim.port), signal.SIGKILL)

    def promoted() -> bool:
        try:
            now = {row.node_id: row for row in cluster_nodes(_port(url))}
        except redis.RedisError:
            return False
        return now[replica.node_id].is_master and cluster_ok(_port(url))

    wait_until(promoted, timeout=40, message="the replica to take the killed master's slots")
    assert _redis_cli("-c", "-u", url, "get", key) == "kept"
    assert up.proc is not None and up.proc.poll() is None  # cdp up keeps going
    assert f"cluster node {victim.port} exited" in up.output()
    assert up.stop() == 0


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--cluster", "2"], {}, "needs at least 3 masters"),
        (["--cluster", "3", "--replicas", "-1"], {}, "--replicas: must be 0 or more"),
        (["--replicas", "1"], {}, "--replicas: only with --cluster"),
        (["--cluster", "3"], {"CDP_REDIS_URL": "redis://127.0.0.1:1/0"}, "unset it"),
    ],
)
def test_up_cluster_refuses_a_bad_shape_with_exit_2(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cdp", "up", "--data-dir", str(tmp_path), *args],
        env=_env(**env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert not (tmp_path / "cluster").exists()


def test_the_session_cluster_serves_a_cluster_client_across_masters(
    redis_cluster_url: str,
) -> None:
    client = RedisCluster.from_url(redis_cluster_url, decode_responses=True)
    try:
        for key in KEYS:
            client.set(key, key.upper())
        assert [client.get(key) for key in KEYS] == [key.upper() for key in KEYS]
        sizes = client.dbsize(target_nodes=RedisCluster.PRIMARIES)
    finally:
        client.close()
    assert sizes == len(KEYS)


def test_the_cluster_factory_stops_even_a_frozen_node(cluster_factory: ClusterFactory) -> None:
    cluster = cluster_factory.start(masters=3, replicas=1)
    assert len(cluster.nodes) == 6
    frozen = cluster.nodes[-1]
    assert frozen.pid is not None
    os.kill(frozen.pid, signal.SIGSTOP)
    pids = [node.pid for node in cluster.nodes]
    cluster_factory.close()
    assert not any(pid is not None and _alive(pid) for pid in pids)
