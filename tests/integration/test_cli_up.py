"""``cdp up`` as a user runs it: one command, an embedded Redis with AOF, the API and two
workers; Ctrl-C stops everything; events accepted before a stop are applied after the
restart; ``cdp profile`` prints the result."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cdp.embedded import free_port
from tests.support.stack import ROOT
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDP_")}
    env["CDP_WINDOW_SIZE"] = "3s"
    env["CDP_TICKER_INTERVAL"] = "100ms"
    return env


class Up:
    def __init__(self, data_dir: Path, **env: str) -> None:
        self.data_dir = data_dir
        self.env = _env() | env
        self.port = free_port()
        self.redis_port = free_port()
        self.proc: subprocess.Popen[str] | None = None
        self.output = ""

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cdp",
                "up",
                "--port",
                str(self.port),
                "--redis-port",
                str(self.redis_port),
                "--data-dir",
                str(self.data_dir),
                "--workers",
                "2",
            ],
            env=self.env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        wait_until(self._ready, timeout=30, message="cdp up to answer /readyz")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def send(self, event: dict[str, object]) -> None:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/cdp/ingest",
            data=json.dumps(event).encode(),
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 202

    def profile(self, identifier: str) -> dict[str, object] | None:
        env = _env() | {"CDP_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0"}
        done = subprocess.run(
            [sys.executable, "-m", "cdp", "profile", identifier],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        if done.returncode == 1:
            return None
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=60)
        self.output += out
        return self.proc.returncode


def test_up_applies_events_survives_a_restart_and_stops_cleanly(tmp_path: Path) -> None:
    up = Up(tmp_path / "data")
    up.start()
    try:
        now = datetime.now(UTC)
        ts = now.isoformat().replace("+00:00", "Z")
        up.send(
            {
                "eventId": "e1",
                "ts": ts,
                "payload": {
                    "type": "IDENTIFY",
                    "userId": "u1",
                    "email": "U1@x.io",
                    "traits": {"plan": "pro"},
                },
            }
        )
        for i in range(10):
            up.send(
                {
                    "eventId": f"t{i}",
                    "ts": ts,
                    "payload": {"type": "TRACK", "userId": "u1", "name": "Clicked"},
                }
            )
        # Stop at once: the window (3 s) has not passed, nothing is applied yet.
        assert up.stop() == 0
        assert "cdp is up" in up.output and "cdp stopped." in up.output
        assert f"redis://127.0.0.1:{up.redis_port}/0" in up.output
        assert (tmp_path / "data").is_dir()
        assert _listening(up.port) is False and _listening(up.redis_port) is False

        up.start()  # same data dir: the accepted events are still pending, and get applied
        profile = wait_until(
            lambda: _complete(up.profile("email:u1@x.io")),
            timeout=30,
            message="the profile with its ten TRACK events",
        )
        assert profile["identifiers"] == ["email:u1@x.io", "user:u1"]
        assert profile["traits"]["plan"]["v"] == "pro"
        assert profile["counters"]["Clicked"]["total"] == 10
    finally:
        if up.proc is not None and up.proc.poll() is None:
            assert up.stop() == 0


def _complete(profile: dict[str, object] | None) -> dict[str, object] | None:
    if profile is None:
        return None
    counters = profile.get("counters") or {}
    total = counters.get("Clicked", {}).get("total")  # type: ignore[attr-defined]
    return profile if total == 10 else None


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_a_bad_setting_stops_start_up_naming_the_key(tmp_path: Path) -> None:
    env = _env() | {"CDP_WINDOW_SIZE": "five seconds"}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "cdp", "up", "--data-dir", str(tmp_path)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "window-size" in done.stderr
    assert time.monotonic() - started < 30


def test_profile_of_an_unknown_identifier_exits_1_with_a_message(redis_url: str) -> None:
    env = _env() | {"CDP_REDIS_URL": redis_url}
    done = subprocess.run(
        [sys.executable, "-m", "cdp", "profile", "user:nobody"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert "user:nobody" in done.stderr


@pytest.mark.parametrize(
    ("identifier", "message"),
    [
        ("phone:123", "cdp: 'phone:123' is not a profile identifier: use user:<userId>"),
        ("u1", "cdp: 'u1' is not a profile identifier: use user:<userId>"),
        ("email:", "cdp: 'email:' has no value after email:"),
    ],
)
def test_profile_of_a_malformed_identifier_exits_2_not_1(
    redis_url: str, identifier: str, message: str
) -> None:
    env = _env() | {"CDP_REDIS_URL": redis_url}
    done = subprocess.run(
        [sys.executable, "-m", "cdp", "profile", identifier],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith(message), done.stderr


def test_up_stops_with_an_error_when_its_redis_dies(tmp_path: Path) -> None:
    import redis

    up = Up(tmp_path / "data")
    up.start()
    client = redis.Redis(port=up.redis_port)
    with contextlib.suppress(redis.ConnectionError):
        client.shutdown(nosave=True)
    client.close()
    assert up.proc is not None
    out, _ = up.proc.communicate(timeout=60)
    assert up.proc.returncode == 1
    assert "redis-server exited" in out and "cdp stopped." in out
    assert _listening(up.port) is False


def test_up_runs_its_redis_with_the_configured_appendfsync(tmp_path: Path) -> None:
    import redis

    up = Up(tmp_path / "data", CDP_REDIS_APPENDFSYNC="always")
    up.start()
    try:
        client = redis.Redis(port=up.redis_port, decode_responses=True)
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        client.close()
    finally:
        assert up.stop() == 0
