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
from cdp.settings import Settings


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
) -> int:
    """Supervise Redis, one API and ``workers`` worker processes until Ctrl-C.

    Returns the exit status: 0 after a stop asked for, 1 when the embedded Redis died.
    """
    server = None
    if os.environ.get("CDP_REDIS_URL"):
        redis_url = settings.redis_url
    else:
        server = _start_redis(settings, Path(data_dir), redis_port)
        redis_url = server.url
    env = {**os.environ, "CDP_REDIS_URL": redis_url}
    if config:
        env["CDP_CONFIG"] = str(Path(config).resolve())
    processes = settings.api_process_count if api_processes is None else api_processes
    commands = {"api": ["api", "--host", host, "--port", str(port), "--processes", str(processes)]}
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
        print(
            f"cdp is up: API http://{host}:{port}  Redis {redis_url}"
            f"  ({processes} API processes, {workers} workers"
            f"{', data in ' + str(server.data_dir) if server else ''})",
            flush=True,
        )
        print(f"  try: redis-cli -u {redis_url} --scan --pattern 'cdp:profile:*'", flush=True)
        print("  Ctrl-C stops everything.", flush=True)
        while not stopping:
            if _redis_died(server):
                return 1
            children.restart_exited(lambda: stopping)
            time.sleep(0.2)
        return 0
    finally:
        children.stop_all()
        if server is not None:
            server.stop()
        print("cdp stopped.", flush=True)


def _start_redis(settings: Settings, data_dir: Path, redis_port: int | None) -> RedisServer:
    chosen = redis_port or (6379 if port_is_free(6379) else None)
    server = RedisServer(data_dir, chosen, appendfsync=settings.redis_appendfsync)
    try:
        server.start()
    except BaseException:  # Ctrl-C while it starts: no orphaned redis-server
        server.stop()
        raise
    return server


def _redis_died(server: RedisServer | None) -> bool:
    if server is None or server.process is None or server.process.poll() is None:
        return False
    print(
        f"cdp: the embedded redis-server exited ({server.process.returncode}); "
        f"stopping. See {server.data_dir / 'redis.log'}",
        file=sys.stderr,
    )
    return True


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
