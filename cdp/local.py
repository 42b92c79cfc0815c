"""``cdp up``: the local supervisor of an embedded Redis, the API and N workers.

The embedded ``redis-server`` (``cdp.embedded``) runs with AOF in ``data_dir``, unless
``CDP_REDIS_URL`` is set, in which case that Redis is used. The API and each worker are
``python -m cdp api|worker`` child processes, each in a session of its own so that a
Ctrl-C in the terminal reaches only the supervisor; the API process supervises
``--api-processes`` (setting ``api-processes``) serving processes of its own on the
port (``cdp.api.processes``). A child that exits is restarted
after a second; if the embedded Redis exits, everything stops with status 1. On
SIGINT or SIGTERM the children get SIGTERM (SIGKILL after 15 s), then Redis stops with
SHUTDOWN, so everything acknowledged is on disk.

With ``--cluster N [--replicas R]`` an embedded Redis Cluster (``cdp.embedded_cluster``)
under ``data_dir/cluster`` takes the single Redis's place, named to the children by
its first node's ``redis://`` URL. Without replicas, a node that exits stops
everything with status 1, as the single Redis does; with replicas, the cluster fails
the node over to a replica and keeps going (the node is not restarted: started again
before the failover, it would come back as the master and undo it). With
``--redis-only`` only Redis (or the cluster) runs, until Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from cdp.embedded import RedisServer, port_is_free
from cdp.embedded_cluster import DEFAULT_FIRST_PORT, EmbeddedCluster
from cdp.errors import SettingsError
from cdp.settings import Settings

Embedded = RedisServer | EmbeddedCluster


def run_local(
    settings: Settings,
    *,
    host: str,
    port: int,
    workers: int,
    data_dir: str,
    api_processes: int | None = None,
    redis_port: int | None,
    config: str | None,
    cluster: int | None = None,
    replicas: int = 0,
    redis_only: bool = False,
) -> int:
    """Supervise Redis, one API and ``workers`` worker processes until Ctrl-C.

    Returns the exit status: 0 after a stop asked for, 1 when the embedded Redis died.
    """
    embedded = _start_embedded(settings, Path(data_dir), redis_port, cluster, replicas, redis_only)
    redis_url = settings.redis_url if embedded is None else embedded.url
    env = {**os.environ, "CDP_REDIS_URL": redis_url}
    if isinstance(embedded, EmbeddedCluster):
        # The redis-cluster setting (auto by default) would detect it; say it outright.
        env["CDP_REDIS_CLUSTER"] = "yes"
    if config:
        env["CDP_CONFIG"] = str(Path(config).resolve())
    processes = settings.api_process_count if api_processes is None else api_processes
    commands: dict[str, list[str]] = {}
    if not redis_only:
        commands["api"] = ["api", "--host", host, "--port", str(port)]
        commands["api"] += ["--processes", str(processes)]
        for n in range(workers):
            commands[f"worker-{n + 1}"] = ["worker"]
    children = _Children(commands, env)
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        children.start_all()
        redis_name, detail = _describe(embedded, redis_url)
        if redis_only:
            print(f"cdp redis is up: {redis_name}  ({detail})", flush=True)
        else:
            print(
                f"cdp is up: API http://{host}:{port}  {redis_name}  ({processes} API "
                f"processes, {workers} workers{', ' + detail if detail else ''})",
                flush=True,
            )
        if not redis_only:
            print(f"  console: http://{host}:{port}/console (the admin token)", flush=True)
        print(f"  try: {_redis_cli(embedded, redis_url)}", flush=True)
        print("  Ctrl-C stops everything.", flush=True)
        dead: set[int] = set()
        while not stopping:
            if _embedded_died(embedded, dead):
                return 1
            children.restart_exited(lambda: stopping)
            time.sleep(0.2)
        return 0
    finally:
        children.stop_all()
        if embedded is not None:
            embedded.stop()
        print("cdp stopped.", flush=True)


def _start_embedded(
    settings: Settings,
    data_dir: Path,
    redis_port: int | None,
    cluster: int | None,
    replicas: int,
    redis_only: bool,
) -> Embedded | None:
    if os.environ.get("CDP_REDIS_URL"):
        if cluster is not None or redis_only:
            flag = "--cluster" if cluster is not None else "--redis-only"
            raise SettingsError(
                f"{flag} starts a Redis of its own, but CDP_REDIS_URL names one: unset it"
            )
        return None
    embedded: Embedded
    if cluster is not None:
        embedded = EmbeddedCluster(
            data_dir,
            cluster,
            replicas,
            first_port=redis_port or DEFAULT_FIRST_PORT,
            appendfsync=settings.redis_appendfsync,
        )
    else:
        chosen = redis_port or (6379 if port_is_free(6379) else None)
        embedded = RedisServer(data_dir, chosen, appendfsync=settings.redis_appendfsync)
    try:
        embedded.start()
    except BaseException:  # Ctrl-C while it starts: no orphaned redis-server
        embedded.stop()
        raise
    return embedded


def _describe(embedded: Embedded | None, redis_url: str) -> tuple[str, str]:
    """What the banner says of Redis: its name and URL, and where it keeps its data."""
    if isinstance(embedded, EmbeddedCluster):
        ports = embedded.ports
        return f"Redis Cluster {embedded.url}", (
            f"{embedded.masters} masters with {embedded.replicas} replicas each on ports "
            f"{ports[0]}-{ports[-1]}, data in {embedded.root}"
        )
    if isinstance(embedded, RedisServer):
        return f"Redis {embedded.url}", f"data in {embedded.data_dir}"
    return f"Redis {redis_url}", ""


def _redis_cli(embedded: Embedded | None, redis_url: str) -> str:
    if isinstance(embedded, EmbeddedCluster):
        return f"redis-cli -c -p {embedded.ports[0]} cluster nodes"
    return f"redis-cli -u {redis_url} --scan --pattern 'cdp:profile:*'"


def _embedded_died(embedded: Embedded | None, dead: set[int]) -> bool:
    """Report a Redis process that exited; True when everything must stop."""
    nodes = embedded.nodes if isinstance(embedded, EmbeddedCluster) else [embedded]
    for node in nodes:
        if node is None or node.process is None or node.process.poll() is None:
            continue
        if node.port in dead:
            continue
        dead.add(node.port)
        what = "the embedded redis-server" if node is embedded else f"cluster node {node.port}"
        log = node.data_dir / "redis.log"
        if isinstance(embedded, EmbeddedCluster) and embedded.replicas:
            print(
                f"cdp: {what} exited ({node.process.returncode}); a replica takes over "
                f"its slots. See {log}",
                file=sys.stderr,
                flush=True,
            )
        else:
            print(
                f"cdp: {what} exited ({node.process.returncode}); stopping. See {log}",
                file=sys.stderr,
            )
            return True
    return len(dead) == len(nodes)


class _Children:
    """The API and worker processes: ``python -m cdp <command>``, each in its own session."""

    def __init__(self, commands: dict[str, list[str]], env: dict[str, str]) -> None:
        self.commands, self.env = commands, env
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, name: str) -> None:
        self.running[name] = subprocess.Popen(
            [sys.executable, "-m", "cdp", *self.commands[name]],
            env=self.env,
            start_new_session=True,
        )

    def start_all(self) -> None:
        for name in self.commands:
            self.spawn(name)

    def restart_exited(self, stopping: Callable[[], bool]) -> None:
        for name, child in list(self.running.items()):
            if child.poll() is not None and not stopping():
                print(f"cdp: {name} exited with {child.returncode}; restarting", file=sys.stderr)
                time.sleep(1)
                self.spawn(name)

    def stop_all(self) -> None:
        """SIGTERM to each, then SIGKILL to any still running 15 s later."""
        for child in self.running.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in self.running.values():
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
