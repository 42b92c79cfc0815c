"""Several API processes on one port (``cdp api --processes N``, SO_REUSEPORT).

A child killed with SIGKILL while requests flow: the port keeps answering through the
other, the parent logs the exit and starts a new child, and every event answered 202
(by any process, before or after) is in a partition stream, with the ``accepted``
counter of every process adding up to what the streams hold. SIGTERM to the parent
stops every child and the parent exits 0; SIGKILL of the parent stops them too.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cdp import keys
from cdp.embedded import free_port
from tests.support.stack import ROOT, Stack
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration
TS = "2025-01-01T00:00:00Z"


def children(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(p) for p in path.read_text().split()} if path.exists() else set()


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):  # gone between open() and read()
        return False
    return state != "Z"


class Senders:
    """Threads posting unique events until stopped; keeps the ids answered 202."""

    def __init__(self, port: int, threads: int = 4) -> None:
        self.url = f"http://127.0.0.1:{port}/cdp/ingest"
        self.accepted: list[str] = []
        self.failed = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(n,)) for n in range(threads)]

    def post(self, event_id: str) -> int:
        body = {"eventId": event_id, "ts": TS, "payload": {"type": "TRACK", "userId": event_id}}
        body["payload"]["name"] = "Tick"
        req = urllib.request.Request(
            self.url, json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                status = int(resp.status)
        except urllib.error.HTTPError as err:
            status = err.code
        except OSError:  # the killed child's connections
            status = 0
        with self._lock:
            if status == 202:
                self.accepted.append(event_id)
            else:
                self.failed += 1
        return status

    def _run(self, n: int) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            self.post(f"t{n}-{i}")

    def count(self) -> int:
        with self._lock:
            return len(self.accepted)

    def __enter__(self) -> Senders:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def stored_event_ids(stack: Stack) -> list[str]:
    ids = []
    for p in range(stack.partitions):
        for _, fields in stack.r.xrange(keys.stream(p)):
            ids.append(json.loads(fields["e"])["eventId"])
    return ids


def test_a_killed_api_process_is_restarted_and_no_accepted_event_is_lost(
    stack: Stack,
) -> None:
    stack.set_clock(TS)
    stack.api_port = port = free_port()
    parent = stack._spawn(["api", "--port", str(port), "--processes", "2"], stack.env())
    wait_until(lambda: len(children(parent.pid)) == 2, timeout=20, message="2 API processes")
    wait_until(stack._ready, timeout=20, message="the API to answer /readyz")
    first = children(parent.pid)

    with Senders(port) as senders:
        wait_until(lambda: senders.count() >= 50, timeout=30, message="50 events accepted")
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: not alive(victim), timeout=10, message="the child to die")
        # The port keeps answering while the child is down or coming back.
        probe = Senders(port)
        assert [probe.post(f"probe-{i}") for i in range(20)] == [202] * 20
        wait_until(
            lambda: len(children(parent.pid) - {victim}) == 2,
            timeout=20,
            message="a new child in the dead one's place",
        )
        at_restart = senders.count()
        wait_until(
            lambda: senders.count() >= at_restart + 50,
            timeout=30,
            message="more events accepted after the restart",
        )
    replacement = children(parent.pid) - first
    assert len(replacement) == 1 and victim not in children(parent.pid)

    accepted = senders.accepted + probe.accepted
    stored = stored_event_ids(stack)
    assert not set(accepted) - set(stored), "an event answered 202 is not in any stream"
    # Counted by the publish script of whichever process stored it: they add up.
    assert stack.metric("accepted") == len(stored)
    metrics = stack.get("/metrics").body.decode()
    # prometheus_client writes every value as a float (a scrape of either process)
    assert f"cdp_events_accepted_total {float(len(stored))}\n" in metrics

    logs = stack.logs()
    assert "api process exited; restarting it" in logs

    everyone = children(parent.pid)
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=30) == 0
    wait_until(lambda: not any(alive(pid) for pid in everyone), timeout=10, message="children gone")


def test_a_port_held_by_another_process_stops_start_up(stack: Stack) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "cdp", "api", "--port", str(port), "--processes", "2"],
            env=stack.env(),
            cwd=ROOT,
            capture_output=True,
            timeout=30,
        )
    assert proc.returncode != 0
    assert b"Address already in use" in proc.stderr + proc.stdout


def test_children_stop_when_their_parent_is_killed(stack: Stack) -> None:
    """SIGKILL of the parent (nobody left to supervise): its children stop (Linux
    PR_SET_PDEATHSIG), finishing what they hold, and the port is free again."""
    stack.api_port = port = free_port()
    parent = stack._spawn(["api", "--port", str(port), "--processes", "2"], stack.env())
    wait_until(lambda: len(children(parent.pid)) == 2, timeout=20, message="2 API processes")
    wait_until(stack._ready, timeout=20, message="the API to answer /readyz")
    orphans = children(parent.pid)
    parent.kill()
    parent.wait(timeout=10)
    wait_until(
        lambda: not any(alive(pid) for pid in orphans), timeout=20, message="the children to stop"
    )
    with socket.socket() as again:  # nobody listens on it any more (TIME_WAITs aside)
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
        again.listen()
