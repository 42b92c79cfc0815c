"""The stack a fault run breaks: an embedded redis-server, one API and W workers.

Every part is a real process the nemesis can kill, stop and restart: redis-server
with AOF on its own data directory (restarted on the same directory and port, so it
loads the AOF back), ``cdp api`` on a fixed port (restarted on it; a signal reaches
its process group, so every serving process of ``api-processes``), and ``cdp worker``
processes (a restarted worker gets a new id, as a new pod would). Each process logs
to ``<run dir>/logs``. The settings of every process come from ``env``, a dict of
``CDP_*`` variables; nothing of the caller's environment leaks in.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from cdp.embedded import RedisServer, free_port
from cdp.errors import ChaosError


class Cluster:
    def __init__(self, run_dir: Path, workers: int, appendfsync: str, env: dict[str, str]) -> None:
        self.run_dir = run_dir
        self.log_dir = run_dir / "logs"
        self.redis = RedisServer(run_dir / "redis", appendfsync=appendfsync)
        self.api_port = free_port()
        self.worker_names = [f"worker-{n + 1}" for n in range(workers)]
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.down: set[str] = set()  # killed on purpose, not yet restarted
        self._settings_env = env
        self._spawned = 0
        self.cwd: Path | None = None  # where `cdp api` / `cdp worker` run (None: here)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CDP_")}
        return {**env, **self._settings_env, "CDP_REDIS_URL": self.redis.url}

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.redis.start()
        self.start_api()
        for name in self.worker_names:
            self.spawn(name)

    def spawn(self, name: str) -> subprocess.Popen[bytes]:
        args = ["api", "--port", str(self.api_port)] if name == "api" else ["worker"]
        self._spawned += 1
        with open(self.log_dir / f"{self._spawned:03d}-{name}.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "cdp", *args],
                env=self.env,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of `cdp chaos` reaches only the runner
            )
        self.processes[name] = proc
        return proc

    def start_api(self, timeout: float = 30.0) -> None:
        self.spawn("api")
        deadline = time.monotonic() + timeout
        while not self._api_ready():
            if self.processes["api"].poll() is not None or time.monotonic() > deadline:
                raise ChaosError(f"the API did not start; see {self.log_dir}")
            time.sleep(0.05)

    def _api_ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.api_url + "/healthz", timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def signal(self, name: str, sig: signal.Signals) -> None:
        """Send ``sig`` to one process: ``redis`` or a name of ``processes``."""
        proc = self.redis.process if name == "redis" else self.processes[name]
        assert proc is not None and proc.poll() is None, f"{name} is not running"
        if sig == signal.SIGKILL:
            self.down.add(name)
        if name == "api":  # the parent and its serving processes (api-processes) alike
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        if sig == signal.SIGKILL:
            proc.wait(timeout=15)

    def exited(self) -> dict[str, int]:
        """Processes that ended although nobody killed them: name -> exit status."""
        out = {n: p.returncode for n, p in self.processes.items() if p.poll() is not None}
        if self.redis.process is not None and self.redis.process.poll() is not None:
            out["redis"] = self.redis.process.returncode
        return {n: code for n, code in out.items() if n not in self.down}

    def restart(self, name: str) -> None:
        if name == "redis":
            self.redis.start(timeout=60)  # same directory and port: the AOF is loaded
        elif name == "api":
            self.start_api()
        else:
            self.spawn(name)
        self.down.discard(name)

    def redis_log(self) -> Path:
        return self.redis.data_dir / "redis.log"

    def stop(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)  # a stopped process cannot exit
                proc.send_signal(signal.SIGTERM)
        for proc in self.processes.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.redis.process is not None and self.redis.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.redis.process.pid, signal.SIGCONT)
        self.redis.stop()
