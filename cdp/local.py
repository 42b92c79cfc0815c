"""``cdp up``: the local supervisor of an embedded Redis, one API and N workers.

The embedded ``redis-server`` (``cdp.embedded``) runs with AOF in ``data_dir``, unless
``CDP_REDIS_URL`` is set, in which case that Redis is used. The API and each worker are
``python -m cdp api|worker`` child processes, each in a session of its own so that a
Ctrl-C in the terminal reaches only the supervisor. A child that exits is restarted
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
        chosen = redis_port or (6379 if port_is_free(6379) else None)
        server = RedisServer(Path(data_dir), chosen, appendfsync=settings.redis_appendfsync)
        try:
            server.start()
        except BaseException:  # Ctrl-C while it starts: no orphaned redis-server
            server.stop()
            raise
        redis_url = server.url
    env = {**os.environ, "CDP_REDIS_URL": redis_url}
    if config:
        env["CDP_CONFIG"] = str(Path(config).resolve())
    commands = {"api": ["api", "--host", host, "--port", str(port)]}
    for n in range(workers):
        commands[f"worker-{n + 1}"] = ["worker"]
    children: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(name: str) -> None:
        children[name] = subprocess.Popen(
            [sys.executable, "-m", "cdp", *commands[name]], env=env, start_new_session=True
        )

    stopping = False
    status = 0

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        for name in commands:
            spawn(name)
        print(
            f"cdp is up: API http://{host}:{port}  Redis {redis_url}"
            f"  ({workers} workers{', data in ' + str(server.data_dir) if server else ''})",
            flush=True,
        )
        print(f"  try: redis-cli -u {redis_url} --scan --pattern 'cdp:profile:*'", flush=True)
        print("  Ctrl-C stops everything.", flush=True)
        while not stopping:
            if server is not None and server.process and server.process.poll() is not None:
                print(
                    f"cdp: the embedded redis-server exited ({server.process.returncode}); "
                    f"stopping. See {server.data_dir / 'redis.log'}",
                    file=sys.stderr,
                )
                status = 1
                break
            for name, child in list(children.items()):
                if child.poll() is not None and not stopping:
                    print(
                        f"cdp: {name} exited with {child.returncode}; restarting", file=sys.stderr
                    )
                    time.sleep(1)
                    spawn(name)
            time.sleep(0.2)
    finally:
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children.values():
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
        if server is not None:
            server.stop()
        print("cdp stopped.", flush=True)
    return status
