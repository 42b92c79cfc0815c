"""The stack of an integration test: the API and worker *processes* (``cdp api``,
``cdp worker``) against the session's redis-server, driven through HTTP and the
Redis-driven test clock. ``tests/conftest.py``'s ``stack`` fixture makes one per test.

A stack may run against a Redis Cluster: give it the cluster's URL and a blocking
cluster client (``cdp.connect.sync_client``); its processes then get
``CDP_REDIS_CLUSTER=yes`` (and apply through the profile protocol: ``apply-protocol``
auto), and every read of the stack goes through that client, key by key.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import redis as redis_sync

from cdp import keys
from cdp.connect import SyncClient
from cdp.embedded import free_port
from cdp.metrics import counters_sync
from tests.support.values import PARTITIONS, ms
from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]


class Response:
    def __init__(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.status = status
        self.body = body
        self.headers = headers

    def json(self) -> Any:
        return json.loads(self.body)


class Stack:
    """API and worker processes of one test, driven through HTTP and the test clock."""

    TEST_ENV = {
        "CDP_CLOCK": "redis",
        "CDP_TICKER_INTERVAL": "50ms",
        "CDP_LEASE_TTL": "1s",
        "CDP_LOG_FORMAT": "json",
        "CDP_LOG_LEVEL": "info",
        # One API process (its connection cap and its log are the tests' subject);
        # tests/integration/test_api_processes.py runs several.
        "CDP_API_PROCESSES": "1",
    }

    def __init__(
        self,
        redis_url: str,
        client: SyncClient,
        log_dir: Path,
        partitions: int = PARTITIONS,
    ) -> None:
        self.redis_url = redis_url
        self.r = client
        self.log_dir = log_dir
        # Every process of the stack runs with this many partitions (CDP_PARTITIONS),
        # and the stack reads that many streams back.
        self.partitions = partitions
        self.processes: list[subprocess.Popen[bytes]] = []
        self.api_port: int | None = None
        self._n = 0

    def env(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CDP_")}
        env.update(self.TEST_ENV)
        env["CDP_REDIS_URL"] = self.redis_url
        env["CDP_PARTITIONS"] = str(self.partitions)
        if isinstance(self.r, redis_sync.RedisCluster):
            env["CDP_REDIS_CLUSTER"] = "yes"
        env.update({f"CDP_{k.upper()}": v for k, v in overrides.items()})
        return env

    def _spawn(self, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        self._n += 1
        log = open(self.log_dir / f"{self._n:02d}-{args[0]}.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "cdp", *args],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.processes.append(proc)
        return proc

    def start_api(self, **settings: str) -> None:
        self.api_port = free_port()
        self._spawn(["api", "--port", str(self.api_port)], self.env(**settings))
        wait_until(lambda: self._ready(), timeout=20, message="the API to answer /readyz")

    def _ready(self) -> bool:
        try:
            return self.get("/readyz").status == 200
        except OSError:
            return False

    def start_worker(
        self, worker_id: str | None = None, **settings: str
    ) -> subprocess.Popen[bytes]:
        args = ["worker"] + (["--id", worker_id] if worker_id else [])
        return self._spawn(args, self.env(**settings))

    def set_clock(self, when: str | int) -> int:
        value = ms(when) if isinstance(when, str) else when
        self.r.set(keys.CLOCK, value)
        return value

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        assert self.api_port is not None, "start_api() first"
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.api_port}{path}",
            data=body,
            method=method,
            headers=headers or {},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return Response(resp.status, resp.read(), dict(resp.headers))
        except urllib.error.HTTPError as err:
            return Response(err.code, err.read(), dict(err.headers))

    def get(self, path: str) -> Response:
        return self.request("GET", path)

    def post(self, path: str, payload: Any) -> Response:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return self.request("POST", path, body, {"Content-Type": "application/json"})

    def send(self, event_id: str, ts: str, **payload: Any) -> Response:
        """POST one seed-format event; asserts it was accepted."""
        resp = self.post("/cdp/ingest", {"eventId": event_id, "ts": ts, "payload": payload})
        assert resp.status == 202, resp.body
        return resp

    def metric(self, name: str) -> int:
        return counters_sync(self.r, self.partitions, [name])[name]

    def wait_metric(self, name: str, at_least: int, timeout: float = 20.0) -> int:
        return (
            wait_until(
                lambda: self.metric(name) >= at_least and self.metric(name),
                timeout=timeout,
                message=f"metric {name} >= {at_least}",
            )
            or 0
        )

    def pending(self) -> int:
        """Entries read by a worker and not yet acknowledged, over all partitions."""
        total = 0
        for p in range(self.partitions):
            for group in self._groups(keys.stream(p)):
                if group["name"] == keys.GROUP:
                    total += int(group["pending"])
        return total

    def _groups(self, stream: str) -> list[dict[str, Any]]:
        try:
            return list(self.r.xinfo_groups(stream))
        except redis_sync.ResponseError:  # no stream yet
            return []

    def wait_idle(self, timeout: float = 20.0) -> None:
        """Wait until every accepted event has been acknowledged by the group."""

        def idle() -> bool:
            for p in range(self.partitions):
                stream = keys.stream(p)
                if not self.r.exists(stream):
                    continue
                groups = {g["name"]: g for g in self._groups(stream)}
                group = groups.get(keys.GROUP)
                if group is None or group["pending"]:
                    return False
                last = self.r.xrevrange(stream, count=1)
                if last and last[0][0] != group["last-delivered-id"]:
                    return False
            return True

        wait_until(idle, timeout=timeout, message="all partitions to be read and acknowledged")

    def kill(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        proc.send_signal(sig)
        proc.wait(timeout=15)

    def close(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.processes:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text()[-4000:]}" for p in sorted(self.log_dir.glob("*.log"))
        )
